//! Collecting diagnostics into the device's artifacts directory. Each item has a size
//! cap and a timeout so a broken device cannot hang or flood the run, and a failure to
//! collect one is reported (`ArtifactFailed`) but never fails the step.

use std::path::{Path, PathBuf};

use crate::device::DeviceResult;
use crate::model::scenario::Diagnostic;

use super::events::EventKind;
use super::step::{Attempt, Done, StepCtx};

/// Where `mdmdiagnosticstool` writes its archive on the device.
const MDM_ZIP: &str = r"C:\Windows\Temp\aplab-diag.zip";

/// Event channels that tell the Autopilot story (see DOMAIN.md).
const EVENT_CHANNELS: [(&str, &str); 4] = [
    (
        "autopilot",
        "Microsoft-Windows-ModernDeployment-Diagnostics-Provider/Autopilot",
    ),
    (
        "mdm",
        "Microsoft-Windows-DeviceManagement-Enterprise-Diagnostics-Provider/Admin",
    ),
    (
        "device-registration",
        "Microsoft-Windows-User Device Registration/Admin",
    ),
    ("shell-core", "Microsoft-Windows-Shell-Core/Operational"),
];

/// A saved artifact: path, size, whether it was cut at its cap.
struct Saved {
    path: PathBuf,
    bytes: u64,
    truncated: bool,
}

pub(crate) async fn collect(ctx: &StepCtx<'_, '_>, items: &[Diagnostic]) -> Attempt {
    let dir = ctx
        .run
        .handle
        .artifacts
        .join(file_name(ctx.phase))
        .join(file_name(&ctx.step.name));
    for item in items {
        let kind = kind(*item);
        let limit = ctx.run.options.diagnostics.timeout;
        let result = tokio::select! {
            biased;
            r = one(ctx, &dir, *item) => r,
            _ = ctx.run.clock.sleep(limit) => Err(format!(
                "gave up after {}",
                crate::model::duration::format_duration(limit)
            )),
        };
        match result {
            Ok(saved) => {
                for s in saved {
                    ctx.emit(EventKind::ArtifactSaved {
                        kind: kind.to_string(),
                        path: s.path,
                        bytes: s.bytes,
                        truncated: s.truncated,
                    });
                }
            }
            Err(message) => ctx.emit(EventKind::ArtifactFailed {
                kind: kind.to_string(),
                message,
            }),
        }
    }
    Ok(Done::passed())
}

pub(crate) fn kind(d: Diagnostic) -> &'static str {
    match d {
        Diagnostic::MdmDiagnostics => "mdm-diagnostics",
        Diagnostic::Dsregcmd => "dsregcmd",
        Diagnostic::GetTpm => "get-tpm",
        Diagnostic::EventLogs => "event-logs",
        Diagnostic::Console => "console",
        Diagnostic::Screenshot => "screenshot",
    }
}

/// A step or phase name as a file name: letters, digits, `-` and `_` only.
fn file_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "step".to_string()
    } else {
        cleaned
    }
}

async fn one(ctx: &StepCtx<'_, '_>, dir: &Path, item: Diagnostic) -> Result<Vec<Saved>, String> {
    let handle = ctx.run.handle;
    let limits = &ctx.run.options.diagnostics;
    let wall = ctx.run.clock.wall(limits.timeout);
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let shell = || {
        handle
            .shell
            .as_deref()
            .ok_or_else(|| "the device has no shell connection".to_string())
    };
    match item {
        Diagnostic::MdmDiagnostics => {
            let shell = shell()?;
            let args = [
                "-area".to_string(),
                "DeviceEnrollment;DeviceProvisioning;Autopilot;TPM".to_string(),
                "-zip".to_string(),
                MDM_ZIP.to_string(),
            ];
            let out = text(shell.run("mdmdiagnosticstool.exe", &args, wall).await)?;
            if out.status != 0 {
                return Err(format!(
                    "mdmdiagnosticstool.exe exited with {}: {}",
                    out.status,
                    out.stderr.trim()
                ));
            }
            let local = dir.join("mdmdiagnostics.zip");
            let bytes = text(
                shell
                    .fetch(MDM_ZIP, &local, limits.file_max_bytes, wall)
                    .await,
            )?;
            Ok(vec![Saved {
                path: local,
                bytes,
                truncated: false,
            }])
        }
        Diagnostic::Dsregcmd => {
            let out = text(
                shell()?
                    .run("dsregcmd", &["/status".to_string()], wall)
                    .await,
            )?;
            Ok(vec![
                save_output(dir, "dsregcmd.txt", &out, limits.text_max_bytes).await?,
            ])
        }
        Diagnostic::GetTpm => {
            let out = text(shell()?.run("Get-Tpm", &[], wall).await)?;
            Ok(vec![
                save_output(dir, "get-tpm.txt", &out, limits.text_max_bytes).await?,
            ])
        }
        Diagnostic::EventLogs => {
            let shell = shell()?;
            let mut saved = Vec::new();
            for (name, channel) in EVENT_CHANNELS {
                let args = [
                    "qe".to_string(),
                    channel.to_string(),
                    "/c:500".to_string(),
                    "/rd:true".to_string(),
                    "/f:text".to_string(),
                ];
                let out = text(shell.run("wevtutil", &args, wall).await)?;
                let file = format!("events-{name}.txt");
                saved.push(save_output(dir, &file, &out, limits.text_max_bytes).await?);
            }
            Ok(saved)
        }
        Diagnostic::Console => {
            let console = handle
                .console
                .as_deref()
                .ok_or_else(|| "the device has no console connection".to_string())?;
            let log = tokio::fs::read(console.log_path())
                .await
                .map_err(|e| format!("cannot read {}: {e}", console.log_path().display()))?;
            // The end of the log explains a failure; keep that when cutting.
            let (bytes, truncated) = tail(&log, limits.text_max_bytes);
            Ok(vec![write(dir, "console.log", bytes, truncated).await?])
        }
        Diagnostic::Screenshot => {
            let screen = handle
                .screen
                .as_deref()
                .ok_or_else(|| "the device has no screen connection".to_string())?;
            let png = text(screen.snapshot().await)?;
            if png.len() as u64 > limits.file_max_bytes {
                return Err(format!(
                    "the screenshot is {} bytes, over the cap of {}",
                    png.len(),
                    limits.file_max_bytes
                ));
            }
            Ok(vec![write(dir, "screenshot.png", &png, false).await?])
        }
    }
}

/// A device result with its error as plain text (collecting never classifies).
fn text<T>(r: DeviceResult<T>) -> Result<T, String> {
    r.map_err(|e| match e.hint {
        Some(hint) => format!("{} ({hint})", e.message),
        None => e.message,
    })
}

async fn save_output(
    dir: &Path,
    file: &str,
    out: &crate::device::CommandOutput,
    max: u64,
) -> Result<Saved, String> {
    let mut all = out.stdout.clone();
    if !out.stderr.is_empty() {
        all.push_str("\n--- stderr ---\n");
        all.push_str(&out.stderr);
    }
    let bytes = all.as_bytes();
    let cut = bytes.len().min(usize::try_from(max).unwrap_or(usize::MAX));
    write(dir, file, &bytes[..cut], cut < bytes.len()).await
}

fn tail(bytes: &[u8], max: u64) -> (&[u8], bool) {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    if bytes.len() > max {
        (&bytes[bytes.len() - max..], true)
    } else {
        (bytes, false)
    }
}

async fn write(dir: &Path, file: &str, bytes: &[u8], truncated: bool) -> Result<Saved, String> {
    let path = dir.join(file);
    tokio::fs::write(&path, bytes)
        .await
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(Saved {
        path,
        bytes: bytes.len() as u64,
        truncated,
    })
}
