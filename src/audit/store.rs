//! The audit database: its schema, the writer's inserts and deletes, and the
//! readers' queries, over one `rusqlite` connection each (WAL, so readers
//! never wait for the writer). Types in and out are the audit trail's own.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{AuditError, ChangeRow, ImagesState, ResultFilter, ResultRecord, StageTimes};
use crate::engine::{Region, Verdict};

/// The schema, created when missing; `user_version` says which it is.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY,
    result_id TEXT NOT NULL UNIQUE,
    at_ms INTEGER NOT NULL,
    recipe TEXT NOT NULL,
    revision INTEGER NOT NULL,
    frame_id TEXT NOT NULL,
    verdict INTEGER NOT NULL,
    score REAL NOT NULL,
    threshold REAL NOT NULL,
    regions TEXT NOT NULL,
    decode_us INTEGER NOT NULL,
    queue_us INTEGER NOT NULL,
    preprocess_us INTEGER NOT NULL,
    inference_us INTEGER NOT NULL,
    postprocess_us INTEGER NOT NULL,
    total_us INTEGER NOT NULL,
    peer TEXT,
    images INTEGER NOT NULL,
    frame_path TEXT,
    overlay_path TEXT,
    file_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS results_at ON results (at_ms);
CREATE INDEX IF NOT EXISTS results_recipe ON results (recipe, id);
CREATE INDEX IF NOT EXISTS results_verdict ON results (verdict, id);
CREATE INDEX IF NOT EXISTS results_with_files ON results (id) WHERE file_bytes > 0;
CREATE TABLE IF NOT EXISTS recipe_changes (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    recipe TEXT NOT NULL,
    revision INTEGER NOT NULL,
    change TEXT NOT NULL,
    peer TEXT
);
CREATE INDEX IF NOT EXISTS recipe_changes_at ON recipe_changes (at_ms);
PRAGMA user_version = 1;
";

/// The columns of a result, in the order [`record`] reads them.
const COLUMNS: &str = "id, result_id, at_ms, recipe, revision, frame_id, verdict, score, threshold, regions, \
                       decode_us, queue_us, preprocess_us, inference_us, postprocess_us, total_us, peer, images";

/// The files a result keeps, as paths under the files folder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeptFiles {
    /// The frame PNG.
    pub frame: Option<String>,
    /// The overlay PNG.
    pub overlay: Option<String>,
    /// Their bytes together.
    pub bytes: u64,
}

/// A result whose files retention is about to remove.
#[derive(Debug, Clone)]
pub struct Expiring {
    /// Its row.
    pub row: i64,
    /// Its files.
    pub files: KeptFiles,
}

/// One connection to the audit database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

fn verdict_code(verdict: Verdict) -> i64 {
    match verdict {
        Verdict::Pass => 1,
        Verdict::Fail => 2,
    }
}

fn micros(time: Duration) -> i64 {
    i64::try_from(time.as_micros()).unwrap_or(i64::MAX)
}

fn duration(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// Regions as compact JSON: one array `[x, y, w, h, area, max, mean]` each.
fn regions_json(regions: &[Region]) -> String {
    let rows: Vec<(u32, u32, u32, u32, u32, f32, f32)> = regions
        .iter()
        .map(|r| (r.x, r.y, r.width, r.height, r.area, r.max_score, r.mean_score))
        .collect();
    serde_json::to_string(&rows).unwrap_or_else(|_| "[]".to_owned())
}

fn regions_from_json(text: &str) -> Vec<Region> {
    let rows: Vec<(u32, u32, u32, u32, u32, f32, f32)> = serde_json::from_str(text).unwrap_or_default();
    rows.into_iter()
        .map(|(x, y, width, height, area, max_score, mean_score)| Region {
            x,
            y,
            width,
            height,
            area,
            max_score,
            mean_score,
        })
        .collect()
}

fn record(row: &Row<'_>) -> rusqlite::Result<ResultRecord> {
    let verdict = if row.get::<_, i64>(6)? == 2 {
        Verdict::Fail
    } else {
        Verdict::Pass
    };
    let regions: String = row.get(9)?;
    Ok(ResultRecord {
        row: row.get(0)?,
        id: row.get(1)?,
        at_ms: row.get(2)?,
        recipe: row.get(3)?,
        revision: u64::try_from(row.get::<_, i64>(4)?).unwrap_or(0),
        frame_id: row.get(5)?,
        verdict,
        score: row.get::<_, f64>(7)? as f32,
        threshold: row.get::<_, f64>(8)? as f32,
        regions: regions_from_json(&regions),
        timings: StageTimes {
            decode: duration(row.get(10)?),
            queue: duration(row.get(11)?),
            preprocess: duration(row.get(12)?),
            inference: duration(row.get(13)?),
            postprocess: duration(row.get(14)?),
            total: duration(row.get(15)?),
        },
        peer: row.get(16)?,
        images: ImagesState::from_code(row.get(17)?),
    })
}

impl Store {
    /// Opens (creating if needed) the database at `path`: WAL, NORMAL
    /// sync (a power cut may lose the last results, never corrupt them).
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let conn = Connection::open(path).map_err(AuditError::database)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(AuditError::database)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(AuditError::database)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(AuditError::database)?;
        conn.execute_batch(SCHEMA).map_err(AuditError::database)?;
        Ok(Self { conn })
    }

    /// The row the next insert will get (only the writer inserts).
    pub fn next_row(&self) -> Result<i64, AuditError> {
        self.conn
            .query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM results", [], |row| {
                row.get(0)
            })
            .map_err(AuditError::database)
    }

    /// Stores a result with its files.
    pub fn insert(&self, result: &ResultRecord, files: &KeptFiles) -> Result<(), AuditError> {
        let t = &result.timings;
        self.conn
            .execute(
                "INSERT INTO results (id, result_id, at_ms, recipe, revision, frame_id, verdict, score, threshold, \
                 regions, decode_us, queue_us, preprocess_us, inference_us, postprocess_us, total_us, peer, images, \
                 frame_path, overlay_path, file_bytes) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
                params![
                    result.row,
                    result.id,
                    result.at_ms,
                    result.recipe,
                    i64::try_from(result.revision).unwrap_or(i64::MAX),
                    result.frame_id,
                    verdict_code(result.verdict),
                    f64::from(result.score),
                    f64::from(result.threshold),
                    regions_json(&result.regions),
                    micros(t.decode),
                    micros(t.queue),
                    micros(t.preprocess),
                    micros(t.inference),
                    micros(t.postprocess),
                    micros(t.total),
                    result.peer,
                    result.images.code(),
                    files.frame,
                    files.overlay,
                    i64::try_from(files.bytes).unwrap_or(i64::MAX),
                ],
            )
            .map_err(AuditError::database)?;
        Ok(())
    }

    /// Stores a recipe change.
    pub fn insert_change(
        &self,
        at_ms: i64,
        recipe: &str,
        revision: u64,
        change: &str,
        peer: Option<&str>,
    ) -> Result<(), AuditError> {
        self.conn
            .execute(
                "INSERT INTO recipe_changes (at_ms, recipe, revision, change, peer) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![at_ms, recipe, i64::try_from(revision).unwrap_or(i64::MAX), change, peer],
            )
            .map_err(AuditError::database)?;
        Ok(())
    }

    /// Up to `limit` results that match `filter`, newest first, from rows
    /// below `before` when given.
    pub fn list(
        &self,
        filter: &ResultFilter,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ResultRecord>, AuditError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM results WHERE (?1 IS NULL OR recipe = ?1) AND (?2 IS NULL OR verdict = ?2) \
             AND (?3 IS NULL OR at_ms >= ?3) AND (?4 IS NULL OR at_ms < ?4) AND (?5 IS NULL OR id < ?5) \
             ORDER BY id DESC LIMIT ?6"
        );
        let mut statement = self.conn.prepare_cached(&sql).map_err(AuditError::database)?;
        let rows = statement
            .query_map(
                params![
                    filter.recipe,
                    filter.verdict.map(verdict_code),
                    filter.start_ms,
                    filter.end_ms,
                    before,
                    i64::try_from(limit).unwrap_or(i64::MAX),
                ],
                record,
            )
            .map_err(AuditError::database)?;
        rows.collect::<Result<_, _>>().map_err(AuditError::database)
    }

    /// The result `id` and its files.
    pub fn get(&self, id: &str) -> Result<Option<(ResultRecord, KeptFiles)>, AuditError> {
        let sql = format!(
            "SELECT {COLUMNS}, frame_path, overlay_path, file_bytes FROM results WHERE result_id = ?1"
        );
        self.conn
            .query_row(&sql, params![id], |row| {
                let files = KeptFiles {
                    frame: row.get(18)?,
                    overlay: row.get(19)?,
                    bytes: u64::try_from(row.get::<_, i64>(20)?).unwrap_or(0),
                };
                Ok((record(row)?, files))
            })
            .optional()
            .map_err(AuditError::database)
    }

    /// Bytes of every kept file.
    pub fn file_bytes(&self) -> Result<u64, AuditError> {
        let total: i64 = self
            .conn
            .query_row("SELECT COALESCE(SUM(file_bytes), 0) FROM results", [], |row| {
                row.get(0)
            })
            .map_err(AuditError::database)?;
        Ok(u64::try_from(total).unwrap_or(0))
    }

    /// The `limit` oldest results that keep files.
    pub fn oldest_with_files(&self, limit: usize) -> Result<Vec<Expiring>, AuditError> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT id, frame_path, overlay_path, file_bytes FROM results WHERE file_bytes > 0 \
                 ORDER BY id LIMIT ?1",
            )
            .map_err(AuditError::database)?;
        let rows = statement
            .query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], expiring)
            .map_err(AuditError::database)?;
        rows.collect::<Result<_, _>>().map_err(AuditError::database)
    }

    /// Forgets the files of `rows` (marked removed by retention), in one
    /// transaction: after it commits the files may be unlinked.
    pub fn clear_files(&mut self, rows: &[i64]) -> Result<(), AuditError> {
        let tx = self.conn.transaction().map_err(AuditError::database)?;
        {
            let mut statement = tx
                .prepare_cached(
                    "UPDATE results SET frame_path = NULL, overlay_path = NULL, file_bytes = 0, images = ?2 \
                     WHERE id = ?1",
                )
                .map_err(AuditError::database)?;
            for row in rows {
                statement
                    .execute(params![row, ImagesState::Removed.code()])
                    .map_err(AuditError::database)?;
            }
        }
        tx.commit().map_err(AuditError::database)
    }

    /// Deletes results and recipe changes older than `cutoff_ms`, in one
    /// transaction; returns the files those results kept, to unlink after.
    pub fn delete_older_than(&mut self, cutoff_ms: i64) -> Result<Vec<Expiring>, AuditError> {
        let tx = self.conn.transaction().map_err(AuditError::database)?;
        let expiring = {
            let mut statement = tx
                .prepare_cached(
                    "SELECT id, frame_path, overlay_path, file_bytes FROM results WHERE at_ms < ?1 AND file_bytes > 0",
                )
                .map_err(AuditError::database)?;
            let rows = statement
                .query_map(params![cutoff_ms], expiring)
                .map_err(AuditError::database)?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(AuditError::database)?
        };
        tx.execute("DELETE FROM results WHERE at_ms < ?1", params![cutoff_ms])
            .map_err(AuditError::database)?;
        tx.execute("DELETE FROM recipe_changes WHERE at_ms < ?1", params![cutoff_ms])
            .map_err(AuditError::database)?;
        tx.commit().map_err(AuditError::database)?;
        Ok(expiring)
    }

    /// Every file path a result refers to.
    pub fn referenced_files(&self) -> Result<HashSet<String>, AuditError> {
        let mut statement = self
            .conn
            .prepare("SELECT frame_path, overlay_path FROM results WHERE file_bytes > 0")
            .map_err(AuditError::database)?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, Option<String>>(0)?, row.get::<_, Option<String>>(1)?))
            })
            .map_err(AuditError::database)?;
        let mut paths = HashSet::new();
        for pair in rows {
            let (frame, overlay) = pair.map_err(AuditError::database)?;
            paths.extend(frame);
            paths.extend(overlay);
        }
        Ok(paths)
    }

    /// Recipe changes, oldest first: (recipe, revision, change, peer).
    pub fn recipe_changes(&self) -> Result<Vec<ChangeRow>, AuditError> {
        let mut statement = self
            .conn
            .prepare("SELECT recipe, revision, change, peer FROM recipe_changes ORDER BY id")
            .map_err(AuditError::database)?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get(0)?,
                    u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                    row.get(2)?,
                    row.get(3)?,
                ))
            })
            .map_err(AuditError::database)?;
        rows.collect::<Result<_, _>>().map_err(AuditError::database)
    }
}

fn expiring(row: &Row<'_>) -> rusqlite::Result<Expiring> {
    Ok(Expiring {
        row: row.get(0)?,
        files: KeptFiles {
            frame: row.get(1)?,
            overlay: row.get(2)?,
            bytes: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
        },
    })
}
