//! Embedded persistence in the data folder: one folder per recipe with its
//! settings (`recipe.json`), reference (`reference.ref`) and the good frames
//! it was built from (`frames/`, so a settings change can rebuild it).
//! Every write goes through [`atomic::write`], so a crash mid-write leaves
//! the previous version intact. One server at a time uses a data folder (a
//! lock on the folder itself); at start-up it clears what a crash can leave behind:
//! temporary files, half-deleted, half-created and half-imported recipe
//! folders, and files no recipe names. [`bundle`] is the one-file form a
//! recipe is exported and imported in.

pub mod atomic;
pub mod bundle;
pub mod frames;
mod import;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::engine::RecipeSettings;
use crate::imaging::OwnedFrame;
use crate::reference::{self, Reference};

/// Longest recipe name.
pub const MAX_NAME_LEN: usize = 64;

/// Prefix of a recipe folder being deleted.
const DELETED_PREFIX: &str = ".deleted-";

/// Prefix of a recipe folder being imported (renamed to the recipe's name
/// once whole).
const IMPORTING_PREFIX: &str = ".importing-";

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A recipe file cannot be parsed.
    #[error("{path} is damaged: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The reference file cannot be read.
    #[error(transparent)]
    Reference(#[from] reference::ReferenceError),
    /// Another process holds the data folder's lock.
    #[error("another Loupe server uses the data folder {} (it holds the folder's lock); stop that server or pass another --data-dir", .folder.display())]
    Locked {
        /// The data folder.
        folder: PathBuf,
    },
}

impl StoreError {
    /// The error as a client may see it: file names without the server's
    /// folders.
    pub fn for_client(&self) -> String {
        let file = |path: &Path| {
            path.file_name()
                .map_or_else(|| "a file".to_owned(), |name| name.to_string_lossy().into_owned())
        };
        match self {
            Self::Io { action, path, source } => format!("{action} {}: {source}", file(path)),
            Self::Damaged { path, reason } => format!("{} is damaged: {reason}", file(path)),
            Self::Reference(error) => error.to_string(),
            Self::Locked { .. } => "the data folder is in use by another server".to_owned(),
        }
    }

    /// An I/O error while doing `action` to `path`.
    pub fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::io(action, path, source)
}

/// Checks a recipe name: letters, digits, `-`, `_`, `.`, 1 to 64 long, not
/// starting with `.` (names are folder names; Loupe's own files start with
/// a dot).
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "recipe name must be 1 to {MAX_NAME_LEN} characters, got {}",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "recipe name {name:?} has {bad:?}; use letters, digits, '-', '_' and '.'"
        ));
    }
    if name.starts_with('.') {
        return Err(format!("recipe name {name:?} starts with '.', which is reserved"));
    }
    Ok(())
}

/// What `recipe.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecipeRecord {
    /// Unique name.
    pub name: String,
    /// Bumped by every change.
    pub revision: u64,
    /// Settings.
    pub settings: RecipeSettings,
    /// Number of the first good frame in `frames/`.
    pub first_frame: u32,
    /// Good frames stored in `frames/`, numbered from `first_frame`.
    pub frame_count: u32,
    /// Their bytes as the clients sent them (absent in records written
    /// before Loupe counted them: loading takes their sizes on disk).
    #[serde(default)]
    pub frame_bytes: u64,
    /// The reference file in force, if the recipe has one.
    pub reference_file: Option<String>,
    /// Good frames the current reference was built from.
    pub reference_count: u32,
    /// Last change, seconds and nanoseconds since the Unix epoch.
    pub updated_at: (i64, u32),
}

impl RecipeRecord {
    /// A new record at revision 1, stamped now.
    pub fn new(name: String, settings: RecipeSettings) -> Self {
        Self {
            name,
            revision: 1,
            settings,
            first_frame: 0,
            frame_count: 0,
            frame_bytes: 0,
            reference_file: None,
            reference_count: 0,
            updated_at: now(),
        }
    }

    /// Bumps the revision and the time stamp.
    pub fn touch(&mut self) {
        self.revision += 1;
        self.updated_at = now();
    }

    /// The numbers of the stored good frames.
    pub fn frames(&self) -> std::ops::Range<u32> {
        self.first_frame..self.first_frame + self.frame_count
    }
}

fn now() -> (i64, u32) {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (since.as_secs() as i64, since.subsec_nanos())
}

/// A recipe folder that could not be read: its name and why.
pub type Unreadable = (String, StoreError);

/// A recipe as loaded at start-up.
#[derive(Debug)]
pub struct StoredRecipe {
    /// Its record.
    pub record: RecipeRecord,
    /// Its reference, if it has one.
    pub reference: Option<Reference>,
}

/// The data folder, locked for this process while any clone lives.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    _lock: Arc<fs::File>,
}

impl Store {
    /// Opens (creating if needed) the store under `data_dir`, takes its
    /// lock, and removes what an interrupted change left in it.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let root = data_dir.join("recipes");
        fs::create_dir_all(&root).map_err(io("cannot create", &root))?;
        // The folder itself is locked (flock on its handle): no lock file
        // to create, so a read-only data folder still serves its recipes.
        let lock = fs::File::open(data_dir).map_err(io("cannot open", data_dir))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    folder: data_dir.to_path_buf(),
                });
            }
            Err(fs::TryLockError::Error(error)) => {
                return Err(StoreError::io("cannot lock", data_dir, error));
            }
        }
        let store = Self {
            root,
            _lock: Arc::new(lock),
        };
        store.clear_leftovers()?;
        Ok(store)
    }

    /// Removes half-deleted recipe folders and temporary files in the
    /// recipes folder (safe: the lock says no other writer exists).
    fn clear_leftovers(&self) -> Result<(), StoreError> {
        for entry in fs::read_dir(&self.root)
            .map_err(io("cannot list", &self.root))?
            .filter_map(Result::ok)
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let removed = if name.starts_with(DELETED_PREFIX) || name.starts_with(IMPORTING_PREFIX) {
                fs::remove_dir_all(&path)
            } else if name.starts_with(atomic::TEMP_PREFIX) {
                fs::remove_file(&path)
            } else {
                continue;
            };
            match removed {
                Ok(()) => tracing::info!(path = %path.display(), "removed what an interrupted change left"),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "cannot remove what an interrupted change left")
                }
            }
        }
        Ok(())
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn frame_path(&self, name: &str, index: u32) -> PathBuf {
        self.dir(name).join("frames").join(format!("{index:06}.img"))
    }

    /// Loads every recipe. A recipe that cannot be read is returned in the
    /// second list with its folder name and error, and the others still load.
    pub fn load_all(&self) -> Result<(Vec<StoredRecipe>, Vec<Unreadable>), StoreError> {
        let mut loaded = Vec::new();
        let mut damaged = Vec::new();
        let entries = fs::read_dir(&self.root).map_err(io("cannot list", &self.root))?;
        let mut dirs: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        dirs.sort();
        for dir in dirs {
            let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            if !dir.is_dir() || validate_name(&name).is_err() {
                continue;
            }
            clear_temporary_files(&dir);
            clear_temporary_files(&dir.join("frames"));
            if !dir.join("recipe.json").exists() && is_unfinished_creation(&dir) {
                tracing::info!(recipe = %name, "removing a recipe whose creation was interrupted");
                if let Err(error) = fs::remove_dir_all(&dir) {
                    tracing::warn!(recipe = %name, %error, "cannot remove an unfinished recipe folder");
                }
                continue;
            }
            match self.load(&name) {
                Ok(recipe) => loaded.push(recipe),
                Err(error) => damaged.push((name, error)),
            }
        }
        Ok((loaded, damaged))
    }

    fn load(&self, name: &str) -> Result<StoredRecipe, StoreError> {
        let path = self.dir(name).join("recipe.json");
        let text = fs::read(&path).map_err(io("cannot read", &path))?;
        let mut record: RecipeRecord =
            serde_json::from_slice(&text).map_err(|error| StoreError::Damaged {
                path: path.clone(),
                reason: error.to_string(),
            })?;
        if record.name != name {
            return Err(StoreError::Damaged {
                path,
                reason: format!("it names the recipe {:?}, its folder {name:?}", record.name),
            });
        }
        let reference = match &record.reference_file {
            Some(file) if validate_name(file).is_ok() => Some(reference::load(&self.dir(name).join(file))?),
            Some(file) => {
                return Err(StoreError::Damaged {
                    path,
                    reason: format!("bad reference file name {file:?}"),
                });
            }
            None => None,
        };
        if record.frame_bytes == 0 && record.frame_count > 0 {
            record.frame_bytes = self.stored_frame_bytes(&record);
        }
        // Files of a change that did not reach its commit point.
        if let Err(error) = self.prune(&record) {
            tracing::warn!(recipe = %name, %error, "cannot remove files no revision uses");
        }
        Ok(StoredRecipe { record, reference })
    }

    /// A record from before Loupe counted frame bytes: its frames' sizes on
    /// disk (a raw frame's 21-byte header included, so the per-recipe cap
    /// errs towards counting more). A missing file counts 0; loading the
    /// frame later reports it.
    fn stored_frame_bytes(&self, record: &RecipeRecord) -> u64 {
        (record.first_frame..record.first_frame.saturating_add(record.frame_count))
            .filter_map(|index| fs::metadata(self.frame_path(&record.name, index)).ok())
            .map(|metadata| metadata.len())
            .sum()
    }

    /// Whether a recipe folder exists.
    pub fn exists(&self, name: &str) -> bool {
        self.dir(name).join("recipe.json").exists()
    }

    /// Writes `recipe.json` atomically.
    pub fn save_record(&self, record: &RecipeRecord) -> Result<(), StoreError> {
        let dir = self.dir(&record.name);
        if !dir.exists() {
            fs::create_dir_all(dir.join("frames")).map_err(io("cannot create", &dir))?;
            atomic::sync_folder(&self.root)?;
            crate::failpoint::stop_here("create.folder");
        }
        let json = serde_json::to_vec_pretty(record).map_err(|error| StoreError::Damaged {
            path: dir.join("recipe.json"),
            reason: error.to_string(),
        })?;
        atomic::write(&dir.join("recipe.json"), &json)
    }

    /// Writes the reference for `revision` atomically and returns its file
    /// name, for the record. Older reference files stay until
    /// [`Store::prune`], so the record in force always names a whole file.
    pub fn save_reference(
        &self,
        name: &str,
        revision: u64,
        reference: &Reference,
    ) -> Result<String, StoreError> {
        let file = reference_file_name(revision);
        atomic::write(&self.dir(name).join(&file), &reference::to_bytes(reference)?)?;
        Ok(file)
    }

    /// Removes what `record` no longer uses: reference files other than its
    /// own and good frames outside its range. Run after the record is saved.
    pub fn prune(&self, record: &RecipeRecord) -> Result<(), StoreError> {
        let dir = self.dir(&record.name);
        for entry in fs::read_dir(&dir)
            .map_err(io("cannot list", &dir))?
            .filter_map(Result::ok)
        {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.starts_with("reference-") && Some(&file) != record.reference_file.as_ref() {
                let _ = fs::remove_file(entry.path());
            }
        }
        let frames = dir.join("frames");
        for entry in fs::read_dir(&frames)
            .map_err(io("cannot list", &frames))?
            .filter_map(Result::ok)
        {
            let number = entry
                .file_name()
                .to_string_lossy()
                .strip_suffix(".img")
                .and_then(|n| n.parse::<u32>().ok());
            if number.is_some_and(|n| !record.frames().contains(&n)) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// Stores good frame number `index` in its file form ([`frames`]).
    pub fn save_frame(&self, name: &str, index: u32, frame: &OwnedFrame) -> Result<(), StoreError> {
        let path = self.frame_path(name, index);
        if let Some(folder) = path.parent() {
            fs::create_dir_all(folder).map_err(io("cannot create", folder))?;
        }
        atomic::write(&path, &frames::encode(frame))
    }

    /// Reads good frame number `index`.
    pub fn read_frame(&self, name: &str, index: u32) -> Result<OwnedFrame, StoreError> {
        let path = self.frame_path(name, index);
        let bytes = fs::read(&path).map_err(io("cannot read", &path))?;
        frames::decode(bytes).map_err(|reason| StoreError::Damaged { path, reason })
    }

    /// Deletes a recipe: its folder is first renamed away (atomic; the
    /// commit point), then removed. What a crash leaves is removed at the
    /// next start.
    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        let dir = self.dir(name);
        let trash = self.root.join(format!("{DELETED_PREFIX}{name}-{}", now().0));
        fs::rename(&dir, &trash).map_err(io("cannot delete", &dir))?;
        if let Err(error) = atomic::sync_folder(&self.root) {
            tracing::warn!(%error, "the deletion may not survive a power cut");
        }
        crate::failpoint::stop_here("delete.renamed");
        if let Err(error) = fs::remove_dir_all(&trash) {
            // Deleted all the same: the folder no longer loads.
            tracing::warn!(path = %trash.display(), %error, "cannot remove a deleted recipe's files; the next start retries");
        }
        Ok(())
    }
}

/// The name of the reference file of a recipe's `revision`.
pub fn reference_file_name(revision: u64) -> String {
    format!("reference-{revision:08}.ref")
}

/// Removes temporary files of interrupted writes from `folder`, if it exists.
fn clear_temporary_files(folder: &Path) {
    let Ok(entries) = fs::read_dir(folder) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(atomic::TEMP_PREFIX)
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Whether a recipe folder without `recipe.json` holds nothing but an
/// empty `frames/` (a creation cut short before its record was written),
/// rather than data a person should look at.
fn is_unfinished_creation(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(Result::ok).all(|entry| {
        entry.file_name() == "frames"
            && fs::read_dir(entry.path()).is_ok_and(|mut inner| inner.next().is_none())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("pcb-top_v1.2").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name(&"a".repeat(65)).is_err());
        assert!(validate_name(&"a".repeat(64)).is_ok());
        assert!(validate_name("a/b").unwrap_err().contains("'/'"));
        assert!(validate_name("..").is_err());
        assert!(validate_name("ä").is_err());
    }

    /// A store in a temporary folder holding one new recipe `name`.
    pub(super) fn store_with_recipe(name: &str) -> (tempfile::TempDir, Store, RecipeRecord) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let record = RecipeRecord::new(name.into(), RecipeSettings::default());
        store.save_record(&record).unwrap();
        (dir, store, record)
    }

    #[test]
    fn records_frames_and_deletion_round_trip() {
        let (_dir, store, mut record) = store_with_recipe("part");
        let frame = OwnedFrame::Encoded(bytes::Bytes::from_static(b"frame zero"));
        store.save_frame("part", 0, &frame).unwrap();
        record.frame_count = 1;
        record.frame_bytes = 10;
        record.touch();
        store.save_record(&record).unwrap();

        let (loaded, damaged) = store.load_all().unwrap();
        assert!(damaged.is_empty());
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].record, record);
        assert!(loaded[0].reference.is_none());
        assert_eq!(store.read_frame("part", 0).unwrap(), frame);

        store.delete("part").unwrap();
        assert!(!store.exists("part"));
        assert!(store.load_all().unwrap().0.is_empty());
    }

    #[test]
    fn a_record_from_before_frame_bytes_were_counted_gets_them_from_its_files() {
        let (_dir, store, mut record) = store_with_recipe("old");
        for (index, bytes) in [&b"frame zero"[..], &b"frame one!!"[..]].into_iter().enumerate() {
            let frame = OwnedFrame::Encoded(bytes::Bytes::copy_from_slice(bytes));
            store.save_frame("old", index as u32, &frame).unwrap();
        }
        record.frame_count = 2;
        record.touch();
        // As such a record was written: no frame_bytes field at all.
        let mut json: serde_json::Value = serde_json::to_value(&record).unwrap();
        json.as_object_mut().unwrap().remove("frame_bytes");
        let path = store.dir("old").join("recipe.json");
        fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();

        let (loaded, _) = store.load_all().unwrap();
        assert_eq!(loaded[0].record.frame_bytes, 10 + 11);
    }

    #[test]
    fn a_damaged_recipe_is_reported_and_the_others_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .save_record(&RecipeRecord::new("good".into(), RecipeSettings::default()))
            .unwrap();
        store
            .save_record(&RecipeRecord::new("bad".into(), RecipeSettings::default()))
            .unwrap();
        fs::write(dir.path().join("recipes/bad/recipe.json"), b"{ truncated").unwrap();

        let (loaded, damaged) = store.load_all().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].record.name, "good");
        assert_eq!(damaged.len(), 1);
        assert!(
            damaged[0].0 == "bad" && damaged[0].1.to_string().contains("bad/recipe.json is damaged"),
            "{:?}",
            damaged[0]
        );
    }
}
