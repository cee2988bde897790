//! Imaging layer: turns camera buffers and encoded files into 8-bit images ([`frame`]) and images into
//! normalised model input tensors ([`preprocess`]).
//!
//! Everything here is synchronous and CPU-bound; callers on an async runtime must reach it through a
//! blocking thread. Bad input is reported as [`ImagingError::InvalidInput`] with a message meant for the
//! person who sent the frame.

pub mod frame;
mod owned;
pub mod preprocess;

pub use frame::{
    DEFAULT_MAX_FRAME_BYTES, DecodeCost, DecodeLimits, FrameData, PixelFormat, RawFrame, decode, decode_cost,
};
pub use owned::OwnedFrame;
pub use preprocess::{Geometry, Normalize, Preprocessor, input_size_for_aspect};

/// Errors of the imaging layer.
#[derive(Debug, thiserror::Error)]
pub enum ImagingError {
    /// The frame, region of interest or settings sent by the caller cannot be used; the message says what
    /// was expected and what came. Maps to INVALID_ARGUMENT.
    #[error("{0}")]
    InvalidInput(String),
    /// A fault inside Loupe (a broken invariant or a library failing on input it had accepted). Maps to
    /// INTERNAL.
    #[error("internal imaging error: {0}")]
    Internal(String),
}

impl ImagingError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidInput(message.into())
    }

    /// Wraps a foreign error as text so that its type never reaches the public API.
    pub(crate) fn internal(context: &str, error: impl std::fmt::Display) -> Self {
        Self::Internal(format!("{context}: {error}"))
    }
}

/// Whether a decoded image is gray or colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Channels {
    /// One byte per pixel.
    #[default]
    Gray,
    /// Three bytes per pixel, in R, G, B order.
    Rgb,
}

impl Channels {
    /// Bytes (channels) per pixel: 1 for gray, 3 for RGB.
    pub fn count(self) -> usize {
        match self {
            Channels::Gray => 1,
            Channels::Rgb => 3,
        }
    }
}

/// A rectangle in frame pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Roi {
    /// Left edge, in pixels from the left of the frame.
    pub x: u32,
    /// Top edge, in pixels from the top of the frame.
    pub y: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl Roi {
    /// Checks that the rectangle is non-empty and lies inside a `width` x `height` frame.
    pub(crate) fn check_inside(self, width: u32, height: u32) -> Result<(), ImagingError> {
        let Roi {
            x,
            y,
            width: w,
            height: h,
        } = self;
        if w == 0 || h == 0 {
            return Err(ImagingError::invalid(format!(
                "region of interest {x},{y} {w}x{h} is empty; width and height must be at least 1"
            )));
        }
        // u64 so that x + w cannot wrap for any pair of u32 values.
        let fits = u64::from(x) + u64::from(w) <= u64::from(width)
            && u64::from(y) + u64::from(h) <= u64::from(height);
        if !fits {
            return Err(ImagingError::invalid(format!(
                "region of interest {x},{y} {w}x{h} does not fit in the {width}x{height} frame"
            )));
        }
        Ok(())
    }
}

/// A decoded frame: 8-bit gray (1 byte/pixel) or RGB8 (3 bytes/pixel), packed rows.
///
/// Mono16 and 16-bit files are reduced to 8 bits by rounding v/257 (same rule for raw and encoded).
/// BGR/BGRA are swapped to RGB, alpha dropped.
#[derive(Debug, Clone, Default)]
pub struct Image {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Gray or RGB.
    pub channels: Channels,
    /// `width * height * channels.count()` bytes, rows packed top to bottom.
    pub data: Vec<u8>,
}

impl Image {
    /// Number of pixels, `width * height`.
    pub fn pixel_count(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// Bytes one packed row takes.
    pub(crate) fn row_bytes(&self) -> usize {
        self.width as usize * self.channels.count()
    }

    /// Checks that `data` holds exactly the pixels the header fields promise; the fields are public, so
    /// an image built by hand may disagree with itself.
    pub(crate) fn check_consistent(&self) -> Result<(), ImagingError> {
        if self.width == 0 || self.height == 0 {
            return Err(ImagingError::invalid(format!(
                "image is {}x{} pixels; width and height must be at least 1",
                self.width, self.height
            )));
        }
        let expected = self.pixel_count().checked_mul(self.channels.count() as u64);
        if expected != Some(self.data.len() as u64) {
            return Err(ImagingError::invalid(format!(
                "image data is {} bytes, expected {} for {}x{} {:?}",
                self.data.len(),
                expected.map_or_else(|| "more than 2^64".to_owned(), |n| n.to_string()),
                self.width,
                self.height,
                self.channels
            )));
        }
        Ok(())
    }

    /// Returns a copy of the sub-rectangle `roi`, which must lie inside the image.
    pub fn crop(&self, roi: Roi) -> Result<Image, ImagingError> {
        self.check_consistent()?;
        roi.check_inside(self.width, self.height)?;
        let ch = self.channels.count();
        let row = self.row_bytes();
        let (x0, w) = (roi.x as usize * ch, roi.width as usize * ch);
        let mut data = Vec::with_capacity(w * roi.height as usize);
        for src in self
            .data
            .chunks_exact(row)
            .skip(roi.y as usize)
            .take(roi.height as usize)
        {
            data.extend_from_slice(&src[x0..x0 + w]);
        }
        Ok(Image {
            width: roi.width,
            height: roi.height,
            channels: self.channels,
            data,
        })
    }

    /// Returns an RGB copy (gray replicated into the three channels), e.g. to draw coloured overlays on.
    pub fn to_rgb(&self) -> Image {
        let data = match self.channels {
            Channels::Rgb => self.data.clone(),
            Channels::Gray => {
                let mut data = vec![0; self.data.len() * 3];
                let (rgb, _) = data.as_chunks_mut::<3>();
                for (d, &v) in rgb.iter_mut().zip(&self.data) {
                    *d = [v; 3];
                }
                data
            }
        };
        Image {
            width: self.width,
            height: self.height,
            channels: Channels::Rgb,
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gray(width: u32, height: u32) -> Image {
        let data = (0..width * height).map(|i| i as u8).collect();
        Image {
            width,
            height,
            channels: Channels::Gray,
            data,
        }
    }

    #[test]
    fn crop_copies_the_sub_rectangle() {
        let image = gray(5, 4);
        let crop = image
            .crop(Roi {
                x: 1,
                y: 2,
                width: 3,
                height: 2,
            })
            .unwrap();
        assert_eq!((crop.width, crop.height, crop.channels), (3, 2, Channels::Gray));
        assert_eq!(crop.data, vec![11, 12, 13, 16, 17, 18]);
    }

    #[test]
    fn crop_refuses_a_region_outside_the_frame() {
        let image = gray(256, 256);
        let err = image
            .crop(Roi {
                x: 10,
                y: 10,
                width: 300,
                height: 300,
            })
            .unwrap_err();
        assert!(matches!(err, ImagingError::InvalidInput(_)));
        assert_eq!(
            err.to_string(),
            "region of interest 10,10 300x300 does not fit in the 256x256 frame"
        );
        let err = image
            .crop(Roi {
                x: u32::MAX,
                y: 0,
                width: u32::MAX,
                height: 1,
            })
            .unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
        let err = image
            .crop(Roi {
                x: 0,
                y: 0,
                width: 0,
                height: 1,
            })
            .unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
    }

    #[test]
    fn crop_refuses_an_inconsistent_image() {
        let mut image = gray(4, 4);
        image.data.pop();
        let err = image
            .crop(Roi {
                x: 0,
                y: 0,
                width: 1,
                height: 1,
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "image data is 15 bytes, expected 16 for 4x4 Gray"
        );
    }

    #[test]
    fn to_rgb_replicates_gray_and_keeps_rgb() {
        let rgb = gray(2, 1).to_rgb();
        assert_eq!((rgb.channels, rgb.data), (Channels::Rgb, vec![0, 0, 0, 1, 1, 1]));
        let again = Image {
            width: 1,
            height: 1,
            channels: Channels::Rgb,
            data: vec![1, 2, 3],
        }
        .to_rgb();
        assert_eq!(again.data, vec![1, 2, 3]);
    }
}
