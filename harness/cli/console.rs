//! `aplab console DEVICE`: the engineer's terminal attached to a device's console.
//!
//! On a terminal the session is raw (Ctrl-C goes to the device, as over ssh), and it
//! ends with `~.` typed at the start of a line or with `Ctrl-]` (as ssh and telnet).
//! When stdin is not a terminal (a script, a pipe) it is copied to the device until it
//! ends, and the session ends with it.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::exit;
use crate::device::console::{ConsoleLink, serial::SerialLink, tcp};
use crate::model::inventory::ConsoleConn;

/// `Ctrl-]`, telnet's escape character.
const CTRL_BRACKET: u8 = 0x1d;

/// The longest one write to the device may take before the link counts as stuck.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn attach(id: &str, conn: &ConsoleConn, log: Option<PathBuf>) -> u8 {
    let link = link(conn);
    let stream = match link.connect().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "error: cannot open the console of {id} ({}): {e}",
                link.describe()
            );
            eprintln!("  hint: {}", link.hint());
            return exit::INFRASTRUCTURE;
        }
    };
    let mut log = match log.map(|p| open_log(&p).map_err(|e| (p, e))).transpose() {
        Ok(log) => log,
        Err((path, e)) => {
            eprintln!("error: cannot open the log file {}: {e}", path.display());
            return exit::BAD_INPUT;
        }
    };
    let tty = std::io::stdin().is_terminal();
    let _raw = if tty {
        match RawTerminal::enter() {
            Ok(raw) => Some(raw),
            Err(e) => {
                eprintln!("error: cannot put the terminal in raw mode: {e}");
                return exit::INFRASTRUCTURE;
            }
        }
    } else {
        None
    };
    if tty {
        // `\r\n`: the terminal is raw now.
        eprint!(
            "attached to {id} ({}); detach with Enter ~ . or Ctrl-]\r\n",
            link.describe()
        );
    } else {
        eprintln!(
            "attached to {id} ({}); stdin goes to the device until it ends",
            link.describe()
        );
    }

    let input = stdin_chunks();
    let (mut from_device, mut to_device) = tokio::io::split(stream);
    let mut escape = Escape::default();
    let mut buf = vec![0u8; 4096];
    let mut input = input;
    loop {
        tokio::select! {
            chunk = input.recv() => {
                let Some(chunk) = chunk else {
                    // stdin ended (a pipe) or could not be read: the session is over.
                    return exit::PASSED;
                };
                let (bytes, detach) = if tty {
                    escape.filter(&chunk)
                } else {
                    (chunk, false)
                };
                if !bytes.is_empty() {
                    let sent = tokio::time::timeout(SEND_TIMEOUT, async {
                        to_device.write_all(&bytes).await?;
                        to_device.flush().await
                    })
                    .await;
                    if !matches!(sent, Ok(Ok(()))) {
                        eprint!("\r\nerror: the console of {id} stopped accepting input\r\n");
                        eprint!("  hint: {}\r\n", link.hint());
                        return exit::INFRASTRUCTURE;
                    }
                }
                if detach {
                    eprint!("\r\ndetached from {id}\r\n");
                    return exit::PASSED;
                }
            }
            read = from_device.read(&mut buf) => {
                let n = match read {
                    Ok(0) => {
                        eprint!("\r\nthe console of {id} closed ({})\r\n", link.describe());
                        return exit::INFRASTRUCTURE;
                    }
                    Ok(n) => n,
                    Err(e) => {
                        eprint!("\r\nerror: reading the console of {id}: {e}\r\n");
                        eprint!("  hint: {}\r\n", link.hint());
                        return exit::INFRASTRUCTURE;
                    }
                };
                let mut out = std::io::stdout().lock();
                if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                    // Whoever read our output went away (a closed pipe): nothing to show to.
                    return exit::PASSED;
                }
                if let Some(file) = &mut log
                    && let Err(e) = file.write_all(&buf[..n])
                {
                    eprint!("\r\nerror: writing the console log: {e}\r\n");
                    return exit::INFRASTRUCTURE;
                }
            }
        }
    }
}

/// The same link the engine's console reader uses for this inventory entry.
fn link(conn: &ConsoleConn) -> Box<dyn ConsoleLink> {
    match conn {
        ConsoleConn::Serial { device, baud } => Box::new(SerialLink::new(device, *baud)),
        ConsoleConn::Tcp { host, port } => Box::new(tcp::TcpLink::new(host, *port)),
        ConsoleConn::Rfc2217 { host, port, baud } => {
            Box::new(tcp::TelnetLink::new(host, *port, *baud))
        }
    }
}

fn open_log(path: &std::path::Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// stdin as a stream of chunks. A plain thread reads it: reading a terminal blocks, and
/// a blocking read must not sit inside the select loop.
fn stdin_chunks() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// The detach sequences in what the engineer types: `~.` at the start of a line,
/// `Ctrl-]` anywhere, `~~` for a literal `~` at the start of a line.
#[derive(Debug)]
struct Escape {
    at_line_start: bool,
    tilde_pending: bool,
}

impl Default for Escape {
    fn default() -> Self {
        Escape {
            at_line_start: true,
            tilde_pending: false,
        }
    }
}

impl Escape {
    /// The bytes to send, and whether to detach after sending them.
    fn filter(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if b == CTRL_BRACKET {
                return (out, true);
            }
            if self.tilde_pending {
                self.tilde_pending = false;
                match b {
                    b'.' => return (out, true),
                    b'~' => {
                        out.push(b'~');
                        self.at_line_start = false;
                        continue;
                    }
                    _ => out.push(b'~'),
                }
            } else if self.at_line_start && b == b'~' {
                self.tilde_pending = true;
                continue;
            }
            out.push(b);
            self.at_line_start = b == b'\r' || b == b'\n';
        }
        (out, false)
    }
}

/// The terminal in raw mode until dropped, when its settings are restored.
struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    fn enter() -> nix::Result<RawTerminal> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw)?;
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        use nix::sys::termios::{SetArg, tcsetattr};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilde_dot_at_line_start_detaches() {
        let mut e = Escape::default();
        assert_eq!(e.filter(b"dir\r~."), (b"dir\r".to_vec(), true));
        let mut e = Escape::default();
        assert_eq!(e.filter(b"~."), (Vec::new(), true));
    }

    #[test]
    fn tilde_elsewhere_is_sent() {
        let mut e = Escape::default();
        assert_eq!(e.filter(b"a~.b"), (b"a~.b".to_vec(), false));
        let mut e = Escape::default();
        assert_eq!(e.filter(b"~x"), (b"~x".to_vec(), false));
        let mut e = Escape::default();
        assert_eq!(e.filter(b"~~."), (b"~.".to_vec(), false));
    }

    #[test]
    fn sequence_split_across_reads() {
        let mut e = Escape::default();
        assert_eq!(e.filter(b"ls\n~"), (b"ls\n".to_vec(), false));
        assert_eq!(e.filter(b"."), (Vec::new(), true));
    }

    #[test]
    fn ctrl_bracket_detaches_anywhere() {
        let mut e = Escape::default();
        assert_eq!(e.filter(b"abc\x1ddef"), (b"abc".to_vec(), true));
    }
}
