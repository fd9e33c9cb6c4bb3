//! Console text as reports show it: excerpts around a failure, made safe for XML and HTML.
//!
//! A console log holds whatever the device sent: ANSI colour codes, NUL and BEL bytes,
//! bytes that are not UTF-8, and characters XML 1.0 forbids (U+FFFE, U+FFFF). quick-junit
//! strips C0 control characters but passes the last two through, which breaks every XML
//! parser, so console text is cleaned here before it goes anywhere.
//!
//! Logs written by aplab's console reader prefix each line with its UTC arrival time
//! (`2026-11-26T03:41:12.345Z | text`); excerpts use it to cut the log at the moment a
//! step failed. A log without timestamps is excerpted from its end.

use std::path::Path;

/// How much of a console log is read for signature matching (the tail).
pub const MATCH_WINDOW_BYTES: u64 = 2 * 1024 * 1024;

/// Makes device text safe for XML 1.0 and HTML: invalid UTF-8 becomes U+FFFD, ANSI
/// escape sequences are dropped, other control characters and the noncharacters XML
/// forbids are shown as `\xNN` / `\u{FFFE}` so nothing is silently lost.
pub fn clean(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' | '\t' => out.push(c),
            '\r' => {
                // A CRLF line end is just a line end; a lone CR is shown.
                if chars.peek() != Some(&'\n') {
                    out.push_str("\\r");
                }
            }
            '\u{1b}' => skip_escape_sequence(&mut chars),
            c if (c as u32) < 0x20 || (0x7f..=0x9f).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            '\u{fffe}' | '\u{ffff}' => out.push_str(&format!("\\u{{{:X}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Drops an ANSI escape sequence whose ESC was just read (CSI `ESC [ ... final`, OSC
/// `ESC ] ... BEL`, or a two-character escape).
fn skip_escape_sequence(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    match chars.peek() {
        Some('[') => {
            chars.next();
            for c in chars.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    break;
                }
            }
        }
        Some(']') => {
            chars.next();
            for c in chars.by_ref() {
                if c == '\u{7}' {
                    break;
                }
            }
        }
        Some(c) if !c.is_control() => {
            chars.next();
        }
        _ => {}
    }
}

/// Reads at most the last `max` bytes of a file (console logs can be large).
pub fn read_tail(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len > max {
        file.seek(SeekFrom::Start(len - max))?;
    }
    let mut buf = Vec::with_capacity(len.min(max) as usize);
    file.take(max).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The UTC time a log line starts with (`2026-11-26T03:41:12.345Z | ...`), if any.
fn line_time(line: &str) -> Option<jiff::Timestamp> {
    let (stamp, _) = line.split_once(' ')?;
    stamp.parse().ok()
}

/// The last `lines` lines of the log up to `until` (plus a few seconds, since the step
/// ends just after the line that failed it), cleaned. Without timestamps in the log, the
/// last `lines` lines.
pub fn excerpt(log: &[u8], until: Option<jiff::Timestamp>, lines: usize) -> String {
    let text = clean(log);
    let all: Vec<&str> = text.lines().collect();
    let end = match until {
        Some(until) => {
            let limit = until + jiff::SignedDuration::from_secs(5);
            let mut end = all.len();
            for (i, line) in all.iter().enumerate() {
                if let Some(t) = line_time(line)
                    && t > limit
                {
                    end = i;
                    break;
                }
            }
            end
        }
        None => all.len(),
    };
    let start = end.saturating_sub(lines);
    // The console log writes a device's CR as `\r`; at a line end it is only the
    // device's CRLF and says nothing to a reader.
    all[start..end]
        .iter()
        .map(|l| l.strip_suffix("\\r").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_what_xml_cannot_carry() {
        let raw = b"ok\x00\x07 \x1b[31mred\x1b[0m \xff\xfe bad \xef\xbf\xbe end\r\n";
        let out = clean(raw);
        assert_eq!(out, "ok\\x00\\x07 red \u{fffd}\u{fffd} bad \\u{FFFE} end\n");
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'));
    }

    #[test]
    fn excerpt_stops_at_the_failure_time() {
        let log = b"2026-11-26T03:00:00.000Z | one\n2026-11-26T03:00:10.000Z | two\n\
2026-11-26T03:05:00.000Z | after\n";
        let until: jiff::Timestamp = "2026-11-26T03:00:11Z".parse().unwrap();
        let out = excerpt(log, Some(until), 10);
        assert!(out.ends_with("| two"), "{out}");
        assert_eq!(excerpt(b"a\nb\nc\n", None, 2), "b\nc");
        // A device's CRLF, escaped in the log, is not shown at line ends.
        assert_eq!(
            excerpt(b"x | boot\\r\ny | mid\\r more\\r\n", None, 5),
            "x | boot\ny | mid\\r more"
        );
    }
}
