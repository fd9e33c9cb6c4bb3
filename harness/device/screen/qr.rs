//! QR codes in a PNG snapshot, decoded with `png` and `rqrr`.

use crate::device::{DeviceError, DeviceResult};

/// The payload of every QR code in `png_bytes`, top-left first. A snapshot that is not
/// a PNG is an infrastructure failure (the capture is broken), not "no QR code".
pub fn decode(png_bytes: &[u8]) -> DeviceResult<Vec<String>> {
    let (width, height, grey) = greyscale(png_bytes).map_err(|e| {
        let kind = if png_bytes.starts_with(&[0xFF, 0xD8]) {
            "a JPEG, not a PNG"
        } else {
            "not a readable PNG"
        };
        DeviceError::infrastructure(format!("the screen snapshot is {kind}: {e}"))
            .with_hint("check the KVM's video capture (is the snapshot format PNG?)")
    })?;
    let mut image =
        rqrr::PreparedImage::prepare_from_greyscale(width, height, |x, y| grey[y * width + x]);
    let mut grids = image.detect_grids();
    grids.sort_by_key(|g| {
        let [x, y] = [g.bounds[0].x, g.bounds[0].y];
        (y, x)
    });
    Ok(grids
        .iter()
        .filter_map(|grid| grid.decode().ok().map(|(_, text)| text))
        .collect())
}

/// Decodes a PNG into 8-bit grey pixels, whatever its colour type.
fn greyscale(png_bytes: &[u8]) -> Result<(usize, usize, Vec<u8>), png::DecodingError> {
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
    let mut grey = Vec::with_capacity(width * height);
    for y in 0..height {
        let row = &buf[y * info.line_size..];
        for x in 0..width {
            let px = &row[x * channels..x * channels + channels];
            grey.push(match channels {
                1 | 2 => px[0],
                // ITU-R BT.601 luma, in integers.
                _ => ((px[0] as u32 * 299 + px[1] as u32 * 587 + px[2] as u32 * 114) / 1000) as u8,
            });
        }
    }
    Ok((width, height, grey))
}
