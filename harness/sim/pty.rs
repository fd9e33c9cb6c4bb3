//! A pseudo-terminal standing in for a USB serial adapter: the lab keeps the master side,
//! and the slave's name is published as a symlink (e.g. `lab-state/devices/pc01/console`)
//! that the harness opens like `/dev/ttyUSB0`. Both sides are in raw mode, so binary
//! CH9329 frames pass untouched. The master is read through tokio's `AsyncFd`: no
//! thread per port.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::termios::{FlushArg, SetArg, cfmakeraw, tcflush, tcgetattr, tcsetattr};
use tokio::io::unix::AsyncFd;

pub struct Pty {
    master: AsyncFd<OwnedFd>,
    /// Kept open so the master never sees EIO/hang-up when the harness closes its side.
    _slave: OwnedFd,
    link: PathBuf,
}

impl Pty {
    /// Opens a PTY and points `link` at its slave (replacing a stale link).
    pub fn open(link: &Path) -> io::Result<Pty> {
        let pair = nix::pty::openpty(None, None)?;
        let mut termios = tcgetattr(&pair.slave)?;
        cfmakeraw(&mut termios);
        tcsetattr(&pair.slave, SetArg::TCSANOW, &termios)?;
        fcntl(&pair.master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        let name = nix::unistd::ttyname(&pair.slave)?;
        if let Some(dir) = link.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if std::fs::symlink_metadata(link).is_ok() {
            std::fs::remove_file(link)?;
        }
        std::os::unix::fs::symlink(&name, link)?;
        // SAFETY: `OwnedFd` owns the descriptor for the AsyncFd's whole lifetime and
        // always returns the same one.
        let master = unsafe { AsyncFd::register(pair.master) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Pty {
            master,
            _slave: pair.slave,
            link: link.to_path_buf(),
        })
    }

    pub fn link(&self) -> &Path {
        &self.link
    }

    /// Reads what the harness wrote to the slave.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.master.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(io::Error::from)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes bytes towards the harness. A serial line with nobody reading loses bytes:
    /// if the PTY stays full for `patience`, the unread backlog is discarded (so a reader
    /// that opens the port later gets the newest lines, not a burst of stale ones) and the
    /// write goes on. Only if the port is still full after that are these bytes dropped.
    pub async fn write(&self, mut bytes: &[u8], patience: Duration) -> io::Result<()> {
        let mut flushed_without_progress = false;
        while !bytes.is_empty() {
            let ready = tokio::time::timeout(patience, self.master.writable()).await;
            let Ok(guard) = ready else {
                if flushed_without_progress {
                    return Ok(());
                }
                let _ = tcflush(&self._slave, FlushArg::TCIFLUSH);
                flushed_without_progress = true;
                continue;
            };
            let mut guard = guard?;
            match guard
                .try_io(|fd| nix::unistd::write(fd.get_ref(), bytes).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    bytes = &bytes[n..];
                    flushed_without_progress = false;
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        // Leave nothing behind: the link would point at a PTY that no longer exists.
        let _ = std::fs::remove_file(&self.link);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;

    #[tokio::test]
    async fn an_unread_port_drops_its_backlog_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("devices/pc01/console");
        let pty = Pty::open(&link).unwrap();
        let chunk = vec![b'x'; 1024];
        // 256 KiB with nobody reading: more than the PTY holds. Must not hang.
        for _ in 0..256 {
            pty.write(&chunk, Duration::from_millis(20)).await.unwrap();
        }
        pty.write(b"fresh\n", Duration::from_millis(20))
            .await
            .unwrap();
        let mut reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc_flags())
            .open(&link)
            .unwrap();
        // The kernel hands bytes from master to slave asynchronously, so an empty read
        // is not the end: read until the newest line is in, with a generous deadline.
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !got.ends_with(b"fresh\n") && std::time::Instant::now() < deadline {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut fds = [PollFd::new(reader.as_fd(), PollFlags::POLLIN)];
                    let _ = poll(&mut fds, PollTimeout::from(100u16));
                }
                Err(e) => panic!("read: {e}"),
            }
        }
        assert!(got.ends_with(b"fresh\n"), "the newest line arrives");
        assert!(got.len() < 256 * 1024, "stale backlog was discarded");
        drop(pty);
        assert!(std::fs::symlink_metadata(&link).is_err(), "link removed");
    }

    fn libc_flags() -> i32 {
        (OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits()
    }
}
