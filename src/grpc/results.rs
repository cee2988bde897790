//! `loupe.v1.Results`: the audit trail read back, converted from the
//! trail's types; errors go through the core's one status conversion.

use std::pin::Pin;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::audit::Audit;
use crate::proto;
use crate::proto::results::{filter_from_proto, page_size, result_to_proto};
use crate::proto::results_server::Results;
use crate::server::Error;

/// New results a WatchResults call holds for a slow client before it
/// skips some.
const WATCH_BUFFER: usize = 64;

/// The gRPC face of the audit trail.
#[derive(Debug, Clone)]
pub struct ResultsService {
    audit: Option<Audit>,
}

impl ResultsService {
    /// Serves `audit`; without one (`--audit off`) every call gets
    /// FAILED_PRECONDITION.
    pub fn new(audit: Option<Audit>) -> Self {
        Self { audit }
    }

    fn audit(&self) -> Result<&Audit, Status> {
        self.audit.as_ref().ok_or_else(|| {
            Error::FailedPrecondition("the audit trail is off on this server (--audit off)".to_owned()).into()
        })
    }
}

type ResultStream = Pin<Box<dyn Stream<Item = Result<proto::InspectionResult, Status>> + Send>>;

#[tonic::async_trait]
impl Results for ResultsService {
    async fn list_results(
        &self,
        request: Request<proto::ListResultsRequest>,
    ) -> Result<Response<proto::ListResultsResponse>, Status> {
        let audit = self.audit()?;
        let request = request.into_inner();
        let filter = filter_from_proto(&request)?;
        let size = page_size(request.page_size)?;
        let page = audit
            .list(filter, size, &request.page_token)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(proto::ListResultsResponse {
            results: page.results.iter().map(result_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_result(
        &self,
        request: Request<proto::GetResultRequest>,
    ) -> Result<Response<proto::GetResultResponse>, Status> {
        let audit = self.audit()?;
        let id = request.into_inner().id;
        if id.is_empty() {
            return Err(Status::invalid_argument("id is required"));
        }
        let (result, images) = audit.get(id).await.map_err(Error::from)?;
        Ok(Response::new(proto::GetResultResponse {
            result: Some(result_to_proto(&result)),
            frame_png: images.frame_png.unwrap_or_default().into(),
            overlay_png: images.overlay_png.unwrap_or_default().into(),
        }))
    }

    type WatchResultsStream = ResultStream;

    async fn watch_results(
        &self,
        request: Request<proto::WatchResultsRequest>,
    ) -> Result<Response<Self::WatchResultsStream>, Status> {
        let mut feed = self.audit()?.watch();
        let recipe = request.into_inner().recipe;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(async move {
            loop {
                let result = tokio::select! {
                    // The client hung up.
                    () = tx.closed() => return,
                    result = feed.recv() => result,
                };
                match result {
                    Ok(result) if recipe.is_empty() || result.recipe == recipe => {
                        if tx.try_send(Ok(result_to_proto(&result))).is_err() && tx.is_closed() {
                            return;
                        }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
