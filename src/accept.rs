//! Stage 1: the TCP peer, before any TLS: source ranges, connection caps, and which address
//! a request really comes from.
//!
//! Threat model: anyone on the internet can open a TCP connection. Before spending a TLS
//! handshake on it we check the peer address against the union of every route's ranges (plus
//! trusted proxies) and cap connections per listener and per source address, so one peer cannot
//! exhaust file descriptors or handshake CPU. Behind a TCP load balancer listed in
//! `server.proxy_protocol_from`, the load balancer is admitted as a peer, and the client its
//! PROXY header names ([`crate::proxy_protocol`]) takes the peer's place: it is what the source
//! check, the caps, the route ranges and the audit's `client_ip` see ([`Origin`]). Forwarded-for
//! headers are attacker-controlled: `X-Forwarded-For` is believed only when the client (the TCP
//! peer, or the one a load balancer named) is a configured trusted proxy, and `Forwarded` and
//! `X-Real-IP` are never believed; a load balancer is not a trusted proxy by being one (in TCP
//! mode it adds no header). Not defended here: SYN floods and volumetric attacks (the kernel's
//! and the network's job), and spoofing by a trusted proxy or load balancer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::listeners::ConnectionFilter;

use crate::config::{Config, IpSet};
use crate::metrics::Metrics;

/// Who may connect, before TLS: swapped whole on reload.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    /// Every route's ranges, plus trusted proxies: the clients admitted.
    pub clients: IpSet,
    /// Load balancers that open each connection with a PROXY header (`proxy_protocol_from`).
    pub load_balancers: IpSet,
}

impl Admission {
    pub fn of(config: &Config) -> Admission {
        Admission {
            clients: config.source.admitted.clone(),
            load_balancers: config.server.proxy_protocol_from.clone(),
        }
    }
}

/// Where a connection comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The TCP peer: the load balancer, behind one.
    pub peer: Shown<SocketAddr>,
    /// The client: the one a trusted load balancer's PROXY header names, else the TCP peer
    /// (canonical: an IPv4-mapped IPv6 address is written as IPv4).
    pub client: Shown<IpAddr>,
    /// The AWS VPC endpoint the client came through, when the load balancer said so.
    pub vpce_id: Option<String>,
}

impl Origin {
    /// A connection straight from its client.
    pub fn direct(peer: SocketAddr) -> Origin {
        Origin::behind(peer, peer.ip(), None)
    }

    /// A connection from `peer` on behalf of `client` (the TCP peer itself, or the client a
    /// load balancer's PROXY header named).
    pub fn behind(peer: SocketAddr, client: IpAddr, vpce_id: Option<String>) -> Origin {
        Origin {
            peer: Shown::new(peer),
            client: Shown::new(client.to_canonical()),
            vpce_id,
        }
    }
}

/// An address and its text, written once per connection: std's `Display` for an address costs
/// about 1,500 instructions, and every request writes its peer and its client five times in
/// all (the audit record, the log line, `X-Forwarded-For`), 4% of a keep-alive request.
#[derive(Clone, PartialEq, Eq)]
pub struct Shown<T> {
    value: T,
    text: Arc<str>,
}

impl<T: Copy + std::fmt::Display> Shown<T> {
    pub fn new(value: T) -> Self {
        Shown {
            text: value.to_string().into(),
            value,
        }
    }

    pub fn get(&self) -> T {
        self.value
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

impl<T> std::fmt::Display for Shown<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&self.text)
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Shown<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.value.fmt(f)
    }
}

/// pingora's pre-TLS filter: refuses peers outside every route's ranges that are not a load
/// balancer sending PROXY headers; the client such a header names is checked with
/// [`SourceFilter::admits_client`].
pub struct SourceFilter {
    listener: String,
    admitted: Arc<ArcSwap<Admission>>,
    metrics: Arc<Metrics>,
    log_limit: RateLimit,
}

/// Refused connections logged at `warn` per [`REFUSAL_LOG_WINDOW_SECS`] per listener; the
/// rest are counted (always) and summarised when the next window opens, so a scan cannot
/// flood the log but an operator still sees who is being turned away.
pub const REFUSALS_LOGGED_PER_WINDOW: u64 = 10;
/// The window of [`REFUSALS_LOGGED_PER_WINDOW`].
pub const REFUSAL_LOG_WINDOW_SECS: u64 = 60;

/// A fixed-window counter: `admit` says whether this event may be logged, and how many were
/// suppressed in the window that just closed.
#[derive(Debug)]
pub struct RateLimit {
    per_window: u64,
    window: std::time::Duration,
    state: Mutex<(Option<std::time::Instant>, u64)>,
}

impl RateLimit {
    pub fn new(per_window: u64, window: std::time::Duration) -> Self {
        RateLimit {
            per_window,
            window,
            state: Mutex::new((None, 0)),
        }
    }

    /// `(log this one, events suppressed in the previous window)`.
    pub fn admit(&self, now: std::time::Instant) -> (bool, u64) {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (start, seen) = &mut *g;
        let mut suppressed = 0;
        if start.is_none_or(|s| now.duration_since(s) >= self.window) {
            suppressed = seen.saturating_sub(self.per_window);
            *start = Some(now);
            *seen = 0;
        }
        *seen += 1;
        (*seen <= self.per_window, suppressed)
    }
}

impl std::fmt::Debug for SourceFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceFilter")
            .field("listener", &self.listener)
            .finish()
    }
}

impl SourceFilter {
    pub fn new(listener: String, admitted: Arc<ArcSwap<Admission>>, metrics: Arc<Metrics>) -> Self {
        SourceFilter {
            listener,
            admitted,
            metrics,
            log_limit: RateLimit::new(
                REFUSALS_LOGGED_PER_WINDOW,
                std::time::Duration::from_secs(REFUSAL_LOG_WINDOW_SECS),
            ),
        }
    }
}

impl SourceFilter {
    /// Whether `peer` is a load balancer that must open with a PROXY header.
    pub fn is_load_balancer(&self, peer: IpAddr) -> bool {
        self.admitted.load().load_balancers.contains(peer)
    }

    /// The source check for the client a load balancer's header named: refused, counted and
    /// logged as a peer outside every route's ranges would be.
    pub fn admits_client(&self, client: IpAddr, load_balancer: SocketAddr) -> bool {
        let ok = self.admitted.load().clients.contains(client);
        if !ok {
            let by = format!(" (named by load balancer {})", load_balancer.ip());
            self.refused(&client.to_canonical().to_string(), &by);
        }
        ok
    }

    fn refused(&self, source: &str, by: &str) {
        self.metrics.connection_refused(&self.listener, "source_ip");
        let (log, suppressed) = self.log_limit.admit(std::time::Instant::now());
        if suppressed > 0 {
            tracing::warn!(listener = %self.listener, suppressed, "{suppressed} more connections were refused by the source check in the last window and not logged (obmguard_connections_refused_total counts them all)");
        }
        if log {
            tracing::warn!(listener = %self.listener, peer = %source, "connection refused: source address {source}{by} is in no route's ranges; if it is Salesforce (an org moved to Hyperforce), refresh @salesforce with `obmguard import-ranges --fetch`");
        } else {
            tracing::debug!(listener = %self.listener, peer = %source, "connection refused: source address not admitted");
        }
    }
}

#[async_trait]
impl ConnectionFilter for SourceFilter {
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        let ok = addr.is_some_and(|a| {
            let admitted = self.admitted.load();
            admitted.clients.contains(a.ip()) || admitted.load_balancers.contains(a.ip())
        });
        if !ok {
            let peer = addr
                .map(|a| a.ip().to_canonical().to_string())
                .unwrap_or_else(|| "unknown".into());
            self.refused(&peer, "");
        }
        ok
    }
}

/// Caps open connections per listener and per source address.
pub struct ConnectionCaps {
    open: AtomicUsize,
    per_source: Mutex<HashMap<IpAddr, usize>>,
}

/// Held for the life of a connection; releases its slots when dropped.
pub struct ConnectionSlot {
    caps: Arc<ConnectionCaps>,
    ip: IpAddr,
}

/// Why a connection was refused before TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapExceeded {
    Listener,
    Source,
}

impl CapExceeded {
    pub fn reason(self) -> &'static str {
        match self {
            CapExceeded::Listener => "listener_limit",
            CapExceeded::Source => "per_source_limit",
        }
    }
}

impl ConnectionCaps {
    pub fn new() -> Arc<Self> {
        Arc::new(ConnectionCaps {
            open: AtomicUsize::new(0),
            per_source: Mutex::new(HashMap::new()),
        })
    }

    /// Take a slot for `ip`, or say which cap is full.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_source: usize,
    ) -> Result<ConnectionSlot, CapExceeded> {
        let ip = ip.to_canonical();
        if self.open.fetch_add(1, Ordering::AcqRel) >= max_total {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(CapExceeded::Listener);
        }
        let mut map = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max_per_source {
            drop(map);
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(CapExceeded::Source);
        }
        *n += 1;
        Ok(ConnectionSlot {
            caps: self.clone(),
            ip,
        })
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut map = self
            .caps
            .per_source
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
        drop(map);
        self.caps.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The address a request comes from: the connection's client (the TCP peer, or the client a
/// load balancer's PROXY header named: [`Origin::client`]), unless that is a trusted proxy, in
/// which case the right-most address in `X-Forwarded-For` that is not itself a trusted proxy.
/// A trusted proxy that sends no usable header leaves it as the client (and the route's own
/// ranges then decide).
pub fn client_ip<'a>(peer: IpAddr, xff: impl Iterator<Item = &'a [u8]>, trusted: &IpSet) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in xff {
        let Ok(s) = std::str::from_utf8(value) else {
            return peer;
        };
        for part in s.split(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(ip.to_canonical()),
                Err(_) => return peer,
            }
        }
    }
    hops.iter()
        .rev()
        .find(|ip| !trusted.contains(**ip))
        .copied()
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ranges::parse_cidr;

    fn set(c: &[&str]) -> IpSet {
        IpSet::new(c.iter().map(|s| parse_cidr(s).unwrap()).collect())
    }

    #[test]
    fn an_origin_writes_its_addresses_as_std_does_with_the_client_canonical() {
        for (peer, client) in [
            ("203.0.113.7:51234", "203.0.113.7"),
            ("[::ffff:203.0.113.7]:443", "203.0.113.7"),
            ("[2001:db8::1]:443", "2001:db8::1"),
        ] {
            let addr: SocketAddr = peer.parse().unwrap();
            let o = Origin::direct(addr);
            assert_eq!(o.peer.text(), addr.to_string());
            assert_eq!(o.client.text(), client);
            assert_eq!(o.client.get(), client.parse::<IpAddr>().unwrap());
            // Display keeps std's width and alignment; Debug is the address's own.
            assert_eq!(
                format!("{:>20}|{}", o.client, o.peer),
                format!("{:>20}|{addr}", client)
            );
            assert_eq!(format!("{:?}", o.client), format!("{:?}", o.client.get()));
        }
    }

    #[test]
    fn ignores_forwarded_for_from_untrusted_peer() {
        let ip = client_ip(
            "198.51.100.7".parse().unwrap(),
            [&b"13.108.0.1"[..]].into_iter(),
            &set(&["10.0.0.0/8"]),
        );
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn believes_rightmost_untrusted_hop_from_trusted_proxy() {
        let xff = [&b"1.2.3.4, 13.108.0.1"[..], &b"10.0.0.9"[..]];
        let ip = client_ip(
            "10.0.0.2".parse().unwrap(),
            xff.into_iter(),
            &set(&["10.0.0.0/8"]),
        );
        assert_eq!(ip, "13.108.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn garbage_forwarded_for_leaves_the_peer() {
        let ip = client_ip(
            "10.0.0.2".parse().unwrap(),
            [&b"13.108.0.1, banana"[..]].into_iter(),
            &set(&["10.0.0.0/8"]),
        );
        assert_eq!(ip, "10.0.0.2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn caps_per_source_and_total_and_releases_on_drop() {
        let caps = ConnectionCaps::new();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let s1 = caps.admit(a, 3, 1).unwrap();
        assert_eq!(caps.admit(a, 3, 1).err(), Some(CapExceeded::Source));
        let s2 = caps.admit(b, 2, 1).unwrap();
        assert_eq!(
            caps.admit("127.0.0.3".parse().unwrap(), 2, 1).err(),
            Some(CapExceeded::Listener)
        );
        drop(s1);
        assert!(caps.admit(a, 3, 1).is_ok());
        drop(s2);
        assert_eq!(caps.open(), 0);
    }

    #[test]
    fn refusal_log_is_limited_per_window_and_reports_what_it_dropped() {
        let t0 = std::time::Instant::now();
        let rl = RateLimit::new(3, std::time::Duration::from_secs(60));
        let logged: Vec<bool> = (0..5).map(|_| rl.admit(t0).0).collect();
        assert_eq!(logged, [true, true, true, false, false]);
        let later = t0 + std::time::Duration::from_secs(61);
        assert_eq!(rl.admit(later), (true, 2));
        assert_eq!(rl.admit(later), (true, 0));
    }
}
