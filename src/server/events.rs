//! What happened in the core, for whoever listens: a typed event for every
//! finished inspection, every recipe change and every change of a recipe's
//! drift state, through a bounded fan-out.
//!
//! Each subscriber has its own bounded queue. Publishing never waits: when a
//! subscriber's queue is full its event is dropped and counted (on the
//! subscription and in the bus total), so a slow or stuck subscriber never
//! delays an inspection. Subscribers that are gone are forgotten at the next
//! event.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::{Batch, DriftEvent, Timings};
use crate::engine::{Region, Setting, Verdict};
use crate::imaging::{Geometry, Image};
use crate::scoring::map::AnomalyMap;

/// Events a subscription holds by default before it starts losing them.
pub const DEFAULT_CAPACITY: usize = 1024;

/// Something that happened in the core.
#[derive(Debug, Clone)]
pub enum Event {
    /// A frame was judged.
    Inspection(Arc<InspectionEvent>),
    /// A recipe changed.
    Recipe(Arc<RecipeEvent>),
    /// A recipe's drift state changed.
    Drift(Arc<DriftEvent>),
}

/// A judged frame.
#[derive(Debug)]
pub struct InspectionEvent {
    /// When the verdict was given.
    pub at: SystemTime,
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
    pub timings: Timings,
    /// The model run that judged it.
    pub batch: Batch,
    /// The client's address, when the transport knows it.
    pub peer: Option<SocketAddr>,
    /// The decoded frame and the anomaly map, for subscribers that asked for
    /// them ([`SubscribeOptions::images`]); `None` when nobody did.
    pub images: Option<InspectionImages>,
}

/// The pictures behind a verdict.
#[derive(Debug, Clone)]
pub struct InspectionImages {
    /// The decoded frame (8-bit gray or RGB).
    pub frame: Arc<Image>,
    /// The anomaly map at the model input size, over the ROI.
    pub map: Arc<AnomalyMap>,
    /// How the map lies on the frame.
    pub geometry: Geometry,
    /// For a PASS, its place among the PASSes the bus was asked about
    /// ([`Audience::pass`]), which each subscriber's sample reads; `None`
    /// for a FAIL.
    pub pass: Option<u64>,
}

/// A recipe change.
#[derive(Debug)]
pub struct RecipeEvent {
    /// When it happened.
    pub at: SystemTime,
    /// The recipe (the folder name, for a damaged one).
    pub recipe: String,
    /// The revision after the change (0 when deleted or damaged).
    pub revision: u64,
    /// What changed.
    pub change: RecipeChange,
    /// The client's address, when a client made the change.
    pub peer: Option<SocketAddr>,
}

/// What changed in a recipe.
#[derive(Debug, Clone, PartialEq)]
pub enum RecipeChange {
    /// It was created.
    Created,
    /// Its settings changed; `rebuilt` says whether the reference had to be
    /// built again from the stored good frames.
    SettingsChanged {
        /// The settings that changed.
        changed: Vec<Setting>,
        /// The reference was rebuilt.
        rebuilt: bool,
    },
    /// Good frames were added (or replaced all the earlier ones).
    ReferencesAdded {
        /// Frames in the call.
        added: u32,
        /// Whether they replaced the earlier frames.
        replaced: bool,
    },
    /// It was deleted.
    Deleted,
    /// It could not be loaded at start-up and is not served.
    Damaged {
        /// Why.
        reason: String,
    },
}

/// Who listens to the bus for one verdict ([`Events::audience`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Audience {
    /// Anybody who takes inspection events (not only recipe changes).
    pub any: bool,
    /// A live subscriber wants this verdict's frame and map.
    pub images: bool,
    /// For a PASS, its place among the PASSes asked about, to put in
    /// [`InspectionImages::pass`].
    pub pass: Option<u64>,
}

/// What a subscriber wants.
#[derive(Debug, Clone, Copy)]
pub struct SubscribeOptions {
    /// Events held before later ones are dropped.
    pub capacity: usize,
    /// Whether inspection events should carry the frame and the anomaly map:
    /// every FAIL's, and the PASSes' that `pass_images_every` samples (the
    /// frame's buffer is then kept for the subscriber instead of being
    /// reused, so a sample keeps the pool doing its work).
    pub images: bool,
    /// With `images`, every k-th PASS carries them: 1 every PASS, 0 none.
    pub pass_images_every: u64,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_CAPACITY,
            images: false,
            pass_images_every: 1,
        }
    }
}

impl SubscribeOptions {
    /// Whether a verdict gets the pictures; `pass` is a PASS's place.
    fn wants_images(&self, pass: Option<u64>) -> bool {
        self.images
            && match pass {
                None => true,
                Some(place) => self.pass_images_every > 0 && place.is_multiple_of(self.pass_images_every),
            }
    }
}

struct Subscriber {
    queue: mpsc::Sender<Event>,
    options: SubscribeOptions,
    /// Whether it takes inspection events, or only recipe changes.
    inspections: bool,
    dropped: Arc<AtomicU64>,
}

#[derive(Default)]
struct Bus {
    subscribers: Mutex<Vec<Subscriber>>,
    dropped: AtomicU64,
    /// PASS verdicts the bus was asked about ([`Events::audience`]).
    passes: AtomicU64,
}

/// The fan-out. Cloning shares it.
#[derive(Clone, Default)]
pub struct Events {
    bus: Arc<Bus>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("subscribers", &self.lock().len())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl Events {
    /// A bus with no subscriber.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Subscriber>> {
        self.bus
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A new subscription, which sees events published from now on.
    pub fn subscribe(&self, options: SubscribeOptions) -> Subscription {
        self.add(options, true)
    }

    /// A subscription to recipe changes only: inspection events are
    /// neither built for it nor sent to it.
    pub fn subscribe_recipes(&self, capacity: usize) -> Subscription {
        let options = SubscribeOptions {
            capacity,
            ..SubscribeOptions::default()
        };
        self.add(options, false)
    }

    fn add(&self, options: SubscribeOptions, inspections: bool) -> Subscription {
        let (queue, receiver) = mpsc::channel(options.capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        self.lock().push(Subscriber {
            queue,
            options,
            inspections,
            dropped: dropped.clone(),
        });
        Subscription { receiver, dropped }
    }

    /// Who listens for a `verdict`, in one look: whether anybody takes
    /// inspection events (so that publishers can skip building them), and
    /// whether a live subscriber wants this verdict's frame and map (every
    /// FAIL's, a sample of PASS: each PASS asked about takes the next place
    /// in the count the samples read).
    pub fn audience(&self, verdict: Verdict) -> Audience {
        let subscribers = self.lock();
        let pass = (verdict == Verdict::Pass).then(|| self.bus.passes.fetch_add(1, Ordering::Relaxed));
        Audience {
            any: subscribers.iter().any(|subscriber| subscriber.inspections),
            images: subscribers
                .iter()
                .any(|subscriber| subscriber.options.wants_images(pass) && !subscriber.queue.is_closed()),
            pass,
        }
    }

    /// Events dropped so far, over every subscriber.
    pub fn dropped(&self) -> u64 {
        self.bus.dropped.load(Ordering::Relaxed)
    }

    /// Hands `event` to every subscriber that has room; never waits.
    pub fn publish(&self, event: &Event) {
        // Subscribers that did not ask for the pictures share one copy
        // without them, made at most once.
        let mut without_images: Option<Event> = None;
        let mut subscribers = self.lock();
        subscribers.retain(|subscriber| {
            if matches!(event, Event::Inspection(_)) && !subscriber.inspections {
                return !subscriber.queue.is_closed();
            }
            let event = match event {
                Event::Inspection(inspection)
                    if inspection
                        .images
                        .as_ref()
                        .is_some_and(|images| !subscriber.options.wants_images(images.pass)) =>
                {
                    without_images
                        .get_or_insert_with(|| Event::Inspection(Arc::new(inspection.without_images())))
                        .clone()
                }
                other => other.clone(),
            };
            match subscriber.queue.try_send(event) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    subscriber.dropped.fetch_add(1, Ordering::Relaxed);
                    self.bus.dropped.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(TrySendError::Closed(_)) => false,
            }
        });
    }
}

impl InspectionEvent {
    /// The same event without its pictures, for subscribers that did not ask
    /// for them.
    fn without_images(&self) -> Self {
        Self {
            at: self.at,
            recipe: self.recipe.clone(),
            revision: self.revision,
            frame_id: self.frame_id.clone(),
            verdict: self.verdict,
            score: self.score,
            threshold: self.threshold,
            regions: self.regions.clone(),
            timings: self.timings,
            batch: self.batch,
            peer: self.peer,
            images: None,
        }
    }
}

/// One subscriber's end of the bus. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    receiver: mpsc::Receiver<Event>,
    dropped: Arc<AtomicU64>,
}

impl Subscription {
    /// The next event; `None` once the core is gone.
    pub async fn recv(&mut self) -> Option<Event> {
        self.receiver.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.receiver.try_recv().ok()
    }

    /// Events this subscription lost because its queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The count behind [`Subscription::dropped`], to read after the
    /// subscription has moved to the task that drains it.
    pub fn dropped_counter(&self) -> Arc<AtomicU64> {
        self.dropped.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe_event(revision: u64) -> Event {
        Event::Recipe(Arc::new(RecipeEvent {
            at: SystemTime::now(),
            recipe: "part".into(),
            revision,
            change: RecipeChange::Created,
            peer: None,
        }))
    }

    fn revision(event: &Event) -> u64 {
        match event {
            Event::Recipe(recipe) => recipe.revision,
            Event::Inspection(inspection) => inspection.revision,
            Event::Drift(drift) => drift.revision,
        }
    }

    #[test]
    fn a_full_subscriber_loses_events_and_counts_them_while_others_get_all() {
        let events = Events::new();
        let mut slow = events.subscribe(SubscribeOptions {
            capacity: 2,
            ..SubscribeOptions::default()
        });
        let mut fast = events.subscribe(SubscribeOptions::default());
        for n in 1..=5 {
            events.publish(&recipe_event(n));
        }
        let got: Vec<u64> = std::iter::from_fn(|| fast.try_recv())
            .map(|e| revision(&e))
            .collect();
        assert_eq!(got, [1, 2, 3, 4, 5]);
        let kept: Vec<u64> = std::iter::from_fn(|| slow.try_recv())
            .map(|e| revision(&e))
            .collect();
        assert_eq!(kept, [1, 2]);
        assert_eq!(slow.dropped(), 3);
        assert_eq!(fast.dropped(), 0);
        assert_eq!(events.dropped(), 3);
    }

    #[test]
    fn a_dropped_subscription_is_forgotten() {
        let events = Events::new();
        let subscription = events.subscribe(SubscribeOptions {
            capacity: 1,
            images: true,
            pass_images_every: 1,
        });
        assert_eq!(
            events.audience(Verdict::Fail),
            Audience {
                any: true,
                images: true,
                pass: None,
            }
        );
        drop(subscription);
        assert_eq!(
            events.audience(Verdict::Pass),
            Audience {
                any: true,
                images: false,
                pass: Some(0),
            }
        );
        events.publish(&recipe_event(1));
        assert!(events.lock().is_empty());
        assert!(!events.audience(Verdict::Fail).any);
        assert_eq!(events.dropped(), 0);
    }

    #[test]
    fn a_recipe_subscriber_gets_no_inspections_and_does_not_ask_for_them() {
        let events = Events::new();
        let mut recipes = events.subscribe_recipes(4);
        assert!(!events.audience(Verdict::Pass).any, "nobody takes inspections");
        events.publish(&Event::Inspection(Arc::new(InspectionEvent {
            at: SystemTime::now(),
            recipe: "part".into(),
            revision: 7,
            frame_id: "f".into(),
            verdict: Verdict::Pass,
            score: 1.0,
            threshold: 2.0,
            regions: Vec::new(),
            timings: Timings::default(),
            batch: Batch::default(),
            peer: None,
            images: None,
        })));
        events.publish(&recipe_event(1));
        let got: Vec<u64> = std::iter::from_fn(|| recipes.try_recv())
            .map(|e| revision(&e))
            .collect();
        assert_eq!(got, [1]);
        assert_eq!(recipes.dropped(), 0);
        let _all = events.subscribe(SubscribeOptions::default());
        assert!(events.audience(Verdict::Pass).any);
        drop(recipes);
        events.publish(&recipe_event(2));
        assert_eq!(
            events.lock().len(),
            1,
            "the closed recipe subscriber is forgotten"
        );
    }

    #[test]
    fn pictures_are_wanted_for_every_fail_and_a_sample_of_pass() {
        let events = Events::new();
        let _plain = events.subscribe(SubscribeOptions::default());
        assert!(
            !events.audience(Verdict::Fail).images,
            "nobody asked for pictures"
        );
        let _sampled = events.subscribe(SubscribeOptions {
            images: true,
            pass_images_every: 3,
            ..SubscribeOptions::default()
        });
        assert!(events.audience(Verdict::Fail).images);
        let passes: Vec<bool> = (0..7).map(|_| events.audience(Verdict::Pass).images).collect();
        // Places 0 to 6: the first PASS's, then every third.
        assert_eq!(passes, [true, false, false, true, false, false, true]);
        let no_pass = SubscribeOptions {
            images: true,
            pass_images_every: 0,
            ..SubscribeOptions::default()
        };
        assert!(no_pass.wants_images(None));
        assert!(!no_pass.wants_images(Some(0)));
    }
}
