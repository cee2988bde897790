//! Importing a recipe into the store: a whole recipe folder written under a
//! temporary name and renamed into place, so no half-imported recipe is
//! ever loaded.

use std::fs;

use super::{IMPORTING_PREFIX, RecipeRecord, Store, StoreError, atomic, frames, io, validate_name};
use crate::imaging::OwnedFrame;
use crate::reference::{self, Reference};

impl Store {
    /// Creates a whole recipe at once (an import): its good frames (numbered
    /// from the record's `first_frame`), its reference (in the file the
    /// record names) and its record are written into a temporary folder,
    /// which is then renamed to the recipe's name: the commit point. A
    /// crash or an error before it leaves no recipe (the temporary folder is
    /// removed here, or at the next start); after it, the whole recipe.
    /// Fails if a folder of that name exists.
    pub fn import(
        &self,
        record: &RecipeRecord,
        frames: &[OwnedFrame],
        reference: Option<&Reference>,
    ) -> Result<(), StoreError> {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let temp = self.root.join(format!(
            "{IMPORTING_PREFIX}{}-{}-{}",
            record.name,
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let target = self.dir(&record.name);
        let written = (|| {
            let frames_dir = temp.join("frames");
            fs::create_dir_all(&frames_dir).map_err(io("cannot create", &frames_dir))?;
            for (offset, frame) in frames.iter().enumerate() {
                let index = record.first_frame + offset as u32;
                atomic::write(
                    &frames_dir.join(format!("{index:06}.img")),
                    &frames::encode(frame),
                )?;
            }
            match (reference, &record.reference_file) {
                (Some(reference), Some(file)) if validate_name(file).is_ok() => {
                    atomic::write(&temp.join(file), &reference::to_bytes(reference)?)?;
                }
                (None, None) => {}
                (_, file) => {
                    return Err(StoreError::Damaged {
                        path: temp.join("recipe.json"),
                        reason: format!(
                            "an import's record names the reference file {file:?}, which does not match its reference"
                        ),
                    });
                }
            }
            let json = serde_json::to_vec_pretty(record).map_err(|error| StoreError::Damaged {
                path: temp.join("recipe.json"),
                reason: error.to_string(),
            })?;
            atomic::write(&temp.join("recipe.json"), &json)?;
            crate::failpoint::stop_here("import.renaming");
            if target.exists() {
                return Err(StoreError::io(
                    "cannot import into",
                    &target,
                    std::io::Error::new(std::io::ErrorKind::AlreadyExists, "the folder exists"),
                ));
            }
            fs::rename(&temp, &target).map_err(io("cannot rename into", &target))
        })();
        if written.is_err() {
            // Best effort: the error that matters is the one being reported.
            let _ = fs::remove_dir_all(&temp);
        }
        written?;
        if let Err(error) = atomic::sync_folder(&self.root) {
            tracing::warn!(%error, "an imported recipe may not survive a power cut");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::reference_file_name;
    use super::super::tests::store_with_recipe;
    use super::*;
    use crate::engine::RecipeSettings;

    #[test]
    fn an_import_is_written_whole_and_never_over_a_recipe() {
        let (dir, store, existing) = store_with_recipe("part");
        let frames = [
            OwnedFrame::Encoded(bytes::Bytes::from_static(b"frame zero")),
            OwnedFrame::Encoded(bytes::Bytes::from_static(b"frame one")),
        ];
        let mut record = RecipeRecord::new("moved".into(), RecipeSettings::default());
        record.frame_count = 2;
        record.frame_bytes = 19;
        store.import(&record, &frames, None).unwrap();
        assert_eq!(store.read_frame("moved", 1).unwrap(), frames[1]);

        // A taken name is refused and its recipe untouched.
        let mut over = record.clone();
        over.name = existing.name.clone();
        let error = store.import(&over, &frames, None).unwrap_err();
        assert!(error.to_string().contains("cannot import into"), "{error}");
        // A record naming a reference file the import lacks is refused.
        record.name = "odd".into();
        record.reference_file = Some(reference_file_name(1));
        assert!(store.import(&record, &frames, None).is_err());
        assert!(!store.exists("odd"));

        let (loaded, damaged) = store.load_all().unwrap();
        assert!(damaged.is_empty(), "{damaged:?}");
        let names: Vec<_> = loaded.iter().map(|recipe| recipe.record.name.as_str()).collect();
        assert_eq!(names, ["moved", "part"]);
        assert_eq!(loaded[1].record, existing);
        let entries: Vec<_> = fs::read_dir(&store.root)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(entries.len(), 2, "{entries:?}");

        // What a crash mid-import leaves is removed at the next start.
        drop(store);
        let half = dir
            .path()
            .join("recipes")
            .join(format!("{IMPORTING_PREFIX}half-1-0"));
        fs::create_dir_all(half.join("frames")).unwrap();
        fs::write(half.join("frames/000000.img"), b"frame").unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(!half.exists());
        assert_eq!(store.load_all().unwrap().0.len(), 2);
    }
}
