//! QR codes in a PNG snapshot, decoded with `png` and `quircs` (a port of quirc).
//!
//! quircs rather than rqrr: on a 1024x768 screen it finds and decodes the code in about
//! a third of the time (3 ms against 10 ms, release build), and a fleet decodes one per
//! device and flow. The virtual lab's own tests read its QR codes with rqrr, so the two
//! sides are checked by different decoders.

use crate::device::{DeviceError, DeviceResult};

/// The payload of every QR code in `png_bytes`, top-left first. A snapshot that is not
/// a PNG is an infrastructure failure (the capture is broken), not "no QR code". Codes
/// that are found but do not decode (damaged, cut off) are left out.
pub fn decode(png_bytes: &[u8]) -> DeviceResult<Vec<String>> {
    let grey = Greyscale::read(png_bytes).map_err(|e| {
        let kind = if png_bytes.starts_with(&[0xFF, 0xD8]) {
            "a JPEG, not a PNG"
        } else {
            "not a readable PNG"
        };
        DeviceError::infrastructure(format!("the screen snapshot is {kind}: {e}"))
            .with_hint("check the KVM's video capture (is the snapshot format PNG?)")
    })?;
    let mut decoder = quircs::Quirc::default();
    let mut found: Vec<((i32, i32), String)> = decoder
        .identify(grey.width, grey.height, &grey.pixels)
        .filter_map(|code| {
            let code = code.ok()?;
            let data = code.decode().ok()?;
            let corner = code.corners[0];
            Some((
                (corner.y, corner.x),
                String::from_utf8_lossy(&data.payload).into_owned(),
            ))
        })
        .collect();
    found.sort();
    Ok(found.into_iter().map(|(_, text)| text).collect())
}

/// A picture as 8-bit grey pixels, whatever its PNG colour type.
struct Greyscale {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Greyscale {
    fn read(png_bytes: &[u8]) -> Result<Greyscale, png::DecodingError> {
        let mut decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder.read_info()?;
        let size = reader
            .output_buffer_size()
            .ok_or(png::DecodingError::LimitsExceeded)?;
        let mut buf = vec![0u8; size];
        let info = reader.next_frame(&mut buf)?;
        let (width, height) = (info.width as usize, info.height as usize);
        let channels = info.color_type.samples();
        let mut pixels = Vec::with_capacity(width * height);
        for y in 0..height {
            let row = &buf[y * info.line_size..];
            for x in 0..width {
                let px = &row[x * channels..x * channels + channels];
                pixels.push(match channels {
                    1 | 2 => px[0],
                    // ITU-R BT.601 luma, in integers.
                    _ => {
                        ((px[0] as u32 * 299 + px[1] as u32 * 587 + px[2] as u32 * 114) / 1000)
                            as u8
                    }
                });
            }
        }
        Ok(Greyscale {
            width,
            height,
            pixels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1024x768 grey PNG with `payload` as a QR code of `module`-pixel modules.
    fn screen_with_qr(payload: &str, module: usize) -> Vec<u8> {
        let (w, h) = (1024usize, 768usize);
        let code = qrcode::QrCode::new(payload.as_bytes()).unwrap();
        let modules = code.width();
        let colors = code.to_colors();
        // Mid-grey screen, the code on white with its quiet zone, off the 2x2 grid.
        let mut pixels = vec![96u8; w * h];
        let (x0, y0) = (301, 157);
        let side = (modules + 8) * module;
        for y in y0..y0 + side {
            pixels[y * w + x0..y * w + x0 + side].fill(255);
        }
        for (i, c) in colors.iter().enumerate() {
            if *c == qrcode::Color::Dark {
                let (mx, my) = (i % modules + 4, i / modules + 4);
                for dy in 0..module {
                    let at = (y0 + my * module + dy) * w + x0 + mx * module;
                    pixels[at..at + module].fill(0);
                }
            }
        }
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, w as u32, h as u32);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_color(png::ColorType::Grayscale);
        encoder
            .write_header()
            .unwrap()
            .write_image_data(&pixels)
            .unwrap();
        out
    }

    #[test]
    fn codes_are_found_at_every_module_size_windows_might_draw() {
        let payload = r#"{"ZtdId":"7f3e2a10-4c5d-4e6f-8a9b-0c1d2e3f4a5b","Serial":"PC0042"}"#;
        for module in [2, 3, 4, 5, 8] {
            let found = decode(&screen_with_qr(payload, module)).unwrap();
            assert_eq!(found, [payload], "module of {module} px");
        }
    }

    #[test]
    fn a_screen_without_a_code_gives_none() {
        let blank = screen_with_qr("x", 0);
        assert!(decode(&blank).unwrap().is_empty());
    }
}
