//! A CH9329 serial-to-USB-HID chip: every key report is a frame the chip acknowledges.
//!
//! Frame: `57 AB | address | command | length | data | sum`, where `sum` is the sum of
//! all previous bytes mod 256. The keyboard report is command 0x02 with 8 data bytes
//! `[modifiers, 0, key1..key6]`; all zeros releases every key. The chip answers with the
//! same header, `command | 0x80` (done) or `command | 0xC0` (refused), length 1, a status
//! byte and the sum. Status codes from the CH9329 protocol document: 0x00 success,
//! 0xE1 byte timeout, 0xE2 bad header, 0xE3 bad command, 0xE4 bad checksum,
//! 0xE5 bad parameter, 0xE6 operation failed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{KeyStroke, stroke, text_strokes};
use crate::device::console::serial::{self, SerialStream};
use crate::device::{DeviceError, DeviceResult, Keyboard};
use crate::model::scenario::KeyPress;

pub const HEADER: [u8; 2] = [0x57, 0xAB];
pub const CMD_KEYBOARD: u8 = 0x02;

/// A frame to the chip, checksum included.
pub fn frame(address: u8, command: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + data.len());
    out.extend(HEADER);
    out.extend([address, command, data.len() as u8]);
    out.extend_from_slice(data);
    out.push(checksum(&out));
    out
}

pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b))
}

/// The keyboard report frame for a stroke (a zero stroke releases all keys).
pub fn key_frame(address: u8, key: KeyStroke) -> Vec<u8> {
    frame(
        address,
        CMD_KEYBOARD,
        &[key.modifiers, 0, key.usage, 0, 0, 0, 0, 0],
    )
}

/// What a CH9329 status byte means.
pub fn status_meaning(status: u8) -> &'static str {
    match status {
        0x00 => "success",
        0xE1 => "the chip timed out receiving a byte",
        0xE2 => "the chip saw a bad frame header",
        0xE3 => "the chip does not know the command",
        0xE4 => "the checksum did not match",
        0xE5 => "a parameter was out of range",
        0xE6 => "the operation failed",
        _ => "an unknown status",
    }
}

/// A CH9329 on a serial port; opened on first use and reopened after a failure.
pub struct Ch9329Keyboard {
    device: PathBuf,
    baud: u32,
    address: u8,
    ack_timeout: Duration,
    port: tokio::sync::Mutex<Option<SerialStream>>,
}

const RELEASE: KeyStroke = KeyStroke {
    modifiers: 0,
    usage: 0,
};

impl Ch9329Keyboard {
    pub fn new(device: impl Into<PathBuf>, baud: u32, address: u8) -> Self {
        Ch9329Keyboard {
            device: device.into(),
            baud,
            address,
            ack_timeout: Duration::from_millis(500),
            port: tokio::sync::Mutex::new(None),
        }
    }

    /// How long to wait for the chip's acknowledgement of one frame.
    pub fn with_ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    fn hint(&self) -> String {
        format!(
            "check the CH9329 cable/baud ({} at {} baud, address {:#04x})",
            self.device.display(),
            self.baud,
            self.address
        )
    }

    /// Sends one report and waits for its acknowledgement.
    async fn report(&self, key: KeyStroke) -> DeviceResult<()> {
        let mut port = self.port.lock().await;
        if port.is_none() {
            *port = Some(open(&self.device, self.baud).map_err(|e| {
                DeviceError::infrastructure(format!(
                    "cannot open the CH9329 on {}: {e}",
                    self.device.display()
                ))
                .with_hint(self.hint())
            })?);
        }
        let Some(stream) = port.as_mut() else {
            return Err(DeviceError::harness("CH9329 port vanished"));
        };
        let result = self.exchange(stream, &key_frame(self.address, key)).await;
        if result.is_err() {
            // Start from a clean port next time: a late reply must not answer a new frame.
            *port = None;
        }
        result
    }

    async fn exchange(&self, stream: &mut SerialStream, frame: &[u8]) -> DeviceResult<()> {
        let command = frame[3];
        let io = |e: std::io::Error| {
            DeviceError::infrastructure(format!("CH9329 on {} failed: {e}", self.device.display()))
                .with_hint(self.hint())
        };
        stream.write_all(frame).await.map_err(io)?;
        let reply = tokio::time::timeout(self.ack_timeout, read_reply(stream))
            .await
            .map_err(|_| {
                DeviceError::infrastructure(format!(
                    "the CH9329 on {} did not acknowledge a key report within {:?}",
                    self.device.display(),
                    self.ack_timeout
                ))
                .with_hint(self.hint())
            })?
            .map_err(io)?;
        let status = reply.data.first().copied().unwrap_or(0xFF);
        if reply.address != self.address {
            return Err(DeviceError::infrastructure(format!(
                "a CH9329 at address {:#04x} answered, expected {:#04x}",
                reply.address, self.address
            ))
            .with_hint(self.hint()));
        }
        if reply.command == command | 0x80 && status == 0 {
            return Ok(());
        }
        let code = format!("{status:#04X}");
        Err(DeviceError::infrastructure(format!(
            "the CH9329 refused a key report: {} ({code})",
            status_meaning(status)
        ))
        .with_code(code)
        .with_hint(self.hint()))
    }
}

fn open(device: &Path, baud: u32) -> std::io::Result<SerialStream> {
    let stream = serial::open(device, baud)?;
    // Drop whatever is waiting from before (a late reply, line noise).
    nix::sys::termios::tcflush(&stream, nix::sys::termios::FlushArg::TCIFLUSH)?;
    Ok(stream)
}

struct Reply {
    address: u8,
    command: u8,
    data: Vec<u8>,
}

/// Reads one well-formed reply frame, skipping noise before the header and frames whose
/// checksum does not match.
async fn read_reply(stream: &mut SerialStream) -> std::io::Result<Reply> {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 64];
    loop {
        // Drop bytes that cannot start a header.
        while !buf.is_empty() && !buf.starts_with(&HEADER) && buf != [HEADER[0]] {
            buf.remove(0);
        }
        if buf.len() >= 5 {
            let len = buf[4] as usize;
            if buf.len() >= 6 + len {
                let (body, rest) = buf.split_at(5 + len);
                if checksum(body) == rest[0] {
                    return Ok(Reply {
                        address: body[2],
                        command: body[3],
                        data: body[5..].to_vec(),
                    });
                }
                buf.remove(0);
                continue;
            }
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the serial port closed",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[async_trait]
impl Keyboard for Ch9329Keyboard {
    async fn press(&self, press: &KeyPress) -> DeviceResult<()> {
        let key = stroke(press)?;
        for _ in 0..press.times {
            self.report(key).await?;
            self.report(RELEASE).await?;
        }
        Ok(())
    }

    async fn type_text(&self, text: &str) -> DeviceResult<()> {
        for key in text_strokes(text)? {
            self.report(key).await?;
            self.report(RELEASE).await?;
        }
        Ok(())
    }
}
