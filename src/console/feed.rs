//! The console's live side: a subscriber of the core's events that counts
//! PASS and FAIL per recipe since the start and keeps the newest verdicts,
//! and the server-sent-events stream that pushes each new one to the page.
//!
//! With the audit trail on, a feed item is the trail's record (it has an id,
//! so the page links to the result, and says whether its pictures were
//! kept); without it, the core's event. Items carry a sequence number, sent
//! as the SSE `id`, so that a page that reconnects (with `Last-Event-ID`)
//! gets what it missed from the newest ones and nothing twice.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_stream::{Stream, StreamExt};

use super::Console;
use super::api::ApiError;
use crate::audit::{Audit, ImagesState, ResultRecord, unix_ms};
use crate::engine::Verdict;
use crate::server::{Event, InspectionEvent, RecipeChange, Subscription};

/// The newest verdicts the feed keeps for a page that opens or reconnects.
pub const FEED_CAPACITY: usize = 50;

/// One verdict of the live feed.
#[derive(Debug, Clone, Serialize)]
pub struct FeedItem {
    /// Its place in the feed, from 1.
    pub seq: u64,
    /// The audit trail's id; `None` with the trail off.
    pub id: Option<String>,
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// The recipe.
    pub recipe: String,
    /// Its revision that judged the frame.
    pub revision: u64,
    /// The client's frame id.
    pub frame_id: String,
    /// `PASS` or `FAIL`.
    pub verdict: &'static str,
    /// The anomaly score.
    pub score: f32,
    /// The threshold in force.
    pub threshold: f32,
    /// Defect regions found.
    pub regions: usize,
    /// Whether the trail kept the frame and overlay.
    pub pictures: bool,
}

/// PASS and FAIL counts of one recipe.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    /// Parts that passed.
    pub pass: u64,
    /// Parts that failed.
    pub fail: u64,
}

#[derive(Debug, Default)]
struct Kept {
    counts: HashMap<String, Counts>,
    newest: VecDeque<Arc<FeedItem>>,
    next_seq: u64,
}

/// The feed's shared state; cloning shares it.
#[derive(Debug, Clone)]
pub(super) struct Feed {
    kept: Arc<Mutex<Kept>>,
    items: broadcast::Sender<Arc<FeedItem>>,
    pages: Arc<tokio::sync::Semaphore>,
}

impl Feed {
    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A recipe's counts since the start.
    pub(super) fn counts(&self, recipe: &str) -> Counts {
        self.lock().counts.get(recipe).copied().unwrap_or_default()
    }

    fn count(&self, inspection: &InspectionEvent) {
        let mut kept = self.lock();
        let counts = kept.counts.entry(inspection.recipe.clone()).or_default();
        match inspection.verdict {
            Verdict::Pass => counts.pass += 1,
            Verdict::Fail => counts.fail += 1,
        }
    }

    fn forget(&self, recipe: &str) {
        self.lock().counts.remove(recipe);
    }

    fn push(&self, item: impl FnOnce(u64) -> FeedItem) {
        let mut kept = self.lock();
        kept.next_seq += 1;
        let item = Arc::new(item(kept.next_seq));
        if kept.newest.len() == FEED_CAPACITY {
            kept.newest.pop_front();
        }
        kept.newest.push_back(item.clone());
        // Nobody listening is fine.
        let _ = self.items.send(item);
    }

    /// The kept items after `after`, oldest first, and a receiver of the
    /// later ones (taken first, so that none falls between).
    fn since(&self, after: u64) -> (Vec<Arc<FeedItem>>, broadcast::Receiver<Arc<FeedItem>>) {
        let later = self.items.subscribe();
        let kept = self.lock();
        let missed = kept
            .newest
            .iter()
            .filter(|item| item.seq > after)
            .cloned()
            .collect();
        (missed, later)
    }
}

/// `PASS` or `FAIL`, as the page shows it.
pub(super) fn verdict_text(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pass => "PASS",
        Verdict::Fail => "FAIL",
    }
}

fn from_event(seq: u64, event: &InspectionEvent) -> FeedItem {
    FeedItem {
        seq,
        id: None,
        at_ms: unix_ms(event.at),
        recipe: event.recipe.clone(),
        revision: event.revision,
        frame_id: event.frame_id.clone(),
        verdict: verdict_text(event.verdict),
        score: event.score,
        threshold: event.threshold,
        regions: event.regions.len(),
        pictures: false,
    }
}

fn from_record(seq: u64, record: &ResultRecord) -> FeedItem {
    FeedItem {
        seq,
        id: Some(record.id.clone()),
        at_ms: record.at_ms,
        recipe: record.recipe.clone(),
        revision: record.revision,
        frame_id: record.frame_id.clone(),
        verdict: verdict_text(record.verdict),
        score: record.score,
        threshold: record.threshold,
        regions: record.regions.len(),
        pictures: record.images == ImagesState::Kept,
    }
}

/// The feed, and the task that fills it from `subscription` (counts, and
/// the items when there is no trail) and from the trail's new records.
pub(super) fn start(mut subscription: Subscription, audit: Option<&Audit>) -> (Feed, JoinHandle<()>) {
    let (items, _) = broadcast::channel(FEED_CAPACITY);
    let feed = Feed {
        kept: Arc::default(),
        items,
        pages: Arc::new(tokio::sync::Semaphore::new(MAX_LIVE_PAGES)),
    };
    let mut records = audit.map(Audit::watch);
    let filling = feed.clone();
    let task = tokio::spawn(async move {
        let feed = filling;
        loop {
            let record = async {
                match &mut records {
                    Some(records) => records.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = subscription.recv() => match event {
                    Some(Event::Inspection(inspection)) => {
                        feed.count(&inspection);
                        if records.is_none() {
                            feed.push(|seq| from_event(seq, &inspection));
                        }
                    }
                    Some(Event::Recipe(change)) if change.change == RecipeChange::Deleted => feed.forget(&change.recipe),
                    Some(_) => {}
                    None => break,
                },
                record = record => match record {
                    Ok(record) => feed.push(|seq| from_record(seq, &record)),
                    // A page misses what the trail's feed skipped; the
                    // counts come from the core and miss nothing.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => records = None,
                },
            }
        }
    });
    (feed, task)
}

/// Live pages served at once; past it a page is told to come back later,
/// so that open pages cannot pile up without bound.
pub const MAX_LIVE_PAGES: usize = 64;

/// `GET /api/feed`: the newest verdicts the page has not seen, then each new
/// one, as `result` events whose data is a [`FeedItem`]; 503 past
/// [`MAX_LIVE_PAGES`].
pub(super) async fn events(
    State(console): State<Console>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Ok(permit) = console.feed.pages.clone().try_acquire_owned() else {
        return Err(ApiError::unavailable(format!(
            "{MAX_LIVE_PAGES} console pages are following the live feed already; close one"
        )));
    };
    let after = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
        .unwrap_or(0);
    let (missed, later) = console.feed.since(after);
    let last_missed = missed.last().map_or(after, |item| item.seq);
    let later = tokio_stream::wrappers::BroadcastStream::new(later)
        .filter_map(Result::ok)
        .filter(move |item| item.seq > last_missed);
    let stream = tokio_stream::iter(missed).chain(later).map(move |item| {
        // Held as long as the page follows the feed.
        let _page = &permit;
        let data = serde_json::to_string(&*item).unwrap_or_else(|_| "{}".to_owned());
        Ok(SseEvent::default()
            .event("result")
            .id(item.seq.to_string())
            .data(data))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
