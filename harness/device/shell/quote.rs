//! Turning a program and its arguments into one command line for the remote shell.
//!
//! SSH carries a single string that the device's login shell parses, so every piece a
//! scenario can influence is wrapped in the shell's single quotes, inside which nothing
//! is special except the quote itself. That is what makes `; rm -rf /`, `$(id)` or a
//! newline in a scenario variable arrive as one literal argument.

use crate::device::{DeviceError, DeviceResult};
use crate::model::inventory::ShellFlavor;

/// The command line that runs `program` with `args` under the given shell.
///
/// Refuses NUL bytes (no shell can carry them, and a C string on the far side would
/// silently cut the argument short) and an empty program name.
pub fn command_line(flavor: ShellFlavor, program: &str, args: &[String]) -> DeviceResult<String> {
    if program.is_empty() {
        return Err(DeviceError::config(
            "shell command has an empty program name",
        ));
    }
    for (index, word) in std::iter::once(program)
        .chain(args.iter().map(String::as_str))
        .enumerate()
    {
        if word.contains('\0') {
            let what = if index == 0 {
                "the program name".to_string()
            } else {
                format!("argument {index}")
            };
            return Err(DeviceError::config(format!(
                "{what} of `{}` contains a NUL byte, which no remote shell can carry",
                program.replace('\0', "\\0")
            ))
            .with_hint("check the scenario variable that fills this argument"));
        }
    }
    if flavor == ShellFlavor::Powershell {
        for (index, arg) in args.iter().enumerate() {
            if let Some(why) = powershell_native_hazard(arg) {
                return Err(DeviceError::config(format!(
                    "argument {} of `{program}` {why}; Windows PowerShell would pass it to a \
                     native program as a different number of arguments",
                    index + 1
                ))
                .with_hint("check the scenario variable that fills this argument"));
            }
        }
    }
    let quote = match flavor {
        ShellFlavor::Posix => posix_quote,
        ShellFlavor::Powershell => powershell_quote,
    };
    let mut line = String::new();
    if flavor == ShellFlavor::Powershell {
        // A quoted first word is a string to PowerShell, not a command; the call
        // operator makes it run.
        line.push_str("& ");
    }
    line.push_str(&quote(program));
    for arg in args {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    Ok(line)
}

/// POSIX sh single quotes: everything is literal up to the next `'`; a quote inside
/// the word closes the string, adds an escaped quote and reopens it (`'\''`).
pub fn posix_quote(word: &str) -> String {
    let mut out = String::with_capacity(word.len() + 2);
    out.push('\'');
    for c in word.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// The characters PowerShell accepts as a single quote: the ASCII one and the
/// typographic ones (U+2018..U+201B). Any of them ends a single-quoted string, so each
/// must be doubled, or `‘; Remove-Item ...` would break out.
const POWERSHELL_SINGLE_QUOTES: [char; 5] = ['\'', '\u{2018}', '\u{2019}', '\u{201A}', '\u{201B}'];

/// PowerShell verbatim (single-quoted) string: no `$` expansion, no backtick escapes;
/// a quote character inside is written twice.
pub fn powershell_quote(word: &str) -> String {
    let mut out = String::with_capacity(word.len() + 2);
    out.push('\'');
    for c in word.chars() {
        if POWERSHELL_SINGLE_QUOTES.contains(&c) {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Windows PowerShell 5.1 rebuilds a Win32 command line when it calls a native program
/// (`& 'icacls.exe' ...`) and does not escape what it puts there: an embedded `"`, or a
/// trailing `\` in an argument it wraps in quotes, shifts the argument boundaries the
/// program sees, and an empty argument is dropped. The quoting above cannot prevent
/// that (it happens after PowerShell has parsed the line correctly), and we cannot tell
/// a cmdlet from a native program, so such arguments are refused.
fn powershell_native_hazard(arg: &str) -> Option<&'static str> {
    if arg.is_empty() {
        Some("is empty")
    } else if arg.contains('"') {
        Some("contains a double quote")
    } else if arg.ends_with('\\') && arg.contains(char::is_whitespace) {
        Some("contains a space and ends with a backslash")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::scenario::FailureClass;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn posix_words_are_single_quoted() {
        let line = command_line(ShellFlavor::Posix, "echo", &args(&["a b", "$(id)"])).unwrap();
        assert_eq!(line, "'echo' 'a b' '$(id)'");
    }

    #[test]
    fn posix_quote_inside_word_is_closed_escaped_and_reopened() {
        assert_eq!(posix_quote("it's"), "'it'\\''s'");
        assert_eq!(posix_quote("'"), "''\\'''");
        assert_eq!(posix_quote(""), "''");
    }

    #[test]
    fn powershell_uses_call_operator_and_doubles_quotes() {
        let line = command_line(
            ShellFlavor::Powershell,
            "Get-Tpm",
            &args(&["it's", "$env:PATH", "`n"]),
        )
        .unwrap();
        assert_eq!(line, "& 'Get-Tpm' 'it''s' '$env:PATH' '`n'");
    }

    #[test]
    fn powershell_doubles_typographic_quotes() {
        assert_eq!(
            powershell_quote("a\u{2019}; Remove-Item C:\\ -Recurse"),
            "'a\u{2019}\u{2019}; Remove-Item C:\\ -Recurse'"
        );
        assert_eq!(
            powershell_quote("\u{2018}\u{201A}\u{201B}"),
            "'\u{2018}\u{2018}\u{201A}\u{201A}\u{201B}\u{201B}'"
        );
    }

    /// Reads a PowerShell single-quoted string back the way PowerShell's tokenizer does,
    /// so the tests check the property (one literal word) rather than one spelling.
    fn powershell_unquote(quoted: &str) -> Option<(String, &str)> {
        let mut chars = quoted.char_indices().peekable();
        let (_, first) = chars.next()?;
        if !POWERSHELL_SINGLE_QUOTES.contains(&first) {
            return None;
        }
        let mut word = String::new();
        while let Some((i, c)) = chars.next() {
            if POWERSHELL_SINGLE_QUOTES.contains(&c) {
                match chars.peek() {
                    Some((_, next)) if POWERSHELL_SINGLE_QUOTES.contains(next) => {
                        word.push(c);
                        chars.next();
                    }
                    _ => return Some((word, &quoted[i + c.len_utf8()..])),
                }
            } else {
                word.push(c);
            }
        }
        None
    }

    #[test]
    fn powershell_quoting_round_trips_hostile_words_as_one_word() {
        let hostile = [
            "; Remove-Item -Recurse C:\\",
            "'; Stop-Computer; '",
            "\u{2019}; Stop-Computer; \u{2018}",
            "$(Stop-Computer)",
            "`$x`n",
            "a\nb\r\nc",
            "\"double\"",
            "| Out-File x",
            "",
        ];
        for word in hostile {
            let quoted = powershell_quote(word);
            let (back, rest) = powershell_unquote(&quoted).expect("a closed string");
            assert_eq!(back, word);
            assert_eq!(rest, "", "nothing may follow the closing quote of {word:?}");
        }
    }

    #[test]
    fn nul_is_refused_as_config_error() {
        let err = command_line(ShellFlavor::Posix, "echo", &args(&["a\0b"])).unwrap_err();
        assert_eq!(err.class, FailureClass::Config);
        assert!(err.message.contains("argument 1"), "{}", err.message);
        let err = command_line(ShellFlavor::Powershell, "ec\0ho", &[]).unwrap_err();
        assert!(err.message.contains("program name"), "{}", err.message);
    }

    #[test]
    fn powershell_refuses_arguments_native_programs_would_split() {
        for arg in ["", "say \"hi\"", "C:\\Program Files\\"] {
            let err =
                command_line(ShellFlavor::Powershell, "icacls.exe", &args(&[arg])).unwrap_err();
            assert_eq!(err.class, FailureClass::Config, "{arg:?}");
            assert!(err.message.contains("argument 1"), "{}", err.message);
        }
        // Fine as they are: a trailing backslash without a space is passed unquoted.
        command_line(
            ShellFlavor::Powershell,
            "icacls.exe",
            &args(&["C:\\Logs\\", "a b"]),
        )
        .unwrap();
        // POSIX shells pass arguments to programs as they are; no such limits there.
        command_line(ShellFlavor::Posix, "printf", &args(&["", "\"", "a b\\"])).unwrap();
    }

    #[test]
    fn empty_program_is_refused() {
        let err = command_line(ShellFlavor::Posix, "", &[]).unwrap_err();
        assert_eq!(err.class, FailureClass::Config);
    }
}
