//! `[timeouts]`: every deadline of a connection and a message, in milliseconds.

use super::build::millis;
use super::defaults as k;
use super::diag::FileDiag;
use super::file;
use super::Timeouts;

pub(super) fn build(d: &mut FileDiag, t: &file::TimeoutsSection) -> Timeouts {
    Timeouts {
        tls_handshake: millis(d, &k::TLS_HANDSHAKE_MS, &t.tls_handshake_ms),
        request_head: millis(d, &k::REQUEST_HEAD_MS, &t.request_head_ms),
        request_body: millis(d, &k::REQUEST_BODY_MS, &t.request_body_ms),
        idle_keepalive: millis(d, &k::IDLE_KEEPALIVE_MS, &t.idle_keepalive_ms),
        response_write: millis(d, &k::RESPONSE_WRITE_MS, &t.response_write_ms),
        upstream_connect: millis(d, &k::UPSTREAM_CONNECT_MS, &t.upstream_connect_ms),
        drain: millis(d, &k::DRAIN_MS, &t.drain_ms),
        max_connection_age: millis(d, &k::MAX_CONNECTION_AGE_MS, &t.max_connection_age_ms),
        tls_ticket_lifetime: millis(d, &k::TLS_TICKET_LIFETIME_MS, &t.tls_ticket_lifetime_ms),
        proxy_header: millis(d, &k::PROXY_HEADER_MS, &t.proxy_header_ms),
    }
}
