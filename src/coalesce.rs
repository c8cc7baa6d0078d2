//! Stage 1's socket: what TLS writes to the client is held while obmguard has more to say.
//!
//! rustls writes a new TLS 1.3 connection's session tickets the moment it has read the
//! client's Finished, obmguard writes the answer once the receiver has acknowledged, and TLS
//! writes its close_notify when the connection is shut down: three system calls and three
//! segments, each of which may wake the client, for a connection that carries one message (as
//! Salesforce's often do). [`Coalescing`] sits between the TCP socket and rustls and holds
//! what is written, as its [`WriteHold`] says:
//! - [`WriteHold::hold`] (the handshake; an answer after which the connection closes): what is
//!   written is held, and flushes do not send it. It goes before a read that would wait for
//!   the client (the client may be waiting for it: a handshake flight), or at shutdown, ahead
//!   of it.
//! - [`WriteHold::carry`] (a TLS 1.3 handshake just completed: what is held is the session
//!   tickets, which nothing waits for): what is held goes with the next write, flush or
//!   shutdown; a read may wait without sending it.
//! - [`WriteHold::pass`]: writes pass; anything still held goes with the next write or flush,
//!   or before a read that would wait.
//!
//! Held bytes always go first and in order; when the stream is dropped they go as far as the
//! socket takes them without waiting (a failed handshake's alert: best effort, as an alert
//! is). At most [`MAX_HELD`] bytes are held; more is written through.
//!
//! Not here: what is written, or when the connection closes.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes held; a write beyond it goes out with what is held.
pub const MAX_HELD: usize = 16 * 1024;

/// Most of the caller's slices sent beside the held bytes in one vectored write.
const MAX_SLICES: usize = 16;

/// What is written is held; a waiting read sends it.
const HOLD: u8 = 0;
/// What is held goes with the next write, flush or shutdown, not before a waiting read.
const CARRY: u8 = 1;
/// Writes pass.
const PASS: u8 = 2;

/// The connection loop's handle on a [`Coalescing`] stream (see the module's docs).
#[derive(Debug, Clone)]
pub struct WriteHold(Arc<AtomicU8>);

impl WriteHold {
    /// Hold what is written from now on, until a read would wait or the stream shuts down.
    pub fn hold(&self) {
        self.0.store(HOLD, Ordering::Relaxed);
    }

    /// Stop holding; what is held goes with the next write, flush or shutdown. Only for
    /// bytes the client does not wait for.
    pub fn carry(&self) {
        self.0.store(CARRY, Ordering::Relaxed);
    }

    /// Stop holding; what is held goes with the next write or flush, or before a read that
    /// would wait.
    pub fn pass(&self) {
        self.0.store(PASS, Ordering::Relaxed);
    }

    fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A stream whose writes are held while its [`WriteHold`] is on (see the module's docs).
#[derive(Debug)]
pub struct Coalescing<S: AsyncWrite + Unpin> {
    inner: S,
    held: Vec<u8>,
    hold: WriteHold,
}

impl<S: AsyncWrite + Unpin> Coalescing<S> {
    /// Wrap `inner`, holding from the start.
    pub fn new(inner: S) -> (Self, WriteHold) {
        let hold = WriteHold(Arc::new(AtomicU8::new(HOLD)));
        let stream = Coalescing {
            inner,
            held: Vec::new(),
            hold: hold.clone(),
        };
        (stream, hold)
    }

    /// Write everything held and flush it (pingora's socket buffers small writes until a
    /// flush), then let the buffer go (an idle connection holds none).
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(crate::head::poll_write_out(
            &mut self.inner,
            &mut self.held,
            cx
        ))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// Take `bufs` into the held bytes, if the hold is on and they fit.
    fn take(&mut self, bufs: &[IoSlice<'_>]) -> Option<usize> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if self.hold.get() != HOLD || self.held.len() + len > MAX_HELD {
            return None;
        }
        for b in bufs {
            self.held.extend_from_slice(b);
        }
        Some(len)
    }

    /// Write `bufs`, after what is held: in one vectored write where the socket takes it.
    fn poll_write_after_held(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if !self.held.is_empty() {
            let held = self.held.len();
            let mut slices = [IoSlice::new(&[]); MAX_SLICES + 1];
            slices[0] = IoSlice::new(&self.held);
            let count = bufs.len().min(MAX_SLICES);
            slices[1..=count].copy_from_slice(&bufs[..count]);
            let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &slices[..=count]))?;
            if n > held {
                self.held = Vec::new();
                return Poll::Ready(Ok(n - held));
            }
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n);
            ready!(self.poll_release(cx))?;
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

impl<S: AsyncWrite + Unpin> Drop for Coalescing<S> {
    fn drop(&mut self) {
        if !self.held.is_empty() {
            let _ = self.poll_release(&mut Context::from_waker(std::task::Waker::noop()));
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalescing<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if read.is_pending() && !this.held.is_empty() && this.hold.get() != CARRY {
            // About to wait for the client, which may be waiting for these.
            if let Poll::Ready(Err(e)) = this.poll_release(cx) {
                return Poll::Ready(Err(e));
            }
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalescing<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if let Some(n) = this.take(bufs) {
            return Poll::Ready(Ok(n));
        }
        this.poll_write_after_held(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.hold.get() == HOLD {
            return Poll::Ready(Ok(()));
        }
        this.poll_release(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_release(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl<S: pingora_core::protocols::Shutdown + AsyncWrite + Unpin + Send>
    pingora_core::protocols::Shutdown for Coalescing<S>
{
    async fn shutdown(&mut self) {
        // What is held goes out before the close (best effort, as a shutdown is).
        let _ = std::future::poll_fn(|cx| self.poll_release(cx)).await;
        self.inner.shutdown().await
    }
}

crate::head::pass_stream_traits!(Coalescing where S: AsyncWrite + Unpin);

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Debug, Clone, PartialEq)]
    enum Event {
        Write(Vec<u8>),
        Flush,
        Shutdown,
    }
    use Event::{Flush, Shutdown, Write};

    /// A socket that records each call, takes at most `limit` bytes a write, and never has
    /// anything to read.
    #[derive(Debug, Clone)]
    struct Socket {
        log: Arc<Mutex<Vec<Event>>>,
        limit: usize,
    }

    impl Socket {
        fn new(limit: usize) -> Self {
            Socket {
                log: Arc::default(),
                limit,
            }
        }

        fn events(&self) -> Vec<Event> {
            self.log.lock().unwrap().clone()
        }

        /// Every byte written, in order.
        fn bytes(&self) -> Vec<u8> {
            let mut all = Vec::new();
            for e in self.events() {
                if let Write(b) = e {
                    all.extend(b);
                }
            }
            all
        }
    }

    impl AsyncRead for Socket {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let mut taken = Vec::new();
            for b in bufs {
                let room = self.limit - taken.len();
                taken.extend_from_slice(&b[..b.len().min(room)]);
            }
            let n = taken.len();
            self.log.lock().unwrap().push(Write(taken));
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.log.lock().unwrap().push(Flush);
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.log.lock().unwrap().push(Shutdown);
            Poll::Ready(Ok(()))
        }
    }

    /// A read on `s` that finds nothing: it is still pending after one poll.
    fn read_would_wait(s: &mut Coalescing<Socket>) {
        let mut b = [0u8; 8];
        assert!(s.read(&mut b).now_or_never().is_none());
    }

    #[tokio::test]
    async fn held_writes_and_flushes_reach_nothing_until_a_read_would_wait() {
        let socket = Socket::new(usize::MAX);
        let (mut s, _hold) = Coalescing::new(socket.clone());
        s.write_all(b"server hello").await.unwrap();
        s.flush().await.unwrap();
        s.write_all(b" finished").await.unwrap();
        s.flush().await.unwrap();
        assert_eq!(socket.events(), []);
        read_would_wait(&mut s);
        assert_eq!(
            socket.events(),
            [Write(b"server hello finished".to_vec()), Flush]
        );
        // Nothing is left to go: a second wait writes nothing.
        read_would_wait(&mut s);
        assert_eq!(socket.events().len(), 2);
    }

    #[tokio::test]
    async fn once_let_go_the_held_bytes_lead_the_next_write_in_one_call() {
        let socket = Socket::new(usize::MAX);
        let (mut s, hold) = Coalescing::new(socket.clone());
        s.write_all(b"tickets|").await.unwrap();
        hold.pass();
        assert_eq!(socket.events(), [], "letting go writes nothing by itself");
        // The caller is told of its own bytes only.
        assert_eq!(s.write(b"answer").await.unwrap(), 6);
        s.flush().await.unwrap();
        assert_eq!(socket.events(), [Write(b"tickets|answer".to_vec()), Flush]);
        s.write_all(b"next").await.unwrap();
        assert_eq!(socket.events()[2], Write(b"next".to_vec()));
    }

    /// Carried bytes (TLS 1.3 session tickets) wait for the answer: a read that waits for
    /// the request does not send them; the answer's write carries them.
    #[tokio::test]
    async fn carried_bytes_go_with_the_next_write_not_before_a_waiting_read() {
        let socket = Socket::new(usize::MAX);
        let (mut s, hold) = Coalescing::new(socket.clone());
        s.write_all(b"tickets|").await.unwrap();
        s.flush().await.unwrap();
        hold.carry();
        read_would_wait(&mut s);
        assert_eq!(socket.events(), []);
        s.write_all(b"answer").await.unwrap();
        s.flush().await.unwrap();
        assert_eq!(socket.events(), [Write(b"tickets|answer".to_vec()), Flush]);
    }

    /// Once writes pass, anything still held goes before a read that would wait (a TLS 1.2
    /// server's Finished, which the client waits for before it sends its request).
    #[tokio::test]
    async fn passing_sends_what_is_held_before_a_waiting_read() {
        let socket = Socket::new(usize::MAX);
        let (mut s, hold) = Coalescing::new(socket.clone());
        s.write_all(b"finished").await.unwrap();
        s.flush().await.unwrap();
        hold.pass();
        read_would_wait(&mut s);
        assert_eq!(socket.events(), [Write(b"finished".to_vec()), Flush]);
    }

    #[tokio::test]
    async fn a_flush_without_the_hold_writes_what_was_held() {
        let socket = Socket::new(usize::MAX);
        let (mut s, hold) = Coalescing::new(socket.clone());
        s.write_all(b"tickets").await.unwrap();
        hold.pass();
        s.flush().await.unwrap();
        assert_eq!(socket.events(), [Write(b"tickets".to_vec()), Flush]);
    }

    /// pingora's socket keeps small writes in a buffer until it is flushed: held bytes let go
    /// by a waiting read must not stop there while the client waits for them.
    #[tokio::test]
    async fn bytes_let_go_by_a_waiting_read_are_flushed_through_a_buffered_socket() {
        let socket = Socket::new(usize::MAX);
        let (mut s, _hold) =
            Coalescing::new(tokio::io::BufWriter::with_capacity(4096, socket.clone()));
        s.write_all(b"flight").await.unwrap();
        s.flush().await.unwrap();
        let mut b = [0u8; 8];
        assert!(s.read(&mut b).now_or_never().is_none());
        assert_eq!(socket.events(), [Write(b"flight".to_vec()), Flush]);
    }

    #[tokio::test]
    async fn shutdown_sends_what_is_held_first() {
        let socket = Socket::new(usize::MAX);
        let (mut s, _hold) = Coalescing::new(socket.clone());
        s.write_all(b"answer").await.unwrap();
        s.write_all(b"close_notify").await.unwrap();
        s.shutdown().await.unwrap();
        assert_eq!(
            socket.events(),
            [Write(b"answerclose_notify".to_vec()), Flush, Shutdown]
        );
    }

    #[test]
    fn dropping_the_stream_sends_what_is_held() {
        let socket = Socket::new(usize::MAX);
        let (mut s, _hold) = Coalescing::new(socket.clone());
        assert!(matches!(
            Pin::new(&mut s)
                .poll_write(&mut Context::from_waker(std::task::Waker::noop()), b"alert"),
            Poll::Ready(Ok(5))
        ));
        drop(s);
        assert_eq!(socket.events(), [Write(b"alert".to_vec()), Flush]);
    }

    #[tokio::test]
    async fn more_than_max_held_is_written_through_behind_what_is_held() {
        let socket = Socket::new(usize::MAX);
        let (mut s, _hold) = Coalescing::new(socket.clone());
        s.write_all(b"head").await.unwrap();
        let big = vec![7u8; MAX_HELD];
        assert_eq!(s.write(&big).await.unwrap(), MAX_HELD);
        let mut expected = b"head".to_vec();
        expected.extend(&big);
        assert_eq!(socket.events(), [Write(expected)]);
    }

    /// However little the socket takes a call, every byte arrives once, in order, and each
    /// write reports only its own bytes.
    #[tokio::test]
    async fn a_socket_that_takes_little_at_a_time_still_gets_every_byte_in_order() {
        for limit in [1, 2, 3, 5, 8, 13, 64] {
            let socket = Socket::new(limit);
            let (mut s, hold) = Coalescing::new(socket.clone());
            let mut expected: Vec<u8> = Vec::new();
            for (i, len) in [3usize, 1, 10, 7, 40, 2].into_iter().enumerate() {
                let chunk: Vec<u8> = (0..len).map(|j| (i * 50 + j) as u8).collect();
                match i % 3 {
                    0 => hold.hold(),
                    1 => hold.carry(),
                    _ => hold.pass(),
                }
                if i == 4 {
                    read_would_wait(&mut s);
                }
                s.write_all(&chunk).await.unwrap();
                expected.extend(&chunk);
            }
            hold.pass();
            s.flush().await.unwrap();
            assert_eq!(socket.bytes(), expected, "limit {limit}");
        }
    }

    /// Over a real TCP connection: the peer sees nothing while the bytes are held, and gets
    /// them as soon as the stream waits to read.
    #[tokio::test]
    async fn over_tcp_the_peer_gets_held_bytes_when_the_stream_waits() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut s, _hold) = Coalescing::new(tcp);
        s.write_all(b"flight").await.unwrap();
        s.flush().await.unwrap();
        let server = tokio::spawn(async move {
            let mut b = [0u8; 5];
            s.read_exact(&mut b).await.unwrap();
            b
        });
        let mut got = [0u8; 6];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"flight");
        peer.write_all(b"reply").await.unwrap();
        assert_eq!(&server.await.unwrap(), b"reply");
    }
}
