//! A console on a local serial device: a USB serial adapter, or a PTY.
//!
//! serialport opens and configures the port (raw mode, baud, exclusive); the file
//! descriptor is then switched to non-blocking and driven by tokio's reactor, so a port
//! needs no thread of its own. A PTY behaves the same; its baud rate is ignored.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{ConsoleLink, LinkStream};

/// A serial device path and its baud rate.
pub struct SerialLink {
    device: PathBuf,
    baud: u32,
}

impl SerialLink {
    pub fn new(device: impl Into<PathBuf>, baud: u32) -> Self {
        SerialLink {
            device: device.into(),
            baud,
        }
    }
}

#[async_trait]
impl ConsoleLink for SerialLink {
    async fn connect(&self) -> io::Result<Box<dyn LinkStream>> {
        Ok(Box::new(open(&self.device, self.baud)?))
    }
    fn describe(&self) -> String {
        format!("serial {} at {} baud", self.device.display(), self.baud)
    }
    fn hint(&self) -> String {
        format!(
            "check the USB serial adapter and its cable (is {} present and readable?)",
            self.device.display()
        )
    }
}

/// An open serial port, readable and writable through tokio.
pub struct SerialStream {
    fd: AsyncFd<File>,
}

/// Opens `device` raw at `baud` (8N1, no flow control) for async use.
/// Must be called inside a tokio runtime.
pub fn open(device: &Path, baud: u32) -> io::Result<SerialStream> {
    let port = serialport::new(device.to_string_lossy(), baud)
        .open_native()
        .map_err(io::Error::from)?;
    // What the device printed while nobody listened (a parked gap, a runner killed or
    // stopped mid-phase) waits in the port's input queue; matched now it would be taken
    // for output of the steps to come (e.g. an old "reset this PC" line). A phase reads
    // only what the device prints once it watches.
    serialport::SerialPort::clear(&port, serialport::ClearBuffer::Input)
        .map_err(io::Error::from)?;
    // SAFETY: `into_raw_fd` hands over sole ownership of an open descriptor.
    let file = unsafe { File::from_raw_fd(port.into_raw_fd()) };
    let flags = OFlag::from_bits_truncate(fcntl(&file, FcntlArg::F_GETFL)?);
    fcntl(&file, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    // SAFETY: the `File` owns the descriptor, keeps it open and never swaps it while the
    // `AsyncFd` holds it.
    let fd = unsafe { AsyncFd::register(file) }.map_err(io::Error::from)?;
    Ok(SerialStream { fd })
}

impl std::os::fd::AsFd for SerialStream {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

impl AsyncRead for SerialStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| fd.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for SerialStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| fd.get_ref().write(buf)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Writes go straight to the descriptor; nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
