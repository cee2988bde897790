//! The server core, the same behind every front end: admission and
//! backpressure, decoding on the blocking pool, deadlines, the batching queue,
//! the engine worker, the recipe registry and its persistence, and the events
//! that side concerns subscribe to. Loupe types in and out; it knows no
//! transport (the gRPC layer converts to and from it).

pub mod drift;
mod error;
pub mod events;
mod inspect;
mod queue;
mod registry;
mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;

pub use drift::{DriftEvent, DriftState, DriftStatus};
pub use error::{Error, frame_label};
pub use events::{
    Event, Events, InspectionEvent, InspectionImages, RecipeChange, RecipeEvent, SubscribeOptions,
    Subscription,
};
pub use inspect::{InspectStream, STREAM_IN_FLIGHT, StreamAnswer, StreamClosed};
pub use registry::RecipeState;

use crate::engine::{
    Engine, EngineError, HeatmapImage, InspectOptions, RecipeSettings, Region, SettingsUpdate, Verdict,
};
use crate::imaging::{DecodeLimits, OwnedFrame};
use crate::model::{self, ModelConfig, ModelError, ModelSource};
use crate::runtime::Runtime;
use crate::store::{Store, StoreError};

use drift::DriftWatch;
use inspect::Inspector;
use registry::Registry;
use worker::Worker;

/// The model input size the warm-up runs at (the default recipe size).
const WARM_UP_SIZE: usize = 256;

/// What the core needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Data folder (recipes, references, good frames).
    pub data_dir: PathBuf,
    /// The model and where it runs.
    pub model: ModelConfig,
    /// Largest frame accepted.
    pub decode: DecodeLimits,
    /// Most bytes all frames being decoded and judged may hold at once.
    pub decode_budget: u64,
    /// Largest answer the transport can send, bytes: a heatmap that cannot
    /// fit is refused before the work.
    pub max_response_bytes: usize,
    /// Most frames accepted for inspection at once (running or waiting).
    pub max_pending: usize,
    /// Most waiting frames of one recipe judged in one model run.
    pub max_batch: usize,
    /// Caps on good frames.
    pub references: ReferenceLimits,
}

/// Caps on good frames, per AddReferences call and per recipe.
#[derive(Debug, Clone, Copy)]
pub struct ReferenceLimits {
    /// Most frames in one call.
    pub call_frames: usize,
    /// Most bytes of frames in one call (all are held until the reference
    /// is built).
    pub call_bytes: u64,
    /// Most frames a recipe stores.
    pub recipe_frames: u64,
    /// Most bytes of frames a recipe stores.
    pub recipe_bytes: u64,
    /// Most bytes one enrollment's features may hold.
    pub enrollment_bytes: u64,
}

impl ReferenceLimits {
    /// The largest recipe file an import accepts: the good frames one call
    /// may hold (within a recipe's cap), the features an enrollment may
    /// hold (the reference), each frame's overhead, and 64 MiB for the
    /// settings (a mask PNG) and an aligned reference's pixel planes.
    pub fn max_import_bytes(&self) -> u64 {
        self.call_bytes
            .min(self.recipe_bytes)
            .saturating_add(self.enrollment_bytes)
            .saturating_add(
                self.recipe_frames
                    .saturating_mul(crate::store::bundle::FRAME_OVERHEAD),
            )
            .saturating_add(64 << 20)
    }
}

/// A good frame sent to a recipe.
#[derive(Debug, Clone)]
pub struct GoodFrame {
    /// The frame.
    pub frame: OwnedFrame,
    /// Its name (a file name, say) for messages; may be empty.
    pub name: String,
}

/// Why the core could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The model cannot be read.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The data folder cannot be used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A start-up task failed (a bug).
    #[error("start-up task failed: {0}")]
    Task(String),
}

/// A frame to judge.
#[derive(Debug, Clone)]
pub struct InspectRequest {
    /// The recipe's name.
    pub recipe: String,
    /// The frame.
    pub frame: OwnedFrame,
    /// The client's id for the frame, echoed back.
    pub frame_id: String,
    /// Heatmap and other options.
    pub options: InspectOptions,
    /// Past this instant the call fails with DeadlineExceeded.
    pub deadline: Option<Instant>,
    /// The client's address, when the transport knows it (for events).
    pub peer: Option<SocketAddr>,
}

/// Where one call's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Decoding or converting the frame.
    pub decode: Duration,
    /// Waiting for the engine.
    pub queue: Duration,
    /// Crop, resize, normalise.
    pub preprocess: Duration,
    /// The model (a batch's share).
    pub inference: Duration,
    /// Search, map, regions, heatmap.
    pub postprocess: Duration,
    /// From arrival at the core to the answer.
    pub total: Duration,
}

/// The model run a frame was judged in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Batch {
    /// Frames judged together in that run (1 without batching).
    pub size: usize,
    /// Whether this frame was the run's first, so that a subscriber can
    /// count each run once.
    pub first: bool,
}

/// A judged frame, as the client gets it.
#[derive(Debug, Clone)]
pub struct Inspected {
    /// The client's frame id.
    pub frame_id: String,
    /// The recipe revision that judged it.
    pub revision: u64,
    /// Pass or fail.
    pub verdict: Verdict,
    /// The anomaly score.
    pub score: f32,
    /// The threshold in force.
    pub threshold: f32,
    /// score / threshold.
    pub normalized_score: f32,
    /// Defect regions in frame pixels.
    pub regions: Vec<Region>,
    /// The heatmap, when asked for.
    pub heatmap: Option<HeatmapImage>,
    /// Where the time went.
    pub timings: Timings,
}

/// A core that is starting: `ready` answers once the model is loaded and
/// warmed up on the engine thread (or failed to be).
#[derive(Debug)]
pub struct Starting {
    /// The core; calls before `ready` wait in the queue.
    pub server: Arc<Server>,
    /// The model's load and warm-up.
    pub ready: oneshot::Receiver<Result<(), EngineError>>,
    /// Answers, with the panic's message, if the engine thread dies; the
    /// core cannot judge anything after that.
    pub died: oneshot::Receiver<String>,
}

/// The core.
#[derive(Debug)]
pub struct Server {
    registry: Registry,
    worker: Worker,
    inspector: Inspector,
    events: Events,
    drift: DriftWatch,
    references: ReferenceLimits,
    /// AddReferences calls receiving frames at once.
    reference_calls: Arc<tokio::sync::Semaphore>,
}

/// AddReferences calls that may receive frames at once; each holds up to
/// [`ReferenceLimits::call_bytes`], and later calls wait.
pub const REFERENCE_CALLS: usize = 2;

impl Server {
    /// Reads the model's manifest, loads the recipes from the data folder
    /// (announcing those that cannot be used as [`RecipeChange::Damaged`]
    /// on `events`), and starts the engine thread, which loads and warms the
    /// model.
    pub async fn start(
        config: ServerConfig,
        runtime: Runtime,
        events: Events,
    ) -> Result<Starting, StartError> {
        let source = ModelSource::open(config.model.path.as_deref())?;
        let store = Store::open(&config.data_dir)?;
        let (model_id, size_multiple) = (
            source.manifest.sha256.clone(),
            source.manifest.input.size_multiple,
        );
        let decode = config.decode;
        let (registry, damaged) =
            tokio::task::spawn_blocking(move || Registry::load(store, decode, size_multiple, &model_id))
                .await
                .map_err(|error| StartError::Task(error.to_string()))??;
        for (recipe, reason) in damaged {
            events.publish(&recipe_event(recipe, 0, RecipeChange::Damaged { reason }, None));
        }

        let (ready_tx, ready) = oneshot::channel();
        let (died_tx, died) = oneshot::channel();
        let model_config = config.model.clone();
        // Enrollment has an engine of its own, on half the threads, so that
        // inspections of other recipes go on meanwhile.
        let enroll_config = ModelConfig {
            threads: (config.model.threads / 2).max(1),
            ..config.model.clone()
        };
        let (enroll_runtime, enroll_source) = (runtime.clone(), source.clone());
        let enrollment_bytes = config.references.enrollment_bytes;
        let make_enroller = move || {
            let model = model::load_source(&enroll_runtime, &enroll_source, &enroll_config)?;
            tracing::info!(threads = enroll_config.threads, "enrollment engine loaded");
            let mut engine = Engine::new(model, decode);
            engine.set_enrollment_budget(enrollment_bytes);
            Ok(engine)
        };
        let worker = Worker::spawn(
            config.max_pending,
            config.max_batch,
            make_enroller,
            move || {
                let started = Instant::now();
                let mut model = model::load_source(&runtime, &source, &model_config)?;
                model.warm_up(WARM_UP_SIZE, WARM_UP_SIZE)?;
                tracing::info!(
                    model = %source.manifest.name,
                    origin = %source.origin,
                    threads = model_config.threads,
                    device = %model_config.device,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "model loaded and warmed up"
                );
                Ok(Engine::new(model, decode))
            },
            ready_tx,
            died_tx,
        );
        let server = Arc::new(Self {
            registry,
            inspector: Inspector::new(
                decode,
                config.decode_budget,
                config.max_pending,
                config.max_response_bytes,
            ),
            worker,
            events,
            drift: DriftWatch::new(),
            references: config.references,
            reference_calls: Arc::new(tokio::sync::Semaphore::new(REFERENCE_CALLS)),
        });
        Ok(Starting { server, ready, died })
    }

    /// Frames accepted for inspection and not yet answered (the slots of
    /// `max_pending` in use): a cheap look at two counters, for gauges.
    pub fn frames_in_flight(&self) -> usize {
        self.inspector.in_flight()
    }

    /// The event fan-out, to subscribe to.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// The drift watch's status of a recipe (`state` as [`Server::recipe`]
    /// gave it); `None` while it has no reference.
    pub fn drift(&self, state: &RecipeState) -> Option<DriftStatus> {
        self.drift.status(state)
    }

    /// Caps on good frames.
    pub fn reference_limits(&self) -> ReferenceLimits {
        self.references
    }

    /// Waits for one of the [`REFERENCE_CALLS`] turns to receive good frames;
    /// the call holds it until it is answered.
    pub async fn admit_references(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.reference_calls
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed; this is a bug")
    }

    /// Checks good frame `index` of a call as it arrives: its header (off
    /// the async runtime) against the frame limits, before the call holds
    /// it.
    pub async fn check_good_frame(&self, index: usize, frame: &GoodFrame) -> Result<(), Error> {
        let (owned, limits) = (frame.frame.clone(), self.inspector.limits());
        tokio::task::spawn_blocking(move || crate::imaging::decode_cost(owned.as_data(), limits).map(drop))
            .await
            .map_err(|error| Error::Internal(format!("decode task failed: {error}")))?
            .map_err(|error| Error::ReferenceFrame {
                index,
                name: frame.name.clone(),
                source: error.into(),
            })
    }

    /// The current revision of a recipe.
    pub fn recipe(&self, name: &str) -> Result<Arc<RecipeState>, Error> {
        self.registry.get(name)
    }

    /// Every recipe, by name.
    pub fn recipes(&self) -> Vec<Arc<RecipeState>> {
        self.registry.list()
    }

    /// Creates a recipe without a reference.
    pub async fn create_recipe(
        self: &Arc<Self>,
        name: String,
        settings: RecipeSettings,
        peer: Option<SocketAddr>,
    ) -> Result<Arc<RecipeState>, Error> {
        let server = self.clone();
        detached(async move {
            let state = server.registry.create(name, settings).await?;
            server.recipe_changed(&state, RecipeChange::Created, peer);
            Ok(state)
        })
        .await
    }

    /// Changes some of a recipe's settings (applied to the current ones
    /// under the recipe lock, so concurrent updates of different settings
    /// all hold), rebuilding the reference when the change alters what it
    /// holds; the flag says whether it was rebuilt.
    pub async fn update_recipe(
        self: &Arc<Self>,
        name: &str,
        update: SettingsUpdate,
        peer: Option<SocketAddr>,
    ) -> Result<(Arc<RecipeState>, bool), Error> {
        let (server, name) = (self.clone(), name.to_owned());
        detached(async move {
            let (state, changed, rebuilt) = server.registry.update(&name, &update, &server.worker).await?;
            server.recipe_changed(&state, RecipeChange::SettingsChanged { changed, rebuilt }, peer);
            Ok((state, rebuilt))
        })
        .await
    }

    /// Adds good frames to a recipe (or replaces them all) and rebuilds its
    /// reference and threshold.
    pub async fn add_references(
        self: &Arc<Self>,
        name: &str,
        frames: Vec<GoodFrame>,
        replace: bool,
        peer: Option<SocketAddr>,
    ) -> Result<Arc<RecipeState>, Error> {
        let added = u32::try_from(frames.len()).unwrap_or(u32::MAX);
        let (server, name) = (self.clone(), name.to_owned());
        detached(async move {
            let state = server
                .registry
                .add_references(&name, frames, replace, server.references, &server.worker)
                .await?;
            let change = RecipeChange::ReferencesAdded {
                added,
                replaced: replace,
            };
            server.recipe_changed(&state, change, peer);
            Ok(state)
        })
        .await
    }

    /// A recipe as one recipe file (`store::bundle`), to import elsewhere.
    pub async fn export_recipe(&self, name: &str) -> Result<Vec<u8>, Error> {
        self.registry.export(name).await
    }

    /// Creates a recipe from a recipe file (under `rename`, or the name the
    /// file carries), checked whole before anything is stored; announced as
    /// [`RecipeChange::Created`].
    pub async fn import_recipe(
        self: &Arc<Self>,
        file: bytes::Bytes,
        rename: Option<String>,
        peer: Option<SocketAddr>,
    ) -> Result<Arc<RecipeState>, Error> {
        let server = self.clone();
        detached(async move {
            let state = server.registry.import(file, rename, server.references).await?;
            server.recipe_changed(&state, RecipeChange::Created, peer);
            Ok(state)
        })
        .await
    }

    /// Deletes a recipe.
    pub async fn delete_recipe(self: &Arc<Self>, name: &str, peer: Option<SocketAddr>) -> Result<(), Error> {
        let (server, name) = (self.clone(), name.to_owned());
        detached(async move {
            server.registry.delete(&name).await?;
            server.drift.forget(&name);
            server
                .events
                .publish(&recipe_event(name, 0, RecipeChange::Deleted, peer));
            Ok(())
        })
        .await
    }

    fn recipe_changed(&self, state: &RecipeState, change: RecipeChange, peer: Option<SocketAddr>) {
        let event = recipe_event(state.record.name.clone(), state.record.revision, change, peer);
        self.events.publish(&event);
    }
}

/// Runs a recipe change as its own task: once started it completes, and
/// memory and disk agree, even when the caller stops waiting (a client's
/// deadline or reset drops the request's future, not the change).
async fn detached<T: Send + 'static>(
    change: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    tokio::spawn(change)
        .await
        .map_err(|error| Error::Internal(format!("recipe change task failed: {error}")))?
}

fn recipe_event(recipe: String, revision: u64, change: RecipeChange, peer: Option<SocketAddr>) -> Event {
    Event::Recipe(Arc::new(RecipeEvent {
        at: SystemTime::now(),
        recipe,
        revision,
        change,
        peer,
    }))
}
