//! The CH9329 keyboard against a PTY whose other end the test reads: frames are checked
//! byte for byte and answered with acknowledgements, errors, noise or silence.

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;

use aplab::device::keyboard::ch9329::Ch9329Keyboard;
use aplab::device::{FailureClass, KeyPress, Keyboard};
use serialport::{SerialPort, TTYPort};

const FRAME_LEN: usize = 14;
/// `57 AB 00 82 01 00 85`: keyboard command done, status success.
const ACK: [u8; 7] = [0x57, 0xAB, 0x00, 0x82, 0x01, 0x00, 0x85];
/// Release: all zeros, checksum 0x57+0xAB+0x02+0x08 = 0x0C.
const RELEASE: [u8; FRAME_LEN] = [0x57, 0xAB, 0x00, 0x02, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0x0C];

/// The chip's side: reads frames, records them, answers with `answer(frame_index)`.
fn chip(
    answer: impl Fn(usize) -> Option<Vec<u8>> + Send + 'static,
) -> (Ch9329Keyboard, mpsc::Receiver<Vec<u8>>, TTYPort) {
    let (mut master, slave) = TTYPort::pair().expect("a PTY pair");
    let path = slave.name().expect("the PTY has a name");
    master.set_timeout(Duration::from_secs(30)).unwrap();
    let (frames, received) = mpsc::channel();
    std::thread::spawn(move || {
        for i in 0.. {
            let mut frame = [0u8; FRAME_LEN];
            if master.read_exact(&mut frame).is_err() || frames.send(frame.to_vec()).is_err() {
                return;
            }
            if let Some(reply) = answer(i)
                && master.write_all(&reply).is_err()
            {
                return;
            }
        }
    });
    let keyboard = Ch9329Keyboard::new(path, 9600, 0).with_ack_timeout(Duration::from_secs(5));
    (keyboard, received, slave)
}

fn press(key: &str, modifiers: &[&str], times: u32) -> KeyPress {
    KeyPress {
        key: key.into(),
        modifiers: modifiers.iter().map(|m| m.to_string()).collect(),
        times,
    }
}

fn frames(rx: &mpsc::Receiver<Vec<u8>>, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| rx.recv_timeout(Duration::from_secs(30)).expect("a frame"))
        .collect()
}

#[tokio::test]
async fn key_presses_are_exact_acknowledged_frames() {
    let (keyboard, rx, _slave) = chip(|_| Some(ACK.to_vec()));
    keyboard
        .press(&press("F10", &["ShiftLeft"], 2))
        .await
        .unwrap();
    // Shift (0x02) + F10 (0x43): sum 0x57+0xAB+0x02+0x08+0x02+0x43 = 0x51.
    let shift_f10 = vec![
        0x57, 0xAB, 0x00, 0x02, 0x08, 0x02, 0x00, 0x43, 0, 0, 0, 0, 0, 0x51,
    ];
    assert_eq!(
        frames(&rx, 4),
        vec![
            shift_f10.clone(),
            RELEASE.to_vec(),
            shift_f10,
            RELEASE.to_vec()
        ]
    );
    // The Windows key alone is a modifier bit (Left GUI = 0x08) with no key code.
    keyboard.press(&press("MetaLeft", &[], 1)).await.unwrap();
    let meta = vec![
        0x57, 0xAB, 0x00, 0x02, 0x08, 0x08, 0x00, 0x00, 0, 0, 0, 0, 0, 0x14,
    ];
    assert_eq!(frames(&rx, 2), vec![meta, RELEASE.to_vec()]);
}

#[tokio::test]
async fn text_is_typed_key_by_key() {
    let (keyboard, rx, _slave) = chip(|_| Some(ACK.to_vec()));
    keyboard.type_text("Hi\n").await.unwrap();
    let got: Vec<(u8, u8)> = frames(&rx, 6)
        .iter()
        .step_by(2)
        .map(|f| (f[5], f[7]))
        .collect();
    assert_eq!(got, [(0x02, 0x0B), (0x00, 0x0C), (0x00, 0x28)]);
}

#[tokio::test]
async fn noise_before_an_acknowledgement_is_skipped() {
    let (keyboard, rx, _slave) = chip(|_| {
        let mut reply = vec![0x00, 0x57, 0x13, 0x57];
        reply.extend(ACK);
        Some(reply)
    });
    keyboard.press(&press("Enter", &[], 1)).await.unwrap();
    // The noise ends in 0x57 (a header's first byte): the parser must slide past it.
    assert_eq!(frames(&rx, 2)[1], RELEASE.to_vec());
}

#[tokio::test]
async fn an_error_status_is_surfaced_with_its_code() {
    // 57 AB 00 C2 01 E4 A9: keyboard command refused, checksum error.
    let (keyboard, _rx, _slave) = chip(|_| Some(vec![0x57, 0xAB, 0x00, 0xC2, 0x01, 0xE4, 0xA9]));
    let err = keyboard.press(&press("Enter", &[], 1)).await.unwrap_err();
    assert_eq!(err.class, FailureClass::Infrastructure);
    assert_eq!(err.code.as_deref(), Some("0xE4"));
    assert!(err.message.contains("checksum"), "{}", err.message);
}

#[tokio::test]
async fn silence_is_an_infrastructure_failure_naming_the_cable() {
    let (keyboard, rx, _slave) = chip(|_| None);
    let keyboard = keyboard.with_ack_timeout(Duration::from_millis(200));
    let err = keyboard.press(&press("Tab", &[], 1)).await.unwrap_err();
    assert_eq!(err.class, FailureClass::Infrastructure);
    assert!(
        err.message.contains("did not acknowledge"),
        "{}",
        err.message
    );
    assert!(err.hint.unwrap().contains("check the CH9329 cable/baud"));
    assert_eq!(frames(&rx, 1)[0][7], 0x2B);
}

#[tokio::test]
async fn a_missing_chip_is_an_infrastructure_failure() {
    let keyboard = Ch9329Keyboard::new("/dev/aplab-no-such-ch9329", 9600, 0);
    let err = keyboard.press(&press("Tab", &[], 1)).await.unwrap_err();
    assert_eq!(err.class, FailureClass::Infrastructure);
    assert!(err.hint.unwrap().contains("check the CH9329 cable/baud"));
    let err = keyboard
        .press(&press("NoSuchKey", &[], 1))
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::Config);
}
