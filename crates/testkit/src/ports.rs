//! Loopback ports for servers a test starts later, or for an address where nothing listens.
//!
//! A port found by binding port 0 and letting go of it is not reserved: until the test binds
//! it again, the kernel may hand it to any other socket of the many tests running at once (a
//! receiver, a token endpoint, an outgoing connection). A test that wants "nothing listens
//! here" then finds another test's server there, and a server started on it fails to bind.
//!
//! [`free_port`] therefore hands out ports the kernel never chooses by itself: below the
//! ephemeral range of `/proc/sys/net/ipv4/ip_local_port_range` (above it, when the range
//! starts too low). Each port is handed out once per process, and only after a bind shows that
//! no other process holds it.

use std::sync::atomic::{AtomicU32, Ordering};

/// How many ports the pool spans.
const POOL: u32 = 12_000;
/// The lowest port the pool may use.
const LOWEST: u32 = 1_024;

/// A loopback port that no socket holds now and that the kernel will not give to a socket
/// asking for any port: free until a test binds it, as long as the tests of this process
/// take their fixed ports from here.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (first, len) = pool();
    // Another process running tests at the same time starts elsewhere in the pool.
    let offset = std::process::id() % len;
    for _ in 0..len {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (first + (offset + n) % len) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {first}..{}", first + len)
}

/// The pool: `(first port, length)`, outside the kernel's ephemeral range.
fn pool() -> (u32, u32) {
    let (lo, hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999));
    if lo >= LOWEST + POOL {
        (lo - POOL, POOL)
    } else if hi + POOL < 65_536 {
        (hi + 1, POOL)
    } else {
        // No room outside the range: ports handed out once per process, as before.
        (LOWEST.max(lo), POOL.min(65_536 - LOWEST.max(lo)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_outside_the_ephemeral_range_and_never_handed_out_twice() {
        let ephemeral = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (first, len) = pool();
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len());
        for p in ports {
            assert!((first..first + len).contains(&u32::from(p)), "{p}");
            assert!(!(first..first + len).contains(&u32::from(ephemeral)));
            std::net::TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }
}
