//! The server core, the same behind every front end: admission and
//! backpressure, decoding on the blocking pool, deadlines, the batching queue,
//! the engine worker, the recipe registry and its persistence, and the events
//! that side concerns subscribe to. Loupe types in and out; it knows no
//! transport (the gRPC layer converts to and from it).

mod error;
pub mod events;
mod inspect;
mod queue;
mod registry;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;

pub use error::Error;
pub use events::{
    Event, Events, InspectionEvent, InspectionImages, RecipeChange, RecipeEvent, SubscribeOptions,
    Subscription,
};
pub use inspect::{InspectStream, STREAM_IN_FLIGHT, StreamAnswer, StreamClosed};
pub use registry::RecipeState;

use crate::engine::{Engine, EngineError, HeatmapImage, InspectOptions, RecipeSettings, Region, Verdict};
use crate::imaging::{DecodeLimits, OwnedFrame};
use crate::model::{self, ModelConfig, ModelError, ModelSource};
use crate::runtime::Runtime;
use crate::store::{Store, StoreError};

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
    /// Most frames accepted for inspection at once (running or waiting).
    pub max_pending: usize,
    /// Most waiting frames of one recipe judged in one model run.
    pub max_batch: usize,
    /// Most good frames in one AddReferences call.
    pub max_references: usize,
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
}

/// The core.
#[derive(Debug)]
pub struct Server {
    registry: Registry,
    worker: Worker,
    inspector: Inspector,
    events: Events,
    max_references: usize,
}

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
        let model_config = config.model.clone();
        let worker = Worker::spawn(
            config.max_pending,
            config.max_batch,
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
        );
        let server = Arc::new(Self {
            registry,
            inspector: Inspector::new(decode, config.max_pending),
            worker,
            events,
            max_references: config.max_references,
        });
        Ok(Starting { server, ready })
    }

    /// The event fan-out, to subscribe to.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Most good frames one [`Server::add_references`] call may bring.
    pub fn max_references(&self) -> usize {
        self.max_references
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
        &self,
        name: String,
        settings: RecipeSettings,
        peer: Option<SocketAddr>,
    ) -> Result<Arc<RecipeState>, Error> {
        let state = self.registry.create(name, settings).await?;
        self.recipe_changed(&state, RecipeChange::Created, peer);
        Ok(state)
    }

    /// Replaces a recipe's settings, rebuilding the reference when they change
    /// what it holds; the flag says whether it was rebuilt.
    pub async fn update_recipe(
        &self,
        name: &str,
        settings: RecipeSettings,
        peer: Option<SocketAddr>,
    ) -> Result<(Arc<RecipeState>, bool), Error> {
        let (state, rebuilt) = self.registry.update(name, settings, &self.worker).await?;
        self.recipe_changed(&state, RecipeChange::SettingsChanged { rebuilt }, peer);
        Ok((state, rebuilt))
    }

    /// Adds good frames to a recipe (or replaces them all) and rebuilds its
    /// reference and threshold.
    pub async fn add_references(
        &self,
        name: &str,
        frames: Vec<OwnedFrame>,
        replace: bool,
        peer: Option<SocketAddr>,
    ) -> Result<Arc<RecipeState>, Error> {
        let added = u32::try_from(frames.len()).unwrap_or(u32::MAX);
        let state = self
            .registry
            .add_references(name, frames, replace, &self.worker)
            .await?;
        self.recipe_changed(
            &state,
            RecipeChange::ReferencesAdded {
                added,
                replaced: replace,
            },
            peer,
        );
        Ok(state)
    }

    /// Deletes a recipe.
    pub async fn delete_recipe(&self, name: &str, peer: Option<SocketAddr>) -> Result<(), Error> {
        self.registry.delete(name).await?;
        self.events
            .publish(&recipe_event(name.to_owned(), 0, RecipeChange::Deleted, peer));
        Ok(())
    }

    fn recipe_changed(&self, state: &RecipeState, change: RecipeChange, peer: Option<SocketAddr>) {
        let event = recipe_event(state.record.name.clone(), state.record.revision, change, peer);
        self.events.publish(&event);
    }
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
