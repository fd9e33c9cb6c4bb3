//! QR codes in a screen snapshot, decoded with `quircs` (a port of quirc). Snapshots
//! come as PNG (the virtual lab, kvmd's `?preview=0` on some versions) or JPEG (what a
//! real PiKVM's `/api/streamer/snapshot` serves by default), read with `png` and
//! `jpeg-decoder`.
//!
//! quircs rather than rqrr: on a 1024x768 screen it finds and decodes the code in about
//! a third of the time (3 ms against 10 ms, release build), and a fleet decodes one per
//! device and flow. The virtual lab's own tests read its QR codes with rqrr, so the two
//! sides are checked by different decoders.

use crate::device::{DeviceError, DeviceResult};

/// The payload of every QR code in a PNG or JPEG snapshot, top-left first. A snapshot
/// that is neither is an infrastructure failure (the capture is broken), not "no QR
/// code". Codes that are found but do not decode (damaged, cut off) are left out.
pub fn decode(snapshot: &[u8]) -> DeviceResult<Vec<String>> {
    let grey = Greyscale::read(snapshot).map_err(|e| {
        DeviceError::infrastructure(format!("the screen snapshot cannot be read: {e}"))
            .with_hint("check the KVM's video capture: `aplab screen DEVICE --snapshot s.png` saves what it sends (PNG or JPEG expected)")
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

/// A picture as 8-bit grey pixels, whatever its format and colour type.
struct Greyscale {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Greyscale {
    fn read(bytes: &[u8]) -> Result<Greyscale, String> {
        const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF];
        const PNG: &[u8] = &[0x89, b'P', b'N', b'G'];
        if bytes.starts_with(JPEG) {
            Greyscale::from_jpeg(bytes).map_err(|e| format!("a JPEG that does not decode: {e}"))
        } else if bytes.starts_with(PNG) {
            Greyscale::from_png(bytes).map_err(|e| format!("a PNG that does not decode: {e}"))
        } else {
            let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            Err(format!(
                "neither PNG nor JPEG ({} bytes, starting {})",
                bytes.len(),
                head.join(" ")
            ))
        }
    }

    fn from_jpeg(bytes: &[u8]) -> Result<Greyscale, jpeg_decoder::Error> {
        use jpeg_decoder::PixelFormat;
        let mut decoder = jpeg_decoder::Decoder::new(bytes);
        let data = decoder.decode()?;
        let info = decoder
            .info()
            .ok_or_else(|| jpeg_decoder::Error::Format("no image header".into()))?;
        let (width, height) = (info.width as usize, info.height as usize);
        let pixels = match info.pixel_format {
            PixelFormat::L8 => data,
            // Big-endian 16-bit grey: the high byte is enough to find a QR code.
            PixelFormat::L16 => data.chunks_exact(2).map(|p| p[0]).collect(),
            PixelFormat::RGB24 => data
                .chunks_exact(3)
                .map(|p| luma(p[0], p[1], p[2]))
                .collect(),
            // A video capture never sends print colours; say so rather than guess.
            PixelFormat::CMYK32 => {
                return Err(jpeg_decoder::Error::Format(
                    "a CMYK picture (a screen capture is RGB or grey)".into(),
                ));
            }
        };
        if pixels.len() != width * height {
            return Err(jpeg_decoder::Error::Format(format!(
                "{} pixels for a {width}x{height} picture",
                pixels.len()
            )));
        }
        Ok(Greyscale {
            width,
            height,
            pixels,
        })
    }

    fn from_png(png_bytes: &[u8]) -> Result<Greyscale, png::DecodingError> {
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
                    _ => luma(px[0], px[1], px[2]),
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

/// ITU-R BT.601 luma, in integers.
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 299 + g as u32 * 587 + b as u32 * 114) / 1000) as u8
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

    /// A real PiKVM sends JPEG: the same code through a lossy JPEG (grey and colour,
    /// encoded by an independent encoder) still reads.
    #[test]
    fn jpeg_snapshots_are_read_like_png_ones() {
        let payload = r#"{"ZtdId":"7f3e2a10-4c5d-4e6f-8a9b-0c1d2e3f4a5b"}"#;
        let png_bytes = screen_with_qr(payload, 4);
        let grey = Greyscale::from_png(&png_bytes).unwrap();
        for (colour, quality) in [(false, 75), (true, 60)] {
            let mut jpeg = Vec::new();
            let encoder = jpeg_encoder::Encoder::new(&mut jpeg, quality);
            if colour {
                let rgb: Vec<u8> = grey.pixels.iter().flat_map(|&g| [g, g / 2, g]).collect();
                encoder
                    .encode(&rgb, 1024, 768, jpeg_encoder::ColorType::Rgb)
                    .unwrap();
            } else {
                encoder
                    .encode(&grey.pixels, 1024, 768, jpeg_encoder::ColorType::Luma)
                    .unwrap();
            }
            assert_eq!(decode(&jpeg).unwrap(), [payload], "colour {colour}");
        }
    }

    #[test]
    fn a_screen_without_a_code_gives_none() {
        let blank = screen_with_qr("x", 0);
        assert!(decode(&blank).unwrap().is_empty());
    }
}
