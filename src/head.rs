//! Stage 2b: the request head's byte budget and deadline, enforced on the decrypted stream
//! under pingora's HTTP/1 reader.
//!
//! pingora buffers up to 1 MiB of request head before it parses one, so `max_header_bytes`
//! checked after parsing would not bound memory: a client could park nearly 1 MiB on every
//! connection. [`HeadLimited`] lets at most a budget of bytes through while a head is being
//! read (twice `max_header_bytes`: a head a little over the limit still gets its 431 from the
//! intake stage; one far over it, or one that never ends, is cut off and the connection
//! closed). And it starts the head deadline (`request_head_ms`) at the first byte of each
//! request, not only the first request of a connection: a keep-alive connection may idle for
//! `idle_keepalive_ms`, but once a head starts it must finish in time.
//!
//! Between heads (while a body is read, or an answer written) the stream is passed through
//! untouched; body reads are bounded by the intake stage. An idle keep-alive connection is
//! waited on by the connection loop itself, one byte at a time, so that it holds no HTTP
//! session; the byte it reads is handed back ([`HeadControl::hold`]) as the next head's first.
//! Not here: parsing, or any decision about the request.
//!
//! On the way out, small writes are gathered until the next flush ([`GATHER`]): pingora
//! writes an answer's head and its body separately, and each write to the TLS layer is a
//! record of its own (its own encryption, its own 22 bytes). Gathered, a whole answer is one
//! record. pingora flushes at the end of every answer, as its own buffered socket needs; the
//! buffer is let go once written, so an idle connection holds none.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, SocketDigest, TimingDigest,
};
use pingora_core::protocols::{Peek, Shutdown, Ssl, UniqueID, UniqueIDType, ALPN};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// No budget: the stream passes through.
const UNLIMITED: usize = usize::MAX;

/// Writes are gathered up to this many bytes before they go to the TLS layer (an answer's
/// head and body are a few hundred).
const GATHER: usize = 4096;

/// Shared between the stream (owned by pingora's session) and the connection loop.
#[derive(Debug, Default)]
pub struct HeadState {
    /// Bytes a head may still read, or [`UNLIMITED`].
    budget: AtomicUsize,
    /// The head deadline, milliseconds from its first byte.
    deadline_ms: AtomicU64,
    /// Bumped by every [`HeadControl`] call so the stream resets its own per-head state.
    epoch: AtomicU64,
    /// The budget ran out during the current head.
    over_budget: AtomicBool,
    /// The deadline passed during the current head.
    timed_out: AtomicBool,
    /// A byte read by the connection loop and handed back ([`HeldByte::hold`]): `HELD | byte`,
    /// or 0.
    held: AtomicU16,
}

/// Marks [`HeadState::held`] as holding a byte.
const HELD: u16 = 0x100;

/// The connection loop's handle on a [`HeadLimited`] stream.
#[derive(Debug, Clone)]
pub struct HeadControl(Arc<HeadState>);

impl HeadControl {
    /// The next bytes read are a request head: allow `budget` of them, and `deadline` from the
    /// first one.
    pub fn expect_head(&self, budget: usize, deadline: Duration) {
        let s = &self.0;
        s.budget.store(budget, Ordering::Relaxed);
        let ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
        s.deadline_ms.store(ms, Ordering::Relaxed);
        s.over_budget.store(false, Ordering::Relaxed);
        s.timed_out.store(false, Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::Release);
    }

    /// Give back `byte`, the first byte of the next request, read by the connection loop while
    /// it waited on an idle connection: the stream's next read returns it first, and it counts
    /// as the head's first byte.
    pub fn hold(&self, byte: u8) {
        self.0.held.store(HELD | u16::from(byte), Ordering::Release);
    }

    /// The head has been read: pass the stream through.
    pub fn head_done(&self) {
        self.0.budget.store(UNLIMITED, Ordering::Relaxed);
        self.0.epoch.fetch_add(1, Ordering::Release);
    }

    /// Why the last head could not be read, if the limits stopped it.
    pub fn cut_off(&self) -> Option<HeadCutOff> {
        if self.0.over_budget.load(Ordering::Relaxed) {
            Some(HeadCutOff::TooLarge)
        } else if self.0.timed_out.load(Ordering::Relaxed) {
            Some(HeadCutOff::Deadline)
        } else {
            None
        }
    }
}

/// Why a head was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadCutOff {
    TooLarge,
    Deadline,
}

/// A stream whose request heads are bounded in bytes and time. See the module documentation.
pub struct HeadLimited<S> {
    inner: S,
    state: Arc<HeadState>,
    epoch: u64,
    /// Armed at the first byte of a head.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Written, not yet passed to `inner` (at most [`GATHER`] bytes; empty and unallocated
    /// after each flush).
    gathered: Vec<u8>,
}

impl<S> HeadLimited<S> {
    /// Wrap `inner`; it passes through until [`HeadControl::expect_head`] is called.
    pub fn new(inner: S) -> (Self, HeadControl) {
        let state = Arc::new(HeadState {
            budget: AtomicUsize::new(UNLIMITED),
            ..HeadState::default()
        });
        let control = HeadControl(state.clone());
        (
            HeadLimited {
                inner,
                state,
                epoch: 0,
                deadline: None,
                gathered: Vec::new(),
            },
            control,
        )
    }
}

impl<S> HeadLimited<S> {
    /// Start the head deadline at its first byte (once per head).
    fn arm_deadline(&mut self) {
        if self.deadline.is_none() {
            let ms = self.state.deadline_ms.load(Ordering::Relaxed);
            self.deadline = Some(Box::pin(tokio::time::sleep(Duration::from_millis(ms))));
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for HeadLimited<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadLimited")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadLimited<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let epoch = this.state.epoch.load(Ordering::Acquire);
        if epoch != this.epoch {
            this.epoch = epoch;
            this.deadline = None;
        }
        let budget = this.state.budget.load(Ordering::Relaxed);
        if buf.remaining() > 0 {
            let held = this.state.held.swap(0, Ordering::Acquire);
            if held & HELD != 0 {
                if budget != UNLIMITED {
                    if budget == 0 {
                        this.state.over_budget.store(true, Ordering::Relaxed);
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "request head over its byte budget",
                        )));
                    }
                    this.state.budget.store(budget - 1, Ordering::Relaxed);
                    this.arm_deadline();
                }
                buf.put_slice(&[held as u8]);
                return Poll::Ready(Ok(()));
            }
        }
        if budget == UNLIMITED {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if budget == 0 {
            this.state.over_budget.store(true, Ordering::Relaxed);
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "request head over its byte budget",
            )));
        }
        // Read at most the budget, through a small buffer (no unsafe code to narrow `buf`),
        // left uninitialised: the read fills what it reports, and only that is copied.
        let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let want = budget.min(scratch.len()).min(buf.remaining());
        let mut small = ReadBuf::uninit(&mut scratch[..want]);
        match Pin::new(&mut this.inner).poll_read(cx, &mut small) {
            Poll::Ready(Ok(())) => {
                let got = small.filled();
                if !got.is_empty() {
                    this.state
                        .budget
                        .store(budget - got.len(), Ordering::Relaxed);
                    this.arm_deadline();
                }
                buf.put_slice(got);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    this.state.timed_out.store(true, Ordering::Relaxed);
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "request head deadline",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> HeadLimited<S> {
    /// Pass the gathered bytes to `inner`, then let the buffer go.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.gathered.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.gathered))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.gathered.drain(..n);
        }
        self.gathered = Vec::new();
        Poll::Ready(Ok(()))
    }

    /// Take `buf` into the gathered bytes, if it fits.
    fn gather(&mut self, buf: &[u8]) -> bool {
        if self.gathered.len() + buf.len() > GATHER {
            return false;
        }
        if self.gathered.capacity() == 0 {
            self.gathered.reserve_exact(GATHER);
        }
        self.gathered.extend_from_slice(buf);
        true
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadLimited<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.gather(buf) {
            return Poll::Ready(Ok(buf.len()));
        }
        ready!(this.poll_drain(cx))?;
        if this.gather(buf) {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl<S: Shutdown + AsyncWrite + Unpin + Send> Shutdown for HeadLimited<S> {
    async fn shutdown(&mut self) {
        // What was written goes out before the close (best effort, as a shutdown is).
        let _ = std::future::poll_fn(|cx| self.poll_drain(cx)).await;
        self.inner.shutdown().await
    }
}

impl<S: UniqueID> UniqueID for HeadLimited<S> {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl<S: Ssl> Ssl for HeadLimited<S> {
    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl<S: GetTimingDigest> GetTimingDigest for HeadLimited<S> {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl<S: GetProxyDigest> GetProxyDigest for HeadLimited<S> {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl<S: GetSocketDigest> GetSocketDigest for HeadLimited<S> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl<S: Send> Peek for HeadLimited<S> {}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_head_reads_at_most_its_budget_then_fails() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let (mut s, control) = HeadLimited::new(server);
        control.expect_head(10, Duration::from_secs(5));
        client.write_all(&[b'a'; 100]).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        let err = loop {
            match s.read(&mut buf).await {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break e,
            }
        };
        assert_eq!(got.len(), 10);
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(control.cut_off(), Some(HeadCutOff::TooLarge));
        control.head_done();
        assert_eq!(s.read(&mut buf).await.unwrap(), 64, "passes through");
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_runs_from_the_first_byte_of_each_head() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let (mut s, control) = HeadLimited::new(server);
        control.expect_head(1000, Duration::from_millis(500));
        let mut buf = [0u8; 64];
        // Idle before the head starts: no deadline yet.
        let idle = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
        assert!(idle.is_err(), "no byte, no deadline");
        client.write_all(b"POST").await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 4);
        let err = s.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(control.cut_off(), Some(HeadCutOff::Deadline));
        // The next head starts afresh.
        control.expect_head(1000, Duration::from_millis(500));
        client.write_all(b"GET").await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 3);
        assert_eq!(control.cut_off(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_byte_comes_first_and_starts_the_head() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let (mut s, control) = HeadLimited::new(server);
        client.write_all(b"POST /").await.unwrap();
        let mut one = [0u8; 1];
        assert_eq!(s.read(&mut one).await.unwrap(), 1);
        control.hold(one[0]);
        control.expect_head(3, Duration::from_millis(500));
        let mut buf = [0u8; 64];
        assert_eq!(s.read(&mut buf).await.unwrap(), 1);
        assert_eq!(&buf[..1], b"P");
        assert_eq!(
            s.read(&mut buf).await.unwrap(),
            2,
            "the budget counted the held byte"
        );
        assert_eq!(&buf[..2], b"OS");
        assert!(s.read(&mut buf).await.is_err());
        assert_eq!(control.cut_off(), Some(HeadCutOff::TooLarge));
        // The deadline runs from the held byte.
        control.hold(b'G');
        control.expect_head(100, Duration::from_millis(500));
        assert_eq!(s.read(&mut buf).await.unwrap(), 1);
        assert_eq!(s.read(&mut buf).await.unwrap(), 3, "{:?}", &buf[..3]);
        let err = s.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    }

    /// A writer that records each write it is given, taking at most `max` bytes of each.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        shut: bool,
        max: Option<usize>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = self.max.map_or(buf.len(), |m| m.min(buf.len()));
            self.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }

        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            self.shut = true;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn an_answer_written_in_pieces_reaches_the_tls_layer_as_one_write() {
        let (mut s, _control) = HeadLimited::new(Recorder::default());
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
            .await
            .unwrap();
        s.write_all(b"<Ack>").await.unwrap();
        assert!(s.inner.writes.is_empty(), "held until the flush");
        s.flush().await.unwrap();
        assert_eq!(
            s.inner.writes,
            [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n<Ack>".to_vec()]
        );
        assert_eq!(s.inner.flushes, 1);
        assert_eq!(
            s.gathered.capacity(),
            0,
            "an idle connection holds no buffer"
        );

        // A write too large to gather goes straight through, after what was gathered.
        let big = vec![b'x'; GATHER + 1];
        s.write_all(b"head").await.unwrap();
        s.write_all(&big).await.unwrap();
        assert_eq!(s.inner.writes[1..], [b"head".to_vec(), big]);
    }

    #[tokio::test]
    async fn gathered_bytes_survive_short_writes_and_go_out_before_a_shutdown() {
        let (mut s, _control) = HeadLimited::new(Recorder {
            max: Some(3),
            ..Recorder::default()
        });
        s.write_all(b"abcdefgh").await.unwrap();
        s.write_all(b"ij").await.unwrap();
        s.shutdown().await.unwrap();
        assert_eq!(s.inner.writes.concat(), b"abcdefghij");
        assert_eq!(s.inner.writes.len(), 4, "3 + 3 + 3 + 1 bytes");
        assert!(s.inner.shut);
    }
}
