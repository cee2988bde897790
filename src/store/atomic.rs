//! The one way a file in the data folder is written: a temporary file with a
//! unique name in the same folder, written and synced, renamed over the
//! target, and the folder synced, so a crash leaves the old file or the new
//! one and never half of either. Every step's error up to the rename is
//! reported, and the temporary file removed; once the rename is done the
//! new file is in force, so a failing folder sync is only logged (the change
//! holds, though a power cut might undo it).

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::StoreError;

/// Prefix of every temporary file name; anything else in the data folder is
/// a real file.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Writes `bytes` to `path` atomically. The parent folder must exist.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let (folder, name) = match (path.parent(), path.file_name()) {
        (Some(folder), Some(name)) if !folder.as_os_str().is_empty() => (folder, name),
        (None | Some(_), Some(name)) => (Path::new("."), name),
        (_, None) => {
            return Err(StoreError::io(
                "cannot write",
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file"),
            ));
        }
    };
    // Unique within the process by the counter, across processes by the pid:
    // two writers of one file never share a temporary file.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut temp_name = OsString::from(TEMP_PREFIX);
    temp_name.push(format!(
        "{}-{}-",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    temp_name.push(name);
    let temp = folder.join(temp_name);

    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|error| StoreError::io("cannot create", &temp, error))?;
        file.write_all(bytes)
            .map_err(|error| StoreError::io("cannot write", &temp, error))?;
        file.sync_all()
            .map_err(|error| StoreError::io("cannot sync", &temp, error))?;
        crate::failpoint::stop_here("write.renaming");
        fs::rename(&temp, path).map_err(|error| StoreError::io("cannot rename into", path, error))
    })();
    if written.is_err() {
        // Best effort: the error that matters is the one being reported.
        let _ = fs::remove_file(&temp);
    }
    written?;
    if let Err(error) = sync_folder(folder) {
        tracing::warn!(%error, "a written file may not survive a power cut");
    }
    Ok(())
}

/// Makes a rename or a new entry in `folder` durable. Only Unix can open and
/// sync a folder.
pub fn sync_folder(folder: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    fs::File::open(folder)
        .and_then(|handle| handle.sync_all())
        .map_err(|error| StoreError::io("cannot sync", folder, error))?;
    #[cfg(not(unix))]
    let _ = folder;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(folder: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(folder)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_write_replaces_the_file_and_leaves_no_temporary_file() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("x.json");
        write(&path, b"one").unwrap();
        write(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(names(folder.path()), ["x.json"]);
    }

    #[test]
    fn a_failed_write_is_reported_and_leaves_no_temporary_file() {
        let folder = tempfile::tempdir().unwrap();
        let missing = folder.path().join("missing").join("x.ref");
        let error = write(&missing, b"data").unwrap_err().to_string();
        assert!(error.contains("cannot create"), "{error}");
        // The rename fails here: the target is a folder.
        let occupied = folder.path().join("x.ref");
        fs::create_dir(&occupied).unwrap();
        let error = write(&occupied, b"data").unwrap_err().to_string();
        assert!(error.contains("cannot rename into"), "{error}");
        assert_eq!(names(folder.path()), ["x.ref"]);
    }
}
