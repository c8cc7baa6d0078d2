//! Idle receiver connections kept for reuse (`upstream_keepalive = true`).
//!
//! obmguard's own pool rather than pingora's: pingora's spawns a watcher task per idle
//! connection, takes locks and channels to hand it back, and asks the kernel for the peer's
//! address on every reuse. obmguard instead tests a connection without blocking just before
//! it writes on it (see the module above), so the pool only has to hold connections:
//! - at most `size` idle connections in all, newest reused first (the oldest are likeliest to
//!   have been closed by the receiver);
//! - none older than `idle`: expired ones are dropped when the pool is next used and by a
//!   sweep every [`SWEEP`], so a receiver that closes an idle connection does not leave it
//!   half-closed here for long.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use pingora_core::protocols::Stream;

use crate::FastMap;

/// How often idle connections past their time are dropped when no message comes.
const SWEEP: Duration = Duration::from_secs(1);

/// Idle connections by pool key (receiver address, TLS and trust settings).
pub struct IdlePool {
    size: usize,
    idle: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Per key, oldest first.
    by_key: FastMap<u64, Vec<(Instant, Stream)>>,
    total: usize,
    sweeping: bool,
}

impl State {
    /// Drop the connections of `key` idle for `idle` or longer.
    fn expire(&mut self, key: u64, idle: Duration, now: Instant) {
        let Some(list) = self.by_key.get_mut(&key) else {
            return;
        };
        let stale = list.partition_point(|(since, _)| now.duration_since(*since) >= idle);
        list.drain(..stale);
        self.total -= stale;
        if list.is_empty() {
            self.by_key.remove(&key);
        }
    }
}

impl IdlePool {
    pub fn new(size: usize, idle: Duration) -> Arc<Self> {
        Arc::new(IdlePool {
            size,
            idle,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently returned connection for `key` that has not idled too long.
    pub fn take(&self, key: u64) -> Option<Stream> {
        let mut st = self.state();
        st.expire(key, self.idle, Instant::now());
        let list = st.by_key.get_mut(&key)?;
        let (_, stream) = list.pop()?;
        if list.is_empty() {
            st.by_key.remove(&key);
        }
        st.total -= 1;
        Some(stream)
    }

    /// Keep `stream` for reuse; dropped (closed) when the pool is full.
    pub fn put(self: &Arc<Self>, key: u64, stream: Stream) {
        let start_sweep = {
            let mut st = self.state();
            st.expire(key, self.idle, Instant::now());
            if st.total >= self.size {
                return;
            }
            st.by_key
                .entry(key)
                .or_default()
                .push((Instant::now(), stream));
            st.total += 1;
            !std::mem::replace(&mut st.sweeping, true)
        };
        if start_sweep {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn(sweep(Arc::downgrade(self)))),
                // No runtime here: expired connections go on use, and the next `put` on a
                // runtime starts the sweep.
                Err(_) => self.state().sweeping = false,
            }
        }
    }

    /// Idle connections held now.
    pub fn len(&self) -> usize {
        self.state().total
    }

    /// Drop every idle connection past its time; whether any are left.
    fn sweep_once(&self) -> bool {
        let mut st = self.state();
        let now = Instant::now();
        let keys: Vec<u64> = st.by_key.keys().copied().collect();
        for key in keys {
            st.expire(key, self.idle, now);
        }
        if st.total == 0 {
            st.sweeping = false;
        }
        st.total > 0
    }
}

/// Sweep while the pool holds connections (and exists); a later `put` starts it again.
async fn sweep(pool: Weak<IdlePool>) {
    loop {
        tokio::time::sleep(SWEEP).await;
        let Some(pool) = pool.upgrade() else { return };
        if !pool.sweep_once() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_core::protocols::l4::stream::Stream as L4Stream;

    /// A connected stream (and its server end, kept open).
    async fn stream() -> (Stream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
        (Box::new(L4Stream::from(c.unwrap())), s.unwrap().0)
    }

    #[tokio::test]
    async fn newest_first_per_key_bounded_in_all() {
        let pool = IdlePool::new(2, Duration::from_secs(60));
        let ((a, _sa), (b, _sb), (c, _sc)) = (stream().await, stream().await, stream().await);
        let (ida, idb) = (a.id(), b.id());
        pool.put(1, a);
        pool.put(1, b);
        pool.put(2, c); // full: closed, not kept
        assert_eq!(pool.len(), 2);
        assert!(pool.take(2).is_none());
        assert_eq!(pool.take(1).map(|s| s.id()), Some(idb));
        assert_eq!(pool.take(1).map(|s| s.id()), Some(ida));
        assert!(pool.take(1).is_none());
        assert_eq!(pool.len(), 0);
    }

    #[tokio::test]
    async fn connections_past_their_idle_time_are_dropped() {
        let pool = IdlePool::new(8, Duration::from_millis(50));
        let ((a, _sa), (b, _sb)) = (stream().await, stream().await);
        pool.put(1, a);
        pool.put(2, b);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(pool.take(1).is_none(), "expired on use");
        // The other key's connection goes with the sweep, without any use.
        tokio::time::sleep(SWEEP + Duration::from_millis(200)).await;
        assert_eq!(pool.len(), 0);
    }
}
