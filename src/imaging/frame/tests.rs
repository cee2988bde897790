//! Unit tests for frame intake, kept beside `frame.rs` so that each file stays readable.

use super::*;

const FORMATS: [PixelFormat; 6] = [
    PixelFormat::Mono8,
    PixelFormat::Mono16,
    PixelFormat::Rgb8,
    PixelFormat::Bgr8,
    PixelFormat::Rgba8,
    PixelFormat::Bgra8,
];
const LIMITS: DecodeLimits = DecodeLimits {
    max_pixels: 1 << 26,
    max_bytes: u64::MAX,
};

/// Deterministic bytes covering the whole 0..=255 range.
fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 24) as u8
        })
        .collect()
}

/// Scalar reference: one pixel at a time, straight from the PFNC definitions.
fn reference(frame: &RawFrame<'_>) -> Image {
    let bpp = frame.format.bytes_per_pixel();
    let stride = if frame.stride == 0 {
        frame.width as usize * bpp
    } else {
        frame.stride as usize
    };
    let mut data = Vec::new();
    for y in 0..frame.height as usize {
        for x in 0..frame.width as usize {
            let p = &frame.data[y * stride + x * bpp..][..bpp];
            match frame.format {
                PixelFormat::Mono8 => data.push(p[0]),
                PixelFormat::Mono16 => {
                    let v = f64::from(u16::from(p[0]) | (u16::from(p[1]) << 8));
                    data.push((v / 257.0).round() as u8);
                }
                PixelFormat::Rgb8 | PixelFormat::Rgba8 => data.extend_from_slice(&[p[0], p[1], p[2]]),
                PixelFormat::Bgr8 | PixelFormat::Bgra8 => data.extend_from_slice(&[p[2], p[1], p[0]]),
            }
        }
    }
    let channels = if data.len() == (frame.width * frame.height) as usize {
        Channels::Gray
    } else {
        Channels::Rgb
    };
    Image {
        width: frame.width,
        height: frame.height,
        channels,
        data,
    }
}

fn raw(width: u32, height: u32, stride: u32, format: PixelFormat, data: &[u8]) -> FrameData<'_> {
    FrameData::Raw(RawFrame {
        width,
        height,
        stride,
        format,
        data,
    })
}

fn decode_err(frame: FrameData<'_>, limits: DecodeLimits) -> String {
    let mut out = Image::default();
    let err = decode(frame, limits, &mut out).unwrap_err();
    assert!(matches!(err, ImagingError::InvalidInput(_)), "{err:?}");
    assert_eq!((out.width, out.height, out.data.len()), (0, 0, 0));
    err.to_string()
}

#[test]
fn every_raw_format_matches_the_scalar_reference() {
    let mut out = Image::default();
    for format in FORMATS {
        let bpp = format.bytes_per_pixel() as u32;
        for width in [1, 3, 7, 33] {
            for height in [1, 2, 5] {
                // Packed; padded with a full last row; padded with the last row cut short.
                for (pad, cut) in [(0, false), (5, false), (13, true)] {
                    let stride = if pad == 0 { 0 } else { width * bpp + pad };
                    let full = (width * bpp + pad) * height;
                    let data = noise((full - if cut { pad } else { 0 }) as usize, width * 31 + height);
                    let frame = RawFrame {
                        width,
                        height,
                        stride,
                        format,
                        data: &data,
                    };
                    decode(FrameData::Raw(frame), LIMITS, &mut out).unwrap();
                    let expected = reference(&frame);
                    let what = format!("{} {width}x{height} pad {pad} cut {cut}", format.name());
                    assert_eq!(
                        (out.width, out.height, out.channels),
                        (width, height, expected.channels),
                        "{what}"
                    );
                    assert_eq!(out.data, expected.data, "{what}");
                }
            }
        }
    }
}

#[test]
fn reduce16_rounds_every_value() {
    for v in 0..=u16::MAX {
        assert_eq!(reduce16(v), (f64::from(v) / 257.0).round() as u8, "{v}");
    }
}

#[test]
fn decode_reuses_the_output_buffer() {
    let data = noise(64 * 64 * 3, 1);
    let mut out = Image::default();
    decode(raw(64, 64, 0, PixelFormat::Bgr8, &data), LIMITS, &mut out).unwrap();
    let ptr = out.data.as_ptr();
    decode(raw(32, 32, 0, PixelFormat::Mono8, &data), LIMITS, &mut out).unwrap();
    assert_eq!(
        (out.data.as_ptr(), out.data.len(), out.channels),
        (ptr, 32 * 32, Channels::Gray)
    );
}

#[test]
fn bad_raw_buffers_are_refused_with_a_useful_message() {
    let data = vec![0u8; 1000];
    assert_eq!(
        decode_err(raw(32, 32, 0, PixelFormat::Rgb8, &data), LIMITS),
        "frame data is 1000 bytes, expected 3072 for 32x32 RGB8 with stride 96"
    );
    assert_eq!(
        decode_err(raw(32, 32, 100, PixelFormat::Rgb8, &data), LIMITS),
        "frame data is 1000 bytes, expected 3200 for 32x32 RGB8 with stride 100 \
         (at least 3196 if the last row is unpadded)"
    );
    assert_eq!(
        decode_err(raw(32, 32, 90, PixelFormat::Rgb8, &data), LIMITS),
        "stride 90 is less than the 96 bytes of one 32-pixel RGB8 row"
    );
    assert_eq!(
        decode_err(raw(0, 32, 0, PixelFormat::Mono8, &data), LIMITS),
        "frame is 0x32 pixels; width and height must be at least 1"
    );
    assert_eq!(
        decode_err(raw(100_000, 100_000, 0, PixelFormat::Mono8, &data), LIMITS),
        "frame is 100000x100000 pixels (10000000000), more than the limit of 67108864"
    );
    let max = u32::MAX;
    assert!(decode_err(raw(max, max, 0, PixelFormat::Rgba8, &data), LIMITS).contains("more than the limit"));
    // With no pixel limit the byte arithmetic itself must not wrap.
    let unlimited = DecodeLimits {
        max_pixels: u64::MAX,
        max_bytes: u64::MAX,
    };
    assert_eq!(
        decode_err(raw(max, max, 0, PixelFormat::Rgba8, &data), unlimited),
        "frame of 4294967295x4294967295 RGBa8 with stride 17179869180 is too large to address"
    );
    let msg = decode_err(raw(max, max, max, PixelFormat::Mono8, &data), unlimited);
    assert!(
        msg.starts_with("frame data is 1000 bytes, expected 18446744065119617025"),
        "{msg}"
    );
}

#[test]
fn a_row_one_byte_short_is_refused_and_exact_sizes_accepted() {
    let mut out = Image::default();
    let data = noise(3 * 100, 2);
    decode(
        raw(3, 3, 100, PixelFormat::Mono16, &data[..206]),
        LIMITS,
        &mut out,
    )
    .unwrap();
    decode(raw(3, 3, 100, PixelFormat::Mono16, &data), LIMITS, &mut out).unwrap();
    let msg = decode_err(raw(3, 3, 100, PixelFormat::Mono16, &data[..205]), LIMITS);
    assert!(msg.starts_with("frame data is 205 bytes, expected 300"), "{msg}");
}

fn encode(image: &image::DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

/// A smooth 37x21 test pattern (odd sizes catch row-padding bugs in encoders and decoders).
fn pat(channel: u32, x: u32, y: u32) -> u8 {
    (x * 5 + y * 3 + channel * 40) as u8
}

fn decode_ok(bytes: &[u8]) -> Image {
    let mut out = Image::default();
    decode(FrameData::Encoded(bytes), LIMITS, &mut out).unwrap();
    out
}

#[test]
fn lossless_files_round_trip() {
    use image::{DynamicImage as D, ImageBuffer, Luma, LumaA, Rgb, Rgba};
    let (w, h) = (37, 21);
    let gray: Vec<u8> = (0..h).flat_map(|y| (0..w).map(move |x| pat(0, x, y))).collect();
    let rgb: Vec<u8> = (0..h)
        .flat_map(|y| (0..w).flat_map(move |x| [pat(0, x, y), pat(1, x, y), pat(2, x, y)]))
        .collect();
    let l8 = ImageBuffer::from_fn(w, h, |x, y| Luma([pat(0, x, y)]));
    let la8 = ImageBuffer::from_fn(w, h, |x, y| LumaA([pat(0, x, y), 7]));
    let rgb8 = ImageBuffer::from_fn(w, h, |x, y| Rgb([pat(0, x, y), pat(1, x, y), pat(2, x, y)]));
    let rgba8 = ImageBuffer::from_fn(w, h, |x, y| Rgba([pat(0, x, y), pat(1, x, y), pat(2, x, y), 9]));
    let cases = [
        (
            "PNG L8",
            encode(&D::ImageLuma8(l8.clone()), ImageFormat::Png),
            &gray,
        ),
        ("PNG LA8", encode(&D::ImageLumaA8(la8), ImageFormat::Png), &gray),
        (
            "PNG RGB8",
            encode(&D::ImageRgb8(rgb8.clone()), ImageFormat::Png),
            &rgb,
        ),
        (
            "PNG RGBA8",
            encode(&D::ImageRgba8(rgba8.clone()), ImageFormat::Png),
            &rgb,
        ),
        (
            "BMP RGB8",
            encode(&D::ImageRgb8(rgb8.clone()), ImageFormat::Bmp),
            &rgb,
        ),
        ("BMP RGBA8", encode(&D::ImageRgba8(rgba8), ImageFormat::Bmp), &rgb),
        ("TIFF RGB8", encode(&D::ImageRgb8(rgb8), ImageFormat::Tiff), &rgb),
        ("TIFF L8", encode(&D::ImageLuma8(l8), ImageFormat::Tiff), &gray),
    ];
    for (what, bytes, expected) in cases {
        let out = decode_ok(&bytes);
        let channels = if expected.len() == gray.len() {
            Channels::Gray
        } else {
            Channels::Rgb
        };
        assert_eq!((out.width, out.height, out.channels), (w, h, channels), "{what}");
        assert_eq!(&out.data, expected, "{what}");
    }
}

#[test]
fn sixteen_bit_files_are_rounded_to_eight_bits() {
    use image::{DynamicImage as D, ImageBuffer, Luma, LumaA, Rgb};
    let values: Vec<u16> = vec![
        0,
        128,
        129,
        385,
        386,
        257 * 100 + 128,
        257 * 100 + 129,
        65_407,
        65_535,
    ];
    let expected: Vec<u8> = values
        .iter()
        .map(|&v| (f64::from(v) / 257.0).round() as u8)
        .collect();
    assert_eq!(&expected[..5], &[0, 0, 1, 1, 2]);
    let n = values.len() as u32;
    let l16 = ImageBuffer::from_fn(n, 1, |x, _| Luma([values[x as usize]]));
    let la16 = ImageBuffer::from_fn(n, 1, |x, _| LumaA([values[x as usize], 1]));
    let rgb16 = ImageBuffer::from_fn(n, 1, |x, _| Rgb([values[x as usize], 0, 65_535]));
    for (what, bytes) in [
        ("PNG L16", encode(&D::ImageLuma16(l16.clone()), ImageFormat::Png)),
        ("PNG LA16", encode(&D::ImageLumaA16(la16), ImageFormat::Png)),
        ("TIFF L16", encode(&D::ImageLuma16(l16), ImageFormat::Tiff)),
    ] {
        let out = decode_ok(&bytes);
        assert_eq!((out.channels, &out.data), (Channels::Gray, &expected), "{what}");
    }
    let out = decode_ok(&encode(&D::ImageRgb16(rgb16), ImageFormat::Png));
    let rgb: Vec<u8> = expected.iter().flat_map(|&v| [v, 0, 255]).collect();
    assert_eq!((out.channels, out.data), (Channels::Rgb, rgb));
}

#[test]
fn large_sixteen_bit_file_narrows_in_place_across_blocks() {
    use image::{DynamicImage as D, ImageBuffer, Rgba};
    let (w, h) = (NARROW_BLOCK as u32 + 3, 3);
    let rgba16 = ImageBuffer::from_fn(w, h, |x, y| {
        Rgba([(x * 97) as u16, (y * 20_000) as u16, 65_535, 0])
    });
    let out = decode_ok(&encode(&D::ImageRgba16(rgba16.clone()), ImageFormat::Png));
    let expected: Vec<u8> = rgba16
        .pixels()
        .flat_map(|p| [reduce16(p[0]), reduce16(p[1]), reduce16(p[2])])
        .collect();
    assert_eq!((out.channels, out.data), (Channels::Rgb, expected));
}

#[test]
fn jpeg_round_trips_within_compression_error() {
    use image::{DynamicImage as D, ImageBuffer, Rgb};
    let (w, h) = (64, 48);
    // Smooth and without wrap-around edges: JPEG is only near-lossless on such content.
    let rgb8 = ImageBuffer::from_fn(w, h, |x, y| {
        Rgb([(200 - x - y) as u8, (x + y) as u8, (x * 2) as u8])
    });
    let out = decode_ok(&encode(&D::ImageRgb8(rgb8.clone()), ImageFormat::Jpeg));
    assert_eq!((out.width, out.height, out.channels), (w, h, Channels::Rgb));
    let diff: u64 = out
        .data
        .iter()
        .zip(rgb8.as_raw())
        .map(|(&a, &b)| u64::from(a.abs_diff(b)))
        .sum();
    let mean = diff as f64 / out.data.len() as f64;
    assert!(mean < 3.0, "mean abs diff {mean}");
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(png: &mut Vec<u8>, kind: &[u8; 4], body: &[u8]) {
    png.extend_from_slice(&(body.len() as u32).to_be_bytes());
    let start = png.len();
    png.extend_from_slice(kind);
    png.extend_from_slice(body);
    let crc = crc32(&png[start..]);
    png.extend_from_slice(&crc.to_be_bytes());
}

#[test]
fn decompression_bomb_is_refused_before_decoding() {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit gray, deflate, no filter, no interlace
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut png, b"IEND", &[]);
    assert_eq!(crc32(b"IEND"), 0xAE42_6082);
    let mut out = Image::default();
    let err = decode(FrameData::Encoded(&png), LIMITS, &mut out).unwrap_err();
    assert_eq!(
        err.to_string(),
        "frame is 100000x100000 pixels (10000000000), more than the limit of 67108864"
    );
    assert_eq!(out.data.capacity(), 0, "nothing was allocated for the pixels");
}

#[test]
fn unknown_and_broken_bytes_are_refused() {
    let unsupported = "unsupported encoded format: the bytes are not PNG, JPEG, BMP or TIFF";
    assert_eq!(
        decode_err(FrameData::Encoded(b"hello, not an image"), LIMITS),
        unsupported
    );
    assert_eq!(decode_err(FrameData::Encoded(b""), LIMITS), unsupported);
    assert_eq!(
        decode_err(FrameData::Encoded(b"GIF89a\x01\x00\x01\x00"), LIMITS),
        unsupported
    );
    let msg = decode_err(FrameData::Encoded(b"\x89PNG\r\n\x1a\n\x00\x00"), LIMITS);
    assert!(msg.starts_with("cannot decode the encoded frame: "), "{msg}");
    let mut png = encode(&image::DynamicImage::new_luma8(40, 40), ImageFormat::Png);
    png.truncate(png.len() - 20);
    let msg = decode_err(FrameData::Encoded(&png), LIMITS);
    assert!(msg.starts_with("cannot decode the encoded frame: "), "{msg}");
}

/// A PNG whose header claims `width` x `height` pixels of 16-bit RGBA over
/// almost no data.
fn rgba16_png_header(width: u32, height: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[16, 6, 0, 0, 0]); // 16-bit RGBA, deflate, no filter, no interlace
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut png, b"IEND", &[]);
    png
}

#[test]
fn what_a_decode_holds_is_read_from_the_header_and_capped_in_bytes() {
    // Found by a hostile client: a 0.5 MB 16-bit RGBA PNG made the server
    // allocate 453 MiB, as the limit counted pixels, not bytes.
    let png = rgba16_png_header(4000, 4000);
    let cost = decode_cost(FrameData::Encoded(&png), LIMITS).unwrap();
    assert_eq!(
        (cost.width, cost.height, cost.bytes),
        (4000, 4000, 4000 * 4000 * 8)
    );
    let limits = DecodeLimits {
        max_bytes: 64 << 20,
        ..LIMITS
    };
    let expected =
        "a 4000x4000 frame needs 128000000 bytes to decode, more than the limit of 67108864 bytes per frame";
    assert_eq!(
        decode_cost(FrameData::Encoded(&png), limits)
            .unwrap_err()
            .to_string(),
        expected
    );
    let mut out = Image::default();
    assert_eq!(decode_err(FrameData::Encoded(&png), limits), expected);
    decode(FrameData::Encoded(&png), limits, &mut out).unwrap_err();
    assert_eq!(out.data.capacity(), 0, "nothing was allocated for the pixels");

    // A raw buffer is charged for the image it converts into.
    let data = noise(64 * 32 * 2, 3);
    let cost = decode_cost(raw(64, 32, 0, PixelFormat::Mono16, &data), LIMITS).unwrap();
    assert_eq!(cost.bytes, 64 * 32);
    // TIFF's decoder fills a buffer of its own before the output.
    let tiff = encode(&image::DynamicImage::new_rgb8(37, 21), ImageFormat::Tiff);
    assert_eq!(
        decode_cost(FrameData::Encoded(&tiff), LIMITS).unwrap().bytes,
        37 * 21 * 3 * 2
    );
}

#[test]
fn a_cut_or_inflated_jpeg_is_refused_rather_than_judged_as_if_whole() {
    let image = image::DynamicImage::ImageRgb8(image::ImageBuffer::from_fn(64, 64, |x, y| {
        image::Rgb([pat(0, x, y), pat(1, x, y), pat(2, x, y)])
    }));
    let jpeg = encode(&image, ImageFormat::Jpeg);
    decode_ok(&jpeg);

    let half = &jpeg[..jpeg.len() / 2];
    assert_eq!(
        decode_err(FrameData::Encoded(half), LIMITS),
        "the JPEG has no end-of-image marker: the file is cut short"
    );

    // The header says 8192x8192; the data is for 64x64.
    let mut inflated = jpeg.clone();
    let sof = inflated
        .windows(2)
        .position(|marker| marker == [0xFF, 0xC0])
        .expect("a baseline JPEG");
    // Marker, length (2), precision (1), then height and width.
    inflated[sof + 5..sof + 9].copy_from_slice(&[0x20, 0x00, 0x20, 0x00]);
    let message = decode_err(FrameData::Encoded(&inflated), LIMITS);
    assert_eq!(
        message,
        format!(
            "the JPEG's header says 8192x8192, which needs at least 131072 bytes, but the file has {}",
            inflated.len()
        )
    );
}
