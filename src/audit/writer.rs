//! The writer: a thread of its own (never a tokio worker) that owns the
//! database connection, encodes and writes the PNGs, inserts the rows,
//! trims by bytes after each kept file and by age every few minutes, and
//! announces each stored result to `WatchResults`. A small task moves the
//! core's events from the subscription to the thread; when the thread
//! falls behind, the subscription's bounded queue fills and the bus drops
//! (and counts) what does not fit. Stopping flushes what was queued.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{broadcast, mpsc, oneshot};

use super::files::frame_png;
use super::store::{KeptFiles, Store};
use super::{AuditConfig, AuditError, Counters, Files, ImagesState, ResultRecord, Retention, unix_ms};
use crate::engine::{Verdict, overlay_png};
use crate::server::{Event, InspectionEvent, InspectionImages, RecipeChange, RecipeEvent, Subscription};

/// Jobs on their way to the thread (the subscription holds the rest).
const HANDOFF: usize = 8;

/// How often results past the age limit are looked for.
const AGE_CHECK_EVERY: Duration = Duration::from_secs(600);

/// Shortest time between two log lines about failed writes.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// What the writer is handed at start.
pub(super) struct Parts {
    pub config: AuditConfig,
    pub store: Store,
    pub files: Files,
    pub file_bytes: u64,
    pub counters: Arc<Counters>,
    pub feed: broadcast::Sender<Arc<ResultRecord>>,
    pub subscription: Subscription,
}

enum Job {
    Event(Event),
    AgeCheck,
}

/// The running writer: stop it with [`AuditWriter::stop`], which flushes
/// what is queued and joins the thread. Dropped without that, it stops
/// after the queued events without being waited for.
#[derive(Debug)]
pub struct AuditWriter {
    stop: Option<oneshot::Sender<()>>,
    forwarder: Option<tokio::task::JoinHandle<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AuditWriter {
    /// Writes every event received so far, then ends the thread.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(forwarder) = self.forwarder.take() {
            let _ = forwarder.await;
        }
        if let Some(thread) = self.thread.take() {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!("the audit writer thread panicked");
            }
        }
    }
}

pub(super) fn spawn(parts: Parts) -> Result<AuditWriter, AuditError> {
    let Parts {
        config,
        store,
        files,
        file_bytes,
        counters,
        feed,
        mut subscription,
    } = parts;
    let next_row = store.next_row()?;
    let (jobs, mut received) = mpsc::channel::<Job>(HANDOFF);
    let mut writer = Writer {
        retention: Retention::new(config.retain, config.retain_bytes),
        stall: config.stall,
        store,
        files,
        file_bytes,
        counters,
        feed,
        next_row,
        last_log: None,
    };
    let thread = std::thread::Builder::new()
        .name("loupe-audit".to_owned())
        .spawn(move || {
            while let Some(job) = received.blocking_recv() {
                writer.handle(job);
            }
        })
        .map_err(|error| AuditError::Internal(format!("cannot start the writer thread: {error}")))?;
    let (stop, mut stopped) = oneshot::channel::<()>();
    let forwarder = tokio::spawn(async move {
        let mut age_check = tokio::time::interval(AGE_CHECK_EVERY);
        age_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        age_check.tick().await;
        loop {
            tokio::select! {
                biased;
                _ = &mut stopped => break,
                event = subscription.recv() => match event {
                    Some(event) => {
                        if jobs.send(Job::Event(event)).await.is_err() {
                            return;
                        }
                    }
                    None => break,
                },
                _ = age_check.tick() => {
                    let _ = jobs.try_send(Job::AgeCheck);
                }
            }
        }
        // A clean stop writes what is queued.
        while let Some(event) = subscription.try_recv() {
            if jobs.send(Job::Event(event)).await.is_err() {
                return;
            }
        }
    });
    Ok(AuditWriter {
        stop: Some(stop),
        forwarder: Some(forwarder),
        thread: Some(thread),
    })
}

struct Writer {
    retention: Retention,
    stall: Option<Arc<super::Stall>>,
    store: Store,
    files: Files,
    file_bytes: u64,
    counters: Arc<Counters>,
    feed: broadcast::Sender<Arc<ResultRecord>>,
    next_row: i64,
    last_log: Option<Instant>,
}

impl Writer {
    fn handle(&mut self, job: Job) {
        if let Some(stall) = &self.stall {
            stall.pass();
        }
        let outcome = match job {
            Job::Event(Event::Inspection(inspection)) => self.inspected(&inspection),
            Job::Event(Event::Recipe(change)) => self.recipe_changed(&change),
            // The drift state is shown live (GetRecipe, metrics) and logged
            // by the drift watch; the trail records verdicts and changes.
            Job::Event(Event::Drift(_)) => Ok(()),
            Job::AgeCheck => self
                .retention
                .by_age(&mut self.store, &self.files, SystemTime::now())
                .map(|removed| self.file_bytes = self.file_bytes.saturating_sub(removed)),
        };
        if let Err(error) = outcome {
            self.failed(&error);
        }
    }

    /// Counts a failed write and logs it, at most once a minute.
    fn failed(&mut self, error: &AuditError) {
        let failed = self.counters.writes_failed.fetch_add(1, Ordering::Relaxed) + 1;
        if self.last_log.is_none_or(|last| last.elapsed() >= LOG_EVERY) {
            self.last_log = Some(Instant::now());
            tracing::warn!(%error, failed_so_far = failed, "audit trail write failed (logged at most once a minute)");
        }
    }

    fn inspected(&mut self, event: &InspectionEvent) -> Result<(), AuditError> {
        let at_ms = unix_ms(event.at);
        let row = self.next_row;
        let id = format!("{at_ms}-{row}");
        // The bus samples: the event carries the pictures of every FAIL and
        // of the PASSes in the sample (`AuditConfig::pass_images_every`).
        let (images, kept) = match (event.verdict, &event.images) {
            (Verdict::Pass, None) => (ImagesState::NotSampled, KeptFiles::default()),
            (Verdict::Fail, None) => (ImagesState::Unavailable, KeptFiles::default()),
            (_, Some(pictures)) => match self.keep(at_ms, &id, pictures, event.threshold) {
                Ok(kept) => (ImagesState::Kept, kept),
                Err(error) => {
                    self.failed(&error);
                    (ImagesState::WriteFailed, KeptFiles::default())
                }
            },
        };
        let record = ResultRecord {
            row,
            id,
            at_ms,
            recipe: event.recipe.clone(),
            revision: event.revision,
            frame_id: event.frame_id.clone(),
            verdict: event.verdict,
            score: event.score,
            threshold: event.threshold,
            regions: event.regions.clone(),
            timings: event.timings,
            peer: event.peer.map(|peer| peer.to_string()),
            images,
        };
        if let Err(error) = self.store.insert(&record, &kept) {
            for path in [&kept.frame, &kept.overlay].into_iter().flatten() {
                let _ = self.files.remove(path);
            }
            return Err(error);
        }
        self.next_row += 1;
        self.file_bytes += kept.bytes;
        if self.file_bytes > self.retention.bytes {
            self.file_bytes = self
                .retention
                .by_bytes(&mut self.store, &self.files, self.file_bytes)?;
        }
        let _ = self.feed.send(Arc::new(record));
        Ok(())
    }

    /// Encodes and writes the frame and its overlay; on any failure
    /// neither is left behind.
    fn keep(
        &self,
        at_ms: i64,
        id: &str,
        pictures: &InspectionImages,
        threshold: f32,
    ) -> Result<KeptFiles, AuditError> {
        let encode = |error: String| AuditError::Internal(format!("encoding a PNG: {error}"));
        let frame = frame_png(&pictures.frame).map_err(|error| encode(error.to_string()))?;
        let overlay = overlay_png(&pictures.frame, &pictures.map, &pictures.geometry, threshold)
            .map_err(|error| encode(error.to_string()))?
            .data;
        let (frame_path, overlay_path) = Files::names(at_ms, id);
        self.files.write(&frame_path, &frame)?;
        if let Err(error) = self.files.write(&overlay_path, &overlay) {
            let _ = self.files.remove(&frame_path);
            return Err(error);
        }
        Ok(KeptFiles {
            frame: Some(frame_path),
            overlay: Some(overlay_path),
            bytes: (frame.len() + overlay.len()) as u64,
        })
    }

    fn recipe_changed(&self, event: &RecipeEvent) -> Result<(), AuditError> {
        let peer = event.peer.map(|peer| peer.to_string());
        self.store.insert_change(
            unix_ms(event.at),
            &event.recipe,
            event.revision,
            &describe(&event.change),
            peer.as_deref(),
        )
    }
}

/// What changed, for people.
fn describe(change: &RecipeChange) -> String {
    match change {
        RecipeChange::Created => "created".to_owned(),
        RecipeChange::SettingsChanged { changed, rebuilt } => {
            let fields: Vec<&str> = changed
                .iter()
                .flat_map(|setting| setting.fields())
                .copied()
                .collect();
            let rebuilt = if *rebuilt { " (reference rebuilt)" } else { "" };
            format!("settings: {}{rebuilt}", fields.join(", "))
        }
        RecipeChange::ReferencesAdded {
            added,
            replaced: false,
        } => format!("references: {added} good frames added"),
        RecipeChange::ReferencesAdded {
            added,
            replaced: true,
        } => {
            format!("references: replaced by {added} good frames")
        }
        RecipeChange::Deleted => "deleted".to_owned(),
        RecipeChange::Damaged { reason } => format!("damaged: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Setting;

    #[test]
    fn changes_are_described_with_the_settings_fields() {
        let change = RecipeChange::SettingsChanged {
            changed: vec![Setting::InputSize, Setting::Threshold],
            rebuilt: true,
        };
        assert_eq!(
            describe(&change),
            "settings: input_width, input_height, threshold (reference rebuilt)"
        );
        assert_eq!(
            describe(&RecipeChange::ReferencesAdded {
                added: 5,
                replaced: false
            }),
            "references: 5 good frames added"
        );
    }
}
