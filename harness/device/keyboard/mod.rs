//! The keyboard: key names to USB HID usage codes, and text to key strokes.
//!
//! Key names are W3C `KeyboardEvent.code` names, as PiKVM uses them (`MetaLeft`,
//! `Enter`, `Tab`, `ArrowDown`, `KeyA`, `Digit1`, `F10`, `Space`, `Escape`,
//! `ShiftLeft`...). Modifiers may also be given by short names (`Shift`, `Ctrl`,
//! `Control`, `Alt`, `Meta`, `Win`), which mean the left-hand key. Text is typed as on a
//! US layout; a character the layout lacks is refused (by position only: typed text may
//! be a secret).

pub mod ch9329;
pub mod pikvm;

use super::{DeviceError, DeviceResult, Keyboard};
use crate::model::inventory::KeyboardConn;
use crate::model::scenario::KeyPress;

/// Builds the keyboard an inventory entry describes; `resolved_password` is the PiKVM
/// password its `SecretRef` resolved to.
pub fn from_inventory(
    conn: &KeyboardConn,
    resolved_password: Option<String>,
) -> DeviceResult<Box<dyn Keyboard>> {
    Ok(match conn {
        KeyboardConn::Ch9329 {
            device,
            baud,
            address,
        } => Box::new(ch9329::Ch9329Keyboard::new(device, *baud, *address)),
        KeyboardConn::Pikvm(kvm) => Box::new(pikvm::PikvmKeyboard::new(
            crate::device::pikvm::PikvmSession::from_inventory(kvm, resolved_password)?,
        )),
    })
}

/// One HID report's worth: modifier bits and one key usage (0 for none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyStroke {
    /// Bit 0x01 ControlLeft, 0x02 ShiftLeft, 0x04 AltLeft, 0x08 MetaLeft, then the right
    /// hand keys in the same order (0x10..0x80).
    pub modifiers: u8,
    /// USB HID usage on the keyboard page (0x07), or 0 for a modifier-only stroke.
    pub usage: u8,
}

/// Modifier keys: W3C name, HID modifier bit.
const MODIFIERS: [(&str, u8); 8] = [
    ("ControlLeft", 0x01),
    ("ShiftLeft", 0x02),
    ("AltLeft", 0x04),
    ("MetaLeft", 0x08),
    ("ControlRight", 0x10),
    ("ShiftRight", 0x20),
    ("AltRight", 0x40),
    ("MetaRight", 0x80),
];

/// Non-letter, non-digit keys: W3C name, HID usage (USB HID Usage Tables, page 0x07).
const KEYS: &[(&str, u8)] = &[
    ("Enter", 0x28),
    ("Escape", 0x29),
    ("Backspace", 0x2A),
    ("Tab", 0x2B),
    ("Space", 0x2C),
    ("Minus", 0x2D),
    ("Equal", 0x2E),
    ("BracketLeft", 0x2F),
    ("BracketRight", 0x30),
    ("Backslash", 0x31),
    ("Semicolon", 0x33),
    ("Quote", 0x34),
    ("Backquote", 0x35),
    ("Comma", 0x36),
    ("Period", 0x37),
    ("Slash", 0x38),
    ("CapsLock", 0x39),
    ("PrintScreen", 0x46),
    ("ScrollLock", 0x47),
    ("Pause", 0x48),
    ("Insert", 0x49),
    ("Home", 0x4A),
    ("PageUp", 0x4B),
    ("Delete", 0x4C),
    ("End", 0x4D),
    ("PageDown", 0x4E),
    ("ArrowRight", 0x4F),
    ("ArrowLeft", 0x50),
    ("ArrowDown", 0x51),
    ("ArrowUp", 0x52),
    ("NumLock", 0x53),
    ("NumpadDivide", 0x54),
    ("NumpadMultiply", 0x55),
    ("NumpadSubtract", 0x56),
    ("NumpadAdd", 0x57),
    ("NumpadEnter", 0x58),
    ("NumpadDecimal", 0x63),
    ("IntlBackslash", 0x64),
    ("ContextMenu", 0x65),
    ("Power", 0x66),
    ("NumpadEqual", 0x67),
];

/// The canonical W3C name for a modifier given by W3C or short name.
pub fn modifier_name(name: &str) -> Option<&'static str> {
    let canonical = match name {
        "Shift" => "ShiftLeft",
        "Ctrl" | "Control" => "ControlLeft",
        "Alt" => "AltLeft",
        "Meta" | "Win" | "Super" => "MetaLeft",
        other => other,
    };
    MODIFIERS
        .iter()
        .find(|(n, _)| *n == canonical)
        .map(|(n, _)| *n)
}

/// The HID modifier bit of a modifier key.
pub fn modifier_bit(name: &str) -> Option<u8> {
    let name = modifier_name(name)?;
    MODIFIERS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// The HID usage code of a non-modifier key.
pub fn usage(name: &str) -> Option<u8> {
    if let Some(letter) = name.strip_prefix("Key")
        && let [c @ b'A'..=b'Z'] = letter.as_bytes()
    {
        return Some(0x04 + (c - b'A'));
    }
    if let Some(digit) = name.strip_prefix("Digit")
        && let [c @ b'0'..=b'9'] = digit.as_bytes()
    {
        return Some(if *c == b'0' { 0x27 } else { 0x1E + (c - b'1') });
    }
    if let Some(digit) = name.strip_prefix("Numpad")
        && let [c @ b'0'..=b'9'] = digit.as_bytes()
    {
        return Some(if *c == b'0' { 0x62 } else { 0x59 + (c - b'1') });
    }
    if let Some(n) = name.strip_prefix('F').and_then(|n| n.parse::<u8>().ok()) {
        return match n {
            1..=12 => Some(0x3A + n - 1),
            13..=24 => Some(0x68 + n - 13),
            _ => None,
        };
    }
    KEYS.iter().find(|(n, _)| *n == name).map(|(_, u)| *u)
}

fn unknown_key(name: &str) -> DeviceError {
    DeviceError::config(format!("unknown key name `{name}`")).with_hint(
        "use W3C KeyboardEvent.code names such as Enter, Tab, KeyA, Digit1, F10, ArrowDown, MetaLeft",
    )
}

/// The stroke for a key press: the key (a modifier alone is allowed) with its modifiers.
pub fn stroke(press: &KeyPress) -> DeviceResult<KeyStroke> {
    let mut modifiers = 0;
    for m in &press.modifiers {
        modifiers |= modifier_bit(m).ok_or_else(|| unknown_key(m))?;
    }
    if let Some(bit) = modifier_bit(&press.key) {
        return Ok(KeyStroke {
            modifiers: modifiers | bit,
            usage: 0,
        });
    }
    let usage = usage(&press.key).ok_or_else(|| unknown_key(&press.key))?;
    Ok(KeyStroke { modifiers, usage })
}

/// The strokes that type `text` on a US layout (`\n` is Enter, `\t` is Tab).
pub fn text_strokes(text: &str) -> DeviceResult<Vec<KeyStroke>> {
    const SHIFT: u8 = 0x02;
    // Unshifted and shifted characters on the same key, US layout.
    const PAIRS: [(char, char, u8); 11] = [
        ('-', '_', 0x2D),
        ('=', '+', 0x2E),
        ('[', '{', 0x2F),
        (']', '}', 0x30),
        ('\\', '|', 0x31),
        (';', ':', 0x33),
        ('\'', '"', 0x34),
        ('`', '~', 0x35),
        (',', '<', 0x36),
        ('.', '>', 0x37),
        ('/', '?', 0x38),
    ];
    const SHIFTED_DIGITS: &str = ")!@#$%^&*(";
    text.chars()
        .enumerate()
        .map(|(i, c)| {
            let plain = |usage| KeyStroke {
                modifiers: 0,
                usage,
            };
            let shifted = |usage| KeyStroke {
                modifiers: SHIFT,
                usage,
            };
            Ok(match c {
                'a'..='z' => plain(0x04 + (c as u8 - b'a')),
                'A'..='Z' => shifted(0x04 + (c as u8 - b'A')),
                '0' => plain(0x27),
                '1'..='9' => plain(0x1E + (c as u8 - b'1')),
                ' ' => plain(0x2C),
                '\n' => plain(0x28),
                '\t' => plain(0x2B),
                c => {
                    if let Some(d) = SHIFTED_DIGITS.find(c) {
                        shifted(if d == 0 { 0x27 } else { 0x1E + d as u8 - 1 })
                    } else if let Some((_, _, u)) = PAIRS.iter().find(|(p, _, _)| *p == c) {
                        plain(*u)
                    } else if let Some((_, _, u)) = PAIRS.iter().find(|(_, s, _)| *s == c) {
                        shifted(*u)
                    } else {
                        return Err(DeviceError::config(format!(
                            "character {} of the text cannot be typed on a US keyboard",
                            i + 1
                        ))
                        .with_hint("type only ASCII characters, newline and tab"));
                    }
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(key: &str, modifiers: &[&str]) -> KeyPress {
        KeyPress {
            key: key.into(),
            modifiers: modifiers.iter().map(|m| m.to_string()).collect(),
            times: 1,
        }
    }

    #[test]
    fn names_map_to_hid_usages() {
        let cases = [
            ("KeyA", 0x04),
            ("KeyZ", 0x1D),
            ("Digit1", 0x1E),
            ("Digit0", 0x27),
            ("Enter", 0x28),
            ("Escape", 0x29),
            ("Tab", 0x2B),
            ("Space", 0x2C),
            ("F1", 0x3A),
            ("F10", 0x43),
            ("F12", 0x45),
            ("F13", 0x68),
            ("ArrowDown", 0x51),
            ("Delete", 0x4C),
            ("Numpad0", 0x62),
            ("Numpad9", 0x61),
        ];
        for (name, code) in cases {
            assert_eq!(usage(name), Some(code), "{name}");
        }
        for bad in ["Keya", "KeyAA", "F0", "F25", "Digit", "enter", ""] {
            assert_eq!(usage(bad), None, "{bad}");
        }
    }

    #[test]
    fn modifiers_and_modifier_only_presses() {
        assert_eq!(
            stroke(&press("F10", &["ShiftLeft"])).unwrap(),
            KeyStroke {
                modifiers: 0x02,
                usage: 0x43
            }
        );
        assert_eq!(
            stroke(&press("MetaLeft", &[])).unwrap(),
            KeyStroke {
                modifiers: 0x08,
                usage: 0
            }
        );
        assert_eq!(
            stroke(&press("Delete", &["Ctrl", "Alt"]))
                .unwrap()
                .modifiers,
            0x05
        );
        let err = stroke(&press("Entr", &[])).unwrap_err();
        assert!(err.message.contains("`Entr`") && err.hint.is_some());
    }

    #[test]
    fn text_is_typed_as_on_a_us_keyboard() {
        let s = text_strokes("aZ1!0)_\n").unwrap();
        let got: Vec<(u8, u8)> = s.iter().map(|k| (k.modifiers, k.usage)).collect();
        assert_eq!(
            got,
            [
                (0, 0x04),
                (2, 0x1D),
                (0, 0x1E),
                (2, 0x1E),
                (0, 0x27),
                (2, 0x27),
                (2, 0x2D),
                (0, 0x28)
            ]
        );
        let err = text_strokes("pässword").unwrap_err();
        assert!(err.message.contains("character 2"));
        assert!(!err.message.contains('ä'), "typed text may be secret");
    }
}
