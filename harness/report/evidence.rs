//! Per-device certification evidence for OEM hand-over, and scrubbing secrets from the
//! files a run collected.
//!
//! `evidence/<device>.json` holds what an OEM asks for: the device's identity, the TPM as
//! it reported itself (family, manufacturer, firmware, EK certificate issuer), the elapsed
//! times the technician flow showed, each case's verdict, and where the diagnostics are.
//! `evidence/<device>.zip` bundles the device's artifacts, within size caps; what did not
//! fit is listed in the JSON, never silently dropped.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::ReportError;
use super::artifacts::{decode_text, is_text_name};
use super::rundir::{RunDir, slug};
use super::summary::RunSummary;
use crate::store::CaseRecord;

/// Size caps for the evidence archive.
#[derive(Debug, Clone)]
pub struct EvidenceLimits {
    /// A file larger than this is left out of the archive (and listed as omitted).
    pub file_max_bytes: u64,
    /// The archive stops taking files once their sizes add up to this.
    pub device_max_bytes: u64,
}

impl Default for EvidenceLimits {
    fn default() -> Self {
        EvidenceLimits {
            file_max_bytes: 64 * 1024 * 1024,
            device_max_bytes: 256 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Serialize)]
struct Evidence<'a> {
    run_id: &'a str,
    lab: &'a str,
    generated_at: &'a str,
    device: &'a super::summary::DeviceFacts,
    cases: Vec<CaseEvidence<'a>>,
    archive: Option<String>,
    archived: Vec<String>,
    omitted: Vec<Omitted>,
}

#[derive(Debug, Serialize)]
struct CaseEvidence<'a> {
    case_id: &'a str,
    scenario: &'a str,
    matrix: &'a BTreeMap<String, String>,
    status: &'a str,
    join: Option<&'a str>,
    /// Elapsed time the technician flow's final screen showed.
    technician_elapsed: Option<&'a str>,
    /// Each phase's elapsed time (lab seconds) and the measured gap before it.
    phases: Vec<PhaseEvidence<'a>>,
    failure: Option<FailureEvidence<'a>>,
    diagnostics: Vec<&'a str>,
}

#[derive(Debug, Serialize)]
struct PhaseEvidence<'a> {
    name: &'a str,
    status: &'a str,
    elapsed_s: Option<f64>,
    gap_before_s: Option<f64>,
}

#[derive(Debug, Serialize)]
struct FailureEvidence<'a> {
    class: &'a str,
    code: Option<&'a str>,
    message: &'a str,
    cause: &'a str,
    remedy: &'a str,
}

#[derive(Debug, Serialize)]
struct Omitted {
    path: String,
    bytes: u64,
    reason: String,
}

/// Writes `evidence/<device>.json` and `.zip` for every device in the run.
pub fn write(
    run_dir: &RunDir,
    summary: &RunSummary,
    limits: &EvidenceLimits,
) -> Result<Vec<PathBuf>, ReportError> {
    let dir = run_dir.evidence_dir();
    std::fs::create_dir_all(&dir).map_err(|e| ReportError::io(&dir, e))?;
    let mut devices: Vec<&str> = summary.cases.iter().map(|c| c.device.id.as_str()).collect();
    devices.sort();
    devices.dedup();
    let mut written = Vec::new();
    for device_id in devices {
        let cases: Vec<_> = summary
            .cases
            .iter()
            .filter(|c| c.device.id == device_id)
            .collect();
        let name = slug(device_id);
        let zip_path = dir.join(format!("{name}.zip"));
        let files: Vec<(String, PathBuf, u64)> = cases
            .iter()
            .flat_map(|c| {
                c.artifacts
                    .iter()
                    .map(|a| (a.path.clone(), a.abs_path.clone(), a.bytes))
                    .chain(
                        c.console_log
                            .iter()
                            .map(|p| (p.clone(), run_dir.root().join(p), 0)),
                    )
            })
            .collect();
        let (archived, omitted) = write_zip(run_dir, &zip_path, &files, limits)?;
        let device = &cases[0].device;
        let evidence = Evidence {
            run_id: &summary.run_id,
            lab: &summary.lab,
            generated_at: &summary.generated_at,
            device,
            cases: cases
                .iter()
                .map(|c| CaseEvidence {
                    case_id: &c.case_id,
                    scenario: &c.scenario,
                    matrix: &c.matrix,
                    status: &c.status,
                    join: c.join.as_deref(),
                    technician_elapsed: c.technician_elapsed.as_deref(),
                    phases: c
                        .phases
                        .iter()
                        .map(|p| PhaseEvidence {
                            name: &p.name,
                            status: &p.status,
                            elapsed_s: p.elapsed_s,
                            gap_before_s: p.gap_before_s,
                        })
                        .collect(),
                    failure: c
                        .failures
                        .iter()
                        .find(|f| f.fatal)
                        .map(|f| FailureEvidence {
                            class: &f.class,
                            code: f.code.as_deref(),
                            message: &f.message,
                            cause: &f.diagnosis.cause,
                            remedy: &f.diagnosis.remedy,
                        }),
                    diagnostics: c
                        .artifacts
                        .iter()
                        .filter(|a| a.kind != "screenshot")
                        .map(|a| a.path.as_str())
                        .collect(),
                })
                .collect(),
            archive: Some(format!("evidence/{name}.zip")),
            archived,
            omitted,
        };
        let json = serde_json::to_string_pretty(&evidence)
            .map_err(|e| ReportError::Harness(format!("cannot serialize evidence: {e}")))?;
        let json_path = dir.join(format!("{name}.json"));
        let json = run_dir.redactor().redact(&json).into_owned();
        std::fs::write(&json_path, json).map_err(|e| ReportError::io(&json_path, e))?;
        written.push(json_path);
        written.push(zip_path);
    }
    Ok(written)
}

/// Writes the device's archive; returns what went in and what was left out.
fn write_zip(
    run_dir: &RunDir,
    zip_path: &Path,
    files: &[(String, PathBuf, u64)],
    limits: &EvidenceLimits,
) -> Result<(Vec<String>, Vec<Omitted>), ReportError> {
    let file = File::create(zip_path).map_err(|e| ReportError::io(zip_path, e))?;
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(true);
    let mut archived = Vec::new();
    let mut omitted = Vec::new();
    let mut total = 0u64;
    let mut seen = std::collections::BTreeSet::new();
    let zip_err =
        |e: zip::result::ZipError| ReportError::io(zip_path, std::io::Error::other(e.to_string()));
    for (name, path, _) in files {
        if !seen.insert(name.clone()) {
            continue;
        }
        let bytes = match std::fs::metadata(path) {
            Ok(m) => m.len(),
            Err(e) => {
                omitted.push(Omitted {
                    path: name.clone(),
                    bytes: 0,
                    reason: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        if bytes > limits.file_max_bytes {
            omitted.push(Omitted {
                path: name.clone(),
                bytes,
                reason: format!(
                    "larger than the per-file cap of {} bytes",
                    limits.file_max_bytes
                ),
            });
            continue;
        }
        if total + bytes > limits.device_max_bytes {
            omitted.push(Omitted {
                path: name.clone(),
                bytes,
                reason: format!(
                    "the archive reached its cap of {} bytes",
                    limits.device_max_bytes
                ),
            });
            continue;
        }
        let mut content = Vec::with_capacity(bytes as usize);
        if let Err(e) = File::open(path).and_then(|mut f| f.read_to_end(&mut content)) {
            omitted.push(Omitted {
                path: name.clone(),
                bytes,
                reason: format!("cannot read: {e}"),
            });
            continue;
        }
        // Scrubbing happened before (scrub_case_files); scrub text again in case the file
        // changed since, since a secret in an archive is as leaked as anywhere else.
        let content = if is_text_name(name) {
            run_dir.redactor().redact_bytes(&content).into_owned()
        } else {
            content
        };
        // Absolute paths (artifacts outside the run directory) go in under their name.
        let entry = if Path::new(name).is_absolute() {
            format!(
                "outside/{}",
                Path::new(name)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            )
        } else {
            name.clone()
        };
        zip.start_file(entry, options).map_err(zip_err)?;
        zip.write_all(&content)
            .map_err(|e| ReportError::io(zip_path, e))?;
        total += bytes;
        archived.push(name.clone());
    }
    zip.finish().map_err(zip_err)?;
    Ok((archived, omitted))
}

/// Scrubs secrets from every case's console log, text artifacts and the text entries of
/// diagnostics archives, in place. Returns warnings for files it could not scrub.
pub fn scrub_case_files(run_dir: &RunDir, cases: &[CaseRecord]) -> Vec<String> {
    let mut warnings = Vec::new();
    for case in cases {
        let dir = run_dir.case_path(&case.case_id);
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let name = path.to_string_lossy().to_ascii_lowercase();
                let result = if is_text_name(&name) || name.ends_with(".jsonl") {
                    scrub_file(run_dir, &path)
                } else if name.ends_with(".zip") {
                    scrub_zip(run_dir, &path)
                } else {
                    Ok(())
                };
                if let Err(e) = result {
                    warnings.push(format!(
                        "could not scrub secrets from {}: {e}",
                        path.display()
                    ));
                }
            }
        }
    }
    warnings
}

fn scrub_file(run_dir: &RunDir, path: &Path) -> std::io::Result<()> {
    let bytes = std::fs::read(path)?;
    let clean = run_dir.redactor().redact_bytes(&bytes);
    if clean.as_ref() != bytes.as_slice() {
        std::fs::write(path, clean.as_ref())?;
    }
    Ok(())
}

/// Rewrites an archive whose text entries held a secret (UTF-8 or UTF-16). Only text
/// entries are read; the rest (event logs, ETL traces) are copied still compressed, so a
/// large diagnostics archive never has to fit in memory.
fn scrub_zip(run_dir: &RunDir, path: &Path) -> std::io::Result<()> {
    let other = |e: zip::result::ZipError| std::io::Error::other(e.to_string());
    let mut archive = zip::ZipArchive::new(File::open(path)?).map_err(other)?;
    let mut scrubbed: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(other)?;
        if entry.is_dir() || !is_text_name(entry.name()) {
            continue;
        }
        let mut content = Vec::new();
        entry.read_to_end(&mut content)?;
        let clean = scrub_text_bytes(run_dir, &content);
        if clean != content {
            scrubbed.insert(i, clean);
        }
    }
    if scrubbed.is_empty() {
        return Ok(());
    }
    let tmp = path.with_extension("zip.scrub");
    {
        let mut zip = zip::ZipWriter::new(File::create(&tmp)?);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(true);
        for i in 0..archive.len() {
            match scrubbed.remove(&i) {
                Some(content) => {
                    let name = archive.by_index_raw(i).map_err(other)?.name().to_string();
                    zip.start_file(name, options).map_err(other)?;
                    zip.write_all(&content)?;
                }
                None => zip
                    .raw_copy_file(archive.by_index_raw(i).map_err(other)?)
                    .map_err(other)?,
            }
        }
        zip.finish().map_err(other)?;
    }
    std::fs::rename(&tmp, path)
}

/// Scrubs text that may be UTF-16LE with a BOM (Windows tools write both).
fn scrub_text_bytes(run_dir: &RunDir, bytes: &[u8]) -> Vec<u8> {
    if bytes.starts_with(&[0xff, 0xfe]) {
        let text = decode_text(bytes);
        let clean = run_dir.redactor().redact(&text);
        if clean == text {
            return bytes.to_vec();
        }
        let mut out = vec![0xff, 0xfe];
        out.extend(clean.encode_utf16().flat_map(|u| u.to_le_bytes()));
        out
    } else {
        run_dir.redactor().redact_bytes(bytes).into_owned()
    }
}
