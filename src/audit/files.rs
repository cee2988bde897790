//! The kept pictures: PNG files under `audit/files/<unix-day>/`, written
//! under a temporary name and renamed into place, so a file with its final
//! name is always whole; the database names them by their path relative
//! to the files folder.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::ImageEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};

use super::AuditError;
use crate::imaging::{Channels, Image};

/// The suffix of a file still being written.
const PARTIAL: &str = ".partial";

/// The files folder of the trail; cloning shares nothing but the path.
#[derive(Debug, Clone)]
pub struct Files {
    root: PathBuf,
}

impl Files {
    /// The folder `root` (created when the trail opens).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes `bytes` as `relative` (a path from [`Files::name`]):
    /// temporary name first, then a rename.
    pub fn write(&self, relative: &str, bytes: &[u8]) -> Result<(), AuditError> {
        let path = self.root.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|error| AuditError::io(parent, error))?;
        }
        let partial = path.with_extension(format!("png{PARTIAL}"));
        std::fs::write(&partial, bytes).map_err(|error| AuditError::io(&partial, error))?;
        std::fs::rename(&partial, &path).map_err(|error| {
            let _ = std::fs::remove_file(&partial);
            AuditError::io(&path, error)
        })
    }

    /// Reads the file `relative`.
    pub fn read(&self, relative: &str) -> Result<Vec<u8>, AuditError> {
        let path = self.root.join(relative);
        std::fs::read(&path).map_err(|error| AuditError::io(&path, error))
    }

    /// Removes the file `relative`; one already gone is fine.
    pub fn remove(&self, relative: &str) -> Result<(), AuditError> {
        let path = self.root.join(relative);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(AuditError::io(&path, error)),
        }
    }

    /// The relative paths of the frame and overlay files of result `id`
    /// judged at `at_ms`.
    pub fn names(at_ms: i64, id: &str) -> (String, String) {
        let day = at_ms.div_euclid(86_400_000);
        (format!("{day}/{id}.frame.png"), format!("{day}/{id}.overlay.png"))
    }

    /// Every file under the folder (one level of day folders), as relative
    /// paths, and the day folders.
    pub fn list(&self) -> Result<(Vec<String>, Vec<PathBuf>), AuditError> {
        let (mut found, mut folders) = (Vec::new(), Vec::new());
        let days = match std::fs::read_dir(&self.root) {
            Ok(days) => days,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok((found, folders)),
            Err(error) => return Err(AuditError::io(&self.root, error)),
        };
        for day in days {
            let day = day.map_err(|error| AuditError::io(&self.root, error))?;
            let day_path = day.path();
            let day_name = day.file_name().to_string_lossy().into_owned();
            if !day_path.is_dir() {
                found.push(day_name);
                continue;
            }
            for file in std::fs::read_dir(&day_path).map_err(|error| AuditError::io(&day_path, error))? {
                let file = file.map_err(|error| AuditError::io(&day_path, error))?;
                found.push(format!("{day_name}/{}", file.file_name().to_string_lossy()));
            }
            folders.push(day_path);
        }
        Ok((found, folders))
    }
}

/// A frame as a PNG (lossless; gray stays gray).
pub fn frame_png(frame: &Image) -> Result<Vec<u8>, image::ImageError> {
    let color = match frame.channels {
        Channels::Gray => image::ExtendedColorType::L8,
        Channels::Rgb => image::ExtendedColorType::Rgb8,
    };
    let mut png = Vec::new();
    PngEncoder::new_with_quality(Cursor::new(&mut png), CompressionType::Fast, FilterType::Sub).write_image(
        &frame.data,
        frame.width,
        frame.height,
        color,
    )?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_are_whole_listed_and_removable() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(dir.path().join("files"));
        let (frame, overlay) = Files::names(86_400_000 * 3 + 5, "5-1");
        assert_eq!(frame, "3/5-1.frame.png");
        files.write(&frame, b"one").unwrap();
        files.write(&overlay, b"two").unwrap();
        assert_eq!(files.read(&frame).unwrap(), b"one");
        let (mut found, folders) = files.list().unwrap();
        found.sort();
        assert_eq!(found, [frame.clone(), overlay]);
        assert_eq!(folders, [files.root().join("3")]);
        files.remove(&frame).unwrap();
        files.remove(&frame).unwrap();
        assert!(files.read(&frame).is_err());
    }

    #[test]
    fn a_gray_frame_round_trips_through_its_png() {
        let frame = Image {
            width: 3,
            height: 2,
            channels: Channels::Gray,
            data: vec![0, 50, 100, 150, 200, 250],
        };
        let png = frame_png(&frame).unwrap();
        let decoded = image::load_from_memory(&png).unwrap().into_luma8();
        assert_eq!(decoded.into_raw(), frame.data);
    }
}
