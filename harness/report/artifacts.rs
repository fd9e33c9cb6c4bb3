//! A case's artifacts as reports see them: links relative to the run directory, files
//! the events did not announce, and the text of diagnostics (plain files and the text
//! entries of archives, UTF-8 or UTF-16) for signature matching.

use std::io::Read;
use std::path::Path;

use super::console;
use super::rundir::RunDir;
use super::summary::ArtifactRef;

/// Most text read from one diagnostic file (or archive entry) for signature matching.
const DIAGNOSTIC_TEXT_MAX: u64 = 2 * 1024 * 1024;

/// A path as a link from the run directory: relative when inside it.
pub fn relative(root: &Path, path: &Path) -> String {
    let root_abs = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let path_abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    match path_abs.strip_prefix(&root_abs) {
        Ok(rel) => rel.to_string_lossy().into_owned(),
        Err(_) => path.to_string_lossy().into_owned(),
    }
}

pub(super) fn add_unannounced_artifacts(
    run_dir: &RunDir,
    dir: &Path,
    artifacts: &mut Vec<ArtifactRef>,
) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = relative(run_dir.root(), &path);
            if artifacts.iter().any(|a| a.path == rel) {
                continue;
            }
            artifacts.push(ArtifactRef {
                kind: kind_from_name(&path).to_string(),
                path: rel,
                abs_path: path,
                bytes: meta.len(),
                truncated: false,
                phase: None,
                step: None,
            });
        }
    }
}

fn kind_from_name(path: &Path) -> &'static str {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if name.ends_with(".png") || name.ends_with(".jpg") || name.ends_with(".jpeg") {
        "screenshot"
    } else if name.ends_with(".zip") || name.ends_with(".cab") {
        "mdm-diagnostics"
    } else if name.contains("dsregcmd") {
        "dsregcmd"
    } else {
        "file"
    }
}

/// Whether a file is text a signature can read (by extension).
pub fn is_text_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        ".txt", ".log", ".xml", ".json", ".reg", ".csv", ".html", ".htm", ".ps1", ".out", ".ini",
    ]
    .iter()
    .any(|ext| name.ends_with(ext))
}

/// The text of a case's diagnostics (text files and text entries of archives), capped.
pub(super) fn diagnostics_text(artifacts: &[ArtifactRef], warnings: &mut Vec<String>) -> String {
    let mut out = String::new();
    for a in artifacts {
        let name = a.abs_path.to_string_lossy().to_string();
        if is_text_name(&name) {
            match console::read_tail(&a.abs_path, DIAGNOSTIC_TEXT_MAX) {
                Ok(bytes) => {
                    out.push_str(&String::from_utf8_lossy(&bytes));
                    out.push('\n');
                }
                Err(e) => warnings.push(format!("cannot read {name}: {e}")),
            }
        } else if name.to_ascii_lowercase().ends_with(".zip")
            && let Err(e) = zip_text(&a.abs_path, &mut out)
        {
            warnings.push(format!("cannot read the archive {name}: {e}"));
        }
    }
    out
}

fn zip_text(path: &Path, out: &mut String) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| e.to_string())?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| e.to_string())?;
        if !entry.is_file() || !is_text_name(entry.name()) {
            continue;
        }
        let mut bytes = Vec::new();
        (&mut entry)
            .take(DIAGNOSTIC_TEXT_MAX)
            .read_to_end(&mut bytes)
            .map_err(|e| e.to_string())?;
        out.push_str(&decode_text(&bytes));
        out.push('\n');
    }
    Ok(())
}

/// Windows tools write UTF-16LE (with a BOM) as often as UTF-8.
pub fn decode_text(bytes: &[u8]) -> String {
    if let Some(rest) = bytes.strip_prefix(&[0xff, 0xfe]) {
        let units: Vec<u16> = rest
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf16_diagnostics_are_read() {
        let bytes: Vec<u8> = [0xff, 0xfe]
            .into_iter()
            .chain("NotComputed".encode_utf16().flat_map(|u| u.to_le_bytes()))
            .collect();
        assert_eq!(decode_text(&bytes), "NotComputed");
    }
}
