//! The file form of a stored good frame (kept so that a settings change can
//! rebuild the reference): an encoded file as it came, or a raw buffer behind
//! a small header. Lossless both ways.

use bytes::Bytes;

use crate::imaging::{OwnedFrame, PixelFormat};

/// Magic of a stored raw frame; anything else is an encoded image file.
const RAW_MAGIC: &[u8; 8] = b"LOUPERAW";
/// Width, height and stride (u32 each) and the pixel-format byte.
const RAW_HEADER: usize = 13;

/// The bytes `frame` is stored as.
pub fn encode(frame: &OwnedFrame) -> Vec<u8> {
    match frame {
        OwnedFrame::Encoded(bytes) => bytes.to_vec(),
        OwnedFrame::Raw {
            width,
            height,
            stride,
            format,
            data,
        } => {
            let mut out = Vec::with_capacity(RAW_MAGIC.len() + RAW_HEADER + data.len());
            out.extend_from_slice(RAW_MAGIC);
            out.extend_from_slice(&width.to_le_bytes());
            out.extend_from_slice(&height.to_le_bytes());
            out.extend_from_slice(&stride.to_le_bytes());
            out.push(format_code(*format));
            out.extend_from_slice(data);
            out
        }
    }
}

/// Reads what [`encode`] wrote; the error says what is wrong.
pub fn decode(bytes: impl Into<Bytes>) -> Result<OwnedFrame, String> {
    let bytes: Bytes = bytes.into();
    let Some(header) = bytes.strip_prefix(RAW_MAGIC) else {
        return Ok(OwnedFrame::Encoded(bytes));
    };
    if header.len() < RAW_HEADER {
        return Err("stored raw frame is truncated".into());
    }
    let word = |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let format = code_format(header[12]).ok_or("stored raw frame has an unknown pixel format")?;
    let (width, height, stride) = (word(0), word(4), word(8));
    Ok(OwnedFrame::Raw {
        width,
        height,
        stride,
        format,
        data: bytes.slice(RAW_MAGIC.len() + RAW_HEADER..),
    })
}

fn format_code(format: PixelFormat) -> u8 {
    match format {
        PixelFormat::Mono8 => 1,
        PixelFormat::Mono16 => 2,
        PixelFormat::Rgb8 => 3,
        PixelFormat::Bgr8 => 4,
        PixelFormat::Rgba8 => 5,
        PixelFormat::Bgra8 => 6,
    }
}

fn code_format(code: u8) -> Option<PixelFormat> {
    Some(match code {
        1 => PixelFormat::Mono8,
        2 => PixelFormat::Mono16,
        3 => PixelFormat::Rgb8,
        4 => PixelFormat::Bgr8,
        5 => PixelFormat::Rgba8,
        6 => PixelFormat::Bgra8,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_frames_round_trip() {
        let raw = OwnedFrame::Raw {
            width: 3,
            height: 2,
            stride: 4,
            format: PixelFormat::Bgr8,
            data: (0..8).collect::<Vec<u8>>().into(),
        };
        assert_eq!(decode(encode(&raw)).unwrap(), raw);
        let encoded = OwnedFrame::Encoded(Bytes::from_static(b"\x89PNG..."));
        assert_eq!(decode(encode(&encoded)).unwrap(), encoded);
        assert!(decode(b"LOUPERAW\x01".to_vec()).is_err());
    }
}
