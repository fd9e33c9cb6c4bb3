//! The CH9329 serial-to-USB-HID chip on a PTY. Frames, as in WCH's protocol document:
//! `57 AB | addr | cmd | len | data[len] | sum` (sum = all previous bytes mod 256).
//! Replies: `57 AB | addr | cmd|0x80 | len | data | sum` on success, `cmd|0xC0` with a
//! one-byte status on error (0xE3 unknown command, 0xE4 checksum mismatch, 0xE5 bad
//! parameter). A frame for another address is ignored, as on a shared bus.
//!
//! Keyboard reports (cmd 0x02, `[modifiers, 0, k1..k6]`) are turned into key presses
//! by comparing with the previous report: a key or modifier that appears is a press.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::device::Device;
use super::keys::{self, Key, modifier};
use super::pty::Pty;

pub const CMD_GET_INFO: u8 = 0x01;
pub const CMD_SEND_KB_GENERAL: u8 = 0x02;
pub const CMD_SEND_KB_MEDIA: u8 = 0x03;
pub const CMD_SEND_MS_ABS: u8 = 0x04;
pub const CMD_SEND_MS_REL: u8 = 0x05;

pub const STATUS_OK: u8 = 0x00;
pub const STATUS_ERR_CMD: u8 = 0xE3;
pub const STATUS_ERR_SUM: u8 = 0xE4;
pub const STATUS_ERR_PARA: u8 = 0xE5;

/// Builds a frame with its checksum (used for replies; tests build requests the same way).
pub fn frame(address: u8, cmd: u8, data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x57, 0xAB, address, cmd, data.len() as u8];
    out.extend_from_slice(data);
    let sum = out.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    out.push(sum);
    out
}

/// One received frame, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub address: u8,
    pub cmd: u8,
    pub data: Vec<u8>,
    pub sum_ok: bool,
}

/// Reassembles frames from a byte stream; garbage before a header is skipped.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
}

impl Parser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Frame> {
        self.buf.extend_from_slice(bytes);
        let mut frames = Vec::new();
        loop {
            // Resynchronise on the 57 AB header.
            match self.buf.windows(2).position(|w| w == [0x57, 0xAB]) {
                Some(0) => {}
                Some(at) => {
                    self.buf.drain(..at);
                }
                None => {
                    let keep = usize::from(self.buf.last() == Some(&0x57));
                    let drop = self.buf.len() - keep;
                    self.buf.drain(..drop);
                    return frames;
                }
            }
            if self.buf.len() < 5 {
                return frames;
            }
            let len = self.buf[4] as usize;
            let total = 5 + len + 1;
            if self.buf.len() < total {
                return frames;
            }
            let sum = self.buf[..total - 1]
                .iter()
                .fold(0u8, |acc, b| acc.wrapping_add(*b));
            frames.push(Frame {
                address: self.buf[2],
                cmd: self.buf[3],
                data: self.buf[5..5 + len].to_vec(),
                sum_ok: sum == self.buf[total - 1],
            });
            self.buf.drain(..total);
        }
    }
}

/// The chip's memory of the last keyboard report.
#[derive(Debug, Default)]
pub struct Keyboard {
    modifiers: u8,
    keys: [u8; 6],
}

impl Keyboard {
    /// Applies a keyboard report; returns the presses it contains.
    pub fn report(&mut self, report: &[u8]) -> Vec<Key> {
        let mut presses = Vec::new();
        let mods = report[0];
        let new_mods = mods & !self.modifiers;
        if new_mods & modifier::GUI != 0 {
            presses.push(Key::Windows);
        }
        for &usage in &report[2..8] {
            if usage != 0 && !self.keys.contains(&usage) {
                presses.push(keys::from_hid(usage, mods));
            }
        }
        self.modifiers = mods;
        self.keys.copy_from_slice(&report[2..8]);
        presses
    }
}

/// Answers one frame: the reply bytes (if any) and the key presses it carried.
pub fn answer(
    address: u8,
    powered: bool,
    kb: &mut Keyboard,
    f: &Frame,
) -> (Option<Vec<u8>>, Vec<Key>) {
    if f.address != address && f.address != 0xFF {
        return (None, Vec::new());
    }
    let error = |status: u8| Some(frame(address, f.cmd | 0xC0, &[status]));
    if !f.sum_ok {
        return (error(STATUS_ERR_SUM), Vec::new());
    }
    match f.cmd {
        CMD_GET_INFO => {
            // Version 1.0, USB enumerated when the PC is powered, no lock LEDs.
            let info = [0x30, u8::from(powered), 0, 0, 0, 0, 0, 0];
            (Some(frame(address, f.cmd | 0x80, &info)), Vec::new())
        }
        CMD_SEND_KB_GENERAL => {
            if f.data.len() != 8 {
                return (error(STATUS_ERR_PARA), Vec::new());
            }
            let presses = kb.report(&f.data);
            (Some(frame(address, f.cmd | 0x80, &[STATUS_OK])), presses)
        }
        CMD_SEND_KB_MEDIA | CMD_SEND_MS_ABS | CMD_SEND_MS_REL => {
            (Some(frame(address, f.cmd | 0x80, &[STATUS_OK])), Vec::new())
        }
        _ => (error(STATUS_ERR_CMD), Vec::new()),
    }
}

/// Serves the chip on a PTY until `stop` fires.
pub async fn serve(device: Arc<Device>, pty: Pty, address: u8, mut stop: watch::Receiver<bool>) {
    let mut parser = Parser::default();
    let mut kb = Keyboard::default();
    let mut buf = [0u8; 256];
    loop {
        let n = tokio::select! {
            read = pty.read(&mut buf) => match read {
                Ok(n) => n,
                Err(_) => break,
            },
            _ = stop.changed() => break,
        };
        for f in parser.push(&buf[..n]) {
            let (reply, presses) = answer(address, device.powered(), &mut kb, &f);
            for key in presses {
                device.press(key);
            }
            if let Some(reply) = reply {
                let _ = pty.write(&reply, Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_reassembled_and_checked() {
        let mut p = Parser::default();
        let good = frame(0, CMD_SEND_KB_GENERAL, &[0x08, 0, 0, 0, 0, 0, 0, 0]);
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 1;
        let mut stream = vec![0x00, 0x13];
        stream.extend_from_slice(&good[..4]);
        assert!(p.push(&stream).is_empty());
        let mut rest = good[4..].to_vec();
        rest.extend_from_slice(&bad);
        let frames = p.push(&rest);
        assert_eq!(frames.len(), 2);
        assert!(frames[0].sum_ok);
        assert!(!frames[1].sum_ok);
    }

    #[test]
    fn replies_follow_the_datasheet() {
        let mut kb = Keyboard::default();
        let ok = Frame {
            address: 0,
            cmd: 0x02,
            data: vec![0x08, 0, 0, 0, 0, 0, 0, 0],
            sum_ok: true,
        };
        let (reply, keys) = answer(0, true, &mut kb, &ok);
        assert_eq!(
            reply.unwrap(),
            vec![0x57, 0xAB, 0x00, 0x82, 0x01, 0x00, 0x85]
        );
        assert_eq!(keys, vec![Key::Windows]);
        let bad = Frame {
            sum_ok: false,
            ..ok.clone()
        };
        let (reply, keys) = answer(0, true, &mut kb, &bad);
        assert_eq!(reply.unwrap(), frame(0, 0xC2, &[STATUS_ERR_SUM]));
        assert!(keys.is_empty());
        let other = Frame { address: 3, ..ok };
        assert_eq!(answer(0, true, &mut kb, &other).0, None);
    }
}
