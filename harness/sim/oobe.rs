//! OOBE screens and their keyboard behaviour. A screen is a list of controls with one
//! focused; Tab moves the focus, arrows change a list's selection, typed text lands in
//! the focused text box, Enter presses the focused button (or the screen's default
//! button when focus is on a list or text box). What a button *does* is the device's
//! business (sim/device.rs); this module only reports which button was pressed.

use super::keys::Key;

/// Which screen the device shows. The name is what the console prints
/// (`OOBE: screen=region`) and what the control endpoint reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScreenId {
    /// Powered off: no video signal.
    Off,
    /// Firmware and Windows starting.
    Booting,
    /// Shutting down (Reseal, reboot).
    ShuttingDown,
    Region,
    Keyboard,
    SecondKeyboard,
    Network,
    /// "What would you like to do?" (Windows key x5).
    WhatToDo,
    /// Windows 11's pre-provisioning introduction (the second Next).
    PreProvision,
    /// "Install provisioning package": waits for removable media.
    ProvisioningPackage,
    /// "Windows Autopilot Configuration": profile, organization, user, QR.
    Configuration,
    /// Enrollment Status Page.
    Esp,
    /// Green pre-provisioning success screen.
    Success,
    /// Red failure screen (technician or user flow).
    Failure,
    /// Diagnostics (Windows 10 "View diagnostics", Windows 11 Ctrl+Shift+D).
    Diagnostics,
    /// Branded Entra sign-in: account name.
    EntraSignIn,
    /// Branded Entra sign-in: password.
    EntraPassword,
    /// "Who's going to use this device?" (Entra sign-in unavailable).
    LocalAccount,
    /// Active Directory sign-in after the hybrid reboot.
    AdSignIn,
    Desktop,
}

impl ScreenId {
    pub fn name(self) -> &'static str {
        use ScreenId::*;
        match self {
            Off => "off",
            Booting => "booting",
            ShuttingDown => "shutting-down",
            Region => "region",
            Keyboard => "keyboard",
            SecondKeyboard => "second-keyboard",
            Network => "network",
            WhatToDo => "what-to-do",
            PreProvision => "pre-provision",
            ProvisioningPackage => "provisioning-package",
            Configuration => "configuration",
            Esp => "esp",
            Success => "success",
            Failure => "failure",
            Diagnostics => "diagnostics",
            EntraSignIn => "entra-sign-in",
            EntraPassword => "entra-password",
            LocalAccount => "local-account",
            AdSignIn => "ad-sign-in",
            Desktop => "desktop",
        }
    }
}

/// One focusable element.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    Button(&'static str),
    /// A list or a set of radio buttons: one item selected.
    Choice {
        items: Vec<String>,
        selected: usize,
    },
    Text {
        label: &'static str,
        value: String,
        secret: bool,
    },
}

/// A screen's controls and focus.
#[derive(Debug, Clone)]
pub struct Screen {
    pub id: ScreenId,
    pub controls: Vec<Control>,
    pub focus: usize,
    /// The button Enter presses when the focus is on a list or a text box.
    pub default_button: Option<&'static str>,
    /// An inline message (e.g. "Your account or password is incorrect.").
    pub message: Option<String>,
}

impl Screen {
    /// A screen with these controls; the focus starts on the first control.
    pub fn new(id: ScreenId, controls: Vec<Control>, default_button: Option<&'static str>) -> Self {
        Screen {
            id,
            controls,
            focus: 0,
            default_button,
            message: None,
        }
    }

    /// A screen without controls (off, booting, ESP in progress, desktop).
    pub fn passive(id: ScreenId) -> Self {
        Screen::new(id, Vec::new(), None)
    }

    pub fn list(items: &[&str]) -> Control {
        Control::Choice {
            items: items.iter().map(|s| s.to_string()).collect(),
            selected: 0,
        }
    }

    pub fn text(label: &'static str, secret: bool) -> Control {
        Control::Text {
            label,
            value: String::new(),
            secret,
        }
    }

    /// Moves the focus onto the button with this label (the button Windows focuses first).
    pub fn focus_button(mut self, label: &str) -> Self {
        if let Some(i) = self
            .controls
            .iter()
            .position(|c| matches!(c, Control::Button(l) if *l == label))
        {
            self.focus = i;
        }
        self
    }

    /// The selected item of the first list on the screen.
    pub fn selected(&self) -> Option<&str> {
        self.controls.iter().find_map(|c| match c {
            Control::Choice { items, selected } => items.get(*selected).map(String::as_str),
            _ => None,
        })
    }

    /// The value of the text box with this label.
    pub fn value(&self, label: &str) -> Option<&str> {
        self.controls.iter().find_map(|c| match c {
            Control::Text {
                label: l, value, ..
            } if *l == label => Some(value.as_str()),
            _ => None,
        })
    }

    /// Applies one key press; returns the label of the button it pressed, if any.
    pub fn press(&mut self, key: Key) -> Option<&'static str> {
        let n = self.controls.len();
        if n == 0 {
            return None;
        }
        self.focus = self.focus.min(n - 1);
        let focused = &mut self.controls[self.focus];
        match (key, focused) {
            (Key::Tab, _) => {
                self.focus = (self.focus + 1) % n;
                None
            }
            (Key::ShiftTab, _) => {
                self.focus = (self.focus + n - 1) % n;
                None
            }
            (Key::Enter, Control::Button(label)) | (Key::Char(' '), Control::Button(label)) => {
                Some(*label)
            }
            (Key::Enter, _) => self.default_button,
            (Key::Down | Key::Right, Control::Choice { items, selected }) => {
                *selected = (*selected + 1).min(items.len().saturating_sub(1));
                None
            }
            (Key::Up | Key::Left, Control::Choice { selected, .. }) => {
                *selected = selected.saturating_sub(1);
                None
            }
            // Typing in a list jumps to the first item starting with that letter.
            (Key::Char(c), Control::Choice { items, selected }) => {
                if let Some(i) = items
                    .iter()
                    .position(|item| item.to_lowercase().starts_with(c.to_ascii_lowercase()))
                {
                    *selected = i;
                }
                None
            }
            (Key::Char(c), Control::Text { value, .. }) => {
                if value.len() < 256 {
                    value.push(c);
                }
                None
            }
            (Key::Backspace, Control::Text { value, .. }) => {
                value.pop();
                None
            }
            // Arrows move between buttons of a button row, as in OOBE.
            (Key::Right | Key::Down, Control::Button(_)) => {
                if matches!(self.controls.get(self.focus + 1), Some(Control::Button(_))) {
                    self.focus += 1;
                }
                None
            }
            (Key::Left | Key::Up, Control::Button(_)) => {
                if self.focus > 0 && matches!(self.controls[self.focus - 1], Control::Button(_)) {
                    self.focus -= 1;
                }
                None
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign_in() -> Screen {
        Screen::new(
            ScreenId::EntraPassword,
            vec![Screen::text("Password", true), Control::Button("Sign in")],
            Some("Sign in"),
        )
    }

    #[test]
    fn typed_text_goes_where_the_focus_is() {
        let mut s = sign_in();
        for c in "pw".chars() {
            assert_eq!(s.press(Key::Char(c)), None);
        }
        assert_eq!(s.value("Password"), Some("pw"));
        s.press(Key::Tab);
        // Focus on the button now: typing does not reach the text box.
        s.press(Key::Char('x'));
        assert_eq!(s.value("Password"), Some("pw"));
        assert_eq!(s.press(Key::Enter), Some("Sign in"));
    }

    #[test]
    fn enter_in_a_text_box_presses_the_default_button() {
        let mut s = sign_in();
        assert_eq!(s.press(Key::Enter), Some("Sign in"));
    }

    #[test]
    fn lists_follow_arrows_and_letters() {
        let mut s = Screen::new(
            ScreenId::Region,
            vec![
                Screen::list(&["United States", "Germany", "France"]),
                Control::Button("Yes"),
            ],
            Some("Yes"),
        );
        s.press(Key::Down);
        assert_eq!(s.selected(), Some("Germany"));
        s.press(Key::Char('f'));
        assert_eq!(s.selected(), Some("France"));
        s.press(Key::Up);
        s.press(Key::Up);
        s.press(Key::Up);
        assert_eq!(s.selected(), Some("United States"));
    }
}
