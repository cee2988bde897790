//! `loupe.v1.Inspection`: unary and streaming inspection, converted to and
//! from the core's calls; admission, decoding, batching and the order of a
//! stream's answers are the core's.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::proto;
use crate::proto::convert::{error_response, inspect_request_from_proto, inspected_to_proto};
use crate::proto::inspection_server::Inspection;
use crate::server::{Server, StreamAnswer};

use super::status::refused;

/// The gRPC face of the core's inspections.
#[derive(Debug, Clone)]
pub struct InspectionService {
    server: Arc<Server>,
}

impl InspectionService {
    /// Serves the core's inspections.
    pub fn new(server: Arc<Server>) -> Self {
        Self { server }
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

fn answer_to_proto(answer: StreamAnswer) -> proto::InspectResponse {
    match answer.result {
        Ok(inspected) => inspected_to_proto(inspected),
        Err(error) => error_response(answer.frame_id, &Status::from(error)),
    }
}

#[tonic::async_trait]
impl Inspection for InspectionService {
    async fn inspect(
        &self,
        request: Request<proto::InspectRequest>,
    ) -> Result<Response<proto::InspectResponse>, Status> {
        let (deadline, peer) = (deadline(&request), request.remote_addr());
        let request = inspect_request_from_proto(request.into_inner(), deadline, peer)?;
        let inspected = self.server.inspect(request).await?;
        Ok(Response::new(inspected_to_proto(inspected)))
    }

    type InspectStreamStream = ResponseStream;

    async fn inspect_stream(
        &self,
        request: Request<Streaming<proto::InspectRequest>>,
    ) -> Result<Response<Self::InspectStreamStream>, Status> {
        let (deadline, peer) = (deadline(&request), request.remote_addr());
        let mut incoming = request.into_inner();
        let (frames, answers) = self.server.open_stream();
        // A broken request stream ends the response stream with its status,
        // after the answers of the frames that did arrive.
        let (broken_tx, broken_rx) = mpsc::channel::<Status>(1);
        tokio::spawn(async move {
            loop {
                match incoming.message().await {
                    Ok(Some(message)) => {
                        let frame_id = message.frame_id.clone();
                        let sent = match inspect_request_from_proto(message, deadline, peer) {
                            Ok(request) => frames.send(request).await,
                            Err(error) => frames.refuse(frame_id, refused(error)).await,
                        };
                        if sent.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        let _ = broken_tx.send(status).await;
                        return;
                    }
                }
            }
        });
        let responses = ReceiverStream::new(answers)
            .map(|answer| Ok(answer_to_proto(answer)))
            .chain(ReceiverStream::new(broken_rx).map(Err));
        Ok(Response::new(Box::pin(responses)))
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
