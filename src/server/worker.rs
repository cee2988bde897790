//! The inference worker: one OS thread that owns the [`Engine`] (and so the
//! ONNX Runtime session) and answers jobs over oneshot channels. Async code
//! never runs model or search work itself; it sends a job and awaits.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::engine::{Engine, EngineError, EnrollError, InspectOptions, Inspection, Judge, RecipeSettings};
use crate::imaging::{Image, OwnedFrame};
use crate::reference::Reference;

use super::Batch;
use super::queue::{Batchable, Queue};

/// Work for the engine thread.
pub enum Job {
    /// Judge a decoded frame.
    Inspect(InspectJob),
    /// Build a reference from good frames.
    Enroll {
        /// The recipe's name, for the log.
        recipe: String,
        /// The recipe settings.
        settings: RecipeSettings,
        /// Good frames.
        frames: Vec<OwnedFrame>,
        /// The reference.
        reply: oneshot::Sender<Result<Reference, JobError>>,
    },
}

/// A decoded frame to judge.
pub struct InspectJob {
    /// The recipe, as it was when the request arrived.
    pub judge: Arc<Judge>,
    /// The decoded frame.
    pub image: Image,
    /// Heatmap and other options.
    pub options: InspectOptions,
    /// When the job was queued.
    pub queued: Instant,
    /// Past this instant the work is dropped.
    pub deadline: Option<Instant>,
    /// The answer, the time spent waiting, the model run it was judged in,
    /// and the image buffer back for reuse.
    pub reply: oneshot::Sender<Result<(Inspection, Duration, Batch, Image), JobError>>,
}

/// Frames of the same recipe object and size share a model run.
impl Batchable for Job {
    type Key = (*const Judge, u32, u32);

    fn key(&self) -> Option<Self::Key> {
        match self {
            Self::Inspect(job) => Some((Arc::as_ptr(&job.judge), job.image.width, job.image.height)),
            Self::Enroll { .. } => None,
        }
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inspect(_) => f.write_str("Job::Inspect"),
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
    /// The enrollment panicked (a bug); the message says where.
    #[error("the enrollment failed on a bug: {0}")]
    Panicked(String),
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

/// A handle to the engine threads: one judges frames, one builds
/// references (at a lower scheduling priority, so inspection comes first).
#[derive(Debug, Clone)]
pub struct Worker {
    jobs: SyncSender<Job>,
    enrollments: SyncSender<Job>,
}

/// Enrollments waiting beside the one running.
const ENROLLMENTS_QUEUED: usize = 4;

/// The enrollment thread's nice value: above the inspection thread's 0.
const ENROLLMENT_NICE: i32 = 10;

impl Worker {
    /// Starts the engine thread with room for `queue` waiting jobs, judging
    /// up to `max_batch` waiting frames of one recipe in one model run.
    /// `make_engine` runs on that thread (model load and warm-up); its
    /// result is sent to `ready`. If the thread panics, the panic's message
    /// is logged and sent to `died`; the jobs it held are answered as if
    /// the engine had stopped, and new ones are refused.
    ///
    /// `make_enroller` makes the enrollment thread's engine, when the first
    /// enrollment comes (and again after a panic, which fails only that
    /// enrollment).
    pub fn spawn<F, G>(
        queue: usize,
        max_batch: usize,
        make_enroller: G,
        make_engine: F,
        ready: oneshot::Sender<Result<(), EngineError>>,
        died: oneshot::Sender<String>,
    ) -> Self
    where
        F: FnOnce() -> Result<Engine, EngineError> + Send + 'static,
        G: Fn() -> Result<Engine, EngineError> + Send + 'static,
    {
        let (enrollments, waiting) = sync_channel::<Job>(ENROLLMENTS_QUEUED);
        std::thread::Builder::new()
            .name("loupe-enroll".into())
            .spawn(move || run_enrollments(&make_enroller, &waiting))
            .expect("spawning the enrollment thread; this is a bug or the system is out of threads");
        let (jobs, receiver) = sync_channel::<Job>(queue.max(1));
        let work = move || match make_engine() {
            Ok(engine) => {
                let _ = ready.send(Ok(()));
                run(engine, &receiver, queue.max(1), max_batch);
            }
            Err(error) => {
                let _ = ready.send(Err(error));
            }
        };
        std::thread::Builder::new()
            .name("loupe-engine".into())
            .spawn(move || {
                if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
                    let message = panic_message(panic.as_ref());
                    tracing::error!(cause = %message, "the engine thread panicked");
                    let _ = died.send(message);
                }
            })
            .expect("spawning the engine thread; this is a bug or the system is out of threads");
        Self { jobs, enrollments }
    }

    /// Queues a job without waiting.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        let queue = match job {
            Job::Inspect(_) => &self.jobs,
            Job::Enroll { .. } => &self.enrollments,
        };
        queue.try_send(job).map_err(|error| match error {
            TrySendError::Full(_) => SubmitError::Full,
            TrySendError::Disconnected(_) => SubmitError::Stopped,
        })
    }
}

/// The message of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// The enrollment thread: one enrollment at a time, at a lower priority
/// than inspection; its engine is made on the first job.
fn run_enrollments<G>(make_engine: &G, jobs: &Receiver<Job>)
where
    G: Fn() -> Result<Engine, EngineError>,
{
    lower_priority();
    let mut engine: Option<Engine> = None;
    while let Ok(job) = jobs.recv() {
        let Job::Enroll {
            recipe,
            settings,
            frames,
            reply,
        } = job
        else {
            continue;
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let engine = match &mut engine {
                Some(engine) => engine,
                None => engine.insert(make_engine()?),
            };
            enroll(engine, &recipe, &settings, &frames)
        }));
        let answer = outcome.unwrap_or_else(|panic| {
            let message = panic_message(panic.as_ref());
            tracing::error!(cause = %message, "an enrollment panicked; the next one starts a fresh engine");
            engine = None;
            Err(JobError::Panicked(message))
        });
        let _ = reply.send(answer);
    }
    tracing::debug!("enrollment thread stopped");
}

/// Lowers the calling thread's scheduling priority (Linux keeps a nice value
/// per thread, and threads it starts inherit it: ONNX Runtime's pool and the
/// search's threads).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority reads no memory of ours; gettid names this thread.
        let result =
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, ENROLLMENT_NICE) };
        if result != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lower the enrollment thread's priority");
        }
    }
}

fn run(mut engine: Engine, jobs: &Receiver<Job>, capacity: usize, max_batch: usize) {
    let mut queue = Queue::default();
    loop {
        if queue.is_empty() {
            match jobs.recv() {
                Ok(job) => queue.push(job),
                Err(_) => break,
            }
        }
        // Everything that arrived meanwhile, so that frames waiting for the
        // same recipe are judged together.
        while queue.len() < capacity {
            match jobs.try_recv() {
                Ok(job) => queue.push(job),
                Err(_) => break,
            }
        }
        let mut inspections = Vec::new();
        for job in queue.next_batch(max_batch) {
            match job {
                Job::Inspect(job) => inspections.push(job),
                Job::Enroll {
                    recipe,
                    settings,
                    frames,
                    reply,
                } => {
                    let _ = reply.send(enroll(&mut engine, &recipe, &settings, &frames));
                }
            }
        }
        inspect(&mut engine, inspections);
    }
    tracing::debug!("engine thread stopped");
}

/// Judges frames of one recipe and size together; those whose client left
/// or whose deadline passed are dropped first.
fn inspect(engine: &mut Engine, jobs: Vec<InspectJob>) {
    if !jobs.is_empty() {
        crate::failpoint::panic_here("engine.inspect");
    }
    let now = Instant::now();
    let mut live = Vec::with_capacity(jobs.len());
    for job in jobs {
        let waited = now - job.queued;
        if job.reply.is_closed() {
            continue;
        }
        if job.deadline.is_some_and(|deadline| now >= deadline) {
            let _ = job.reply.send(Err(JobError::DeadlineExceeded(waited)));
            continue;
        }
        live.push((job, waited));
    }
    let Some((first, _)) = live.first() else {
        return;
    };
    let judge = first.judge.clone();
    let mut images = Vec::with_capacity(live.len());
    let mut options = Vec::with_capacity(live.len());
    for (job, _) in &mut live {
        images.push(std::mem::take(&mut job.image));
        options.push(job.options);
    }
    let results = engine.inspect_images(&judge, &images, &options);
    let size = live.len();
    for (index, (((job, waited), image), result)) in live.into_iter().zip(images).zip(results).enumerate() {
        let batch = Batch {
            size,
            first: index == 0,
        };
        let answer = result
            .map(|inspection| (inspection, waited, batch, image))
            .map_err(JobError::from);
        let _ = job.reply.send(answer);
    }
}

fn enroll(
    engine: &mut Engine,
    recipe: &str,
    settings: &RecipeSettings,
    frames: &[OwnedFrame],
) -> Result<Reference, JobError> {
    let started = Instant::now();
    let frames = frames.iter().cloned().map(Ok::<_, std::convert::Infallible>);
    let reference = engine.enroll(settings, frames).map_err(|error| match error {
        EnrollError::Source { error, .. } => match error {},
        EnrollError::Frame { index, source } => JobError::Frame { index, source },
        EnrollError::Build(error) => JobError::Engine(error),
    })?;
    tracing::info!(
        %recipe,
        frames = reference.image_count,
        threshold = reference.threshold,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "reference built"
    );
    Ok(reference)
}
