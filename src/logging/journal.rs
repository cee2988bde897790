//! The core's events as log lines: one info line per recipe change (target
//! [`RECIPE_TARGET`]) and, when debug is on for [`INSPECTION_TARGET`]
//! (`--log info,loupe::inspection=debug`), one debug line per inspection.
//! A subscriber of the bus like the metrics, so it never sits on the
//! inspection path; without debug on for inspections it subscribes to recipe
//! changes only, and the core builds no inspection event for it.

use tokio::task::JoinHandle;
use tracing::Level;
use tracing::field::display;

use crate::engine::Verdict;
use crate::server::events::DEFAULT_CAPACITY;
use crate::server::{Event, Events, InspectionEvent, RecipeChange, RecipeEvent, SubscribeOptions};

/// The target of the recipe-change lines.
pub const RECIPE_TARGET: &str = "loupe::recipe";

/// The target of the per-inspection lines (debug level).
pub const INSPECTION_TARGET: &str = "loupe::inspection";

/// Subscribes to `events` (inspections too when debug is on for
/// [`INSPECTION_TARGET`]) and logs each event on a task of its own until
/// the bus closes or the task is aborted.
pub fn spawn(events: &Events) -> JoinHandle<()> {
    let mut subscription = if tracing::enabled!(target: INSPECTION_TARGET, Level::DEBUG) {
        events.subscribe(SubscribeOptions::default())
    } else {
        events.subscribe_recipes(DEFAULT_CAPACITY)
    };
    tokio::spawn(async move {
        while let Some(event) = subscription.recv().await {
            log(&event);
        }
    })
}

/// Logs one event of the core.
pub fn log(event: &Event) {
    match event {
        Event::Recipe(change) => recipe_changed(change),
        Event::Inspection(inspection) => inspected(inspection),
        // The drift watch logs its own state changes, where it decides them.
        Event::Drift(_) => {}
    }
}

/// What a change is called in the `change` field (the labels of
/// `loupe_recipe_changes_total` too).
fn change_name(change: &RecipeChange) -> &'static str {
    match change {
        RecipeChange::Created => "created",
        RecipeChange::SettingsChanged { .. } => "settings",
        RecipeChange::ReferencesAdded { .. } => "references",
        RecipeChange::Deleted => "deleted",
        RecipeChange::Damaged { .. } => "damaged",
    }
}

fn recipe_changed(event: &RecipeEvent) {
    let recipe = event.recipe.as_str();
    let revision = event.revision;
    let change = change_name(&event.change);
    // Strings as `%` (Display): `recipe=tile` in text, not `recipe="tile"`.
    // `Option` fields are left out when `None`, never printed as `Some(..)`.
    let peer = event.peer.map(display);
    match &event.change {
        RecipeChange::SettingsChanged { changed, rebuilt } => {
            let changed = changed
                .iter()
                .map(|setting| setting.name())
                .collect::<Vec<_>>()
                .join(",");
            tracing::info!(target: RECIPE_TARGET, %recipe, revision, %change, %changed, rebuilt, peer, "recipe changed");
        }
        RecipeChange::ReferencesAdded { added, replaced } => {
            tracing::info!(target: RECIPE_TARGET, %recipe, revision, %change, added, replaced, peer, "recipe changed");
        }
        RecipeChange::Damaged { reason } => {
            tracing::info!(target: RECIPE_TARGET, %recipe, revision, %change, %reason, peer, "recipe changed");
        }
        RecipeChange::Created | RecipeChange::Deleted => {
            tracing::info!(target: RECIPE_TARGET, %recipe, revision, %change, peer, "recipe changed");
        }
    }
}

fn inspected(event: &InspectionEvent) {
    let verdict = match event.verdict {
        Verdict::Pass => "pass",
        Verdict::Fail => "fail",
    };
    // Milliseconds to the microsecond, as a number in JSON.
    let ms = (event.timings.total.as_micros() as f64) / 1000.0;
    tracing::debug!(
        target: INSPECTION_TARGET,
        recipe = %event.recipe,
        revision = event.revision,
        frame_id = %event.frame_id,
        %verdict,
        score = f64::from(event.score),
        threshold = f64::from(event.threshold),
        regions = event.regions.len(),
        ms,
        peer = event.peer.map(display),
        "inspected"
    );
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::engine::Setting;
    use crate::server::{Batch, Timings};

    /// Log lines written while `f` runs, as JSON objects.
    fn logged(f: impl FnOnce()) -> Vec<serde_json::Value> {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(Level::DEBUG)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    fn recipe(change: RecipeChange, peer: Option<&str>) -> Event {
        Event::Recipe(Arc::new(RecipeEvent {
            at: SystemTime::now(),
            recipe: "tile".into(),
            revision: 3,
            change,
            peer: peer.map(|peer| peer.parse().unwrap()),
        }))
    }

    #[test]
    fn a_settings_change_names_the_recipe_revision_and_settings() {
        let lines = logged(|| {
            log(&recipe(
                RecipeChange::SettingsChanged {
                    changed: vec![Setting::Sensitivity, Setting::MatchMode],
                    rebuilt: true,
                },
                Some("127.0.0.1:4000"),
            ));
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["target"], RECIPE_TARGET);
        assert_eq!(line["message"], "recipe changed");
        assert_eq!(line["recipe"], "tile");
        assert_eq!(line["revision"], 3);
        assert_eq!(line["change"], "settings");
        assert_eq!(line["changed"], "sensitivity,match_mode");
        assert_eq!(line["rebuilt"], true);
        assert_eq!(line["peer"], "127.0.0.1:4000");
    }

    #[test]
    fn every_change_is_one_line_and_an_absent_peer_is_left_out() {
        let changes = [
            RecipeChange::Created,
            RecipeChange::ReferencesAdded {
                added: 5,
                replaced: false,
            },
            RecipeChange::Deleted,
            RecipeChange::Damaged {
                reason: "bad file".into(),
            },
        ];
        let lines = logged(|| {
            for change in changes {
                log(&recipe(change, None));
            }
        });
        let names: Vec<&str> = lines
            .iter()
            .map(|line| line["change"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["created", "references", "deleted", "damaged"]);
        assert_eq!(lines[1]["added"], 5);
        assert_eq!(lines[1]["replaced"], false);
        assert_eq!(lines[3]["reason"], "bad file");
        for line in &lines {
            assert!(line.get("peer").is_none(), "{line}");
            assert!(!line.to_string().contains("Some("), "{line}");
        }
    }

    #[test]
    fn an_inspection_is_one_debug_line_with_verdict_score_and_time() {
        let event = Event::Inspection(Arc::new(InspectionEvent {
            at: SystemTime::now(),
            recipe: "tile".into(),
            revision: 2,
            frame_id: "part-17".into(),
            verdict: Verdict::Fail,
            score: 3.5,
            threshold: 2.0,
            regions: Vec::new(),
            timings: Timings {
                total: Duration::from_micros(26_250),
                ..Timings::default()
            },
            batch: Batch::default(),
            peer: None,
            images: None,
        }));
        let lines = logged(|| log(&event));
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["level"], "DEBUG");
        assert_eq!(line["target"], INSPECTION_TARGET);
        assert_eq!(line["recipe"], "tile");
        assert_eq!(line["frame_id"], "part-17");
        assert_eq!(line["verdict"], "fail");
        assert_eq!(line["score"], 3.5);
        assert_eq!(line["ms"], 26.25);
    }

    #[tokio::test]
    async fn the_subscriber_takes_only_recipe_changes_when_inspection_debug_is_off() {
        // No subscriber is installed in this test, so debug is off.
        let events = Events::new();
        let task = spawn(&events);
        assert!(!events.audience(crate::engine::Verdict::Pass).any);
        task.abort();
    }
}
