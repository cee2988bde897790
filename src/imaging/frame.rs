//! Frame intake: checks raw camera buffers and encoded files from the network and converts them into an
//! 8-bit gray or RGB [`Image`], refusing anything malformed or too large before allocating for it.

use std::io::Cursor;

use image::{ColorType, ImageDecoder, ImageFormat, ImageReader};

use super::{Channels, Image, ImagingError};

/// GenICam PFNC pixel formats Loupe accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// 8-bit gray.
    Mono8,
    /// 16-bit gray, little-endian.
    Mono16,
    /// 8-bit red, green, blue.
    Rgb8,
    /// 8-bit blue, green, red.
    Bgr8,
    /// 8-bit red, green, blue, alpha.
    Rgba8,
    /// 8-bit blue, green, red, alpha.
    Bgra8,
}

impl PixelFormat {
    /// Bytes one pixel takes in the camera buffer.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Mono8 => 1,
            PixelFormat::Mono16 => 2,
            PixelFormat::Rgb8 | PixelFormat::Bgr8 => 3,
            PixelFormat::Rgba8 | PixelFormat::Bgra8 => 4,
        }
    }

    /// The PFNC name, as used in messages: "Mono8", "Mono16", "RGB8", "BGR8", "RGBa8", "BGRa8".
    pub fn name(self) -> &'static str {
        match self {
            PixelFormat::Mono8 => "Mono8",
            PixelFormat::Mono16 => "Mono16",
            PixelFormat::Rgb8 => "RGB8",
            PixelFormat::Bgr8 => "BGR8",
            PixelFormat::Rgba8 => "RGBa8",
            PixelFormat::Bgra8 => "BGRa8",
        }
    }

    fn layout(self) -> Layout {
        match self {
            PixelFormat::Mono8 => Layout::Gray8,
            PixelFormat::Mono16 => Layout::Gray16(Endian::Little),
            PixelFormat::Rgb8 => Layout::Rgb8,
            PixelFormat::Bgr8 => Layout::Bgr8,
            PixelFormat::Rgba8 => Layout::Rgba8,
            PixelFormat::Bgra8 => Layout::Bgra8,
        }
    }
}

/// A raw camera buffer.
#[derive(Debug, Clone, Copy)]
pub struct RawFrame<'a> {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Row pitch in bytes; 0 means packed (`width * bytes_per_pixel`).
    pub stride: u32,
    /// Layout of one pixel.
    pub format: PixelFormat,
    /// The pixels; the last row may stop right after its last pixel.
    pub data: &'a [u8],
}

/// A frame as it arrives.
#[derive(Debug, Clone, Copy)]
pub enum FrameData<'a> {
    /// An uncompressed camera buffer.
    Raw(RawFrame<'a>),
    /// A PNG, JPEG, BMP or TIFF file.
    Encoded(&'a [u8]),
}

/// Limits checked before allocating.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest accepted `width * height`.
    pub max_pixels: u64,
    /// Most bytes decoding one frame may hold ([`decode_cost`]).
    pub max_bytes: u64,
}

/// Default [`DecodeLimits::max_bytes`]: a 64 Mpx RGB frame, or 32 Mpx of 16-bit RGBA.
pub const DEFAULT_MAX_FRAME_BYTES: u64 = 256 << 20;

impl Default for DecodeLimits {
    /// 64 Mpx: above any industrial camera sensor, below what would exhaust a worker's memory.
    fn default() -> Self {
        Self {
            max_pixels: 1 << 26,
            max_bytes: DEFAULT_MAX_FRAME_BYTES,
        }
    }
}

/// What decoding a frame will hold, read from its header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeCost {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes held while decoding: the decoder's output at its own sample
    /// width (16-bit samples take 2 bytes until narrowed), twice that for
    /// TIFF (its decoder fills a buffer of its own first), or the converted
    /// image for a raw buffer.
    pub bytes: u64,
}

/// Reads a frame's header and says what decoding it will hold, refusing it
/// when that is above the limits (both numbers in the message) or when the
/// file is inconsistent (a truncated JPEG, or one too small for the size its
/// header claims). Nothing frame-sized is allocated.
pub fn decode_cost(frame: FrameData<'_>, limits: DecodeLimits) -> Result<DecodeCost, ImagingError> {
    match frame {
        FrameData::Raw(raw) => {
            check_raw(&raw, limits)?;
            let bytes =
                u64::from(raw.width) * u64::from(raw.height) * raw.format.layout().channels().count() as u64;
            check_bytes(raw.width, raw.height, bytes, limits)?;
            Ok(DecodeCost {
                width: raw.width,
                height: raw.height,
                bytes,
            })
        }
        FrameData::Encoded(bytes) => open_encoded(bytes, limits).map(|opened| opened.cost),
    }
}

fn check_bytes(width: u32, height: u32, bytes: u64, limits: DecodeLimits) -> Result<(), ImagingError> {
    if bytes > limits.max_bytes {
        return Err(ImagingError::invalid(format!(
            "a {width}x{height} frame needs {bytes} bytes to decode, more than the limit of {} bytes per frame",
            limits.max_bytes
        )));
    }
    Ok(())
}

/// Decodes or converts `frame` into `out`.
///
/// `out` is reused: its buffer is cleared and resized, so a frame no larger than an earlier one allocates
/// nothing. On error `out` is left empty (0x0).
pub fn decode(frame: FrameData<'_>, limits: DecodeLimits, out: &mut Image) -> Result<(), ImagingError> {
    match frame {
        FrameData::Raw(raw) => decode_raw(&raw, limits, out),
        FrameData::Encoded(bytes) => decode_encoded(bytes, limits, out),
    }
    .inspect_err(|_| {
        out.width = 0;
        out.height = 0;
        out.data.clear();
    })
}

fn check_pixels(width: u32, height: u32, limits: DecodeLimits) -> Result<(), ImagingError> {
    if width == 0 || height == 0 {
        return Err(ImagingError::invalid(format!(
            "frame is {width}x{height} pixels; width and height must be at least 1"
        )));
    }
    // Cannot overflow: the product of two u32 values fits in a u64.
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(ImagingError::invalid(format!(
            "frame is {width}x{height} pixels ({pixels}), more than the limit of {}",
            limits.max_pixels
        )));
    }
    Ok(())
}

/// Sizes `out` for `width` x `height` pixels of `channels`; the caller has checked the pixel limit.
fn prepare(out: &mut Image, width: u32, height: u32, channels: Channels) -> Result<(), ImagingError> {
    let len = (u64::from(width) * u64::from(height))
        .checked_mul(channels.count() as u64)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| ImagingError::invalid(format!("frame of {width}x{height} is too large to hold")))?;
    out.data.clear();
    out.data.resize(len, 0);
    out.width = width;
    out.height = height;
    out.channels = channels;
    Ok(())
}

fn decode_raw(frame: &RawFrame<'_>, limits: DecodeLimits, out: &mut Image) -> Result<(), ImagingError> {
    let cost = decode_cost(FrameData::Raw(*frame), limits)?;
    let RawFrame {
        width,
        height,
        format,
        data,
        ..
    } = *frame;
    let stride = check_raw(frame, limits)?;
    debug_assert_eq!((cost.width, cost.height), (width, height));
    let row = u64::from(width) * format.bytes_per_pixel() as u64;
    // Both fit in usize: check_raw found `row` at most the data's length, and `stride` is a u32.
    let (row, stride) = (row as usize, stride as usize);
    let layout = format.layout();
    if layout.is_copy() && stride == row {
        // One copy, without zeroing the buffer first.
        let len = row * height as usize;
        out.data.clear();
        out.data.extend_from_slice(&data[..len]);
        (out.width, out.height, out.channels) = (width, height, layout.channels());
        return Ok(());
    }
    prepare(out, width, height, layout.channels())?;
    let out_row = out.row_bytes();
    for (dst, src) in out.data.chunks_exact_mut(out_row).zip(data.chunks(stride)) {
        convert(layout, &src[..row], dst);
    }
    Ok(())
}

/// Checks a raw buffer's geometry against its data and the pixel limit;
/// returns its stride in bytes.
fn check_raw(frame: &RawFrame<'_>, limits: DecodeLimits) -> Result<u64, ImagingError> {
    let RawFrame {
        width,
        height,
        format,
        data,
        ..
    } = *frame;
    check_pixels(width, height, limits)?;
    let row = u64::from(width) * format.bytes_per_pixel() as u64;
    let stride = if frame.stride == 0 {
        row
    } else {
        u64::from(frame.stride)
    };
    if stride < row {
        return Err(ImagingError::invalid(format!(
            "stride {stride} is less than the {row} bytes of one {width}-pixel {} row",
            format.name()
        )));
    }
    let too_big = || {
        ImagingError::invalid(format!(
            "frame of {width}x{height} {} with stride {stride} is too large to address",
            format.name()
        ))
    };
    // The last row need not be padded, so the minimum is one stride short of stride * height.
    let full = stride.checked_mul(u64::from(height)).ok_or_else(too_big)?;
    let needed = full - stride + row;
    if (data.len() as u64) < needed {
        let unpadded = if needed == full {
            String::new()
        } else {
            format!(" (at least {needed} if the last row is unpadded)")
        };
        return Err(ImagingError::invalid(format!(
            "frame data is {} bytes, expected {full} for {width}x{height} {} with stride {stride}{unpadded}",
            data.len(),
            format.name()
        )));
    }
    Ok(stride)
}

/// Gives the decoders room for their own working buffers on top of the output image.
const DECODER_SLACK_BYTES: u64 = 64 << 20;

/// An encoded file whose header was read and checked.
struct Opened<'a> {
    decoder: Box<dyn ImageDecoder + 'a>,
    layout: Layout,
    cost: DecodeCost,
}

/// Fewest bytes a Huffman-coded JPEG of `pixels` pixels can have: each 8x8
/// block of its full-resolution component needs at least a 1-bit DC code.
fn min_jpeg_bytes(pixels: u64) -> u64 {
    pixels / 512
}

/// How far from the end of a JPEG its end-of-image marker may sit (some
/// writers pad the file).
const JPEG_TAIL_BYTES: usize = 4096;

fn open_encoded(bytes: &[u8], limits: DecodeLimits) -> Result<Opened<'_>, ImagingError> {
    let cannot =
        |e: &dyn std::fmt::Display| ImagingError::invalid(format!("cannot decode the encoded frame: {e}"));
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| cannot(&e))?;
    let format = reader.format();
    if !matches!(
        format,
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Bmp | ImageFormat::Tiff)
    ) {
        return Err(ImagingError::invalid(
            "unsupported encoded format: the bytes are not PNG, JPEG, BMP or TIFF",
        ));
    }
    // 8 bytes per pixel covers the widest layout we accept (RGBA16). The PNG decoder only takes its
    // allocation limit at construction, so it is set here, before the header is read.
    let max_alloc = limits
        .max_pixels
        .saturating_mul(8)
        .saturating_add(DECODER_SLACK_BYTES);
    let mut fence = image::Limits::default();
    fence.max_alloc = Some(max_alloc);
    reader.limits(fence.clone());
    let mut decoder = reader.into_decoder().map_err(|e| cannot(&e))?;
    let (width, height) = decoder.dimensions();
    check_pixels(width, height, limits)?;

    // Second fence, in case a decoder's dimensions() disagrees with what it later decodes.
    let side = u32::try_from(limits.max_pixels).unwrap_or(u32::MAX);
    fence.max_image_width = Some(side);
    fence.max_image_height = Some(side);
    decoder.set_limits(fence).map_err(|e| cannot(&e))?;

    let color = decoder.color_type();
    let layout = match color {
        ColorType::L8 => Layout::Gray8,
        ColorType::La8 => Layout::GrayA8,
        ColorType::L16 => Layout::Gray16(Endian::Native),
        ColorType::La16 => Layout::GrayA16,
        ColorType::Rgb8 => Layout::Rgb8,
        ColorType::Rgba8 => Layout::Rgba8,
        ColorType::Rgb16 => Layout::Rgb16,
        ColorType::Rgba16 => Layout::Rgba16,
        other => {
            return Err(ImagingError::invalid(format!(
                "the encoded frame has {other:?} pixels; Loupe reads 8- or 16-bit gray and colour"
            )));
        }
    };
    let pixels = u64::from(width) * u64::from(height);
    let total = pixels.checked_mul(layout.in_bpp() as u64);
    if total != Some(decoder.total_bytes()) {
        return Err(ImagingError::Internal(format!(
            "decoder reports {} bytes for {width}x{height} {color:?}",
            decoder.total_bytes()
        )));
    }
    let total = total.unwrap_or(u64::MAX);
    let held = if format == Some(ImageFormat::Tiff) {
        total.saturating_mul(2)
    } else {
        total
    };
    check_bytes(width, height, held, limits)?;
    if format == Some(ImageFormat::Jpeg) {
        // The JPEG decoder fills what is missing with grey and reports no error: a cut file, or one
        // whose header claims more pixels than it carries, would be judged as if whole.
        let tail = &bytes[bytes.len().saturating_sub(JPEG_TAIL_BYTES)..];
        if !tail.windows(2).any(|marker| marker == [0xFF, 0xD9]) {
            return Err(ImagingError::invalid(
                "the JPEG has no end-of-image marker: the file is cut short",
            ));
        }
        let least = min_jpeg_bytes(pixels);
        if (bytes.len() as u64) < least {
            return Err(ImagingError::invalid(format!(
                "the JPEG's header says {width}x{height}, which needs at least {least} bytes, but the file has {}",
                bytes.len()
            )));
        }
    }
    Ok(Opened {
        decoder: Box::new(decoder),
        layout,
        cost: DecodeCost {
            width,
            height,
            bytes: held,
        },
    })
}

fn decode_encoded(bytes: &[u8], limits: DecodeLimits, out: &mut Image) -> Result<(), ImagingError> {
    let Opened {
        decoder,
        layout,
        cost,
    } = open_encoded(bytes, limits)?;
    let DecodeCost { width, height, .. } = cost;
    let too_big = || ImagingError::invalid(format!("frame of {width}x{height} is too large to hold"));
    let pixels = u64::from(width) * u64::from(height);
    let total = usize::try_from(decoder.total_bytes()).map_err(|_| too_big())?;
    // `pixels` is at most `total`, so it fits wherever `total` does.
    let pixels = pixels as usize;
    // The decoder writes straight into `out`; layouts wider than the output are then narrowed in place,
    // which saves a second frame-sized buffer.
    prepare(out, width, height, layout.channels())?;
    out.data.resize(total, 0);
    decoder
        .read_image_boxed(&mut out.data)
        .map_err(|e| ImagingError::invalid(format!("cannot decode the encoded frame: {e}")))?;
    narrow_in_place(layout, &mut out.data, pixels);
    Ok(())
}

/// Pixels per block when narrowing in place: small enough for the block to sit in L1.
const NARROW_BLOCK: usize = 512;

/// Converts `pixels` pixels of `layout` at the start of `buf` into the output layout, in place.
///
/// Output pixels are never wider than input pixels, so block `k` of the output ends at or before the
/// start of block `k + 1` of the input: copying each input block aside first makes the overlap harmless.
fn narrow_in_place(layout: Layout, buf: &mut Vec<u8>, pixels: usize) {
    let (inb, outb) = (layout.in_bpp(), layout.channels().count());
    if !layout.is_copy() {
        let mut scratch = [0u8; NARROW_BLOCK * 8];
        for start in (0..pixels).step_by(NARROW_BLOCK) {
            let n = NARROW_BLOCK.min(pixels - start);
            let src = &mut scratch[..n * inb];
            src.copy_from_slice(&buf[start * inb..(start + n) * inb]);
            convert(layout, src, &mut buf[start * outb..(start + n) * outb]);
        }
    }
    buf.truncate(pixels * outb);
}

/// Byte order of 16-bit samples: PFNC Mono16 is little-endian, decoders hand out native order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endian {
    Little,
    Native,
}

/// Source pixel layouts the converters read. Everything but `Gray16` comes from decoders in native order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Gray8,
    Gray16(Endian),
    GrayA8,
    GrayA16,
    Rgb8,
    Bgr8,
    Rgba8,
    Bgra8,
    Rgb16,
    Rgba16,
}

impl Layout {
    fn in_bpp(self) -> usize {
        match self {
            Layout::Gray8 => 1,
            Layout::Gray16(_) | Layout::GrayA8 => 2,
            Layout::Rgb8 | Layout::Bgr8 => 3,
            Layout::GrayA16 | Layout::Rgba8 | Layout::Bgra8 => 4,
            Layout::Rgb16 => 6,
            Layout::Rgba16 => 8,
        }
    }

    fn channels(self) -> Channels {
        match self {
            Layout::Gray8 | Layout::Gray16(_) | Layout::GrayA8 | Layout::GrayA16 => Channels::Gray,
            _ => Channels::Rgb,
        }
    }

    /// Whether the layout already is the output layout.
    fn is_copy(self) -> bool {
        matches!(self, Layout::Gray8 | Layout::Rgb8)
    }
}

/// Reduces a 16-bit sample to 8 bits: round(v / 257), exact because v / 257 is never halfway.
#[inline(always)]
fn reduce16(v: u16) -> u8 {
    ((u32::from(v) + 128) / 257) as u8
}

#[inline(always)]
fn ne16(b: [u8; 2]) -> u8 {
    reduce16(u16::from_ne_bytes(b))
}

/// Applies `f` to every pixel; fixed-size chunks give LLVM constant strides to vectorise the shuffles.
#[inline(always)]
fn map_pixels<const IN: usize, const OUT: usize>(
    src: &[u8],
    dst: &mut [u8],
    f: impl Fn(&[u8; IN]) -> [u8; OUT],
) {
    let (src, _) = src.as_chunks::<IN>();
    let (dst, _) = dst.as_chunks_mut::<OUT>();
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f(s);
    }
}

/// Converts packed pixels of `layout` in `src` into gray or RGB8 pixels in `dst`, as many as both hold.
fn convert(layout: Layout, src: &[u8], dst: &mut [u8]) {
    match layout {
        Layout::Gray8 | Layout::Rgb8 => {
            let n = src.len().min(dst.len());
            dst[..n].copy_from_slice(&src[..n]);
        }
        Layout::Gray16(Endian::Little) => {
            map_pixels(src, dst, |&p: &[u8; 2]| [reduce16(u16::from_le_bytes(p))])
        }
        Layout::Gray16(Endian::Native) => map_pixels(src, dst, |&p: &[u8; 2]| [ne16(p)]),
        Layout::GrayA8 => map_pixels(src, dst, |p: &[u8; 2]| [p[0]]),
        Layout::GrayA16 => map_pixels(src, dst, |p: &[u8; 4]| [ne16([p[0], p[1]])]),
        Layout::Bgr8 => map_pixels(src, dst, |p: &[u8; 3]| [p[2], p[1], p[0]]),
        Layout::Rgba8 => map_pixels(src, dst, |p: &[u8; 4]| [p[0], p[1], p[2]]),
        Layout::Bgra8 => map_pixels(src, dst, |p: &[u8; 4]| [p[2], p[1], p[0]]),
        Layout::Rgb16 => map_pixels(src, dst, |p: &[u8; 6]| {
            [ne16([p[0], p[1]]), ne16([p[2], p[3]]), ne16([p[4], p[5]])]
        }),
        Layout::Rgba16 => map_pixels(src, dst, |p: &[u8; 8]| {
            [ne16([p[0], p[1]]), ne16([p[2], p[3]]), ne16([p[4], p[5]])]
        }),
    }
}

#[cfg(test)]
mod tests;
