//! Key presses as OOBE receives them, decoded from the two ways a lab types: USB HID
//! usage ids (CH9329 keyboard reports) and PiKVM key names (browser `KeyboardEvent.code`).

/// One key press the device reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Tab,
    ShiftTab,
    Escape,
    Backspace,
    Up,
    Down,
    Left,
    Right,
    /// The Windows key (Left or Right GUI).
    Windows,
    /// Ctrl+Shift+D (Windows 11 diagnostics on the failure screen).
    CtrlShiftD,
    /// Anything else OOBE ignores (F-keys, media keys, ...).
    Other,
}

/// Modifier bits of a HID keyboard report (byte 0).
pub mod modifier {
    pub const LEFT_CTRL: u8 = 0x01;
    pub const LEFT_SHIFT: u8 = 0x02;
    pub const LEFT_ALT: u8 = 0x04;
    pub const LEFT_GUI: u8 = 0x08;
    pub const RIGHT_CTRL: u8 = 0x10;
    pub const RIGHT_SHIFT: u8 = 0x20;
    pub const RIGHT_GUI: u8 = 0x80;
    pub const CTRL: u8 = LEFT_CTRL | RIGHT_CTRL;
    pub const SHIFT: u8 = LEFT_SHIFT | RIGHT_SHIFT;
    pub const GUI: u8 = LEFT_GUI | RIGHT_GUI;
}

/// A HID usage id (keyboard page) pressed with `modifiers` held, US layout.
pub fn from_hid(usage: u8, modifiers: u8) -> Key {
    let shift = modifiers & modifier::SHIFT != 0;
    let ctrl = modifiers & modifier::CTRL != 0;
    match usage {
        0x04..=0x1D => {
            let c = (b'a' + usage - 0x04) as char;
            if ctrl && shift && c == 'd' {
                Key::CtrlShiftD
            } else if ctrl {
                Key::Other
            } else if shift {
                Key::Char(c.to_ascii_uppercase())
            } else {
                Key::Char(c)
            }
        }
        0x1E..=0x27 => {
            let i = (usage - 0x1E) as usize;
            let plain = b"1234567890"[i] as char;
            let shifted = b"!@#$%^&*()"[i] as char;
            Key::Char(if shift { shifted } else { plain })
        }
        0x28 | 0x58 => Key::Enter,
        0x29 => Key::Escape,
        0x2A => Key::Backspace,
        0x2B if shift => Key::ShiftTab,
        0x2B => Key::Tab,
        0x2C => Key::Char(' '),
        0x2D..=0x38 => {
            // - = [ ] \ (0x32 is non-US #) ; ' ` , . /
            let plain = b"-=[]\\#;'`,./"[(usage - 0x2D) as usize] as char;
            let shifted = b"_+{}|~:\"~<>?"[(usage - 0x2D) as usize] as char;
            Key::Char(if shift { shifted } else { plain })
        }
        0x4F => Key::Right,
        0x50 => Key::Left,
        0x51 => Key::Down,
        0x52 => Key::Up,
        0xE3 | 0xE7 => Key::Windows,
        _ => Key::Other,
    }
}

/// A PiKVM key name (`KeyA`, `Digit1`, `Enter`, `MetaLeft`, ...) pressed with the
/// modifiers currently held (HID bits).
pub fn from_pikvm(name: &str, modifiers: u8) -> Option<Key> {
    let usage = pikvm_usage(name)?;
    Some(from_hid(usage, modifiers))
}

/// The HID usage id of a PiKVM key name; `None` for a name PiKVM would reject.
pub fn pikvm_usage(name: &str) -> Option<u8> {
    if let Some(letter) = name.strip_prefix("Key") {
        let c = single_char(letter)?;
        return c.is_ascii_uppercase().then(|| 0x04 + (c as u8 - b'A'));
    }
    if let Some(digit) = name.strip_prefix("Digit") {
        let c = single_char(digit)?;
        return match c {
            '1'..='9' => Some(0x1E + (c as u8 - b'1')),
            '0' => Some(0x27),
            _ => None,
        };
    }
    Some(match name {
        "Enter" | "NumpadEnter" => 0x28,
        "Escape" => 0x29,
        "Backspace" => 0x2A,
        "Tab" => 0x2B,
        "Space" => 0x2C,
        "Minus" => 0x2D,
        "Equal" => 0x2E,
        "BracketLeft" => 0x2F,
        "BracketRight" => 0x30,
        "Backslash" => 0x31,
        "Semicolon" => 0x33,
        "Quote" => 0x34,
        "Backquote" => 0x35,
        "Comma" => 0x36,
        "Period" => 0x37,
        "Slash" => 0x38,
        "ArrowRight" => 0x4F,
        "ArrowLeft" => 0x50,
        "ArrowDown" => 0x51,
        "ArrowUp" => 0x52,
        "ControlLeft" => 0xE0,
        "ShiftLeft" => 0xE1,
        "AltLeft" => 0xE2,
        "MetaLeft" => 0xE3,
        "ControlRight" => 0xE4,
        "ShiftRight" => 0xE5,
        "AltRight" => 0xE6,
        "MetaRight" => 0xE7,
        f if f.starts_with('F') && f[1..].parse::<u8>().is_ok_and(|n| (1..=12).contains(&n)) => {
            0x3A + f[1..].parse::<u8>().unwrap_or(1) - 1
        }
        _ => return None,
    })
}

/// The modifier bit a usage id stands for (0xE0..=0xE7), if it is a modifier.
pub fn modifier_bit(usage: u8) -> Option<u8> {
    (0xE0..=0xE7).contains(&usage).then(|| 1 << (usage - 0xE0))
}

fn single_char(text: &str) -> Option<char> {
    let mut chars = text.chars();
    let c = chars.next()?;
    chars.next().is_none().then_some(c)
}

/// A character typed through `/api/hid/print`, as the key OOBE receives.
pub fn from_text(c: char) -> Key {
    match c {
        '\n' | '\r' => Key::Enter,
        '\t' => Key::Tab,
        c if c.is_ascii_graphic() || c == ' ' => Key::Char(c),
        _ => Key::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hid_usages_decode_as_us_layout() {
        assert_eq!(from_hid(0x04, 0), Key::Char('a'));
        assert_eq!(from_hid(0x04, modifier::LEFT_SHIFT), Key::Char('A'));
        assert_eq!(from_hid(0x1F, modifier::LEFT_SHIFT), Key::Char('@'));
        assert_eq!(from_hid(0x37, 0), Key::Char('.'));
        assert_eq!(from_hid(0x2B, modifier::RIGHT_SHIFT), Key::ShiftTab);
        assert_eq!(
            from_hid(0x07, modifier::LEFT_CTRL | modifier::LEFT_SHIFT),
            Key::CtrlShiftD
        );
    }

    #[test]
    fn pikvm_names_map_to_usages() {
        assert_eq!(pikvm_usage("KeyZ"), Some(0x1D));
        assert_eq!(pikvm_usage("Digit0"), Some(0x27));
        assert_eq!(pikvm_usage("MetaLeft"), Some(0xE3));
        assert_eq!(pikvm_usage("F10"), Some(0x43));
        assert_eq!(pikvm_usage("Keya"), None);
        assert_eq!(pikvm_usage("Nonsense"), None);
        assert_eq!(modifier_bit(0xE3), Some(modifier::LEFT_GUI));
    }
}
