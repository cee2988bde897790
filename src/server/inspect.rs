//! Inspection in the core: admission (a slot per frame, RESOURCE_EXHAUSTED at
//! once when none is free), decoding on the blocking pool into a pooled
//! buffer, the deadline, the engine worker, and the events. A stream of
//! frames is judged several at a time and answered in order.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::error::OVERLOADED;
use super::events::{Event, InspectionEvent, InspectionImages};
use super::worker::{InspectJob, Job};
use super::{Error, InspectRequest, Inspected, Server, Timings};
use crate::engine::Inspection;
use crate::imaging::{self, DecodeLimits, Image};

/// Frames of one stream being worked on at once; later ones wait (the
/// client's flow control holds them back).
pub const STREAM_IN_FLIGHT: usize = 8;

/// Decoded buffers kept for reuse.
const POOLED_IMAGES: usize = 16;

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

    fn give(&self, image: Image) {
        if let Ok(mut free) = self.0.lock()
            && free.len() < POOLED_IMAGES
        {
            free.push(image);
        }
    }
}

/// What inspections share: the slots and the buffers.
#[derive(Debug)]
pub(super) struct Inspector {
    limits: DecodeLimits,
    slots: Arc<Semaphore>,
    images: ImagePool,
}

impl Inspector {
    /// `max_pending` frames may be admitted at once.
    pub(super) fn new(limits: DecodeLimits, max_pending: usize) -> Self {
        Self {
            limits,
            slots: Arc::new(Semaphore::new(max_pending)),
            images: ImagePool::default(),
        }
    }

    fn admit(&self) -> Result<OwnedSemaphorePermit, Error> {
        self.slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::ResourceExhausted(OVERLOADED.into()))
    }
}

/// A judged frame before its event is published.
struct Judged {
    recipe: String,
    inspected: Inspected,
    inspection: Inspection,
    image: Image,
    peer: Option<std::net::SocketAddr>,
}

impl Server {
    /// Judges one frame and publishes its event.
    pub async fn inspect(&self, request: InspectRequest) -> Result<Inspected, Error> {
        let judged = self.judge(request).await?;
        Ok(self.publish(judged))
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

    /// Admission, decode, the engine, the deadline.
    async fn judge(&self, request: InspectRequest) -> Result<Judged, Error> {
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
        let judge = recipe.judge.clone().ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "recipe {name:?} has no reference yet; send good frames with AddReferences first"
            ))
        })?;
        let inspector = &self.inspector;
        let _slot = inspector.admit()?;

        let mut image = inspector.images.take();
        let limits = inspector.limits;
        let (image, decoded) = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            imaging::decode(frame.as_data(), limits, &mut image).map(|()| (image, started.elapsed()))
        })
        .await
        .map_err(|error| Error::Internal(format!("decode task failed: {error}")))?
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
        let (mut inspection, waited, image) =
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
            inspected,
            inspection,
            image,
            peer,
        })
    }

    /// Publishes a judged frame's event (with its pictures when a subscriber
    /// asked for them; otherwise the frame's buffer goes back to the pool).
    fn publish(&self, judged: Judged) -> Inspected {
        let Judged {
            recipe,
            inspected,
            inspection,
            image,
            peer,
        } = judged;
        let audience = self.events.audience();
        let images = if audience.images {
            Some(InspectionImages {
                frame: Arc::new(image),
                map: Arc::new(inspection.map),
                geometry: inspection.geometry,
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
                peer,
                images,
            })));
        }
        inspected
    }
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
        let task = tokio::spawn(async move { server.judge(request).await });
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
