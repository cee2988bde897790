//! The bound on open connections: the listener's stream of accepted
//! connections, wrapped so that each carries a permit it gives back when
//! its IO is dropped. At the limit the listener is not polled at all, so a
//! further client waits in the kernel's backlog rather than being accepted
//! (and then holding memory) by the server.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tokio_util::sync::PollSemaphore;
use tonic::transport::server::Connected;

/// Accepted connections of `I`, at most a fixed number open at once.
#[derive(Debug)]
pub struct Limited<I> {
    incoming: I,
    permits: PollSemaphore,
    /// A permit taken while the listener had no connection waiting.
    permit: Option<OwnedSemaphorePermit>,
}

impl<I> Limited<I> {
    /// `incoming`, with at most `max` of its connections open at once.
    pub fn new(incoming: I, max: usize) -> Self {
        Self {
            incoming,
            permits: PollSemaphore::new(Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS)))),
            permit: None,
        }
    }
}

impl<I, IO> Stream for Limited<I>
where
    I: Stream<Item = io::Result<IO>> + Unpin,
{
    type Item = io::Result<Counted<IO>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.permit.is_none() {
            // The semaphore is never closed; were it, the stream would end.
            match ready!(this.permits.poll_acquire(cx)) {
                Some(permit) => this.permit = Some(permit),
                None => return Poll::Ready(None),
            }
        }
        match ready!(Pin::new(&mut this.incoming).poll_next(cx)) {
            Some(Ok(io)) => {
                let permit = this.permit.take().expect("taken above; this is a bug");
                Poll::Ready(Some(Ok(Counted { io, _permit: permit })))
            }
            // An accept error uses no connection: the permit stays here.
            Some(Err(error)) => Poll::Ready(Some(Err(error))),
            None => Poll::Ready(None),
        }
    }
}

/// An accepted connection holding its place among the open ones.
#[derive(Debug)]
pub struct Counted<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
}

impl<IO: Connected> Connected for Counted<IO> {
    // The same as the connection's own, so request extensions carry the
    // same peer address (and TLS wraps this as it wraps a TcpStream).
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn a_connection_past_the_limit_is_accepted_only_once_one_closes() {
        let (incoming_tx, incoming_rx) = tokio::sync::mpsc::unbounded_channel::<io::Result<u32>>();
        for i in 0..3 {
            incoming_tx.send(Ok(i)).unwrap();
        }
        let mut limited = Limited::new(
            tokio_stream::wrappers::UnboundedReceiverStream::new(incoming_rx),
            2,
        );
        let first = limited.next().await.unwrap().unwrap();
        let _second = limited.next().await.unwrap().unwrap();
        // A third is waiting in the listener, but is not taken from it.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut limited).poll_next(&mut cx).is_pending());
        drop(first);
        assert_eq!(limited.next().await.unwrap().unwrap().io, 2);
    }
}
