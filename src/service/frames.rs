//! Frames as the service holds them: owned bytes taken from the request
//! (no copy), the conversion from the proto message, and the lossless file
//! form good frames are stored in.

use bytes::Bytes;

use crate::imaging::{FrameData, PixelFormat, RawFrame};
use crate::proto;

use super::ServiceError;

/// Magic of a stored raw frame; anything else is an encoded image file.
const RAW_MAGIC: &[u8; 8] = b"LOUPERAW";

/// A frame that owns its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedFrame {
    /// A raw camera buffer.
    Raw {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Row pitch in bytes (0 = packed).
        stride: u32,
        /// Pixel layout.
        format: PixelFormat,
        /// Pixel bytes.
        data: Bytes,
    },
    /// An encoded image file.
    Encoded(Bytes),
}

impl OwnedFrame {
    /// A borrowed view for the engine.
    pub fn as_data(&self) -> FrameData<'_> {
        match self {
            Self::Raw {
                width,
                height,
                stride,
                format,
                data,
            } => FrameData::Raw(RawFrame {
                width: *width,
                height: *height,
                stride: *stride,
                format: *format,
                data,
            }),
            Self::Encoded(bytes) => FrameData::Encoded(bytes),
        }
    }

    /// Takes the frame out of a request message.
    pub fn from_proto(frame: Option<proto::Frame>) -> Result<Self, ServiceError> {
        let image = frame
            .and_then(|f| f.image)
            .ok_or_else(|| ServiceError::InvalidArgument("the request has no frame".into()))?;
        match image {
            proto::frame::Image::Encoded(bytes) => {
                if bytes.is_empty() {
                    return Err(ServiceError::InvalidArgument("the encoded frame is empty".into()));
                }
                Ok(Self::Encoded(bytes))
            }
            proto::frame::Image::Raw(raw) => {
                let format = pixel_format(raw.pixel_format)?;
                Ok(Self::Raw {
                    width: raw.width,
                    height: raw.height,
                    stride: raw.stride,
                    format,
                    data: raw.data,
                })
            }
        }
    }

    /// The bytes a good frame is stored as: encoded files as they came, raw
    /// buffers behind a small header.
    pub fn to_stored(&self) -> Vec<u8> {
        match self {
            Self::Encoded(bytes) => bytes.to_vec(),
            Self::Raw {
                width,
                height,
                stride,
                format,
                data,
            } => {
                let mut out = Vec::with_capacity(RAW_MAGIC.len() + 13 + data.len());
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

    /// Reads what [`OwnedFrame::to_stored`] wrote.
    pub fn from_stored(bytes: Vec<u8>) -> Result<Self, String> {
        let Some(header) = bytes.strip_prefix(RAW_MAGIC) else {
            return Ok(Self::Encoded(bytes.into()));
        };
        if header.len() < 13 {
            return Err("stored raw frame is truncated".into());
        }
        let word = |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let format = code_format(header[12]).ok_or("stored raw frame has an unknown pixel format")?;
        let (width, height, stride) = (word(0), word(4), word(8));
        Ok(Self::Raw {
            width,
            height,
            stride,
            format,
            data: Bytes::from(bytes).slice(RAW_MAGIC.len() + 13..),
        })
    }
}

/// The engine's pixel format for a proto enum value.
pub fn pixel_format(value: i32) -> Result<PixelFormat, ServiceError> {
    use proto::PixelFormat as P;
    match P::try_from(value) {
        Ok(P::Mono8) => Ok(PixelFormat::Mono8),
        Ok(P::Mono16) => Ok(PixelFormat::Mono16),
        Ok(P::Rgb8) => Ok(PixelFormat::Rgb8),
        Ok(P::Bgr8) => Ok(PixelFormat::Bgr8),
        Ok(P::Rgba8) => Ok(PixelFormat::Rgba8),
        Ok(P::Bgra8) => Ok(PixelFormat::Bgra8),
        Ok(P::Unspecified) => Err(ServiceError::InvalidArgument(
            "raw frame has no pixel_format; set MONO8, MONO16, RGB8, BGR8, RGBA8 or BGRA8".into(),
        )),
        Err(_) => Err(ServiceError::InvalidArgument(format!(
            "unknown pixel_format {value}"
        ))),
    }
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
        assert_eq!(OwnedFrame::from_stored(raw.to_stored()).unwrap(), raw);
        let encoded = OwnedFrame::Encoded(Bytes::from_static(b"\x89PNG..."));
        assert_eq!(OwnedFrame::from_stored(encoded.to_stored()).unwrap(), encoded);
        assert!(OwnedFrame::from_stored(b"LOUPERAW\x01".to_vec()).is_err());
    }

    #[test]
    fn a_missing_frame_or_format_is_invalid() {
        assert!(matches!(
            OwnedFrame::from_proto(None),
            Err(ServiceError::InvalidArgument(_))
        ));
        let raw = proto::Frame {
            image: Some(proto::frame::Image::Raw(proto::RawImage {
                width: 1,
                height: 1,
                stride: 0,
                pixel_format: 0,
                data: vec![0].into(),
            })),
        };
        let error = OwnedFrame::from_proto(Some(raw)).unwrap_err();
        assert!(matches!(error, ServiceError::InvalidArgument(m) if m.contains("pixel_format")));
    }
}
