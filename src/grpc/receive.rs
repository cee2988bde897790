//! The receive budget: a bound on the gRPC request message bytes all calls
//! are receiving at once, in one tower layer around every service.
//!
//! The layer wraps each request's body and reads gRPC's length-prefixed
//! framing as DATA frames pass (1 byte compressed flag, 4 bytes big-endian
//! length, possibly split over frames). When a message's prefix has been
//! seen, the message's whole length is reserved in the budget before the
//! frame holding the prefix is passed on to tonic; while the budget is
//! short the body answers `Pending`, tonic stops reading, and HTTP/2 flow
//! control holds the client back. Reserving the whole message at its prefix
//! means partly received messages never wait for each other. A reservation
//! is released once tonic asks for more after the message (it has decoded
//! it by then), or when the call ends.
//!
//! What is not reserved: a message that starts and ends in the frame that
//! carries its prefix (the frame is in memory already, at most
//! [`super::MAX_FRAME`] bytes); a message of at most [`SMALL_MESSAGE`]
//! bytes, so health checks, reflection and recipe reads never queue behind
//! camera frames; and a message longer than `--max-message-bytes`, which
//! tonic refuses itself without buffering it. So beyond the budget a call
//! holds at most one DATA frame that waits for its reservation.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;
use tonic::body::Body;
use tonic::codegen::http::Request;
use tower::{Layer, Service};

/// Messages of at most this many bytes pass without a reservation: what
/// they can hold is bounded by the calls open at once, and they must not
/// queue behind frames of megabytes.
pub const SMALL_MESSAGE: u32 = 16 << 10;

/// Bytes reserved by every receive budget of this process right now, and
/// the most ever; for tests and diagnostics.
static RESERVED: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The most bytes the receive budgets of this process have held reserved
/// at once.
pub fn peak_reserved_bytes() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Where the gRPC length-prefixed framing of one call's request stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Framing {
    /// The prefix bytes seen so far of the next message.
    prefix: [u8; 5],
    /// How many of `prefix` are filled.
    have: u8,
    /// Body bytes of the current message still to come; `None` between
    /// messages (or inside a prefix).
    remaining: Option<u32>,
}

/// What one chunk of a call's bytes showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scan {
    /// The length of the last message whose prefix ended in the chunk.
    pub started: Option<u32>,
    /// Whether the chunk ended inside a message's body, more of it to come.
    pub inside: bool,
}

impl Framing {
    /// Reads `data`, the next bytes of the call; no allocation, a few steps
    /// per message.
    pub(crate) fn scan(&mut self, mut data: &[u8]) -> Scan {
        let mut started = None;
        while !data.is_empty() {
            if let Some(remaining) = self.remaining {
                let skip = data.len().min(remaining as usize);
                data = &data[skip..];
                let left = remaining - skip as u32;
                self.remaining = (left > 0).then_some(left);
                continue;
            }
            let have = usize::from(self.have);
            let take = data.len().min(5 - have);
            self.prefix[have..have + take].copy_from_slice(&data[..take]);
            data = &data[take..];
            self.have += take as u8;
            if self.have == 5 {
                let length =
                    u32::from_be_bytes([self.prefix[1], self.prefix[2], self.prefix[3], self.prefix[4]]);
                started = Some(length);
                self.have = 0;
                self.remaining = (length > 0).then_some(length);
            }
        }
        Scan {
            started,
            inside: self.remaining.is_some(),
        }
    }

    /// Whether the bytes seen so far end inside a message's body.
    pub(crate) fn inside(&self) -> bool {
        self.remaining.is_some()
    }
}

/// The budget shared by all calls: permits are bytes.
#[derive(Debug, Clone)]
pub struct ReceiveBudget {
    semaphore: Arc<Semaphore>,
    /// Permits the budget started with.
    total: u32,
    /// Messages above this are tonic's to refuse.
    max_message: u32,
}

impl ReceiveBudget {
    /// A budget of `bytes` for calls whose messages tonic caps at
    /// `max_message_bytes`.
    pub fn new(bytes: u64, max_message_bytes: usize) -> Self {
        // A gRPC message's length is a u32: no reservation needs more.
        let total = bytes.min(u64::from(u32::MAX)) as u32;
        Self {
            semaphore: Arc::new(Semaphore::new(total as usize)),
            total,
            max_message: u32::try_from(max_message_bytes).unwrap_or(u32::MAX),
        }
    }

    /// What a message of `length` bytes reserves; 0 for none.
    fn need(&self, length: u32) -> u32 {
        if length <= SMALL_MESSAGE || length > self.max_message {
            0
        } else {
            // Never more than the whole budget, or it would wait forever.
            length.min(self.total)
        }
    }
}

/// A message's bytes reserved in the budget, counted while held.
#[derive(Debug)]
struct Reservation {
    _permit: OwnedSemaphorePermit,
    bytes: usize,
}

impl Reservation {
    fn new(permit: OwnedSemaphorePermit, bytes: u32) -> Self {
        let bytes = bytes as usize;
        let now = RESERVED.fetch_add(bytes, Ordering::Relaxed) + bytes;
        PEAK.fetch_max(now, Ordering::Relaxed);
        Self {
            _permit: permit,
            bytes,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        RESERVED.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A request body that reserves each message's bytes in the budget before
/// passing the message on.
#[derive(Debug)]
pub struct Metered<B> {
    inner: B,
    budget: ReceiveBudget,
    /// Waits for permits; allocates only the first time a call must wait.
    permits: Option<PollSemaphore>,
    framing: Framing,
    held: Option<Reservation>,
    /// A frame held back until `u32` bytes are reserved for its message.
    waiting: Option<(Frame<Bytes>, u32)>,
}

impl<B> Metered<B> {
    /// `inner`, metered against `budget`.
    pub fn new(inner: B, budget: ReceiveBudget) -> Self {
        Self {
            inner,
            budget,
            permits: None,
            framing: Framing::default(),
            held: None,
            waiting: None,
        }
    }

    /// Reserves `need` bytes, or `Pending` until the budget has them.
    fn poll_reserve(&mut self, cx: &mut Context<'_>, need: u32) -> Poll<()> {
        let semaphore = &self.budget.semaphore;
        if self.permits.is_none() {
            match semaphore.clone().try_acquire_many_owned(need) {
                Ok(permit) => {
                    self.held = Some(Reservation::new(permit, need));
                    return Poll::Ready(());
                }
                Err(_) => self.permits = Some(PollSemaphore::new(semaphore.clone())),
            }
        }
        let permits = self.permits.as_mut().expect("set just above; this is a bug");
        // The budget is never closed; were it, the message would pass
        // unreserved rather than hang.
        if let Some(permit) = ready!(permits.poll_acquire_many(cx, need)) {
            self.held = Some(Reservation::new(permit, need));
        }
        Poll::Ready(())
    }
}

impl<B> HttpBody for Metered<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Some((_, need)) = &this.waiting {
            let need = *need;
            ready!(this.poll_reserve(cx, need));
            let (frame, _) = this.waiting.take().expect("checked above; this is a bug");
            return Poll::Ready(Some(Ok(frame)));
        }
        // Tonic asks for more only once it has decoded every whole message
        // it was given: a finished message's bytes are its handler's now.
        if !this.framing.inside() {
            this.held = None;
        }
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            other => return Poll::Ready(other),
        };
        let Some(data) = frame.data_ref() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let scan = this.framing.scan(data);
        let Some(length) = scan.started else {
            return Poll::Ready(Some(Ok(frame)));
        };
        // The message before ended in this frame.
        this.held = None;
        let need = if scan.inside { this.budget.need(length) } else { 0 };
        if need == 0 {
            return Poll::Ready(Some(Ok(frame)));
        }
        if this.poll_reserve(cx, need).is_pending() {
            this.waiting = Some((frame, need));
            return Poll::Pending;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.waiting.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some((frame, _)) = &self.waiting {
            let held = frame.data_ref().map_or(0, |data| data.len() as u64);
            hint.set_lower(hint.lower() + held);
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + held);
            }
        }
        hint
    }
}

/// Meters every request's body against one [`ReceiveBudget`].
#[derive(Debug, Clone)]
pub struct ReceiveLayer {
    budget: ReceiveBudget,
}

impl ReceiveLayer {
    /// A layer sharing `budget` between all calls.
    pub fn new(budget: ReceiveBudget) -> Self {
        Self { budget }
    }
}

impl<S> Layer<S> for ReceiveLayer {
    type Service = Receive<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Receive {
            inner,
            budget: self.budget.clone(),
        }
    }
}

/// The service [`ReceiveLayer`] makes.
#[derive(Debug, Clone)]
pub struct Receive<S> {
    inner: S,
    budget: ReceiveBudget,
}

impl<S> Service<Request<Body>> for Receive<S>
where
    S: Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let budget = self.budget.clone();
        self.inner
            .call(request.map(|body| Body::new(Metered::new(body, budget))))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::future::poll_fn;

    use super::*;

    fn prefix(length: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes
    }

    fn message(length: u32) -> Vec<u8> {
        let mut bytes = prefix(length);
        bytes.resize(5 + length as usize, 7);
        bytes
    }

    #[test]
    fn a_prefix_split_over_frames_is_read_whole() {
        let mut framing = Framing::default();
        let bytes = message(300);
        let started = |scan: Scan| scan.started;
        assert_eq!(started(framing.scan(&bytes[..2])), None);
        assert_eq!(started(framing.scan(&bytes[2..4])), None);
        let scan = framing.scan(&bytes[4..100]);
        assert_eq!(
            scan,
            Scan {
                started: Some(300),
                inside: true
            }
        );
        let scan = framing.scan(&bytes[100..]);
        assert_eq!(
            scan,
            Scan {
                started: None,
                inside: false
            }
        );
        // And the next message's prefix after it, one byte at a time.
        let next = prefix(70_000);
        for byte in &next[..4] {
            assert_eq!(framing.scan(std::slice::from_ref(byte)).started, None);
        }
        assert_eq!(
            framing.scan(&next[4..]),
            Scan {
                started: Some(70_000),
                inside: true
            }
        );
    }

    #[test]
    fn several_messages_in_one_frame_report_the_last() {
        let mut framing = Framing::default();
        let mut bytes = message(10);
        bytes.extend(message(0));
        bytes.extend(message(20));
        bytes.extend(&message(1000)[..50]);
        let scan = framing.scan(&bytes);
        assert_eq!(
            scan,
            Scan {
                started: Some(1000),
                inside: true
            }
        );
        let scan = framing.scan(&[7; 955]);
        assert_eq!(
            scan,
            Scan {
                started: None,
                inside: false
            }
        );
    }

    #[test]
    fn a_zero_length_message_is_whole_at_its_prefix() {
        let mut framing = Framing::default();
        assert_eq!(
            framing.scan(&message(0)),
            Scan {
                started: Some(0),
                inside: false
            }
        );
        let mut two = message(0);
        two.extend(message(0));
        assert_eq!(
            framing.scan(&two),
            Scan {
                started: Some(0),
                inside: false
            }
        );
        assert!(!framing.inside());
    }

    /// A body that yields the given frames, then ends.
    #[derive(Debug)]
    struct Frames(VecDeque<Bytes>);

    impl HttpBody for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(|data| Ok(Frame::data(data))))
        }
    }

    /// One call sending a message of `length` bytes in two frames.
    fn call(length: u32, budget: &ReceiveBudget) -> Metered<Frames> {
        let bytes = Bytes::from(message(length));
        let frames = VecDeque::from([bytes.slice(..1000), bytes.slice(1000..)]);
        Metered::new(Frames(frames), budget.clone())
    }

    fn poll(body: &mut Metered<Frames>) -> Poll<Option<usize>> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        Pin::new(body)
            .poll_frame(&mut cx)
            .map(|frame| frame.map(|frame| frame.unwrap().into_data().unwrap().len()))
    }

    #[test]
    fn a_second_message_waits_while_the_first_holds_the_budget() {
        let budget = ReceiveBudget::new(300_000, 200_000);
        let mut first = call(200_000, &budget);
        let mut second = call(200_000, &budget);
        assert_eq!(poll(&mut first), Poll::Ready(Some(1000)));
        assert_eq!(budget.semaphore.available_permits(), 100_000);
        // The second's prefix is seen; its frame is held back, unpassed.
        assert_eq!(poll(&mut second), Poll::Pending);
        assert_eq!(poll(&mut second), Poll::Pending);
        assert_eq!(poll(&mut first), Poll::Ready(Some(199_005)));
        // Tonic asks for more: the first is decoded and its bytes freed,
        // handed straight to the second, which waits for them.
        assert_eq!(poll(&mut first), Poll::Ready(None));
        assert_eq!(budget.semaphore.available_permits(), 100_000);
        drop(first);
        assert_eq!(poll(&mut second), Poll::Ready(Some(1000)));
        assert_eq!(budget.semaphore.available_permits(), 100_000);
        drop(second);
        assert_eq!(budget.semaphore.available_permits(), 300_000);
    }

    #[tokio::test]
    async fn a_waiting_message_proceeds_once_the_budget_frees() {
        let budget = ReceiveBudget::new(300_000, 200_000);
        let mut first = call(200_000, &budget);
        assert_eq!(poll(&mut first), Poll::Ready(Some(1000)));
        let mut second = call(200_000, &budget);
        let waiting = tokio::spawn(async move {
            let frame = poll_fn(|cx| Pin::new(&mut second).poll_frame(cx)).await;
            frame.unwrap().unwrap().into_data().unwrap().len()
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        assert_eq!(waiting.await.unwrap(), 1000);
    }

    #[test]
    fn small_and_oversized_messages_reserve_nothing() {
        let budget = ReceiveBudget::new(300_000, 200_000);
        assert_eq!(budget.need(SMALL_MESSAGE), 0);
        assert_eq!(budget.need(SMALL_MESSAGE + 1), SMALL_MESSAGE + 1);
        assert_eq!(budget.need(200_001), 0);
        let mut oversized = call(250_000, &budget);
        assert_eq!(poll(&mut oversized), Poll::Ready(Some(1000)));
        assert_eq!(budget.semaphore.available_permits(), 300_000);
    }
}
