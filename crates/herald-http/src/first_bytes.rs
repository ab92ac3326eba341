//! The deadline for a connection's first bytes: hyper waits for enough of them to tell HTTP/1 from HTTP/2 without a
//! timer of its own, so a connection that sends nothing would be held for ever.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Bytes that tell an HTTP/2 connection (its preface is 24 bytes) from an HTTP/1 request.
const VERSION_BYTES: usize = 24;

/// A stream whose reads fail with `TimedOut` once `timeout` has passed before its first [`VERSION_BYTES`] bytes
/// arrived; after them it is the stream itself.
pub(crate) struct FirstBytesDeadline<I> {
    inner: I,
    /// Bytes still to come before the deadline goes; with them, the deadline.
    awaiting: Option<(usize, Pin<Box<Sleep>>)>,
}

impl<I> FirstBytesDeadline<I> {
    pub(crate) fn new(inner: I, timeout: Duration) -> Self {
        Self {
            inner,
            awaiting: Some((VERSION_BYTES, Box::pin(tokio::time::sleep(timeout)))),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstBytesDeadline<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if let Some((left, _)) = &mut this.awaiting {
                    let read = buf.filled().len() - before;
                    // A read of nothing is the end of the stream: hyper sees it and ends the connection.
                    if read == 0 || read >= *left {
                        this.awaiting = None;
                    } else {
                        *left -= read;
                    }
                }
                Poll::Ready(result)
            }
            Poll::Pending => match &mut this.awaiting {
                Some((_, deadline)) => {
                    ready!(deadline.as_mut().poll(cx));
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within header_read_timeout",
                    )))
                }
                None => Poll::Pending,
            },
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstBytesDeadline<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
