//! Key names a step may press: the W3C `KeyboardEvent.code` names PiKVM uses, which the
//! CH9329 backend maps to HID usages too.

pub const MODIFIERS: &[&str] = &[
    "ControlLeft",
    "ControlRight",
    "ShiftLeft",
    "ShiftRight",
    "AltLeft",
    "AltRight",
    "MetaLeft",
    "MetaRight",
];

const OTHER: &[&str] = &[
    "Enter",
    "Tab",
    "Space",
    "Escape",
    "Backspace",
    "Delete",
    "Insert",
    "Home",
    "End",
    "PageUp",
    "PageDown",
    "ArrowUp",
    "ArrowDown",
    "ArrowLeft",
    "ArrowRight",
    "CapsLock",
    "PrintScreen",
    "Minus",
    "Equal",
    "BracketLeft",
    "BracketRight",
    "Backslash",
    "Semicolon",
    "Quote",
    "Backquote",
    "Comma",
    "Period",
    "Slash",
];

/// Every key name accepted in `keys:`.
pub fn all() -> Vec<String> {
    let mut names: Vec<String> = MODIFIERS
        .iter()
        .chain(OTHER)
        .map(|s| s.to_string())
        .collect();
    names.extend(('A'..='Z').map(|c| format!("Key{c}")));
    names.extend(('0'..='9').map(|c| format!("Digit{c}")));
    names.extend((1..=12).map(|n| format!("F{n}")));
    names
}
