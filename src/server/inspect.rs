//! Inspection in the core: admission (a slot per frame, RESOURCE_EXHAUSTED at
//! once when none is free), the memory budget (what a frame's decode will
//! hold is read from its header and reserved before anything is
//! allocated), decoding on the blocking pool into a pooled buffer, the
//! deadline, the engine worker, and the events. A stream of frames is judged
//! several at a time and answered in order.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::error::OVERLOADED;
use super::events::{Event, InspectionEvent, InspectionImages};
use super::worker::{InspectJob, Job};
use super::{Batch, Error, InspectRequest, Inspected, RecipeState, Server, Timings};
use crate::engine::{HeatmapFormat, InspectOptions, Inspection, Judge, Verdict};
use crate::imaging::{self, DecodeCost, DecodeLimits, Image};
use crate::scoring::heatmap::output_size;

/// Frames of one stream being worked on at once; later ones wait (the
/// client's flow control holds them back).
pub const STREAM_IN_FLIGHT: usize = 8;

/// Decoded buffers kept for reuse.
const POOLED_IMAGES: usize = 16;

/// Most bytes the pool keeps in all: a burst of huge frames is not held on
/// to afterwards.
pub const POOLED_BYTES: usize = 128 << 20;

/// Decoded-frame buffers, reused from request to request.
#[derive(Debug, Default)]
struct ImagePool(Mutex<Vec<Image>>);

impl ImagePool {
    fn take(&self) -> Image {
        self.0
            .lock()
            .ok()
            .and_then(|mut free| free.pop())
            .unwrap_or_default()
    }

    /// Keeps `image` for reuse unless the pool would then hold more than
    /// [`POOLED_IMAGES`] buffers or [`POOLED_BYTES`].
    fn give(&self, image: Image) {
        if let Ok(mut free) = self.0.lock() {
            let held: usize = free.iter().map(|kept| kept.data.capacity()).sum();
            if free.len() < POOLED_IMAGES && held + image.data.capacity() <= POOLED_BYTES {
                free.push(image);
            }
        }
    }

    fn held_bytes(&self) -> usize {
        self.0
            .lock()
            .map_or(0, |free| free.iter().map(|kept| kept.data.capacity()).sum())
    }
}

/// Slots of `max_pending` that streams may hold: three quarters, and at
/// least one.
fn stream_share(max_pending: usize) -> usize {
    (max_pending * 3 / 4).max(1)
}

/// A frame's admission: its slot and, for a stream's frame, its share of
/// the stream slots; both are held until the frame is answered.
#[derive(Debug)]
struct Slot {
    _slot: OwnedSemaphorePermit,
    _share: Option<OwnedSemaphorePermit>,
}

/// The budget's unit: permits are KiB, so one frame's share fits a `u32`.
const BUDGET_UNIT: u64 = 1024;

/// How a call waits when the memory budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Patience {
    /// A unary call: until its deadline, or RESOURCE_EXHAUSTED at once
    /// without one.
    Unary,
    /// A stream's frame: until memory frees (the stream stops being read
    /// meanwhile), or its deadline.
    Stream,
}

/// What inspections share: the slots, the memory budget and the buffers.
#[derive(Debug)]
pub(super) struct Inspector {
    limits: DecodeLimits,
    slots: Arc<Semaphore>,
    max_pending: usize,
    /// The share of `slots` streams may hold, so that waiting streams never
    /// starve unary calls of every slot.
    stream_slots: Arc<Semaphore>,
    budget: Arc<Semaphore>,
    budget_bytes: u64,
    max_response_bytes: usize,
    images: ImagePool,
}

/// Room in an answer for everything but the heatmap (regions, timings).
const ANSWER_MARGIN: usize = 64 << 10;

impl Inspector {
    /// `max_pending` frames may be admitted at once, holding at most
    /// `budget` bytes of decoded frames.
    pub(super) fn new(
        limits: DecodeLimits,
        budget: u64,
        max_pending: usize,
        max_response_bytes: usize,
    ) -> Self {
        let units = usize::try_from(budget / BUDGET_UNIT)
            .unwrap_or(usize::MAX)
            .clamp(1, Semaphore::MAX_PERMITS);
        Self {
            limits,
            slots: Arc::new(Semaphore::new(max_pending)),
            max_pending,
            stream_slots: Arc::new(Semaphore::new(stream_share(max_pending))),
            budget: Arc::new(Semaphore::new(units)),
            budget_bytes: budget,
            max_response_bytes,
            images: ImagePool::default(),
        }
    }

    /// Frames admitted and not yet answered.
    pub(super) fn in_flight(&self) -> usize {
        self.max_pending.saturating_sub(self.slots.available_permits())
    }

    /// The per-frame limits.
    pub(super) fn limits(&self) -> DecodeLimits {
        self.limits
    }

    /// A slot for one frame: a unary call gets RESOURCE_EXHAUSTED at once
    /// when none is free; a stream's frame waits for one (until its
    /// deadline), and the stream is not read meanwhile, so HTTP/2 flow
    /// control slows the client down instead of failing its frames.
    ///
    /// Streams hold at most [`stream_share`] of the slots, so unary calls
    /// always find room beside them.
    async fn admit(&self, deadline: Option<Instant>, patience: Patience) -> Result<Slot, Error> {
        if patience == Patience::Unary {
            let slot = self.slots.clone().try_acquire_owned();
            return slot
                .map(|slot| Slot {
                    _slot: slot,
                    _share: None,
                })
                .map_err(|_| Error::ResourceExhausted(OVERLOADED.into()));
        }
        let wait = async {
            let share = self.stream_slots.clone().acquire_owned().await?;
            let slot = self.slots.clone().acquire_owned().await?;
            Ok::<_, tokio::sync::AcquireError>(Slot {
                _slot: slot,
                _share: Some(share),
            })
        };
        let slot = match deadline {
            None => wait.await,
            Some(deadline) => tokio::time::timeout_at(deadline.into(), wait)
                .await
                .map_err(|_| {
                    Error::DeadlineExceeded("the deadline passed while waiting for a free slot".into())
                })?,
        };
        slot.map_err(|_| Error::Unavailable("the server is shutting down".into()))
    }

    /// Refuses, before any work, a raw heatmap larger than an answer can be
    /// (a PNG is smaller than its raw map, and is not refused by guess).
    fn check_heatmap_fits(
        &self,
        judge: &Judge,
        options: InspectOptions,
        cost: DecodeCost,
    ) -> Result<(), Error> {
        let Some((HeatmapFormat::RawU8, max_size)) = options.heatmap else {
            return Ok(());
        };
        let (width, height) = match judge.settings().roi {
            Some(roi) => (roi.width, roi.height),
            None => (cost.width, cost.height),
        };
        let (width, height) = output_size(width as usize, height as usize, max_size as usize);
        let bytes = width * height;
        if bytes + ANSWER_MARGIN > self.max_response_bytes {
            return Err(Error::InvalidArgument(format!(
                "a {width}x{height} RAW_U8 heatmap is {bytes} bytes, more than an answer may hold ({} bytes, --max-message-bytes); set the heatmap's max_size",
                self.max_response_bytes
            )));
        }
        Ok(())
    }

    /// Reserves `bytes` of the memory budget; waits as `patience` says.
    async fn reserve(
        &self,
        bytes: u64,
        deadline: Option<Instant>,
        patience: Patience,
    ) -> Result<OwnedSemaphorePermit, Error> {
        // A frame's bytes are at most the per-frame limit, itself at most
        // the budget (the configuration checks it).
        let units = u32::try_from(bytes.div_ceil(BUDGET_UNIT).max(1)).unwrap_or(u32::MAX);
        if let Ok(permit) = self.budget.clone().try_acquire_many_owned(units) {
            return Ok(permit);
        }
        let spent = || {
            format!(
                "frames in flight hold the decode memory budget of {} bytes (--max-decode-bytes); this frame needs {bytes}",
                self.budget_bytes
            )
        };
        let wait = self.budget.clone().acquire_many_owned(units);
        let permit = match (deadline, patience) {
            (None, Patience::Unary) => {
                return Err(Error::ResourceExhausted(format!("{}; retry later", spent())));
            }
            (None, Patience::Stream) => wait.await,
            (Some(deadline), _) => tokio::time::timeout_at(deadline.into(), wait)
                .await
                .map_err(|_| {
                    Error::DeadlineExceeded(format!("the deadline passed while waiting: {}", spent()))
                })?,
        };
        permit.map_err(|_| Error::Unavailable("the server is shutting down".into()))
    }
}

/// A judged frame before its event is published.
struct Judged {
    recipe: String,
    /// The recipe revision that judged it.
    state: Arc<RecipeState>,
    inspected: Inspected,
    batch: Batch,
    inspection: Inspection,
    image: Image,
    peer: Option<std::net::SocketAddr>,
    /// The frame's share of the memory budget, returned once its buffer is
    /// back in the pool or handed to the events.
    _memory: OwnedSemaphorePermit,
}

impl Server {
    /// Judges one frame and publishes its event.
    pub async fn inspect(&self, request: InspectRequest) -> Result<Inspected, Error> {
        let judged = self.judge(request, Patience::Unary).await?;
        Ok(self.publish(judged))
    }

    /// Bytes the pool of decoded-frame buffers holds now.
    pub fn pooled_bytes(&self) -> usize {
        self.inspector.images.held_bytes()
    }

    /// Opens a stream of frames: what is sent on the [`InspectStream`] is
    /// judged up to [`STREAM_IN_FLIGHT`] frames at a time, and answered on
    /// the receiver in the order sent, each answer's event published in that
    /// order. Dropping the stream ends the answers after the last one.
    pub fn open_stream(self: &Arc<Self>) -> (InspectStream, mpsc::Receiver<StreamAnswer>) {
        let (pending_tx, mut pending_rx) = mpsc::channel::<Pending>(STREAM_IN_FLIGHT);
        let (answer_tx, answers) = mpsc::channel(STREAM_IN_FLIGHT);
        let server = self.clone();
        tokio::spawn(async move {
            while let Some(pending) = pending_rx.recv().await {
                let answer = match pending {
                    Pending::Judging { frame_id, task } => {
                        let result = match task.await {
                            Ok(Ok(judged)) => Ok(server.publish(judged)),
                            Ok(Err(error)) => Err(error),
                            Err(error) => Err(Error::Internal(format!("inspection task failed: {error}"))),
                        };
                        StreamAnswer { frame_id, result }
                    }
                    Pending::Refused { frame_id, error } => StreamAnswer {
                        frame_id,
                        result: Err(error),
                    },
                };
                if answer_tx.send(answer).await.is_err() {
                    return;
                }
            }
        });
        let stream = InspectStream {
            server: self.clone(),
            pending: pending_tx,
        };
        (stream, answers)
    }

    /// Admission, the memory budget, decode, the engine, the deadline.
    async fn judge(&self, request: InspectRequest, patience: Patience) -> Result<Judged, Error> {
        let received = Instant::now();
        let InspectRequest {
            recipe: name,
            frame,
            frame_id,
            options,
            deadline,
            peer,
        } = request;
        if deadline.is_some_and(|d| received >= d) {
            return Err(Error::DeadlineExceeded(
                "the deadline passed before the frame could be inspected".into(),
            ));
        }
        if name.is_empty() {
            return Err(Error::InvalidArgument("the request names no recipe".into()));
        }
        let recipe = self.registry.get(&name)?;
        recipe.usable()?;
        let judge = recipe.judge.clone().ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "recipe {} has no reference yet; send good frames with AddReferences first",
                crate::text::quoted(&name)
            ))
        })?;
        let inspector = &self.inspector;
        let _slot = inspector.admit(deadline, patience).await?;

        let limits = inspector.limits;
        let (frame, cost, probed) = blocking(move || {
            let started = Instant::now();
            let cost = imaging::decode_cost(frame.as_data(), limits);
            (frame, cost, started.elapsed())
        })
        .await?;
        let cost = cost.map_err(|error| Error::Engine(error.into()))?;
        inspector.check_heatmap_fits(&judge, options, cost)?;
        let memory = inspector.reserve(cost.bytes, deadline, patience).await?;
        let mut image = inspector.images.take();
        let (image, decoded) = blocking(move || {
            let started = Instant::now();
            imaging::decode(frame.as_data(), limits, &mut image).map(|()| (image, probed + started.elapsed()))
        })
        .await?
        .map_err(|error| Error::Engine(error.into()))?;

        let (reply, answer) = oneshot::channel();
        self.worker.submit(Job::Inspect(InspectJob {
            judge,
            image,
            options,
            queued: Instant::now(),
            deadline,
            reply,
        }))?;
        let answer = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), answer)
                .await
                .map_err(|_| Error::DeadlineExceeded("the deadline passed during inspection".into()))?,
            None => answer.await,
        };
        let (mut inspection, waited, batch, image) =
            answer.map_err(|_| Error::Unavailable("the engine stopped".into()))??;
        let engine = inspection.timings;
        let inspected = Inspected {
            frame_id,
            revision: recipe.record.revision,
            verdict: inspection.verdict,
            score: inspection.score,
            threshold: inspection.threshold,
            normalized_score: inspection.normalized_score,
            regions: std::mem::take(&mut inspection.regions),
            heatmap: inspection.heatmap.take(),
            timings: Timings {
                decode: decoded,
                queue: waited,
                preprocess: engine.preprocess,
                inference: engine.inference,
                postprocess: engine.postprocess,
                total: received.elapsed(),
            },
        };
        Ok(Judged {
            recipe: name,
            state: recipe,
            inspected,
            batch,
            inspection,
            image,
            peer,
            _memory: memory,
        })
    }

    /// Publishes a judged frame's event (with its pictures when a subscriber
    /// wants this verdict's: every FAIL's, a sample of PASS; otherwise the
    /// frame's buffer goes back to the pool).
    fn publish(&self, judged: Judged) -> Inspected {
        let Judged {
            recipe,
            state,
            inspected,
            batch,
            inspection,
            image,
            peer,
            _memory,
        } = judged;
        // The drift watch counts PASS parts only: defects are not drift.
        let drift = (inspected.verdict == Verdict::Pass)
            .then(|| self.drift.observe(&state, inspected.score))
            .flatten();
        let audience = self.events.audience(inspected.verdict);
        let images = if audience.images {
            Some(InspectionImages {
                frame: Arc::new(image),
                map: Arc::new(inspection.map),
                geometry: inspection.geometry,
                pass: audience.pass,
            })
        } else {
            self.inspector.images.give(image);
            None
        };
        if audience.any {
            self.events.publish(&Event::Inspection(Arc::new(InspectionEvent {
                at: SystemTime::now(),
                recipe,
                revision: inspected.revision,
                frame_id: inspected.frame_id.clone(),
                verdict: inspected.verdict,
                score: inspected.score,
                threshold: inspected.threshold,
                regions: inspected.regions.clone(),
                timings: inspected.timings,
                batch,
                peer,
                images,
            })));
        }
        if let Some(change) = drift {
            self.events.publish(&Event::Drift(Arc::new(change)));
        }
        inspected
    }
}

/// Runs frame work on the blocking pool.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Error::Internal(format!("decode task failed: {error}")))
}

/// A frame of a stream, in its place in the order.
enum Pending {
    Judging {
        frame_id: String,
        task: JoinHandle<Result<Judged, Error>>,
    },
    Refused {
        frame_id: String,
        error: Error,
    },
}

/// One answer of a stream.
#[derive(Debug)]
pub struct StreamAnswer {
    /// The client's frame id.
    pub frame_id: String,
    /// The judgement, or why there is none.
    pub result: Result<Inspected, Error>,
}

/// The stream's answers are no longer read (the client left).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the stream's answers are no longer read")]
pub struct StreamClosed;

/// The sending side of a stream opened with [`Server::open_stream`].
#[derive(Debug)]
pub struct InspectStream {
    server: Arc<Server>,
    pending: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Judging { frame_id, .. } => write!(f, "Judging({frame_id:?})"),
            Self::Refused { frame_id, .. } => write!(f, "Refused({frame_id:?})"),
        }
    }
}

impl InspectStream {
    /// Starts judging `request`; waits while [`STREAM_IN_FLIGHT`] frames of
    /// this stream are unanswered.
    pub async fn send(&self, request: InspectRequest) -> Result<(), StreamClosed> {
        let server = self.server.clone();
        let frame_id = request.frame_id.clone();
        let task = tokio::spawn(async move { server.judge(request, Patience::Stream).await });
        self.pending
            .send(Pending::Judging { frame_id, task })
            .await
            .map_err(|_| StreamClosed)
    }

    /// Answers a frame the transport could not read with `error`, in its
    /// place in the order.
    pub async fn refuse(&self, frame_id: String, error: Error) -> Result<(), StreamClosed> {
        self.pending
            .send(Pending::Refused { frame_id, error })
            .await
            .map_err(|_| StreamClosed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(bytes: usize) -> Image {
        Image {
            data: Vec::with_capacity(bytes),
            ..Image::default()
        }
    }

    #[test]
    fn the_pool_keeps_no_more_than_its_byte_cap() {
        // Found by a hostile client: after four huge frames the pool kept
        // 2.2 GiB resident.
        let pool = ImagePool::default();
        for _ in 0..4 {
            pool.give(image(POOLED_BYTES / 2 + 1));
        }
        assert!(pool.held_bytes() <= POOLED_BYTES, "{}", pool.held_bytes());
        assert_eq!(pool.held_bytes(), POOLED_BYTES / 2 + 1);
        pool.give(image(POOLED_BYTES + 1));
        assert_eq!(
            pool.held_bytes(),
            POOLED_BYTES / 2 + 1,
            "a buffer above the cap is dropped"
        );
        for _ in 0..2 * POOLED_IMAGES {
            pool.give(image(1024));
        }
        assert_eq!(pool.0.lock().unwrap().len(), POOLED_IMAGES);
    }
}
