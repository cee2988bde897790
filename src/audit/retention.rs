//! Retention: results older than `--retain-days` are deleted with their
//! files, and past `--retain-bytes` of kept files the oldest files go
//! first (their results stay, marked as no longer keeping pictures).
//!
//! The database and the disk never disagree where it matters: the
//! database forgets a file (and commits) before the file is unlinked, so a
//! result never names a missing file for long, and a crash in between only
//! leaves an orphan, which [`Retention::at_start`] removes along with half
//! written files from a crash between writing and inserting.

use std::time::{Duration, SystemTime};

use super::store::{Expiring, Store};
use super::{AuditError, Files, unix_ms};

/// Results whose files are looked at in one step of the byte trim.
const TRIM_STEP: usize = 64;

/// The limits, in force on the writer thread.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Results older than this go.
    pub age: Duration,
    /// Most bytes of kept files.
    pub bytes: u64,
}

impl Retention {
    /// These limits.
    pub fn new(age: Duration, bytes: u64) -> Self {
        Self { age, bytes }
    }

    /// At start-up: removes files no result names (and partial ones), then
    /// applies both limits. Returns the bytes of the files kept.
    pub fn at_start(&self, store: &mut Store, files: &Files) -> Result<u64, AuditError> {
        remove_orphans(store, files)?;
        self.by_age(store, files, SystemTime::now())?;
        let total = store.file_bytes()?;
        self.by_bytes(store, files, total)
    }

    /// Deletes results older than the age limit at `now`, then their files.
    /// Returns the bytes of the files removed.
    pub fn by_age(&self, store: &mut Store, files: &Files, now: SystemTime) -> Result<u64, AuditError> {
        let cutoff = now.checked_sub(self.age).map_or(i64::MIN, unix_ms);
        let expired = store.delete_older_than(cutoff)?;
        Ok(unlink(files, &expired))
    }

    /// Removes the oldest files until those kept hold at most the byte
    /// limit; `total` is what they hold now. Returns what they hold after.
    pub fn by_bytes(&self, store: &mut Store, files: &Files, mut total: u64) -> Result<u64, AuditError> {
        while total > self.bytes {
            let oldest = store.oldest_with_files(TRIM_STEP)?;
            if oldest.is_empty() {
                // The count drifted from the database; trust the database.
                return store.file_bytes();
            }
            let mut chosen = Vec::new();
            for expiring in oldest {
                if total <= self.bytes {
                    break;
                }
                total = total.saturating_sub(expiring.files.bytes);
                chosen.push(expiring);
            }
            let rows: Vec<i64> = chosen.iter().map(|expiring| expiring.row).collect();
            store.clear_files(&rows)?;
            unlink(files, &chosen);
        }
        Ok(total)
    }
}

/// Unlinks the files of `expired` (already forgotten by the database);
/// returns their bytes. A file that cannot be removed is logged and left
/// as an orphan for the next start.
fn unlink(files: &Files, expired: &[Expiring]) -> u64 {
    let mut bytes = 0;
    for expiring in expired {
        for path in [&expiring.files.frame, &expiring.files.overlay]
            .into_iter()
            .flatten()
        {
            if let Err(error) = files.remove(path) {
                tracing::warn!(%error, "cannot remove an expired audit file");
            }
        }
        bytes += expiring.files.bytes;
    }
    bytes
}

/// Removes every file under the files folder that no result names, then
/// the day folders left empty.
fn remove_orphans(store: &Store, files: &Files) -> Result<(), AuditError> {
    let named = store.referenced_files()?;
    let (found, folders) = files.list()?;
    let mut removed = 0usize;
    for path in found.iter().filter(|path| !named.contains(*path)) {
        files.remove(path)?;
        removed += 1;
    }
    for folder in folders {
        // Fails, as it should, on a folder that still holds files.
        let _ = std::fs::remove_dir(folder);
    }
    if removed > 0 {
        tracing::info!(removed, "removed audit files that no result refers to");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::store::KeptFiles;
    use crate::audit::{ImagesState, ResultRecord};
    use crate::engine::Verdict;

    const DAY_MS: i64 = 86_400_000;

    /// A store and files folder with `count` FAIL results a second apart,
    /// each keeping a frame and an overlay of 100 bytes.
    fn trail(count: i64) -> (tempfile::TempDir, Store, Files) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("audit.db")).unwrap();
        let files = Files::new(dir.path().join("files"));
        let start = unix_ms(SystemTime::now()) - 10 * DAY_MS;
        for row in 1..=count {
            add(&mut store, &files, row, start + row * 1000);
        }
        (dir, store, files)
    }

    fn add(store: &mut Store, files: &Files, row: i64, at_ms: i64) {
        let id = format!("{at_ms}-{row}");
        let (frame, overlay) = Files::names(at_ms, &id);
        files.write(&frame, &[1; 60]).unwrap();
        files.write(&overlay, &[2; 40]).unwrap();
        let record = ResultRecord {
            row,
            id,
            at_ms,
            recipe: "part".into(),
            revision: 1,
            frame_id: format!("f{row}"),
            verdict: Verdict::Fail,
            score: 2.0,
            threshold: 1.0,
            regions: Vec::new(),
            timings: Default::default(),
            peer: None,
            images: ImagesState::Kept,
        };
        let kept = KeptFiles {
            frame: Some(frame),
            overlay: Some(overlay),
            bytes: 100,
        };
        store.insert(&record, &kept).unwrap();
    }

    /// Every file named by a result exists, and every file on disk is named.
    fn assert_consistent(store: &Store, files: &Files) {
        let named = store.referenced_files().unwrap();
        let (mut found, _) = files.list().unwrap();
        found.sort();
        let mut named: Vec<String> = named.into_iter().collect();
        named.sort();
        assert_eq!(found, named);
    }

    fn kept_rows(store: &Store) -> Vec<i64> {
        store
            .oldest_with_files(1000)
            .unwrap()
            .iter()
            .map(|e| e.row)
            .collect()
    }

    #[test]
    fn the_byte_limit_removes_the_oldest_files_first_and_keeps_their_results() {
        let (_dir, mut store, files) = trail(10);
        let retention = Retention::new(Duration::from_secs(365 * 86_400), 450);
        let total = retention.by_bytes(&mut store, &files, 1000).unwrap();
        assert_eq!(total, 400);
        assert_eq!(kept_rows(&store), [7, 8, 9, 10]);
        assert_eq!(store.file_bytes().unwrap(), 400);
        assert_consistent(&store, &files);
        // The results stay, saying their pictures were removed.
        let (oldest, kept) = store
            .get(&store.list(&Default::default(), None, 100).unwrap()[9].id)
            .unwrap()
            .unwrap();
        assert_eq!(oldest.row, 1);
        assert_eq!(oldest.images, ImagesState::Removed);
        assert_eq!(kept, KeptFiles::default());
        assert_eq!(store.list(&Default::default(), None, 100).unwrap().len(), 10);
    }

    #[test]
    fn the_age_limit_deletes_old_results_with_their_files() {
        let (_dir, mut store, files) = trail(3);
        let now = unix_ms(SystemTime::now());
        add(&mut store, &files, 4, now - 1000);
        let retention = Retention::new(Duration::from_secs(86_400), u64::MAX);
        let removed = retention.by_age(&mut store, &files, SystemTime::now()).unwrap();
        assert_eq!(removed, 300);
        let left = store.list(&Default::default(), None, 100).unwrap();
        assert_eq!(left.iter().map(|r| r.row).collect::<Vec<_>>(), [4]);
        assert_consistent(&store, &files);
    }

    #[test]
    fn start_up_removes_orphans_and_partial_files() {
        let (_dir, mut store, files) = trail(2);
        files.write("1/stray.frame.png", b"x").unwrap();
        std::fs::create_dir_all(files.root().join("2")).unwrap();
        std::fs::write(files.root().join("2/half.frame.png.partial"), b"x").unwrap();
        let retention = Retention::new(Duration::from_secs(365 * 86_400), u64::MAX);
        let total = retention.at_start(&mut store, &files).unwrap();
        assert_eq!(total, 200);
        assert_consistent(&store, &files);
        assert!(
            !files.root().join("2").exists(),
            "an emptied day folder is removed"
        );
    }
}
