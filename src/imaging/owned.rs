//! A frame that owns its bytes, as the server core holds it between the
//! transport and the engine: the bytes are shared (`Bytes`), not copied, from
//! the request that brought them.

use bytes::Bytes;

use super::{FrameData, PixelFormat, RawFrame};

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
    /// An encoded image file (PNG, JPEG, BMP, TIFF).
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

    /// How many bytes the frame holds.
    pub fn len(&self) -> usize {
        match self {
            Self::Raw { data, .. } | Self::Encoded(data) => data.len(),
        }
    }

    /// Whether the frame holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
