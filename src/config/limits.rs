//! `[limits]`: connection counts, header bounds and the receiver connection pool. (A route's
//! default in-flight limit, `max_inflight_per_route`, is read by the route builder.)

use super::build::{count, millis};
use super::defaults as k;
use super::diag::FileDiag;
use super::file;
use super::Limits;

pub(super) fn build(d: &mut FileDiag, l: &file::LimitsSection) -> Limits {
    Limits {
        max_connections: count(d, &k::MAX_CONNECTIONS, &l.max_connections),
        max_connections_per_source: count(
            d,
            &k::MAX_CONNECTIONS_PER_SOURCE,
            &l.max_connections_per_source,
        ),
        max_header_count: count(d, &k::MAX_HEADER_COUNT, &l.max_header_count),
        max_header_bytes: count(d, &k::MAX_HEADER_BYTES, &l.max_header_bytes),
        upstream_pool_size: count(d, &k::UPSTREAM_POOL_SIZE, &l.upstream_pool_size),
        upstream_idle: millis(d, &k::UPSTREAM_IDLE_MS, &l.upstream_idle_ms),
        max_response_bytes: count(d, &k::MAX_RESPONSE_BYTES, &l.max_response_bytes),
    }
}
