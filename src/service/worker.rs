//! The inference worker: one OS thread that owns the [`Engine`] (and so the
//! ONNX Runtime session) and answers jobs over oneshot channels. Async code
//! never runs model or search work itself; it sends a job and awaits.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::engine::{Engine, EngineError, Enrollment, InspectOptions, Inspection, Judge, RecipeSettings};
use crate::imaging::Image;
use crate::reference::Reference;

use super::frames::OwnedFrame;

/// Work for the engine thread.
pub enum Job {
    /// Judge a decoded frame.
    Inspect {
        /// The recipe, as it was when the request arrived.
        judge: Arc<Judge>,
        /// The decoded frame.
        image: Image,
        /// Heatmap and other options.
        options: InspectOptions,
        /// When the job was queued.
        queued: Instant,
        /// Past this instant the work is dropped.
        deadline: Option<Instant>,
        /// The answer, the time spent waiting, and the image buffer back
        /// for reuse.
        reply: oneshot::Sender<Result<(Inspection, Duration, Image), JobError>>,
    },
    /// Build a reference from good frames.
    Enroll {
        /// The recipe settings.
        settings: RecipeSettings,
        /// Good frames.
        frames: Vec<OwnedFrame>,
        /// The reference.
        reply: oneshot::Sender<Result<Reference, JobError>>,
    },
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inspect { .. } => f.write_str("Job::Inspect"),
            Self::Enroll { frames, .. } => write!(f, "Job::Enroll({} frames)", frames.len()),
        }
    }
}

/// Why a job produced no result.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The engine refused or failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The deadline passed before the work started.
    #[error("the deadline passed after {0:?} in the queue; the frame was not inspected")]
    DeadlineExceeded(Duration),
    /// Enrollment: frame number `index` (0-based) was refused.
    #[error("good frame {index}: {source}")]
    Frame {
        /// Which frame of the call.
        index: usize,
        /// Why.
        source: EngineError,
    },
}

/// Why a job could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full.
    #[error("the inspection queue is full")]
    Full,
    /// The worker is gone (shutting down).
    #[error("the engine is shutting down")]
    Stopped,
}

/// A handle to the engine thread.
#[derive(Debug, Clone)]
pub struct Worker {
    jobs: SyncSender<Job>,
}

impl Worker {
    /// Starts the engine thread. `make_engine` runs on that thread (model
    /// load and warm-up); its result is sent to `ready`.
    pub fn spawn<F>(queue: usize, make_engine: F, ready: oneshot::Sender<Result<(), EngineError>>) -> Self
    where
        F: FnOnce() -> Result<Engine, EngineError> + Send + 'static,
    {
        let (jobs, receiver) = sync_channel::<Job>(queue.max(1));
        std::thread::Builder::new()
            .name("loupe-engine".into())
            .spawn(move || match make_engine() {
                Ok(engine) => {
                    let _ = ready.send(Ok(()));
                    run(engine, &receiver);
                }
                Err(error) => {
                    let _ = ready.send(Err(error));
                }
            })
            .expect("spawning the engine thread; this is a bug or the system is out of threads");
        Self { jobs }
    }

    /// Queues a job without waiting.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.jobs.try_send(job).map_err(|error| match error {
            TrySendError::Full(_) => SubmitError::Full,
            TrySendError::Disconnected(_) => SubmitError::Stopped,
        })
    }
}

fn run(mut engine: Engine, jobs: &Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Inspect {
                judge,
                mut image,
                options,
                queued,
                deadline,
                reply,
            } => {
                let waited = queued.elapsed();
                if reply.is_closed() {
                    continue;
                }
                let result = if deadline.is_some_and(|d| Instant::now() >= d) {
                    Err(JobError::DeadlineExceeded(waited))
                } else {
                    engine
                        .inspect_image(&judge, &mut image, &options)
                        .map(|inspection| (inspection, waited, image))
                        .map_err(JobError::from)
                };
                let _ = reply.send(result);
            }
            Job::Enroll {
                settings,
                frames,
                reply,
            } => {
                let _ = reply.send(enroll(&mut engine, &settings, &frames));
            }
        }
    }
    tracing::debug!("engine thread stopped");
}

fn enroll(
    engine: &mut Engine,
    settings: &RecipeSettings,
    frames: &[OwnedFrame],
) -> Result<Reference, JobError> {
    let started = Instant::now();
    let mut enrollment = Enrollment::new();
    for (index, frame) in frames.iter().enumerate() {
        let features = engine
            .extract(settings, frame.as_data())
            .map_err(|source| JobError::Frame { index, source })?;
        enrollment.add(features);
    }
    let reference = engine.build_reference(settings, &enrollment)?;
    tracing::info!(
        frames = frames.len(),
        threshold = reference.threshold,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "reference built"
    );
    Ok(reference)
}
