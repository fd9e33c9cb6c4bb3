//! What the screen looks like: a [`View`] (title, lines, controls, optional QR code) turned
//! into the text PiKVM's OCR would return and into a PNG snapshot with a real, scannable
//! QR code and text drawn with an 8x8 bitmap font.

use font8x8::UnicodeFonts;

use super::oobe::{Control, Screen};

/// Background colour of the screen, as OOBE paints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tint {
    /// OOBE's dark blue.
    Oobe,
    /// Pre-provisioning success.
    Green,
    /// Pre-provisioning failure.
    Red,
    /// Firmware, boot and shutdown.
    Black,
    Desktop,
}

impl Tint {
    fn rgb(self) -> [u8; 3] {
        match self {
            Tint::Oobe => [0x00, 0x2b, 0x5c],
            Tint::Green => [0x10, 0x7c, 0x10],
            Tint::Red => [0xa8, 0x00, 0x00],
            Tint::Black => [0, 0, 0],
            Tint::Desktop => [0x00, 0x5a, 0x9e],
        }
    }
}

/// Everything visible on the screen at one instant.
#[derive(Debug, Clone)]
pub struct View {
    pub tint: Tint,
    pub title: String,
    pub lines: Vec<String>,
    /// The screen's controls (drawn below the lines) and which one has the focus.
    pub controls: Vec<Control>,
    pub focus: usize,
    /// QR code payload (the configuration and Windows 10 success screens).
    pub qr: Option<String>,
}

impl View {
    pub fn new(tint: Tint, title: impl Into<String>) -> Self {
        View {
            tint,
            title: title.into(),
            lines: Vec::new(),
            controls: Vec::new(),
            focus: 0,
            qr: None,
        }
    }

    pub fn line(mut self, line: impl Into<String>) -> Self {
        self.lines.push(line.into());
        self
    }

    pub fn with_screen(mut self, screen: &Screen) -> Self {
        self.controls = screen.controls.clone();
        self.focus = screen.focus;
        if let Some(message) = &screen.message {
            self.lines.push(message.clone());
        }
        self
    }
}

/// The text rows a reader sees (title first, then lines, then controls).
fn rows(view: &View) -> Vec<String> {
    let mut rows = vec![view.title.clone(), String::new()];
    rows.extend(view.lines.iter().cloned());
    if !view.controls.is_empty() && !view.lines.is_empty() {
        rows.push(String::new());
    }
    let mut buttons = Vec::new();
    for control in &view.controls {
        match control {
            Control::Choice { items, selected } => {
                for (i, item) in items.iter().enumerate() {
                    let mark = if i == *selected { "(*)" } else { "( )" };
                    rows.push(format!("{mark} {item}"));
                }
            }
            Control::Text {
                label,
                value,
                secret,
            } => {
                let shown = if *secret {
                    "*".repeat(value.chars().count())
                } else {
                    value.clone()
                };
                rows.push(format!("{label}: {shown}"));
            }
            Control::Button(label) => buttons.push(format!("[ {label} ]")),
        }
    }
    if !buttons.is_empty() {
        rows.push(buttons.join("  "));
    }
    rows
}

/// The screen as OCR text.
pub fn text(view: &View) -> String {
    let mut out = rows(view).join("\n");
    out.push('\n');
    out
}

const WIDTH: usize = 1024;
const HEIGHT: usize = 768;
const SCALE: usize = 2;
const MARGIN: usize = 32;
const LINE: usize = 8 * SCALE + 8;

/// The screen as a PNG image (1024x768 RGB).
pub fn png(view: &View) -> Vec<u8> {
    let mut canvas = Canvas::new(view.tint.rgb());
    let white = [0xff, 0xff, 0xff];
    for (i, row) in rows(view).iter().enumerate() {
        canvas.text(MARGIN, MARGIN + i * LINE, row, white);
    }
    if let Some(payload) = &view.qr {
        canvas.qr(payload);
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, WIDTH as u32, HEIGHT as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // Writing into a Vec with a valid header cannot fail; an error would leave an empty
    // image, which the client reports as a bad snapshot.
    if let Ok(mut writer) = encoder.write_header() {
        let _ = writer.write_image_data(&canvas.pixels);
    }
    out
}

struct Canvas {
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(background: [u8; 3]) -> Self {
        Canvas {
            pixels: background.repeat(WIDTH * HEIGHT),
        }
    }

    fn fill(&mut self, x: usize, y: usize, w: usize, h: usize, rgb: [u8; 3]) {
        for row in y..(y + h).min(HEIGHT) {
            for col in x..(x + w).min(WIDTH) {
                let at = (row * WIDTH + col) * 3;
                self.pixels[at..at + 3].copy_from_slice(&rgb);
            }
        }
    }

    fn text(&mut self, x: usize, y: usize, text: &str, rgb: [u8; 3]) {
        for (i, c) in text.chars().enumerate() {
            let gx = x + i * 8 * SCALE;
            if gx + 8 * SCALE > WIDTH {
                break;
            }
            let Some(glyph) = font8x8::BASIC_FONTS.get(c) else {
                continue;
            };
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        self.fill(gx + col * SCALE, y + row * SCALE, SCALE, SCALE, rgb);
                    }
                }
            }
        }
    }

    /// Draws the QR code black on white with its quiet zone, at the right of the screen.
    fn qr(&mut self, payload: &str) {
        let Ok(code) = qrcode::QrCode::new(payload.as_bytes()) else {
            return;
        };
        let modules = code.width();
        let module = 5;
        let quiet = 4;
        let side = (modules + 2 * quiet) * module;
        let x0 = WIDTH.saturating_sub(side + MARGIN);
        let y0 = HEIGHT.saturating_sub(side + MARGIN);
        self.fill(x0, y0, side, side, [0xff, 0xff, 0xff]);
        let colors = code.to_colors();
        for (i, color) in colors.iter().enumerate() {
            if *color == qrcode::Color::Dark {
                let (mx, my) = (i % modules, i / modules);
                self.fill(
                    x0 + (quiet + mx) * module,
                    y0 + (quiet + my) * module,
                    module,
                    module,
                    [0, 0, 0],
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_carries_a_scannable_qr_code() {
        let mut view = View::new(Tint::Oobe, "Windows Autopilot Configuration");
        view.qr = Some(r#"{"ZtdId":"abc"}"#.to_string());
        let bytes = png(&view);
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        let (w, h) = (info.width as usize, info.height as usize);
        let gray = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| buf[(y * w + x) * 3]);
        let mut img = gray;
        let grids = img.detect_grids();
        assert_eq!(grids.len(), 1);
        let (_, content) = grids[0].decode().unwrap();
        assert_eq!(content, r#"{"ZtdId":"abc"}"#);
    }

    #[test]
    fn text_lists_controls_as_a_reader_sees_them() {
        let screen = Screen::new(
            super::super::oobe::ScreenId::Region,
            vec![
                Screen::list(&["United States", "Germany"]),
                Control::Button("Yes"),
            ],
            Some("Yes"),
        );
        let view = View::new(
            Tint::Oobe,
            "Let's start with region. Is this the right one?",
        )
        .with_screen(&screen);
        assert_eq!(
            text(&view),
            "Let's start with region. Is this the right one?\n\n(*) United States\n( ) Germany\n[ Yes ]\n"
        );
    }
}
