//! `loupe.v1.Inspection`: unary and streaming inspection. A request is
//! admitted only if a slot is free (else RESOURCE_EXHAUSTED at once), its
//! frame is decoded on the blocking pool, and the engine thread judges it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::imaging::{self, DecodeLimits, Image};
use crate::proto;
use crate::proto::inspection_server::Inspection;

use super::ServiceError;
use super::convert::{error_response, inspect_options, inspection_to_proto};
use super::frames::OwnedFrame;
use super::registry::Registry;
use super::worker::{InspectJob, Job, Worker};

/// Frames of one stream being worked on at once; later ones wait (the
/// client's flow control holds them back).
const STREAM_IN_FLIGHT: usize = 8;

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
            && free.len() < 16
        {
            free.push(image);
        }
    }
}

/// What inspections share.
#[derive(Debug)]
pub struct Inspector {
    registry: Arc<Registry>,
    worker: Worker,
    limits: DecodeLimits,
    slots: Arc<Semaphore>,
    images: ImagePool,
}

impl Inspector {
    /// `max_pending` frames may be admitted at once.
    pub fn new(registry: Arc<Registry>, worker: Worker, limits: DecodeLimits, max_pending: usize) -> Self {
        Self {
            registry,
            worker,
            limits,
            slots: Arc::new(Semaphore::new(max_pending)),
            images: ImagePool::default(),
        }
    }

    fn admit(&self) -> Result<OwnedSemaphorePermit, ServiceError> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            ServiceError::ResourceExhausted(
                "too many frames in flight; retry later or raise --max-pending".into(),
            )
        })
    }

    /// Inspects one request.
    pub async fn inspect(
        &self,
        request: proto::InspectRequest,
        deadline: Option<Instant>,
    ) -> Result<proto::InspectResponse, ServiceError> {
        let received = Instant::now();
        if deadline.is_some_and(|d| received >= d) {
            return Err(ServiceError::DeadlineExceeded(
                "the deadline passed before the frame could be inspected".into(),
            ));
        }
        if request.recipe.is_empty() {
            return Err(ServiceError::InvalidArgument(
                "the request names no recipe".into(),
            ));
        }
        let recipe = self.registry.get(&request.recipe)?;
        let judge = recipe.judge.clone().ok_or_else(|| {
            ServiceError::FailedPrecondition(format!(
                "recipe {:?} has no reference yet; send good frames with AddReferences first",
                request.recipe
            ))
        })?;
        let options = inspect_options(request.heatmap)?;
        let frame = OwnedFrame::from_proto(request.frame)?;
        let _slot = self.admit()?;

        let mut image = self.images.take();
        let limits = self.limits;
        let (image, decoded) = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            imaging::decode(frame.as_data(), limits, &mut image).map(|()| (image, started.elapsed()))
        })
        .await
        .map_err(|error| ServiceError::Internal(format!("decode task failed: {error}")))?
        .map_err(|error| ServiceError::Engine(error.into()))?;

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
                .map_err(|_| {
                    ServiceError::DeadlineExceeded("the deadline passed during inspection".into())
                })?,
            None => answer.await,
        };
        let (inspection, waited, image) =
            answer.map_err(|_| ServiceError::Unavailable("the engine stopped".into()))??;
        self.images.give(image);
        Ok(inspection_to_proto(
            inspection,
            request.frame_id,
            recipe.record.revision,
            decoded,
            waited,
            received.elapsed(),
        ))
    }
}

/// The gRPC face of [`Inspector`].
#[derive(Debug, Clone)]
pub struct InspectionService {
    inspector: Arc<Inspector>,
}

impl InspectionService {
    /// Wraps the shared inspector.
    pub fn new(inspector: Arc<Inspector>) -> Self {
        Self { inspector }
    }
}

/// The deadline a client set with `grpc-timeout`, if any, brought forward
/// by a small margin: tonic itself cancels the call at the exact deadline
/// (status CANCELLED), and the client should get DEADLINE_EXCEEDED from us
/// first.
fn deadline<T>(request: &Request<T>) -> Option<Instant> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (amount, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = amount.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    let margin = (timeout / 10).min(Duration::from_millis(20));
    Instant::now().checked_add(timeout - margin)
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<proto::InspectResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Inspection for InspectionService {
    async fn inspect(
        &self,
        request: Request<proto::InspectRequest>,
    ) -> Result<Response<proto::InspectResponse>, Status> {
        let deadline = deadline(&request);
        let response = self.inspector.inspect(request.into_inner(), deadline).await?;
        Ok(Response::new(response))
    }

    type InspectStreamStream = ResponseStream;

    async fn inspect_stream(
        &self,
        request: Request<Streaming<proto::InspectRequest>>,
    ) -> Result<Response<Self::InspectStreamStream>, Status> {
        let deadline = deadline(&request);
        let mut incoming = request.into_inner();
        let (pending_tx, mut pending_rx) =
            mpsc::channel::<tokio::task::JoinHandle<proto::InspectResponse>>(STREAM_IN_FLIGHT);
        let (out_tx, out_rx) = mpsc::channel::<Result<proto::InspectResponse, Status>>(STREAM_IN_FLIGHT);

        // Reader: starts each frame's inspection as it arrives, keeping the
        // handles in request order.
        let inspector = self.inspector.clone();
        let error_tx = out_tx.clone();
        tokio::spawn(async move {
            loop {
                match incoming.message().await {
                    Ok(Some(request)) => {
                        let inspector = inspector.clone();
                        let frame_id = request.frame_id.clone();
                        let handle = tokio::spawn(async move {
                            match inspector.inspect(request, deadline).await {
                                Ok(response) => response,
                                Err(error) => error_response(frame_id, &Status::from(error)),
                            }
                        });
                        if pending_tx.send(handle).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        let _ = error_tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        // Writer: answers in request order.
        tokio::spawn(async move {
            while let Some(handle) = pending_rx.recv().await {
                let response = handle
                    .await
                    .map_err(|error| Status::internal(format!("inspection task failed: {error}")));
                if out_tx.send(response).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_become_deadlines() {
        let mut request = Request::new(());
        assert!(deadline(&request).is_none());
        request
            .metadata_mut()
            .insert("grpc-timeout", "250m".parse().unwrap());
        let left = deadline(&request).unwrap() - Instant::now();
        assert!(left <= Duration::from_millis(230) && left > Duration::from_millis(180));
        request
            .metadata_mut()
            .insert("grpc-timeout", "bogus".parse().unwrap());
        assert!(deadline(&request).is_none());
    }
}
