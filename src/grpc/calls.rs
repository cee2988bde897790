//! Failed calls, by method and status code, counted in one tower layer
//! around every service. A call's `grpc-status` is in the answer's headers
//! when it failed before any message (a trailers-only answer: an unknown
//! recipe, a refused token) and in its trailers otherwise (a stream that
//! broke after answers went out), so the layer reads both; a call the client
//! cancels has no status and is not counted. Where the counts go is the
//! caller's ([`FailedCalls`]); the transport knows no metrics library.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tonic::body::Body;
use tonic::codegen::BoxFuture;
use tonic::codegen::http::{HeaderMap, Request, Response};
use tonic::{Code, Status};
use tower::{Layer, Service};

/// Every method served (`package.Service/Method`); a call to anything else
/// is counted as [`UNKNOWN_METHOD`], so clients cannot add label values.
pub const METHODS: [&str; 17] = [
    "loupe.v1.Inspection/Inspect",
    "loupe.v1.Inspection/InspectStream",
    "loupe.v1.Recipes/CreateRecipe",
    "loupe.v1.Recipes/UpdateRecipe",
    "loupe.v1.Recipes/AddReferences",
    "loupe.v1.Recipes/GetRecipe",
    "loupe.v1.Recipes/ListRecipes",
    "loupe.v1.Recipes/DeleteRecipe",
    "loupe.v1.Recipes/ExportRecipe",
    "loupe.v1.Recipes/ImportRecipe",
    "loupe.v1.Results/ListResults",
    "loupe.v1.Results/GetResult",
    "loupe.v1.Results/WatchResults",
    "grpc.health.v1.Health/Check",
    "grpc.health.v1.Health/Watch",
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The method label of a path that names no method in [`METHODS`].
pub const UNKNOWN_METHOD: &str = "unknown";

/// The method label of a request path (`/package.Service/Method`).
pub fn method_label(path: &str) -> &'static str {
    let method = path.strip_prefix('/').unwrap_or(path);
    METHODS
        .iter()
        .find(|known| **known == method)
        .copied()
        .unwrap_or(UNKNOWN_METHOD)
}

/// Where failed calls are counted.
pub trait FailedCalls: std::fmt::Debug + Send + Sync + 'static {
    /// A call to `method` (from [`METHODS`], or [`UNKNOWN_METHOD`]) ended
    /// with `code`, never `Ok`.
    fn failed(&self, method: &'static str, code: Code);
}

/// The `grpc-status` in `headers`, if any.
fn status_in(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|value| Code::from_bytes(value.as_bytes()))
}

/// Counts failed calls into a [`FailedCalls`]; with `None` it does nothing.
#[derive(Debug, Clone)]
pub struct CallsLayer {
    sink: Option<Arc<dyn FailedCalls>>,
}

impl CallsLayer {
    /// Counts into `sink`, or nowhere with `None`.
    pub fn new(sink: Option<Arc<dyn FailedCalls>>) -> Self {
        Self { sink }
    }
}

impl<S> Layer<S> for CallsLayer {
    type Service = CountFailures<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountFailures {
            inner,
            sink: self.sink.clone(),
        }
    }
}

/// The service [`CallsLayer`] wraps around the server's routes.
#[derive(Debug, Clone)]
pub struct CountFailures<S> {
    inner: S,
    sink: Option<Arc<dyn FailedCalls>>,
}

impl<S> Service<Request<Body>> for CountFailures<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let Some(sink) = self.sink.clone() else {
            return Box::pin(self.inner.call(request));
        };
        let method = method_label(request.uri().path());
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            if let Some(code) = status_in(response.headers()) {
                if code != Code::Ok {
                    sink.failed(method, code);
                }
                return Ok(response);
            }
            Ok(response.map(|body| {
                Body::new(Watched {
                    body,
                    call: Some((sink, method)),
                })
            }))
        })
    }
}

/// An answer's body that counts the status in its trailers once.
struct Watched {
    body: Body,
    /// Where to count and as what; taken when the status is seen.
    call: Option<(Arc<dyn FailedCalls>, &'static str)>,
}

impl Watched {
    fn settle(&mut self, code: Option<Code>) {
        if let (Some((sink, method)), Some(code)) = (self.call.take(), code)
            && code != Code::Ok
        {
            sink.failed(method, code);
        }
    }
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.settle(status_in(trailers));
                }
            }
            Poll::Ready(Some(Err(status))) => this.settle(Some(status.code())),
            Poll::Ready(None) => this.settle(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use http_body::Body as _;
    use prost::Message;

    use super::*;

    #[derive(Debug, Default)]
    struct Seen(Mutex<Vec<(&'static str, Code)>>);

    impl FailedCalls for Seen {
        fn failed(&self, method: &'static str, code: Code) {
            self.0.lock().unwrap().push((method, code));
        }
    }

    /// A body of one message and then `grpc-status` trailers.
    struct Streamed(Vec<Frame<Bytes>>);

    impl http_body::Body for Streamed {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready((!self.0.is_empty()).then(|| Ok(self.0.remove(0))))
        }
    }

    fn trailers(code: Code) -> Body {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", (code as i32).to_string().parse().unwrap());
        Body::new(Streamed(vec![
            Frame::data(Bytes::from_static(b"message")),
            Frame::trailers(trailers),
        ]))
    }

    /// Answers every call with what `answer` makes.
    #[derive(Clone)]
    struct Answer(fn() -> Response<Body>);

    impl Service<Request<Body>> for Answer {
        type Response = Response<Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Response<Body>, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<Body>) -> Self::Future {
            std::future::ready(Ok((self.0)()))
        }
    }

    async fn call(seen: &Arc<Seen>, path: &str, answer: fn() -> Response<Body>) {
        let sink: Arc<dyn FailedCalls> = seen.clone();
        let mut service = CallsLayer::new(Some(sink)).layer(Answer(answer));
        let request = Request::builder().uri(path).body(Body::empty()).unwrap();
        let response = service.call(request).await.unwrap();
        let mut body = response.into_body();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            frame.unwrap();
        }
    }

    #[tokio::test]
    async fn failures_in_headers_and_in_trailers_are_counted_once_and_successes_not() {
        let seen = Arc::new(Seen::default());
        call(&seen, "/loupe.v1.Inspection/Inspect", || {
            Status::not_found("no such recipe").into_http()
        })
        .await;
        call(&seen, "/loupe.v1.Inspection/InspectStream", || {
            Response::new(trailers(Code::Internal))
        })
        .await;
        call(&seen, "/loupe.v1.Recipes/GetRecipe", || {
            Response::new(trailers(Code::Ok))
        })
        .await;
        call(&seen, "/loupe.v1.Recipes/Nonsense", || {
            Status::unimplemented("").into_http()
        })
        .await;
        assert_eq!(
            *seen.0.lock().unwrap(),
            [
                ("loupe.v1.Inspection/Inspect", Code::NotFound),
                ("loupe.v1.Inspection/InspectStream", Code::Internal),
                (UNKNOWN_METHOD, Code::Unimplemented),
            ]
        );
    }

    #[test]
    fn every_served_method_has_its_own_label() {
        let mut served = HashSet::new();
        for set in [
            crate::proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ] {
            let set = prost_types::FileDescriptorSet::decode(set).unwrap();
            for file in set.file {
                for service in &file.service {
                    for method in &service.method {
                        served.insert(format!("{}.{}/{}", file.package(), service.name(), method.name()));
                    }
                }
            }
        }
        // Reflection's descriptors are not exported; it has one method.
        served.extend([
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo".to_owned(),
            "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo".to_owned(),
        ]);
        for method in &served {
            assert_eq!(method_label(&format!("/{method}")), method, "{method}");
        }
        let listed: HashSet<String> = METHODS.iter().map(|method| (*method).to_owned()).collect();
        assert_eq!(listed, served, "METHODS lists a method nobody serves");
        assert_eq!(method_label("/loupe.v1.Recipes/Nonsense"), UNKNOWN_METHOD);
        assert_eq!(method_label("/"), UNKNOWN_METHOD);
    }
}
