//! The reference file: a recipe's golden reference (memory bank, grid, calibration),
//! as bytes and back, checked thoroughly on load. Writing the bytes to the data
//! folder is the store's job (one atomic writer for every file there).
//!
//! Layout, little-endian: magic `LOUPEREF`, u32 format version, u32 header length,
//! the header (mode u8, channels u32, grid width u32, grid height u32, image count
//! u32, threshold f32, model id as u32 length + UTF-8, calibration score count u32 +
//! f32s, feature count u64; since version 2 also input width u32, input height u32,
//! pixel model u8 (0 none, 1 present), feature scale f32, pixel scale f32), the
//! features as f32s, with a pixel model its ideal and tolerance planes (input width x
//! height f32s each), and a CRC32 of everything before it. Version 3 adds to the header,
//! after the pixel scale, the fast search's probes u32 (0: not recorded). Version 1
//! files (no input size, no pixel model) and version 2 files (no probes) are still
//! read.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use super::mode::MatchMode;

/// The format version this code writes (it also reads versions 1 and 2).
pub const FORMAT_VERSION: u32 = 3;

const MAGIC: &[u8; 8] = b"LOUPEREF";
/// Magic, version and header length.
const PREAMBLE: usize = 16;
/// The trailing CRC32.
const TRAILER: usize = 4;
/// Header bytes of version 1 with an empty model id and no calibration scores.
const MIN_HEADER_V1: usize = 1 + 4 * 6 + 4 + 8;
/// Header bytes version 2 adds: input size, pixel model flag and its scales.
const HEADER_V2: usize = 4 + 4 + 1 + 4 + 4;
/// Header bytes version 3 adds: the fast search's probes.
const HEADER_V3: usize = 4;
/// Header bytes of version 2 with an empty model id and no calibration scores.
const MIN_HEADER_V2: usize = MIN_HEADER_V1 + HEADER_V2;
/// Header bytes of this version with an empty model id and no calibration scores.
const MIN_HEADER: usize = MIN_HEADER_V2 + HEADER_V3;
/// What `decode` calls its input when it has no file name.
const IN_MEMORY: &str = "reference data";

/// A golden reference: the feature memory bank plus what is needed to use it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// How the bank is matched.
    pub mode: MatchMode,
    /// Feature channels per patch (152 for the default model).
    pub channels: u32,
    /// Feature grid of one image, cells across, at the recipe's input size.
    pub grid_width: u32,
    /// Feature grid of one image, cells down, at the recipe's input size.
    pub grid_height: u32,
    /// Global: `rows` patches x `channels`, row-major (the coreset). Aligned: `images` x
    /// channels x grid_height x grid_width (NCHW per image). Shared, not copied, by
    /// everything that searches it.
    pub features: Arc<[f32]>,
    /// How many good images it was built from.
    pub image_count: u32,
    /// Calibrated threshold on the anomaly score.
    pub threshold: f32,
    /// The good-frame scores the threshold came from: out of fold, or of the
    /// perturbed copies of one golden image (kept, so a new target false-reject
    /// rate moves the threshold without a new enrollment).
    pub calibration_scores: Vec<f32>,
    /// Free-form identity of the model that produced the features (e.g. manifest
    /// sha256); checked at load by the caller.
    pub model_id: String,
    /// Model input width it was built at (0: not recorded, version 1 files).
    pub input_width: u32,
    /// Model input height it was built at (0: not recorded).
    pub input_height: u32,
    /// Aligned: the pixel-level variation model, at the input size.
    pub pixels: Option<PixelReference>,
    /// Global, fast search: the inverted lists each patch probes, chosen at
    /// enrollment on the calibration frames; 0 where not recorded (files before
    /// version 3, the exact search, aligned references), and the search's own
    /// rule picks when the bank is built.
    pub probes: u32,
}

/// The pixel-level half of an aligned reference: the variation model of the
/// golden images (see `scoring::variation`) and the scales that put the feature
/// map and the pixel map in one unit (each divided by the highest value the good
/// frames' calibration reached on it).
#[derive(Debug, Clone, PartialEq)]
pub struct PixelReference {
    /// The mean of the registered golden images, gray levels, input size.
    pub ideal: Vec<f32>,
    /// Per-pixel tolerance, gray levels, input size.
    pub tolerance: Vec<f32>,
    /// Divides the feature map.
    pub feature_scale: f32,
    /// Divides the pixel map (`|frame - ideal| / tolerance`).
    pub pixel_scale: f32,
}

impl Reference {
    /// Number of patch rows (global) or images (aligned); 0 if the shape is degenerate.
    pub fn rows(&self) -> usize {
        let per_row = match self.mode {
            MatchMode::Global => self.channels as usize,
            MatchMode::Aligned => {
                self.channels as usize * self.grid_width as usize * self.grid_height as usize
            }
        };
        self.features.len().checked_div(per_row).unwrap_or(0)
    }
}

/// Errors of reading and writing references. `origin` names the file, or says
/// "reference data" for bytes decoded in memory.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The file cannot be read.
    #[error("reference file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The data does not start with the reference magic.
    #[error("{origin} is not a Loupe reference file (it does not start with LOUPEREF); check the path")]
    BadMagic {
        /// Which file.
        origin: String,
    },
    /// The file was written by a different format version.
    #[error(
        "{origin} was written by format version {found}; this Loupe reads version {supported}; \
         rebuild the reference with this Loupe"
    )]
    Version {
        /// Which file.
        origin: String,
        /// The version in the file.
        found: u32,
        /// The version this code reads.
        supported: u32,
    },
    /// The file is shorter than its header says.
    #[error(
        "{origin} is truncated: it has {found} bytes, its header needs {expected}; \
         the write or copy was cut short, copy or rebuild it"
    )]
    Truncated {
        /// Which file.
        origin: String,
        /// Bytes the header calls for.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// The contents do not match the stored checksum.
    #[error(
        "{origin} is corrupt: its checksum is {computed:08x}, the file says {stored:08x}; \
         restore or rebuild it"
    )]
    Checksum {
        /// Which file.
        origin: String,
        /// CRC32 stored in the file.
        stored: u32,
        /// CRC32 of the contents.
        computed: u32,
    },
    /// The file is well-formed but describes an impossible reference.
    #[error("{origin} is corrupt: {reason}; rebuild it")]
    Corrupt {
        /// Which file.
        origin: String,
        /// What is inconsistent.
        reason: String,
    },
    /// `save` was given a reference that could not be loaded back.
    #[error("refusing to save an invalid reference: {reason}")]
    Invalid {
        /// What is inconsistent.
        reason: String,
    },
}

impl ReferenceError {
    /// Names `path` as the origin of a decoding error.
    fn in_file(mut self, path: &Path) -> Self {
        if let Self::BadMagic { origin }
        | Self::Version { origin, .. }
        | Self::Truncated { origin, .. }
        | Self::Checksum { origin, .. }
        | Self::Corrupt { origin, .. } = &mut self
        {
            *origin = format!("reference file {}", path.display());
        }
        self
    }
}

fn corrupt(reason: impl Into<String>) -> ReferenceError {
    ReferenceError::Corrupt {
        origin: IN_MEMORY.into(),
        reason: reason.into(),
    }
}

fn truncated(expected: usize, found: usize) -> ReferenceError {
    ReferenceError::Truncated {
        origin: IN_MEMORY.into(),
        expected: expected as u64,
        found: found as u64,
    }
}

/// Serialises `reference` as it is. Lengths beyond the format's u32 fields are
/// clamped, which [`to_bytes`] rules out beforehand; the bytes are then refused by
/// [`decode`].
pub fn encode(reference: &Reference) -> Vec<u8> {
    let id = reference.model_id.as_bytes();
    let header_len = MIN_HEADER + id.len() + 4 * reference.calibration_scores.len();
    let planes = reference
        .pixels
        .as_ref()
        .map_or(0, |p| p.ideal.len() + p.tolerance.len());
    let total = PREAMBLE + header_len + 4 * (reference.features.len() + planes) + TRAILER;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&clamp_u32(header_len).to_le_bytes());
    out.push(reference.mode.code());
    for value in [
        reference.channels,
        reference.grid_width,
        reference.grid_height,
        reference.image_count,
    ] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.extend_from_slice(&reference.threshold.to_le_bytes());
    out.extend_from_slice(&clamp_u32(id.len()).to_le_bytes());
    out.extend_from_slice(id);
    out.extend_from_slice(&clamp_u32(reference.calibration_scores.len()).to_le_bytes());
    put_f32s(&mut out, &reference.calibration_scores);
    out.extend_from_slice(&(reference.features.len() as u64).to_le_bytes());
    out.extend_from_slice(&reference.input_width.to_le_bytes());
    out.extend_from_slice(&reference.input_height.to_le_bytes());
    let pixels = reference.pixels.as_ref();
    out.push(u8::from(pixels.is_some()));
    out.extend_from_slice(&pixels.map_or(0.0, |p| p.feature_scale).to_le_bytes());
    out.extend_from_slice(&pixels.map_or(0.0, |p| p.pixel_scale).to_le_bytes());
    out.extend_from_slice(&reference.probes.to_le_bytes());
    put_f32s(&mut out, &reference.features);
    if let Some(pixels) = pixels {
        put_f32s(&mut out, &pixels.ideal);
        put_f32s(&mut out, &pixels.tolerance);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn clamp_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Appends `values` little-endian: one resize, then fixed 4-byte chunks, which
/// compiles to a plain copy on little-endian machines.
fn put_f32s(out: &mut Vec<u8>, values: &[f32]) {
    let start = out.len();
    out.resize(start + 4 * values.len(), 0);
    let (chunks, _) = out[start..].as_chunks_mut::<4>();
    for (chunk, value) in chunks.iter_mut().zip(values) {
        *chunk = value.to_le_bytes();
    }
}

fn get_f32s(bytes: &[u8]) -> Vec<f32> {
    let (chunks, _) = bytes.as_chunks::<4>();
    chunks.iter().map(|&chunk| f32::from_le_bytes(chunk)).collect()
}

/// Reads fields off the header in order; running past its end means the header
/// length and the fields disagree.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ReferenceError> {
        let (head, rest) = (self.bytes.split_at_checked(n))
            .ok_or_else(|| corrupt(format!("the header is too short for its {what}")))?;
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ReferenceError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, ReferenceError> {
        self.array(what).map(u32::from_le_bytes)
    }
}

/// Parses and checks a reference: magic, then version (before anything else), then
/// every length against the bytes present (so a truncated file is refused before any
/// allocation sized by it), then the checksum, then the contents' consistency.
pub fn decode(bytes: &[u8]) -> Result<Reference, ReferenceError> {
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(ReferenceError::BadMagic {
            origin: IN_MEMORY.into(),
        });
    }
    let word = |at: usize| {
        bytes
            .get(at..at + 4)
            .and_then(|b| b.first_chunk())
            .map(|b| u32::from_le_bytes(*b))
    };
    let shortest = PREAMBLE + MIN_HEADER_V1 + TRAILER;
    let version = word(8).ok_or_else(|| truncated(shortest, bytes.len()))?;
    if !(1..=FORMAT_VERSION).contains(&version) {
        return Err(ReferenceError::Version {
            origin: IN_MEMORY.into(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let header_len = word(12).ok_or_else(|| truncated(shortest, bytes.len()))? as usize;
    let min_header = match version {
        1 => MIN_HEADER_V1,
        2 => MIN_HEADER_V2,
        _ => MIN_HEADER,
    };
    if header_len < min_header {
        return Err(corrupt(format!(
            "the header length {header_len} is below the minimum {min_header}"
        )));
    }
    let body = PREAMBLE + header_len;
    let Some(header) = bytes.get(PREAMBLE..body) else {
        return Err(truncated(body + TRAILER, bytes.len()));
    };

    let mut cursor = Cursor { bytes: header };
    let [mode] = cursor.array::<1>("mode")?;
    let channels = cursor.u32("channel count")?;
    let grid_width = cursor.u32("grid width")?;
    let grid_height = cursor.u32("grid height")?;
    let image_count = cursor.u32("image count")?;
    let threshold = f32::from_le_bytes(cursor.array("threshold")?);
    let id_len = cursor.u32("model id length")? as usize;
    let model_id = cursor.take(id_len, "model id")?;
    let score_count = cursor.u32("calibration score count")? as usize;
    let scores = cursor.take(score_count.saturating_mul(4), "calibration scores")?;
    let feature_count = u64::from_le_bytes(cursor.array("feature count")?);
    let (input_width, input_height, has_pixels, feature_scale, pixel_scale) = if version == 1 {
        (0, 0, 0, 0.0, 0.0)
    } else {
        (
            cursor.u32("input width")?,
            cursor.u32("input height")?,
            cursor.array::<1>("pixel model flag")?[0],
            f32::from_le_bytes(cursor.array("feature scale")?),
            f32::from_le_bytes(cursor.array("pixel scale")?),
        )
    };
    let probes = if version < 3 { 0 } else { cursor.u32("probes")? };
    if has_pixels > 1 {
        return Err(corrupt(format!("unknown pixel model flag {has_pixels}")));
    }
    // Both planes of a pixel model, in values (at most 2 x u32::MAX^2: fits u64).
    let plane_values = if has_pixels == 1 {
        2 * u64::from(input_width) * u64::from(input_height)
    } else {
        0
    };
    if !cursor.bytes.is_empty() {
        return Err(corrupt(format!(
            "the header has {} unexpected trailing bytes",
            cursor.bytes.len()
        )));
    }

    let values = feature_count.saturating_add(plane_values);
    let expected = usize::try_from(values)
        .ok()
        .and_then(|count| count.checked_mul(4))
        .and_then(|len| len.checked_add(body + TRAILER))
        .ok_or_else(|| corrupt(format!("the feature count {feature_count} is impossibly large")))?;
    if bytes.len() < expected {
        return Err(ReferenceError::Truncated {
            origin: IN_MEMORY.into(),
            expected: values.saturating_mul(4).saturating_add((body + TRAILER) as u64),
            found: bytes.len() as u64,
        });
    }
    if bytes.len() > expected {
        return Err(corrupt(format!(
            "{} bytes follow the checksum",
            bytes.len() - expected
        )));
    }
    let Some((content, stored)) = bytes.split_last_chunk::<TRAILER>() else {
        return Err(truncated(expected, bytes.len()));
    };
    let stored = u32::from_le_bytes(*stored);
    let computed = crc32fast::hash(content);
    if stored != computed {
        return Err(ReferenceError::Checksum {
            origin: IN_MEMORY.into(),
            stored,
            computed,
        });
    }

    let mode = MatchMode::from_code(mode).ok_or_else(|| corrupt(format!("unknown match mode {mode}")))?;
    let model_id = String::from_utf8(model_id.to_vec()).map_err(|_| corrupt("the model id is not UTF-8"))?;
    let (features, planes) = content[body..].split_at(feature_count as usize * 4);
    let pixels = (has_pixels == 1).then(|| {
        let (ideal, tolerance) = planes.split_at(planes.len() / 2);
        PixelReference {
            ideal: get_f32s(ideal),
            tolerance: get_f32s(tolerance),
            feature_scale,
            pixel_scale,
        }
    });
    let reference = Reference {
        mode,
        channels,
        grid_width,
        grid_height,
        features: get_f32s(features).into(),
        image_count,
        threshold,
        calibration_scores: get_f32s(scores),
        model_id,
        input_width,
        input_height,
        pixels,
        probes,
    };
    check(&reference).map_err(corrupt)?;
    Ok(reference)
}

/// What makes a reference usable: a non-empty bank whose size fits its shape.
fn check(reference: &Reference) -> Result<(), String> {
    let Reference {
        channels,
        grid_width,
        grid_height,
        ..
    } = *reference;
    if channels == 0 || grid_width == 0 || grid_height == 0 {
        return Err(format!(
            "the feature shape {channels} channels x {grid_width}x{grid_height} cells is empty"
        ));
    }
    let len = reference.features.len();
    let (per_row, unit) = match reference.mode {
        MatchMode::Global => (channels as usize, "patch rows of the channel count"),
        MatchMode::Aligned => (
            channels as usize * grid_width as usize * grid_height as usize,
            "images of channels x grid height x grid width",
        ),
    };
    if len == 0 || !len.is_multiple_of(per_row) {
        return Err(format!(
            "{len} feature values are not a whole, non-zero number of {unit} ({per_row})"
        ));
    }
    if let Some(pixels) = &reference.pixels {
        let plane = reference.input_width as usize * reference.input_height as usize;
        if reference.mode != MatchMode::Aligned || plane == 0 {
            return Err("a pixel model needs the aligned mode and an input size".into());
        }
        if pixels.ideal.len() != plane || pixels.tolerance.len() != plane {
            return Err("the pixel model's planes do not match the input size".into());
        }
        let positive = |v: f32| v.is_finite() && v > 0.0;
        if !positive(pixels.feature_scale)
            || !positive(pixels.pixel_scale)
            || !pixels.tolerance.iter().all(|&t| positive(t))
        {
            return Err("the pixel model's scales and tolerances must be finite and above 0".into());
        }
    }
    Ok(())
}

/// The bytes of a reference file for `reference`, after checking that it is usable
/// and that it fits the format (so what is written can be read back).
pub fn to_bytes(reference: &Reference) -> Result<Vec<u8>, ReferenceError> {
    check(reference).map_err(|reason| ReferenceError::Invalid { reason })?;
    // The header length bounds the model id and the score count: if it fits, they do.
    let header_len = MIN_HEADER + reference.model_id.len() + 4 * reference.calibration_scores.len();
    if u32::try_from(header_len).is_err() {
        return Err(ReferenceError::Invalid {
            reason: "the model id and calibration scores do not fit the header".into(),
        });
    }
    Ok(encode(reference))
}

/// Wraps an I/O error about `path`.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReferenceError + '_ {
    move |source| ReferenceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads and decodes the reference at `path`; errors name the file.
pub fn load(path: &Path) -> Result<Reference, ReferenceError> {
    let bytes = fs::read(path).map_err(io(path))?;
    decode(&bytes).map_err(|error| error.in_file(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global() -> Reference {
        Reference {
            mode: MatchMode::Global,
            channels: 3,
            grid_width: 4,
            grid_height: 2,
            features: (0..15).map(|i| i as f32 * 0.5 - 2.0).collect(),
            image_count: 7,
            threshold: 1.25,
            calibration_scores: vec![0.5, 0.75, 1.0],
            model_id: "sha256:abc→d".into(),
            input_width: 32,
            input_height: 16,
            pixels: None,
            probes: 5,
        }
    }

    fn aligned() -> Reference {
        Reference {
            mode: MatchMode::Aligned,
            features: (0..2 * 3 * 4 * 2).map(|i| (i as f32).sin()).collect(),
            calibration_scores: Vec::new(),
            model_id: String::new(),
            probes: 0,
            ..global()
        }
    }

    fn with_pixels() -> Reference {
        Reference {
            pixels: Some(PixelReference {
                ideal: (0..32 * 16).map(|i| i as f32).collect(),
                tolerance: vec![20.0; 32 * 16],
                feature_scale: 3.5,
                pixel_scale: 1.25,
            }),
            ..aligned()
        }
    }

    /// `reference` as an older `version` wrote it: the header without its
    /// last `dropped` bytes (the fields added since).
    fn older(reference: &Reference, version: u32, dropped: usize) -> Vec<u8> {
        let mut bytes = encode(reference);
        let header_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        bytes.drain(PREAMBLE + header_len - dropped..PREAMBLE + header_len);
        bytes[8..12].copy_from_slice(&version.to_le_bytes());
        bytes[12..16].copy_from_slice(&((header_len - dropped) as u32).to_le_bytes());
        bytes.truncate(bytes.len() - TRAILER);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn reads_version_1_and_2_files() {
        // Version 1: without the input size, the pixel model and the probes.
        let reference = Reference {
            input_width: 0,
            input_height: 0,
            probes: 0,
            ..global()
        };
        let bytes = older(&reference, 1, HEADER_V2 + HEADER_V3);
        assert_eq!(decode(&bytes).unwrap(), reference);
        // Version 2: without the probes.
        for reference in [global(), with_pixels()] {
            let expected = Reference {
                probes: 0,
                ..reference.clone()
            };
            assert_eq!(decode(&older(&expected, 2, HEADER_V3)).unwrap(), expected);
        }
    }

    #[test]
    fn round_trips_both_modes() {
        for reference in [global(), aligned(), with_pixels()] {
            assert_eq!(decode(&encode(&reference)).unwrap(), reference);
        }
        assert_eq!(global().rows(), 5);
        assert_eq!(aligned().rows(), 2);
    }

    #[test]
    fn refuses_another_version_naming_both() {
        let mut bytes = encode(&global());
        bytes[8..12].copy_from_slice(&4u32.to_le_bytes());
        let error = decode(&bytes).unwrap_err();
        assert!(matches!(
            error,
            ReferenceError::Version {
                found: 4,
                supported: FORMAT_VERSION,
                ..
            }
        ));
        let message = error.to_string();
        assert!(
            message.contains("format version 4") && message.contains("reads version 3"),
            "{message}"
        );
        // The version is judged before the rest, however broken.
        assert!(matches!(
            decode(&bytes[..12]),
            Err(ReferenceError::Version { .. })
        ));
    }

    #[test]
    fn refuses_every_truncation() {
        for reference in [global(), aligned(), with_pixels()] {
            let bytes = encode(&reference);
            for len in 0..bytes.len() {
                let error = decode(&bytes[..len]).expect_err("a truncated file was accepted");
                assert!(
                    matches!(error, ReferenceError::Truncated { .. }),
                    "length {len}: {error}"
                );
            }
        }
    }

    #[test]
    fn refuses_every_flipped_byte() {
        let bytes = encode(&global());
        let data_start = bytes.len() - TRAILER - 4 * global().features.len();
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            let error = decode(&damaged).expect_err("a damaged file was accepted");
            if at >= data_start {
                assert!(
                    matches!(error, ReferenceError::Checksum { .. }),
                    "byte {at}: {error}"
                );
            }
        }
    }

    #[test]
    fn refuses_bad_magic_and_trailing_bytes() {
        let mut bytes = encode(&global());
        bytes[0] = b'X';
        assert!(matches!(decode(&bytes), Err(ReferenceError::BadMagic { .. })));
        assert!(matches!(decode(b"PNG"), Err(ReferenceError::BadMagic { .. })));
        let mut bytes = encode(&global());
        bytes.push(0);
        assert!(matches!(decode(&bytes), Err(ReferenceError::Corrupt { .. })));
    }

    #[test]
    fn refuses_inconsistent_shapes() {
        let mut ragged = global();
        ragged.features = ragged.features[..14].into();
        let mut empty = aligned();
        empty.features = Arc::new([]);
        let mut partial_image = aligned();
        partial_image.features = partial_image.features[..30].into();
        let mut no_channels = global();
        no_channels.channels = 0;
        let mut zero_tolerance = with_pixels();
        zero_tolerance.pixels.as_mut().unwrap().tolerance[3] = 0.0;
        let mut global_pixels = with_pixels();
        global_pixels.mode = MatchMode::Global;
        global_pixels.features = global().features;
        for reference in [
            ragged,
            empty,
            partial_image,
            no_channels,
            zero_tolerance,
            global_pixels,
        ] {
            let error = decode(&encode(&reference)).unwrap_err();
            assert!(matches!(error, ReferenceError::Corrupt { .. }), "{error}");
        }
    }

    #[test]
    fn loads_what_to_bytes_wrote_and_names_the_file_it_refuses() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("recipe.ref");
        fs::write(&path, to_bytes(&global()).unwrap()).unwrap();
        assert_eq!(load(&path).unwrap(), global());

        let mut bytes = fs::read(&path).unwrap();
        bytes[8] = 4;
        fs::write(&path, &bytes).unwrap();
        let message = load(&path).unwrap_err().to_string();
        assert!(
            message.contains(&path.display().to_string()) && message.contains("version 4"),
            "{message}"
        );
        let missing = folder.path().join("missing.ref");
        assert!(matches!(load(&missing), Err(ReferenceError::Io { .. })));
    }

    #[test]
    fn refuses_to_write_an_invalid_reference() {
        let mut ragged = global();
        ragged.features = ragged.features[..14].into();
        assert!(matches!(to_bytes(&ragged), Err(ReferenceError::Invalid { .. })));
    }
}
