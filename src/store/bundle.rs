//! The recipe file that `ExportRecipe` writes and `ImportRecipe` reads, so a
//! recipe moves from one machine to another whole: its settings, its good
//! frames as stored and its reference as stored, in one checked file.
//!
//! Layout, little-endian: magic `LOUPEREC`, u32 format version, u64 total
//! file length, u32 settings length, u32 good-frame count, u64 reference
//! length (0: no reference yet); then the settings (the JSON the store's
//! `recipe.json` uses: `{"name": ..., "settings": {...}}`), each good frame
//! as a u64 length and its stored form ([`super::frames`]), the reference
//! file as stored ([`crate::reference::file`], with its own CRC32), and a
//! SHA-256 of everything before it. Decoding checks the magic, the version
//! (a newer one is refused by name), the length and the checksum before it
//! reads any section, and every section length against what is left.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::frames;
use crate::engine::RecipeSettings;
use crate::imaging::OwnedFrame;
use crate::reference::{self, Reference, ReferenceError};

/// Starts every recipe file.
pub const MAGIC: &[u8; 8] = b"LOUPEREC";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Magic, version, total length, settings length, frame count, reference
/// length.
pub const HEADER: usize = 8 + 4 + 8 + 4 + 4 + 8;
/// The trailing SHA-256.
pub const CHECKSUM: usize = 32;
/// Bytes a good frame costs in the file beyond its client bytes: its length
/// prefix and, for a raw frame, the stored header.
pub const FRAME_OVERHEAD: u64 = 8 + 21;

/// Why a recipe file cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bytes do not start with the magic.
    #[error("this is not a Loupe recipe file (it does not start with LOUPEREC)")]
    NotARecipeFile,
    /// A format version this code does not read.
    #[error(
        "the recipe file has format version {found}, this Loupe reads version {supported}; \
         {hint}"
    )]
    Version {
        /// The version in the file.
        found: u32,
        /// The version this code reads.
        supported: u32,
        /// What to do about it.
        hint: &'static str,
    },
    /// Fewer bytes than the header says.
    #[error(
        "the recipe file is truncated: it has {found} bytes, its header says {expected}; \
         the copy or download was cut short"
    )]
    Truncated {
        /// Bytes the header calls for.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// More bytes than the header says.
    #[error("the recipe file has {found} bytes, its header says {expected}; something was appended to it")]
    TooLong {
        /// Bytes the header calls for.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// The SHA-256 does not match the contents.
    #[error("the recipe file is corrupt: its SHA-256 does not match its contents; copy it again")]
    Checksum,
    /// A section cannot be read although the checksum matched.
    #[error("the recipe file is damaged: {0}")]
    Damaged(String),
    /// The reference section cannot be read, or the reference to export is
    /// not valid.
    #[error("the recipe file's reference: {0}")]
    Reference(#[from] ReferenceError),
}

/// What a recipe file holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Contents {
    /// The recipe's name where it was exported.
    pub name: String,
    /// Its settings.
    pub settings: RecipeSettings,
    /// Its good frames, as stored.
    pub frames: Vec<OwnedFrame>,
    /// Its reference, if it had one.
    pub reference: Option<Reference>,
}

/// The settings section.
#[derive(Serialize, Deserialize)]
struct Meta {
    name: String,
    settings: RecipeSettings,
}

/// The bytes of a recipe file for `contents`.
pub fn encode(contents: &Contents) -> Result<Vec<u8>, BundleError> {
    let meta = serde_json::to_vec(&Meta {
        name: contents.name.clone(),
        settings: contents.settings.clone(),
    })
    .map_err(|error| BundleError::Damaged(format!("the settings cannot be written: {error}")))?;
    let reference = match &contents.reference {
        Some(reference) => reference::to_bytes(reference)?,
        None => Vec::new(),
    };
    let frames: Vec<Vec<u8>> = contents.frames.iter().map(frames::encode).collect();
    let too_many = |what: &str| BundleError::Damaged(format!("{what} does not fit the format"));
    let meta_len = u32::try_from(meta.len()).map_err(|_| too_many("the settings section"))?;
    let frame_count = u32::try_from(frames.len()).map_err(|_| too_many("the good-frame count"))?;
    let total = HEADER
        + meta.len()
        + frames.iter().map(|frame| 8 + frame.len()).sum::<usize>()
        + reference.len()
        + CHECKSUM;

    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(total as u64).to_le_bytes());
    out.extend_from_slice(&meta_len.to_le_bytes());
    out.extend_from_slice(&frame_count.to_le_bytes());
    out.extend_from_slice(&(reference.len() as u64).to_le_bytes());
    out.extend_from_slice(&meta);
    for frame in &frames {
        out.extend_from_slice(&(frame.len() as u64).to_le_bytes());
        out.extend_from_slice(frame);
    }
    out.extend_from_slice(&reference);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    debug_assert_eq!(out.len(), total);
    Ok(out)
}

/// The total length a recipe file's first bytes declare, once at least
/// [`HEADER`] bytes are given; checks the magic and the version on the way,
/// so a stream can be refused at its first chunk.
pub fn declared_length(start: &[u8]) -> Result<u64, BundleError> {
    let found = start.len() as u64;
    if !start.starts_with(MAGIC) {
        return Err(if !start.is_empty() && MAGIC.starts_with(start) {
            BundleError::Truncated {
                expected: HEADER as u64,
                found,
            }
        } else {
            BundleError::NotARecipeFile
        });
    }
    if start.len() < HEADER {
        return Err(BundleError::Truncated {
            expected: HEADER as u64,
            found,
        });
    }
    let version = u32_at(start, 8);
    if version != FORMAT_VERSION {
        let hint = if version > FORMAT_VERSION {
            "it was exported by a newer Loupe; upgrade Loupe on this machine to import it"
        } else {
            "the file is damaged or was not written by Loupe"
        };
        return Err(BundleError::Version {
            found: version,
            supported: FORMAT_VERSION,
            hint,
        });
    }
    Ok(u64_at(start, 12))
}

/// Reads a recipe file; every section slices `bytes` (no copy).
pub fn decode(bytes: &Bytes) -> Result<Contents, BundleError> {
    let expected = declared_length(bytes)?;
    let found = bytes.len() as u64;
    if found < expected {
        return Err(BundleError::Truncated { expected, found });
    }
    if found > expected {
        return Err(BundleError::TooLong { expected, found });
    }
    if bytes.len() < HEADER + CHECKSUM {
        return Err(BundleError::Damaged(format!(
            "its header declares {expected} bytes, fewer than a header and a checksum"
        )));
    }
    let body_end = bytes.len() - CHECKSUM;
    if Sha256::digest(&bytes[..body_end]).as_slice() != &bytes[body_end..] {
        return Err(BundleError::Checksum);
    }
    let (meta_len, frame_count, reference_len) = (u32_at(bytes, 20), u32_at(bytes, 24), u64_at(bytes, 28));
    let mut body = Cursor {
        bytes: bytes.slice(HEADER..body_end),
        at: 0,
    };
    let meta: Meta = serde_json::from_slice(&body.take(u64::from(meta_len), "the settings section")?)
        .map_err(|error| BundleError::Damaged(format!("the settings cannot be read: {error}")))?;
    // Each frame takes at least its length prefix: a count beyond what is
    // left is refused before anything is allocated for it.
    if u64::from(frame_count) * 8 > body.left() {
        return Err(BundleError::Damaged(format!(
            "it declares {frame_count} good frames, more than its {} bytes can hold",
            body.left()
        )));
    }
    let mut stored = Vec::with_capacity(frame_count as usize);
    for index in 0..frame_count {
        let what = || format!("good frame {index}");
        let len = u64_at(&body.take(8, &what())?, 0);
        let frame = frames::decode(body.take(len, &what())?)
            .map_err(|reason| BundleError::Damaged(format!("{}: {reason}", what())))?;
        stored.push(frame);
    }
    let reference = match reference_len {
        0 => None,
        len => Some(reference::decode(&body.take(len, "the reference")?)?),
    };
    if body.left() > 0 {
        return Err(BundleError::Damaged(format!(
            "{} bytes after the reference that no section declares",
            body.left()
        )));
    }
    Ok(Contents {
        name: meta.name,
        settings: meta.settings,
        frames: stored,
        reference,
    })
}

/// Reads sections off the body, each checked against what is left.
struct Cursor {
    bytes: Bytes,
    at: usize,
}

impl Cursor {
    fn left(&self) -> u64 {
        (self.bytes.len() - self.at) as u64
    }

    fn take(&mut self, len: u64, what: &str) -> Result<Bytes, BundleError> {
        if len > self.left() {
            return Err(BundleError::Damaged(format!(
                "{what} declares {len} bytes, only {} are left",
                self.left()
            )));
        }
        let end = self.at + len as usize;
        let section = self.bytes.slice(self.at..end);
        self.at = end;
        Ok(section)
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes; this is a bug"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes; this is a bug"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::PixelFormat;
    use crate::reference::MatchMode;

    fn contents() -> Contents {
        Contents {
            name: "pcb-top".into(),
            settings: RecipeSettings {
                sensitivity: 1.5,
                ..RecipeSettings::default()
            },
            frames: vec![
                OwnedFrame::Encoded(Bytes::from_static(b"\x89PNG not really")),
                OwnedFrame::Raw {
                    width: 3,
                    height: 2,
                    stride: 4,
                    format: PixelFormat::Rgb8,
                    data: (0..8).collect::<Vec<u8>>().into(),
                },
            ],
            reference: Some(Reference {
                mode: MatchMode::Global,
                channels: 3,
                grid_width: 2,
                grid_height: 2,
                features: (0..12).map(|i| i as f32 * 0.25).collect(),
                image_count: 2,
                threshold: 1.5,
                calibration_scores: vec![1.0, 1.25],
                model_id: "sha256:model".into(),
                input_width: 32,
                input_height: 32,
                pixels: None,
                probes: 3,
            }),
        }
    }

    fn file() -> Vec<u8> {
        encode(&contents()).unwrap()
    }

    #[test]
    fn a_recipe_round_trips() {
        let bytes = file();
        assert!(bytes.starts_with(MAGIC));
        assert_eq!(declared_length(&bytes).unwrap(), bytes.len() as u64);
        assert_eq!(decode(&Bytes::from(bytes)).unwrap(), contents());

        let empty = Contents {
            frames: Vec::new(),
            reference: None,
            ..contents()
        };
        assert_eq!(decode(&Bytes::from(encode(&empty).unwrap())).unwrap(), empty);
    }

    #[test]
    fn a_flipped_byte_anywhere_in_the_body_is_refused() {
        let clean = file();
        for at in [
            HEADER,
            HEADER + 10,
            clean.len() / 2,
            clean.len() - CHECKSUM - 1,
            clean.len() - 1,
        ] {
            let mut bytes = clean.clone();
            bytes[at] ^= 0x01;
            let error = decode(&Bytes::from(bytes)).unwrap_err();
            assert!(matches!(error, BundleError::Checksum), "byte {at}: {error}");
            assert!(error.to_string().contains("SHA-256 does not match"), "{error}");
        }
    }

    #[test]
    fn a_truncated_file_is_refused_with_both_lengths() {
        let bytes = file();
        let total = bytes.len() as u64;
        let error = decode(&Bytes::copy_from_slice(&bytes[..bytes.len() - 1])).unwrap_err();
        assert!(
            matches!(error, BundleError::Truncated { expected, found } if expected == total && found == total - 1),
            "{error}"
        );
        assert!(error.to_string().contains("truncated"), "{error}");
        // Cut inside the header or the magic.
        for cut in [3, 8, HEADER - 1] {
            let error = decode(&Bytes::copy_from_slice(&bytes[..cut])).unwrap_err();
            assert!(
                matches!(error, BundleError::Truncated { .. }),
                "cut at {cut}: {error}"
            );
        }
        let mut longer = bytes;
        longer.push(0);
        assert!(matches!(
            decode(&Bytes::from(longer)).unwrap_err(),
            BundleError::TooLong { .. }
        ));
    }

    #[test]
    fn a_newer_version_is_refused_by_name() {
        let mut bytes = file();
        bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let error = decode(&Bytes::from(bytes)).unwrap_err();
        assert!(matches!(error, BundleError::Version { found: 2, .. }), "{error}");
        let message = error.to_string();
        assert!(
            message.contains("format version 2") && message.contains("newer Loupe"),
            "{message}"
        );
    }

    #[test]
    fn other_files_are_not_recipe_files() {
        let error = decode(&Bytes::from_static(b"\x89PNG\r\n\x1a\n and more")).unwrap_err();
        assert!(matches!(error, BundleError::NotARecipeFile), "{error}");
        assert!(matches!(
            decode(&Bytes::new()).unwrap_err(),
            BundleError::NotARecipeFile
        ));
    }

    /// A file whose checksum matches but whose sections lie (as a careless
    /// or hostile writer could make one) is refused without allocating for
    /// the lie.
    #[test]
    fn sections_are_checked_against_what_is_left() {
        let reseal = |mut bytes: Vec<u8>| {
            let end = bytes.len() - CHECKSUM;
            let digest = Sha256::digest(&bytes[..end]);
            bytes[end..].copy_from_slice(&digest);
            Bytes::from(bytes)
        };
        let mut bytes = file();
        bytes[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        let error = decode(&reseal(bytes)).unwrap_err();
        assert!(error.to_string().contains("4294967295 good frames"), "{error}");

        let mut bytes = file();
        bytes[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        let error = decode(&reseal(bytes)).unwrap_err();
        assert!(
            error.to_string().contains("the settings section declares"),
            "{error}"
        );

        let mut bytes = file();
        let last = bytes.len() - CHECKSUM - 1;
        bytes[last] ^= 0xff;
        let error = decode(&reseal(bytes)).unwrap_err();
        assert!(matches!(error, BundleError::Reference(_)), "{error}");
    }
}
