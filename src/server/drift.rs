//! The drift watch: per recipe, the last PASS scores against the
//! calibration scores of the reference in force, and the state OK, WATCH or
//! DRIFT they give (the statistic, its limits and their defaults are
//! described in [`crate::scoring::drift`]).
//!
//! Updated where an inspection's event is published, before the answer
//! goes out: one short lock of the recipe's tracker (a push into a ring
//! buffer and a median over the window, linear in it), no I/O, nothing
//! awaited. A change of state is
//! logged (WARN for WATCH and DRIFT, INFO back to OK) and published on the
//! event bus as [`DriftEvent`]. A new reference (good frames added, a
//! rebuild) starts the window again, as does a restart: the window lives
//! in memory only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use crate::scoring::drift::{Basis, DriftLimits, Level, Statistics, Window, next_level};

use super::RecipeState;

/// A recipe's drift state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftState {
    /// Like the enrolled parts, or too few parts seen yet.
    Ok,
    /// A watch limit is reached.
    Watch,
    /// A drift limit is reached.
    Drift,
    /// The reference has no basis for the statistic (one golden image, too
    /// few calibration scores).
    Unavailable,
}

impl From<Level> for DriftState {
    fn from(level: Level) -> Self {
        match level {
            Level::Ok => Self::Ok,
            Level::Watch => Self::Watch,
            Level::Drift => Self::Drift,
        }
    }
}

impl std::fmt::Display for DriftState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ok => Level::Ok.fmt(f),
            Self::Watch => Level::Watch.fmt(f),
            Self::Drift => Level::Drift.fmt(f),
            Self::Unavailable => f.write_str("UNAVAILABLE"),
        }
    }
}

/// What the drift watch says about a recipe now.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftStatus {
    /// The state.
    pub state: DriftState,
    /// PASS parts seen since the reference came into force (or the start).
    pub parts_seen: u64,
    /// PASS scores in the window.
    pub window_parts: usize,
    /// Parts needed before a state other than OK is judged.
    pub min_parts: usize,
    /// The window's statistics; `None` while it is empty or unavailable.
    pub statistics: Option<Statistics>,
    /// The calibration's median and 95th percentile; `None` when
    /// unavailable.
    pub basis: Option<Basis>,
    /// Why it is unavailable.
    pub reason: Option<String>,
    /// The limits in force.
    pub limits: DriftLimits,
}

/// A recipe's drift state changed.
#[derive(Debug, Clone)]
pub struct DriftEvent {
    /// When.
    pub at: SystemTime,
    /// The recipe.
    pub recipe: String,
    /// The revision that judged the part that changed it.
    pub revision: u64,
    /// The state before.
    pub from: DriftState,
    /// The status after.
    pub status: DriftStatus,
}

/// One recipe's window, for the reference it was started on.
#[derive(Debug)]
struct Tracker {
    /// The reference file it counts against.
    reference: Option<String>,
    /// The revision of the newest part seen.
    revision: u64,
    basis: Result<Basis, String>,
    window: Window,
    parts_seen: u64,
    level: Level,
}

impl Tracker {
    fn new(state: &RecipeState) -> Self {
        let basis = match &state.judge {
            Some(judge) => {
                let reference = judge.reference();
                Basis::from_calibration(&reference.calibration_scores, reference.image_count as usize)
            }
            None => Err("the recipe has no reference".into()),
        };
        let limits = state.record.settings.drift_limits();
        let p95 = basis.as_ref().map_or(f32::INFINITY, |basis| basis.p95);
        Self {
            reference: state.record.reference_file.clone(),
            revision: state.record.revision,
            basis,
            window: Window::new(limits.window as usize, p95),
            parts_seen: 0,
            level: Level::Ok,
        }
    }

    fn counts_for(&self, state: &RecipeState) -> bool {
        self.reference == state.record.reference_file
    }

    fn state(&self) -> DriftState {
        match self.basis {
            Ok(_) => self.level.into(),
            Err(_) => DriftState::Unavailable,
        }
    }

    fn status(&mut self, limits: DriftLimits) -> DriftStatus {
        let (statistics, basis, reason) = match &self.basis {
            Ok(basis) => (self.window.statistics(basis), Some(*basis), None),
            Err(reason) => (None, None, Some(reason.clone())),
        };
        DriftStatus {
            state: self.state(),
            parts_seen: self.parts_seen,
            window_parts: self.window.len(),
            min_parts: limits.min_parts(),
            statistics,
            basis,
            reason,
            limits,
        }
    }
}

/// Every recipe's tracker.
#[derive(Debug, Default)]
pub struct DriftWatch {
    recipes: Mutex<HashMap<String, Arc<Mutex<Tracker>>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DriftWatch {
    /// No recipe watched yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn tracker(&self, state: &RecipeState) -> Arc<Mutex<Tracker>> {
        lock(&self.recipes)
            .entry(state.record.name.clone())
            .or_insert_with(|| Arc::new(Mutex::new(Tracker::new(state))))
            .clone()
    }

    /// Counts the PASS score `score` that `state` gave; the change of state
    /// it caused, if any (logged here).
    pub fn observe(&self, state: &RecipeState, score: f32) -> Option<DriftEvent> {
        state.judge.as_ref()?;
        let tracker = self.tracker(state);
        let mut tracker = lock(&tracker);
        if !tracker.counts_for(state) {
            if state.record.revision < tracker.revision {
                // Judged by a reference that was replaced meanwhile.
                return None;
            }
            *tracker = Tracker::new(state);
        }
        tracker.revision = state.record.revision;
        let limits = state.record.settings.drift_limits();
        let Ok(&basis) = tracker.basis.as_ref() else {
            tracker.parts_seen += 1;
            return None;
        };
        tracker.window.set_capacity(limits.window as usize);
        tracker.window.push(score);
        tracker.parts_seen += 1;
        if tracker.window.len() < limits.min_parts() {
            return None;
        }
        let statistics = tracker.window.statistics(&basis)?;
        let before = tracker.level;
        tracker.level = next_level(before, statistics, &limits);
        if tracker.level == before {
            return None;
        }
        let status = tracker.status(limits);
        drop(tracker);
        let event = DriftEvent {
            at: SystemTime::now(),
            recipe: state.record.name.clone(),
            revision: state.record.revision,
            from: before.into(),
            status,
        };
        log(&event, statistics);
        Some(event)
    }

    /// The drift status of `state`'s recipe; `None` while it has no
    /// reference. A reference that no part was judged by yet has an empty
    /// window.
    pub fn status(&self, state: &RecipeState) -> Option<DriftStatus> {
        state.judge.as_ref()?;
        let limits = state.record.settings.drift_limits();
        let tracker = lock(&self.recipes).get(&state.record.name).cloned();
        if let Some(tracker) = tracker {
            let mut tracker = lock(&tracker);
            if tracker.counts_for(state) {
                return Some(tracker.status(limits));
            }
        }
        Some(Tracker::new(state).status(limits))
    }

    /// Forgets a deleted recipe.
    pub fn forget(&self, recipe: &str) {
        lock(&self.recipes).remove(recipe);
    }
}

fn log(event: &DriftEvent, statistics: Statistics) {
    let (recipe, from, to) = (&event.recipe, event.from, event.status.state);
    let (shift, share) = (statistics.median_shift, statistics.share_above_p95);
    let limits = event.status.limits;
    let parts = event.status.window_parts;
    if to == DriftState::Ok {
        tracing::info!(
            %recipe, %from, %to, median_shift = shift, share_above_p95 = share, window_parts = parts,
            "drift watch: recipe {recipe} is back to OK (median shift {shift:.2}, {:.1} % above the calibration p95 over the last {parts} PASS parts)",
            100.0 * share
        );
    } else {
        tracing::warn!(
            %recipe, %from, %to, median_shift = shift, share_above_p95 = share, window_parts = parts,
            "drift watch: recipe {recipe} is now {to} (was {from}): median shift {shift:.2} (watch {}, drift {}), {:.1} % above the calibration p95 (watch {:.0} %, drift {:.0} %) over the last {parts} PASS parts",
            limits.watch_shift,
            limits.limit_shift,
            100.0 * share,
            100.0 * limits.watch_share,
            100.0 * limits.limit_share
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::{Judge, MatchMode, RecipeSettings};
    use crate::imaging::DecodeLimits;
    use crate::reference::Reference;
    use crate::store::RecipeRecord;

    /// A recipe at `revision` whose reference (file `file`) has the
    /// calibration scores 1..=99 of 99 frames.
    fn recipe(revision: u64, file: &str, settings: RecipeSettings, images: u32) -> RecipeState {
        let reference = Reference {
            mode: MatchMode::Global,
            channels: 2,
            grid_width: 1,
            grid_height: 1,
            features: vec![0.0, 0.0].into(),
            image_count: images,
            threshold: 200.0,
            calibration_scores: (1..=99).map(|v| v as f32).collect(),
            model_id: String::new(),
            input_width: 16,
            input_height: 16,
            pixels: None,
            probes: 0,
        };
        let judge = Judge::new(settings.clone(), reference, DecodeLimits::default()).unwrap();
        let mut record = RecipeRecord::new("part".into(), settings);
        record.revision = revision;
        record.reference_file = Some(file.into());
        RecipeState {
            record,
            judge: Some(Arc::new(judge)),
            damage: None,
        }
    }

    fn small_window() -> RecipeSettings {
        RecipeSettings {
            drift_window: 10,
            ..RecipeSettings::default()
        }
    }

    #[test]
    fn states_change_once_half_a_window_is_seen_and_each_change_is_an_event() {
        let watch = DriftWatch::new();
        let state = recipe(2, "reference-00000002.ref", small_window(), 99);
        // Four parts far above p95 95: too few (5 needed) to judge.
        for _ in 0..4 {
            assert!(watch.observe(&state, 150.0).is_none());
        }
        let status = watch.status(&state).unwrap();
        assert_eq!(
            (status.state, status.parts_seen, status.min_parts),
            (DriftState::Ok, 4, 5)
        );
        let event = watch.observe(&state, 150.0).expect("the fifth part judges");
        assert_eq!(
            (event.from, event.status.state),
            (DriftState::Ok, DriftState::Drift)
        );
        assert_eq!(event.status.statistics.unwrap().share_above_p95, 1.0);
        // Ten parts at the median: the 150s leave the window, back to OK once.
        let events: Vec<DriftEvent> = (0..10).filter_map(|_| watch.observe(&state, 50.0)).collect();
        let changes: Vec<_> = events.iter().map(|e| (e.from, e.status.state)).collect();
        assert_eq!(
            changes,
            [
                (DriftState::Drift, DriftState::Watch),
                (DriftState::Watch, DriftState::Ok)
            ]
        );
        let status = watch.status(&state).unwrap();
        assert_eq!((status.parts_seen, status.window_parts), (15, 10));
        assert_eq!(status.statistics.unwrap().median_shift, 0.0);
    }

    #[test]
    fn a_new_reference_resets_the_window_and_an_older_one_is_ignored() {
        let watch = DriftWatch::new();
        let old = recipe(2, "reference-00000002.ref", small_window(), 99);
        for _ in 0..6 {
            watch.observe(&old, 150.0);
        }
        assert_eq!(watch.status(&old).unwrap().state, DriftState::Drift);
        let new = recipe(3, "reference-00000003.ref", small_window(), 99);
        let fresh = watch.status(&new).unwrap();
        assert_eq!(
            (fresh.state, fresh.parts_seen, fresh.statistics),
            (DriftState::Ok, 0, None)
        );
        assert!(watch.observe(&new, 50.0).is_none());
        // A part judged by the old reference after the change does not count.
        assert!(watch.observe(&old, 150.0).is_none());
        assert_eq!(watch.status(&new).unwrap().parts_seen, 1);
        // A settings change that keeps the reference keeps the window, with
        // the new limits.
        let wider = recipe(
            4,
            "reference-00000003.ref",
            RecipeSettings {
                drift_window: 40,
                ..RecipeSettings::default()
            },
            99,
        );
        let status = watch.status(&wider).unwrap();
        assert_eq!((status.parts_seen, status.min_parts), (1, 20));
        watch.forget("part");
        assert_eq!(watch.status(&wider).unwrap().parts_seen, 0);
    }

    #[test]
    fn one_golden_image_has_no_drift_watch() {
        let watch = DriftWatch::new();
        let state = recipe(2, "reference-00000002.ref", small_window(), 1);
        for _ in 0..20 {
            assert!(watch.observe(&state, 150.0).is_none());
        }
        let status = watch.status(&state).unwrap();
        assert_eq!(status.state, DriftState::Unavailable);
        assert_eq!((status.parts_seen, status.window_parts), (20, 0));
        assert!(status.reason.unwrap().contains("golden image"));
        let mut empty = RecipeRecord::new("empty".into(), RecipeSettings::default());
        empty.reference_file = None;
        let empty = RecipeState {
            record: empty,
            judge: None,
            damage: None,
        };
        assert_eq!(watch.status(&empty), None);
        assert!(watch.observe(&empty, 1.0).is_none());
    }
}
