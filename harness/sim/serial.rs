//! The serial console: the device's console lines on a PTY (a USB serial adapter) and/or
//! a raw TCP port (ser2net's `tcp` accepter). Input typed on the console is read and
//! discarded (a lab image's agent only prints). While the `SerialDrop` fault holds the
//! link down, lines are lost and TCP connections are closed and refused, as when
//! ser2net loses its adapter.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use super::device::Device;
use super::pty::Pty;

/// Serves the console on a PTY until `stop` fires.
pub async fn serve_pty(device: Arc<Device>, pty: Pty, mut stop: watch::Receiver<bool>) {
    let mut lines = device.console();
    let mut input = [0u8; 256];
    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Ok(line) => {
                    if pty.write(line.as_bytes(), Duration::from_millis(100)).await.is_err() {
                        break;
                    }
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => break,
            },
            read = pty.read(&mut input) => if read.is_err() { break },
            _ = stop.changed() => break,
        }
    }
}

/// Serves the console on raw TCP until `stop` fires.
pub async fn serve_tcp(
    device: Arc<Device>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                if !device.serial_up() {
                    // The adapter is gone: ser2net accepts and hangs up at once.
                    drop(stream);
                    continue;
                }
                let device = Arc::clone(&device);
                let stop = stop.clone();
                tokio::spawn(serve_client(device, stream, stop));
            }
            _ = stop.changed() => break,
        }
    }
}

async fn serve_client(device: Arc<Device>, mut stream: TcpStream, mut stop: watch::Receiver<bool>) {
    let mut lines = device.console();
    // Only while a client is connected: notice the link dropping within a quarter second.
    let mut link_check = tokio::time::interval(Duration::from_millis(250));
    let (mut reader, mut writer) = stream.split();
    let mut sink = tokio::io::sink();
    let discard = tokio::io::copy(&mut reader, &mut sink);
    tokio::pin!(discard);
    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Ok(line) => {
                    if writer.write_all(line.as_bytes()).await.is_err() {
                        break;
                    }
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => break,
            },
            _ = link_check.tick() => if !device.serial_up() { break },
            _ = &mut discard => break,
            _ = stop.changed() => break,
        }
    }
}
