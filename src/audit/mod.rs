//! The audit trail: every verdict and every recipe change recorded in an
//! embedded SQLite database in the data folder (`audit/audit.db`), with
//! the frame and heatmap overlay of every FAIL and a sample of PASS kept as
//! PNG files (`audit/files/`), trimmed by age and by total bytes.
//!
//! It is a subscriber of the core's events and never sits on the
//! inspection path: a writer thread of its own ([`writer`]) owns the
//! database connection and encodes the PNGs; a slow or full disk costs
//! records (the bus drops events the writer cannot take, and failed writes
//! are counted and logged), never an inspection. Readers ([`Audit`]) query
//! through their own connection on the blocking pool. No proto type here:
//! the gRPC service converts.

mod files;
mod retention;
mod store;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

use crate::engine::{Region, Verdict};
use crate::server::{Subscription, Timings};

pub use files::Files;
pub use retention::Retention;
pub use writer::AuditWriter;

/// Most results one page may hold.
pub const MAX_PAGE_SIZE: usize = 1000;

/// Results a page holds when the caller does not say.
pub const DEFAULT_PAGE_SIZE: usize = 50;

/// New results a slow `WatchResults` stream may fall behind by before it
/// skips some.
const FEED_CAPACITY: usize = 256;

/// The folder of the audit trail inside the data folder.
pub fn folder(data_dir: &Path) -> PathBuf {
    data_dir.join("audit")
}

/// A gate the writer passes before each event: tests close it to stand for
/// a stuck disk. Never set from flags.
#[derive(Debug, Default)]
pub struct Stall {
    closed: Mutex<bool>,
    opened: Condvar,
}

impl Stall {
    /// A gate, closed.
    pub fn closed() -> Arc<Self> {
        Arc::new(Self {
            closed: Mutex::new(true),
            opened: Condvar::new(),
        })
    }

    /// Lets the writer through from now on.
    pub fn open(&self) {
        *self.closed.lock().unwrap_or_else(PoisonError::into_inner) = false;
        self.opened.notify_all();
    }

    fn pass(&self) {
        let mut closed = self.closed.lock().unwrap_or_else(PoisonError::into_inner);
        while *closed {
            closed = self.opened.wait(closed).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// How the audit trail is kept (from `loupe serve`'s flags).
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Events held for the writer before later ones are dropped.
    pub queue: usize,
    /// Share of PASS results whose frame and overlay are kept, 0..=1
    /// (every k-th, k = round(1 / share)); every FAIL's are.
    pub pass_sample: f64,
    /// Results older than this are deleted.
    pub retain: Duration,
    /// Most bytes of kept files; past it the oldest files go first.
    pub retain_bytes: u64,
    /// Test hook: the writer waits at this gate before each event.
    #[doc(hidden)]
    pub stall: Option<Arc<Stall>>,
}

impl AuditConfig {
    /// Every k-th PASS whose pictures are kept (0: none), from the share.
    pub fn pass_images_every(&self) -> u64 {
        if self.pass_sample > 0.0 {
            (1.0 / self.pass_sample).round().max(1.0) as u64
        } else {
            0
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            queue: 1024,
            pass_sample: 0.01,
            retain: Duration::from_secs(90 * 86_400),
            retain_bytes: 10 << 30,
            stall: None,
        }
    }
}

/// Why the audit trail could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The database failed.
    #[error("audit database: {0}")]
    Database(String),
    /// A file or folder of the trail could not be used.
    #[error("audit files ({path}): {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A request the trail cannot answer as asked (a bad page token).
    #[error("{0}")]
    InvalidArgument(String),
    /// No result has that id.
    #[error("no result has id {0}")]
    NotFound(String),
    /// The writer thread could not start, or a reader task died.
    #[error("audit trail: {0}")]
    Internal(String),
}

impl AuditError {
    #[allow(clippy::needless_pass_by_value)] // used as `map_err(AuditError::database)`
    fn database(error: rusqlite::Error) -> Self {
        Self::Database(error.to_string())
    }

    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The core's one error type for the transports: server paths and
/// database details are logged, not shown to clients.
impl From<AuditError> for crate::server::Error {
    fn from(error: AuditError) -> Self {
        match error {
            AuditError::InvalidArgument(message) => Self::InvalidArgument(message),
            AuditError::NotFound(_) => Self::NotFound(error.to_string()),
            AuditError::Database(_) | AuditError::Io { .. } | AuditError::Internal(_) => {
                tracing::error!(%error, "audit trail");
                Self::Internal("the audit trail could not be read; see the server's log".to_owned())
            }
        }
    }
}

/// Whether a result's frame and overlay are kept, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImagesState {
    /// Kept as files.
    Kept,
    /// A PASS outside the sample (`--audit-pass-sample`).
    NotSampled,
    /// Kept once, removed by retention (`--retain-bytes`).
    Removed,
    /// Writing them failed (the disk, say).
    WriteFailed,
    /// The event carried no pictures.
    Unavailable,
}

impl ImagesState {
    fn code(self) -> i64 {
        match self {
            Self::Kept => 1,
            Self::NotSampled => 2,
            Self::Removed => 3,
            Self::WriteFailed => 4,
            Self::Unavailable => 5,
        }
    }

    fn from_code(code: i64) -> Self {
        match code {
            1 => Self::Kept,
            2 => Self::NotSampled,
            3 => Self::Removed,
            4 => Self::WriteFailed,
            _ => Self::Unavailable,
        }
    }
}

/// A recorded recipe change: recipe, revision, what changed, the client's
/// address.
pub type ChangeRow = (String, u64, String, Option<String>);

/// Where a recorded frame's time went.
pub type StageTimes = Timings;

/// One recorded verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRecord {
    /// The database row (paging).
    pub row: i64,
    /// The public id: `<unix-ms>-<row>`.
    pub id: String,
    /// When the verdict was given, Unix milliseconds.
    pub at_ms: i64,
    /// The recipe.
    pub recipe: String,
    /// Its revision that judged the frame.
    pub revision: u64,
    /// The client's frame id.
    pub frame_id: String,
    /// Pass or fail.
    pub verdict: Verdict,
    /// The anomaly score.
    pub score: f32,
    /// The threshold in force.
    pub threshold: f32,
    /// Defect regions in frame pixels.
    pub regions: Vec<Region>,
    /// Where the time went.
    pub timings: StageTimes,
    /// The client's address, when known.
    pub peer: Option<String>,
    /// Whether the frame and overlay are kept.
    pub images: ImagesState,
}

/// The kept pictures of a result.
#[derive(Debug, Clone, Default)]
pub struct ResultImages {
    /// The frame, PNG.
    pub frame_png: Option<Vec<u8>>,
    /// The heatmap over the frame, PNG.
    pub overlay_png: Option<Vec<u8>>,
}

/// Which results to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResultFilter {
    /// Only this recipe's.
    pub recipe: Option<String>,
    /// Only this verdict.
    pub verdict: Option<Verdict>,
    /// At or after, Unix milliseconds.
    pub start_ms: Option<i64>,
    /// Before, Unix milliseconds.
    pub end_ms: Option<i64>,
}

impl ResultFilter {
    /// A digest of the filter, so that a page token is refused with another.
    fn fingerprint(&self) -> u32 {
        let text = format!(
            "{:?}|{:?}|{:?}|{:?}",
            self.recipe, self.verdict, self.start_ms, self.end_ms
        );
        crc32fast::hash(text.as_bytes())
    }
}

/// One page of results.
#[derive(Debug, Clone)]
pub struct Page {
    /// Newest first.
    pub results: Vec<ResultRecord>,
    /// The token of the next page; empty on the last.
    pub next_page_token: String,
}

/// Unix milliseconds of `at`.
pub fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
}

/// The opaque token of the page after the row `last` under `filter`.
fn make_page_token(filter: &ResultFilter, last: i64) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("v1:{last}:{:08x}", filter.fingerprint()))
}

/// The row a page token continues below.
fn parse_page_token(filter: &ResultFilter, token: &str) -> Result<i64, AuditError> {
    use base64::Engine as _;
    let bad = || AuditError::InvalidArgument("page_token is not one this server gave".to_owned());
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(bad)?;
    let mut parts = text.split(':');
    let (Some("v1"), Some(row), Some(fingerprint), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if fingerprint != format!("{:08x}", filter.fingerprint()) {
        return Err(AuditError::InvalidArgument(
            "page_token was given for other filters: send the same recipe, verdict and time range as the first call"
                .to_owned(),
        ));
    }
    row.parse().map_err(|_| bad())
}

/// Counts the transports and metrics read.
#[derive(Debug, Default)]
struct Counters {
    writes_failed: AtomicU64,
    dropped: Arc<AtomicU64>,
}

/// The readers' handle on the trail; cloning shares it.
#[derive(Debug, Clone)]
pub struct Audit {
    store: Arc<Mutex<store::Store>>,
    files: Files,
    counters: Arc<Counters>,
    feed: broadcast::Sender<Arc<ResultRecord>>,
}

impl Audit {
    /// Opens the trail in `data_dir` and starts its writer on
    /// `subscription` (which should carry images). Runs start-up retention
    /// and removes files no result refers to before returning.
    pub async fn start(
        config: AuditConfig,
        data_dir: &Path,
        subscription: Subscription,
    ) -> Result<(Self, AuditWriter), AuditError> {
        let folder = folder(data_dir);
        let files = Files::new(folder.join("files"));
        let dropped = subscription.dropped_counter();
        let counters = Arc::new(Counters {
            writes_failed: AtomicU64::new(0),
            dropped,
        });
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let opened = {
            let files = files.clone();
            let config = config.clone();
            tokio::task::spawn_blocking(move || -> Result<_, AuditError> {
                std::fs::create_dir_all(files.root()).map_err(|error| AuditError::io(files.root(), error))?;
                let path = folder.join("audit.db");
                let mut writer_store = store::Store::open(&path)?;
                let retention = Retention::new(config.retain, config.retain_bytes);
                let total = retention.at_start(&mut writer_store, &files)?;
                let reader = store::Store::open(&path)?;
                Ok((writer_store, reader, total))
            })
            .await
            .map_err(|error| AuditError::Internal(error.to_string()))??
        };
        let (writer_store, reader, total) = opened;
        let audit = Self {
            store: Arc::new(Mutex::new(reader)),
            files: files.clone(),
            counters: counters.clone(),
            feed: feed.clone(),
        };
        let writer = writer::spawn(writer::Parts {
            config,
            store: writer_store,
            files,
            file_bytes: total,
            counters,
            feed,
            subscription,
        })?;
        Ok((audit, writer))
    }

    /// Runs `query` on the reader's connection on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&store::Store, &Files) -> Result<T, AuditError> + Send + 'static,
    ) -> Result<T, AuditError> {
        let (store, files) = (self.store.clone(), self.files.clone());
        tokio::task::spawn_blocking(move || {
            let store = store.lock().unwrap_or_else(PoisonError::into_inner);
            query(&store, &files)
        })
        .await
        .map_err(|error| AuditError::Internal(error.to_string()))?
    }

    /// A page of results that match `filter`, newest first: `page_size`
    /// of them (0: [`DEFAULT_PAGE_SIZE`], at most [`MAX_PAGE_SIZE`]), after
    /// those of `page_token` (empty: from the newest).
    pub async fn list(
        &self,
        filter: ResultFilter,
        page_size: usize,
        page_token: &str,
    ) -> Result<Page, AuditError> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            size => size.min(MAX_PAGE_SIZE),
        };
        let before = if page_token.is_empty() {
            None
        } else {
            Some(parse_page_token(&filter, page_token)?)
        };
        self.read(move |store, _| {
            // One more than asked tells whether another page follows.
            let mut results = store.list(&filter, before, size + 1)?;
            let next_page_token = if results.len() > size {
                results.truncate(size);
                results
                    .last()
                    .map_or_else(String::new, |last| make_page_token(&filter, last.row))
            } else {
                String::new()
            };
            Ok(Page {
                results,
                next_page_token,
            })
        })
        .await
    }

    /// The result `id` with its kept pictures.
    pub async fn get(&self, id: String) -> Result<(ResultRecord, ResultImages), AuditError> {
        self.read(move |store, files| {
            let Some((record, kept)) = store.get(&id)? else {
                return Err(AuditError::NotFound(crate::text::quoted(&id)));
            };
            // A file retention removes between the query and the read is
            // simply not there.
            let read = |path: Option<String>| path.and_then(|path| files.read(&path).ok());
            let images = ResultImages {
                frame_png: read(kept.frame),
                overlay_png: read(kept.overlay),
            };
            Ok((record, images))
        })
        .await
    }

    /// New results as the writer stores them.
    pub fn watch(&self) -> broadcast::Receiver<Arc<ResultRecord>> {
        self.feed.subscribe()
    }

    /// Recipe changes recorded, oldest first: (recipe, revision, what
    /// changed, client address).
    pub async fn recipe_changes(&self) -> Result<Vec<ChangeRow>, AuditError> {
        self.read(|store, _| store.recipe_changes()).await
    }

    /// Records and files that could not be written.
    pub fn writes_failed(&self) -> u64 {
        self.counters.writes_failed.load(Ordering::Relaxed)
    }

    /// Events the writer lost because its queue was full.
    pub fn records_dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_are_tied_to_their_filter() {
        let filter = ResultFilter {
            recipe: Some("part".into()),
            ..ResultFilter::default()
        };
        let token = make_page_token(&filter, 42);
        assert_eq!(parse_page_token(&filter, &token).unwrap(), 42);
        let other = ResultFilter::default();
        let error = parse_page_token(&other, &token).unwrap_err().to_string();
        assert!(error.contains("other filters"), "{error}");
        assert!(parse_page_token(&filter, "nonsense!").is_err());
    }

    #[test]
    fn the_stall_gate_lets_the_writer_through_once_opened() {
        let gate = Stall::closed();
        let passer = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.pass())
        };
        gate.open();
        passer.join().unwrap();
    }
}
