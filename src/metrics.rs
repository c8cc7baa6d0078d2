//! Every metric obmguard exports: names, label sets, registration and the text exposition.
//!
//! All names are the `pub const`s below, grouped by family, so a dashboard or alert author
//! reads one file. [`Metrics`] owns its own [`prometheus::Registry`] (never the process-global
//! default one) and typed handles; stage code calls one method per event.
//!
//! Label values must be bounded: callers pass route names from the validated config, listener
//! names from the config, and the fixed labels in [`outcome`], [`session_action`], [`stage`],
//! [`cert_kind`] and `reject.rs`. Never pass anything taken from the network (an org id, a
//! path, a certificate subject that is not in the config): each distinct value is a new time
//! series held in memory forever.
//!
//! Certificate expiry is exported as seconds *remaining*, recomputed on every [`Metrics::render`]
//! from the stored `notAfter`, so an alert is simply
//! `obmguard_certificate_expiry_seconds < 14 * 86400` and never goes stale between reloads.
//!
//! This module does not serve HTTP: the caller exposes [`Metrics::render`] on its admin
//! listener with content type [`prometheus::TEXT_FORMAT`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

// --- requests and their fate ---
/// Counter `{route,outcome}`: every message that reached a route, by final outcome.
pub const REQUESTS_TOTAL: &str = "obmguard_requests_total";
/// Counter `{route,reason}`: denials; route is `-` before routing (e.g. at connection time).
pub const REJECTIONS_TOTAL: &str = "obmguard_rejections_total";
/// Gauge `{route}`: messages currently being handled.
pub const INFLIGHT_REQUESTS: &str = "obmguard_inflight_requests";
/// Counter `{route,action}`: what the SessionId policy did (see [`session_action`]).
pub const SESSION_IDS_TOTAL: &str = "obmguard_session_ids_total";
/// Counter `{stage}`: timeouts, by stage (see [`stage`]).
pub const TIMEOUTS_TOTAL: &str = "obmguard_timeouts_total";

// --- connections and TLS ---
/// Counter `{listener,kind}`: TLS handshakes that failed.
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "obmguard_tls_handshake_failures_total";
/// Counter `{kind}`: client certificates refused (unknown_issuer, expired, not_pinned, ...).
pub const CLIENT_CERT_REJECTIONS_TOTAL: &str = "obmguard_client_cert_rejections_total";
/// Counter `{listener,reason}`: TCP connections closed before TLS (source_ip, limits).
pub const CONNECTIONS_REFUSED_TOTAL: &str = "obmguard_connections_refused_total";
/// Gauge `{listener}`: connections currently open.
pub const CONNECTIONS_OPEN: &str = "obmguard_connections_open";
/// Counter `{listener,kind}`: connections closed for their PROXY protocol header: `untrusted`
/// (from a peer outside `proxy_protocol_from`), `repeated`, `missing`, `malformed`,
/// `truncated`, `timeout` or `unsupported` (see [`crate::proxy_protocol::HeaderError`]).
pub const PROXY_PROTOCOL_ERRORS_TOTAL: &str = "obmguard_proxy_protocol_errors_total";

/// Counter `{route}`: pooled receiver connections found holding bytes nobody asked for (an
/// unsolicited answer); the connection is dropped and the route stops reusing connections.
pub const UPSTREAM_UNSOLICITED_TOTAL: &str = "obmguard_upstream_unsolicited_total";
/// Counter `{route}`: requests whose handling panicked (answered 500, audited).
pub const PANICS_TOTAL: &str = "obmguard_panics_total";

// --- latency ---
/// Histogram `{route}`: time the receiver took, seconds.
pub const UPSTREAM_DURATION_SECONDS: &str = "obmguard_upstream_duration_seconds";
/// Histogram `{outcome}`: time to obtain an OAuth token from the authorization server, seconds.
pub const TOKEN_FETCH_DURATION_SECONDS: &str = "obmguard_token_fetch_duration_seconds";
/// Histogram `{route}`: time spent in obmguard itself (total minus upstream), seconds.
pub const OVERHEAD_DURATION_SECONDS: &str = "obmguard_overhead_duration_seconds";

// --- certificates ---
/// Gauge `{kind,name}`: seconds until the certificate's notAfter (negative once expired).
pub const CERTIFICATE_EXPIRY_SECONDS: &str = "obmguard_certificate_expiry_seconds";

// --- policy and process ---
/// Counter `{outcome}`: policy reloads, `ok` or `error` (the last good policy stays on error).
pub const POLICY_RELOADS_TOTAL: &str = "obmguard_policy_reloads_total";
/// Gauge: generation number of the policy in force.
pub const POLICY_GENERATION: &str = "obmguard_policy_generation";
/// Gauge: routes in the policy in force.
pub const ROUTES_LOADED: &str = "obmguard_routes_loaded";
/// Counter: audit records lost: dropped because the writer did not keep up, or carried by a
/// write that failed.
pub const AUDIT_WRITE_FAILURES_TOTAL: &str = "obmguard_audit_write_failures_total";
/// Counter: log lines dropped because the writer did not keep up (stderr stalled).
pub const LOG_LINES_DROPPED_TOTAL: &str = "obmguard_log_lines_dropped_total";
/// Gauge: idle receiver connections kept for reuse (routes with `upstream_keepalive`).
pub const UPSTREAM_IDLE_CONNECTIONS: &str = "obmguard_upstream_idle_connections";
// --- Salesforce's ranges (@salesforce) ---
/// Gauge `{source}`: Unix time of the date the `@salesforce` ranges in force are current as
/// of (oldest `source_date`, else `createDate`); `source` is `builtin`, `file` or `refreshed`.
/// No series when no list uses `@salesforce`.
pub const SALESFORCE_RANGES_DATE_SECONDS: &str = "obmguard_salesforce_ranges_date_seconds";
/// Counter `{outcome}`: periodic refreshes of Salesforce's ranges, `ok`, `unchanged` or
/// `error` (the last good set stays in force on error).
pub const SALESFORCE_RANGES_REFRESHES_TOTAL: &str = "obmguard_salesforce_ranges_refreshes_total";

// --- queued delivery and the store ---
/// Gauge `{route,state}`: messages in the store by state (queued, delivering, delivered,
/// dead), refreshed every few seconds.
pub const QUEUE_MESSAGES: &str = "obmguard_queue_messages";
/// Gauge `{route}`: age of the oldest message waiting (queued or delivering), seconds; 0
/// when none waits.
pub const QUEUE_OLDEST_AGE_SECONDS: &str = "obmguard_queue_oldest_age_seconds";
/// Counter `{route,outcome}`: delivery attempts of queued messages, by outcome (see
/// [`delivery_outcome`]).
pub const DELIVERIES_TOTAL: &str = "obmguard_deliveries_total";
/// Counter `{route}`: messages that became dead letters.
pub const DEAD_LETTERS_TOTAL: &str = "obmguard_dead_letters_total";
/// Counter `{route}`: messages acked without delivery because every notification in them was
/// accepted (queued) or acked (direct with dedupe) before.
pub const DUPLICATES_TOTAL: &str = "obmguard_duplicates_total";
/// Histogram: time to commit a message durably (the fsync included), seconds.
pub const STORE_COMMIT_SECONDS: &str = "obmguard_store_commit_seconds";
/// Counter `{op}`: store operations that failed (admit, seen, record, claim, finish, depth,
/// prune).
pub const STORE_ERRORS_TOTAL: &str = "obmguard_store_errors_total";

/// Values of the `outcome` label of [`DELIVERIES_TOTAL`].
pub mod delivery_outcome {
    /// The receiver's verified Ack.
    pub const DELIVERED: &str = "delivered";
    /// The receiver answered without an Ack (Ack false, a fault, another status).
    pub const NACKED: &str = "nacked";
    /// Unreachable, timed out, or an answer that is not SOAP.
    pub const UPSTREAM_ERROR: &str = "upstream_error";
    /// No OAuth token for an inject route: not sent.
    pub const TOKEN_UNAVAILABLE: &str = "token_unavailable";
    /// The message cannot be sent as the route stands (a callback URL off the token's
    /// instance): dead-lettered at once.
    pub const REFUSED: &str = "refused";
    pub const ALL: [&str; 5] = [
        DELIVERED,
        NACKED,
        UPSTREAM_ERROR,
        TOKEN_UNAVAILABLE,
        REFUSED,
    ];
}

/// Histogram buckets for store commits, seconds: 50 µs to 10 s.
pub const COMMIT_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// Gauge `{version}`: always 1; carries the build's version.
pub const BUILD_INFO: &str = "obmguard_build_info";

/// Histogram buckets, seconds: 0.5 ms to Salesforce's 60 s delivery timeout.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Values of the `outcome` label of [`REQUESTS_TOTAL`] (also the audit record's `decision`).
pub mod outcome {
    /// The receiver acknowledged; Salesforce got `<Ack>true</Ack>`.
    pub const ACKED: &str = "acked";
    /// The receiver answered but did not acknowledge.
    pub const NACKED: &str = "nacked";
    /// obmguard refused the message (see the `reason` label of rejections).
    pub const REJECTED: &str = "rejected";
    /// The receiver could not be reached, timed out or answered garbage.
    pub const UPSTREAM_ERROR: &str = "upstream_error";
    /// A route in inject mode could not get an OAuth token.
    pub const TOKEN_UNAVAILABLE: &str = "token_unavailable";
    /// Queued mode: committed to the store durably, then acked.
    pub const QUEUED: &str = "queued";
    /// Every notification was accepted (queued) or acked (direct) before: acked, not
    /// delivered again.
    pub const DUPLICATE: &str = "duplicate";
    /// The store could not commit or answer: 503, Salesforce retries.
    pub const STORE_ERROR: &str = "store_error";
    /// Every outcome, to pre-create series at zero.
    pub const ALL: [&str; 8] = [
        ACKED,
        NACKED,
        REJECTED,
        UPSTREAM_ERROR,
        TOKEN_UNAVAILABLE,
        QUEUED,
        DUPLICATE,
        STORE_ERROR,
    ];
}

/// Values of the `op` label of [`STORE_ERRORS_TOTAL`].
pub mod store_op {
    pub const ADMIT: &str = "admit";
    pub const SEEN: &str = "seen";
    pub const RECORD: &str = "record";
    pub const CLAIM: &str = "claim";
    pub const FINISH: &str = "finish";
    pub const DEPTH: &str = "depth";
    pub const PRUNE: &str = "prune";
    pub const ALL: [&str; 7] = [ADMIT, SEEN, RECORD, CLAIM, FINISH, DEPTH, PRUNE];
}

/// Values of the `action` label of [`SESSION_IDS_TOTAL`].
pub mod session_action {
    /// The value was replaced by the nil element.
    pub const STRIPPED: &str = "stripped";
    /// The element was deleted.
    pub const REMOVED: &str = "removed";
    /// The message was refused because it carried a session id.
    pub const REJECTED: &str = "rejected";
    /// The session id was passed through and recorded.
    pub const AUDITED: &str = "audited";
    /// obmguard's OAuth token was put in its place.
    pub const INJECTED: &str = "injected";
    /// Every action.
    pub const ALL: [&str; 5] = [STRIPPED, REMOVED, REJECTED, AUDITED, INJECTED];
}

/// Values of the `stage` label of [`TIMEOUTS_TOTAL`].
pub mod stage {
    /// A load balancer's PROXY protocol header.
    pub const PROXY_HEADER: &str = "proxy_header";
    /// TLS handshake.
    pub const HANDSHAKE: &str = "handshake";
    /// Reading the request line and headers.
    pub const REQUEST_HEAD: &str = "request_head";
    /// Reading the request body.
    pub const REQUEST_BODY: &str = "request_body";
    /// Writing the answer to Salesforce.
    pub const RESPONSE_WRITE: &str = "response_write";
    /// Waiting for the receiver.
    pub const UPSTREAM: &str = "upstream";
    /// Waiting for an OAuth token.
    pub const TOKEN: &str = "token";
}

/// Values of the `kind` label of [`CERTIFICATE_EXPIRY_SECONDS`].
pub mod cert_kind {
    /// A listener's server certificate (name: subject CN or file name).
    pub const SERVER: &str = "server";
    /// A trusted client CA (name: subject CN or file name).
    pub const CA: &str = "ca";
    /// A pinned client certificate (name: subject CN or file name).
    pub const PIN: &str = "pin";
    /// The last client certificate seen on a route (name: the route).
    pub const CLIENT_LAST_SEEN: &str = "client_last_seen";
}

/// Registration failed: a programming error (two metrics with one name), not an operator's.
#[derive(Debug, thiserror::Error)]
#[error("cannot register metric families (a bug in obmguard, please report it): {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// The registry and every metric family. Cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    rejections: IntCounterVec,
    inflight: IntGaugeVec,
    session_ids: IntCounterVec,
    timeouts: IntCounterVec,
    upstream_unsolicited: IntCounterVec,
    panics: IntCounterVec,
    tls_failures: IntCounterVec,
    client_cert_rejections: IntCounterVec,
    connections_refused: IntCounterVec,
    connections_open: IntGaugeVec,
    proxy_protocol_errors: IntCounterVec,
    upstream_duration: HistogramVec,
    token_fetch_duration: HistogramVec,
    overhead_duration: HistogramVec,
    cert_expiry: IntGaugeVec,
    // (kind, name) -> notAfter as a Unix time; turned into seconds-remaining at render time.
    cert_not_after: Mutex<BTreeMap<(String, String), i64>>,
    client_last_seen: arc_swap::ArcSwap<Vec<(String, Arc<AtomicI64>)>>,
    policy_reloads: IntCounterVec,
    ranges_date: IntGaugeVec,
    ranges_refreshes: IntCounterVec,
    policy_generation: IntGauge,
    routes_loaded: IntGauge,
    audit_write_failures: IntCounter,
    log_lines_dropped: IntCounter,
    upstream_idle: IntGauge,
    queue_messages: IntGaugeVec,
    queue_oldest: IntGaugeVec,
    deliveries: IntCounterVec,
    dead_letters: IntCounterVec,
    duplicates: IntCounterVec,
    store_commit: prometheus::Histogram,
    store_errors: IntCounterVec,
}

/// Decrements its gauge when dropped, so an early return or a panic cannot leak a count.
#[must_use = "the gauge goes back down when this guard is dropped"]
pub struct GaugeGuard(IntGauge);

/// One route's series, resolved when its policy generation is built: see [`Metrics::route`].
#[derive(Clone)]
pub struct RouteMetrics {
    requests: [IntCounter; outcome::ALL.len()],
    rejections: crate::FastMap<&'static str, IntCounter>,
    session_ids: crate::FastMap<&'static str, IntCounter>,
    inflight: IntGauge,
    upstream: prometheus::Histogram,
    overhead: prometheus::Histogram,
    unsolicited: IntCounter,
    panics: IntCounter,
    deliveries: [IntCounter; delivery_outcome::ALL.len()],
    dead_letters: IntCounter,
    duplicates: IntCounter,
    commit: prometheus::Histogram,
    store_errors: IntCounterVec,
}

impl RouteMetrics {
    /// A store commit took `took`.
    pub fn observe_commit(&self, took: Duration) {
        self.commit.observe(took.as_secs_f64());
    }

    /// A store operation (one of [`store_op::ALL`]) failed.
    pub fn store_error(&self, op: &str) {
        self.store_errors.with_label_values(&[op]).inc();
    }

    /// A delivery attempt of a queued message ended with `outcome` (one of
    /// [`delivery_outcome::ALL`]).
    pub fn delivery(&self, outcome: &str) {
        if let Some(i) = delivery_outcome::ALL.iter().position(|o| *o == outcome) {
            self.deliveries[i].inc();
        }
    }

    /// A message became a dead letter.
    pub fn dead_letter(&self) {
        self.dead_letters.inc();
    }

    /// A message was acked without delivery: a duplicate.
    pub fn duplicate(&self) {
        self.duplicates.inc();
    }

    /// A message ended with `outcome` (one of [`outcome::ALL`]).
    pub fn request(&self, outcome: &str) {
        if let Some(i) = outcome::ALL.iter().position(|o| *o == outcome) {
            self.requests[i].inc();
        }
    }

    /// A message was refused or failed for `reason` (one of [`crate::reject::REASONS`]).
    pub fn rejection(&self, reason: &str) {
        if let Some(c) = self.rejections.get(reason) {
            c.inc();
        }
    }

    /// The SessionId policy took `action` (one of [`session_action::ALL`]).
    pub fn session_id(&self, action: &str) {
        if let Some(c) = self.session_ids.get(action) {
            c.inc();
        }
    }

    /// Count a message as in flight until the guard is dropped.
    pub fn inflight(&self) -> GaugeGuard {
        self.inflight.inc();
        GaugeGuard(self.inflight.clone())
    }

    pub fn observe_upstream(&self, took: Duration) {
        self.upstream.observe(took.as_secs_f64());
    }

    pub fn observe_overhead(&self, took: Duration) {
        self.overhead.observe(took.as_secs_f64());
    }

    /// A pooled receiver connection held bytes nobody asked for.
    pub fn unsolicited(&self) {
        self.unsolicited.inc();
    }

    /// The handling of a message panicked.
    pub fn panic(&self) {
        self.panics.inc();
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Figures counted outside the registry (by the line sinks and the receiver pool).
#[derive(Debug, Default, Clone, Copy)]
pub struct Outside {
    /// Audit records lost so far ([`crate::audit::AuditLog::lost`]).
    pub audit_lost: u64,
    /// Log lines dropped so far ([`crate::sink::Sink::dropped`]).
    pub log_dropped: u64,
    /// Idle receiver connections now.
    pub upstream_idle: usize,
}

/// Raise `c` to `total` (a counter kept elsewhere; it only grows).
fn catch_up(c: &IntCounter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

/// `c`, registered in `registry`.
fn register<C>(registry: &Registry, c: C) -> Result<C, MetricsError>
where
    C: prometheus::core::Collector + Clone + 'static,
{
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    /// Create and register every family in a fresh registry.
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels)?,
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            register(&registry, IntGaugeVec::new(Opts::new(name, help), labels)?)
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
            register(&registry, HistogramVec::new(opts, labels)?)
        };
        // Families without labels.
        let int_gauge = |name: &str, help: &str| register(&registry, IntGauge::new(name, help)?);
        let int_counter =
            |name: &str, help: &str| register(&registry, IntCounter::new(name, help)?);
        let policy_generation = int_gauge(POLICY_GENERATION, "Generation of the policy in force.")?;
        let routes_loaded = int_gauge(ROUTES_LOADED, "Routes in the policy in force.")?;
        let audit_write_failures = int_counter(
            AUDIT_WRITE_FAILURES_TOTAL,
            "Audit records lost: dropped because the writer did not keep up, or in a failed write.",
        )?;
        let log_lines_dropped = int_counter(
            LOG_LINES_DROPPED_TOTAL,
            "Log lines dropped because the writer did not keep up.",
        )?;
        let upstream_idle = int_gauge(
            UPSTREAM_IDLE_CONNECTIONS,
            "Idle receiver connections kept for reuse.",
        )?;
        gauge(BUILD_INFO, "Build information; always 1.", &["version"])?
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        let policy_reloads = counter(
            POLICY_RELOADS_TOTAL,
            "Policy reloads, by outcome.",
            &["outcome"],
        )?;
        // At zero from the start, so an alert on increase() sees the first refused reload.
        for o in ["ok", "error"] {
            policy_reloads.with_label_values(&[o]);
        }

        let store_commit = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                STORE_COMMIT_SECONDS,
                "Time to commit a message durably, seconds.",
            )
            .buckets(COMMIT_BUCKETS.to_vec()),
        )?;
        let store_commit = register(&registry, store_commit)?;
        let store_errors = counter(
            STORE_ERRORS_TOTAL,
            "Store operations that failed, by operation.",
            &["op"],
        )?;
        for op in store_op::ALL {
            store_errors.with_label_values(&[op]);
        }

        Ok(Metrics {
            queue_messages: gauge(
                QUEUE_MESSAGES,
                "Messages in the store, by route and state.",
                &["route", "state"],
            )?,
            queue_oldest: gauge(
                QUEUE_OLDEST_AGE_SECONDS,
                "Age of the oldest message waiting for delivery, seconds.",
                &["route"],
            )?,
            deliveries: counter(
                DELIVERIES_TOTAL,
                "Delivery attempts of queued messages, by outcome.",
                &["route", "outcome"],
            )?,
            dead_letters: counter(
                DEAD_LETTERS_TOTAL,
                "Messages that became dead letters.",
                &["route"],
            )?,
            duplicates: counter(
                DUPLICATES_TOTAL,
                "Messages acked without delivery because they were duplicates.",
                &["route"],
            )?,
            store_commit,
            store_errors,
            requests: counter(
                REQUESTS_TOTAL,
                "Messages that reached a route, by outcome.",
                &["route", "outcome"],
            )?,
            rejections: counter(
                REJECTIONS_TOTAL,
                "Requests and connections refused, by reason.",
                &["route", "reason"],
            )?,
            inflight: gauge(INFLIGHT_REQUESTS, "Messages being handled now.", &["route"])?,
            session_ids: counter(
                SESSION_IDS_TOTAL,
                "What the SessionId policy did.",
                &["route", "action"],
            )?,
            timeouts: counter(TIMEOUTS_TOTAL, "Timeouts, by stage.", &["stage"])?,
            upstream_unsolicited: counter(
                UPSTREAM_UNSOLICITED_TOTAL,
                "Pooled receiver connections that held an unsolicited answer.",
                &["route"],
            )?,
            panics: counter(
                PANICS_TOTAL,
                "Requests whose handling panicked.",
                &["route"],
            )?,
            tls_failures: counter(
                TLS_HANDSHAKE_FAILURES_TOTAL,
                "TLS handshakes that failed.",
                &["listener", "kind"],
            )?,
            client_cert_rejections: counter(
                CLIENT_CERT_REJECTIONS_TOTAL,
                "Client certificates refused, by kind.",
                &["kind"],
            )?,
            connections_refused: counter(
                CONNECTIONS_REFUSED_TOTAL,
                "TCP connections refused before TLS.",
                &["listener", "reason"],
            )?,
            connections_open: gauge(CONNECTIONS_OPEN, "Connections open now.", &["listener"])?,
            proxy_protocol_errors: counter(
                PROXY_PROTOCOL_ERRORS_TOTAL,
                "Connections closed for their PROXY protocol header, by kind.",
                &["listener", "kind"],
            )?,
            upstream_duration: histogram(
                UPSTREAM_DURATION_SECONDS,
                "Time the receiver took to answer, seconds.",
                &["route"],
            )?,
            token_fetch_duration: histogram(
                TOKEN_FETCH_DURATION_SECONDS,
                "Time to fetch an OAuth token, seconds.",
                &["outcome"],
            )?,
            overhead_duration: histogram(
                OVERHEAD_DURATION_SECONDS,
                "Time spent in obmguard itself (total minus upstream), seconds.",
                &["route"],
            )?,
            cert_expiry: gauge(
                CERTIFICATE_EXPIRY_SECONDS,
                "Seconds until the certificate expires (negative once expired).",
                &["kind", "name"],
            )?,
            cert_not_after: Mutex::new(BTreeMap::new()),
            client_last_seen: arc_swap::ArcSwap::from_pointee(Vec::new()),
            policy_reloads,
            ranges_date: gauge(
                SALESFORCE_RANGES_DATE_SECONDS,
                "Date (Unix time) the @salesforce ranges in force are current as of.",
                &["source"],
            )?,
            ranges_refreshes: counter(
                SALESFORCE_RANGES_REFRESHES_TOTAL,
                "Periodic refreshes of Salesforce's ranges, by outcome.",
                &["outcome"],
            )?,
            policy_generation,
            routes_loaded,
            audit_write_failures,
            log_lines_dropped,
            upstream_idle,
            registry,
        })
    }

    /// A message on `route` ended with `outcome` (one of [`outcome`]).
    pub fn request(&self, route: &str, outcome: &str) {
        self.requests.with_label_values(&[route, outcome]).inc();
    }

    /// The handling of a request on `route` (`-` before routing) panicked.
    pub fn panic(&self, route: &str) {
        self.panics.with_label_values(&[route]).inc();
    }

    /// A request or connection was refused; `route` is `-` when no route was chosen yet.
    pub fn rejection(&self, route: &str, reason: &str) {
        self.rejections.with_label_values(&[route, reason]).inc();
    }

    /// A timeout fired at `stage` (one of [`stage`]).
    pub fn timeout(&self, stage: &str) {
        self.timeouts.with_label_values(&[stage]).inc();
    }

    /// A TLS handshake on `listener` failed for `kind`.
    pub fn tls_failure(&self, listener: &str, kind: &str) {
        self.tls_failures.with_label_values(&[listener, kind]).inc();
    }

    /// A client certificate was refused for `kind` (unknown_issuer, expired, not_pinned, ...).
    pub fn client_cert_rejection(&self, kind: &str) {
        self.client_cert_rejections.with_label_values(&[kind]).inc();
    }

    /// A TCP connection on `listener` was refused before TLS for `reason`.
    pub fn connection_refused(&self, listener: &str, reason: &str) {
        self.connections_refused
            .with_label_values(&[listener, reason])
            .inc();
    }

    /// A connection on `listener` was closed for its PROXY header, of `kind`.
    pub fn proxy_protocol_error(&self, listener: &str, kind: &str) {
        self.proxy_protocol_errors
            .with_label_values(&[listener, kind])
            .inc();
    }

    /// Count a connection as open on `listener` until the guard is dropped.
    pub fn connection_open(&self, listener: &str) -> GaugeGuard {
        let g = self.connections_open.with_label_values(&[listener]);
        g.inc();
        GaugeGuard(g)
    }

    /// Record how long a token fetch took and how it ended (`ok`, `error`, ...).
    pub fn observe_token_fetch(&self, outcome: &str, took: Duration) {
        self.token_fetch_duration
            .with_label_values(&[outcome])
            .observe(took.as_secs_f64());
    }

    /// Remember a certificate's notAfter (Unix seconds); exported as seconds remaining,
    /// recomputed at each [`Metrics::render`]. `kind` is one of [`cert_kind`].
    pub fn cert_expiry(&self, kind: &str, name: &str, not_after_unix: i64) {
        self.not_after()
            .insert((kind.to_owned(), name.to_owned()), not_after_unix);
    }

    /// Forget every certificate of `kind`: call before re-declaring them after a reload, so a
    /// certificate removed from the config stops being reported.
    pub fn forget_cert_expiry(&self, kind: &str) {
        let mut map = self.not_after();
        map.retain(|(k, name), _| {
            if k == kind {
                let _ = self.cert_expiry.remove_label_values(&[k, name]);
                false
            } else {
                true
            }
        });
    }

    /// The routes in force and where each keeps the notAfter of the last client certificate
    /// it saw (0: none yet), read at every scrape. Routes no longer listed lose their series.
    pub fn set_client_last_seen(&self, routes: Vec<(String, Arc<AtomicI64>)>) {
        let old = self.client_last_seen.swap(Arc::new(routes));
        let now = self.client_last_seen.load();
        for (route, _) in old.iter() {
            if !now.iter().any(|(r, _)| r == route) {
                let _ = self
                    .cert_expiry
                    .remove_label_values(&[cert_kind::CLIENT_LAST_SEEN, route]);
            }
        }
    }

    /// Handles for one route's series, resolved once (a request then takes no lock and builds
    /// no label strings). Creates the request series at zero, so `rate()` and `increase()`
    /// work from the route's first message.
    pub fn route(&self, route: &str) -> RouteMetrics {
        let requests = outcome::ALL.map(|o| self.requests.with_label_values(&[route, o]));
        let rejections = crate::reject::REASONS
            .iter()
            .map(|r| (*r, self.rejections.with_label_values(&[route, r])))
            .collect();
        let session_ids = session_action::ALL
            .iter()
            .map(|a| (*a, self.session_ids.with_label_values(&[route, a])))
            .collect();
        RouteMetrics {
            requests,
            rejections,
            session_ids,
            inflight: self.inflight.with_label_values(&[route]),
            upstream: self.upstream_duration.with_label_values(&[route]),
            overhead: self.overhead_duration.with_label_values(&[route]),
            unsolicited: self.upstream_unsolicited.with_label_values(&[route]),
            panics: self.panics.with_label_values(&[route]),
            deliveries: delivery_outcome::ALL
                .map(|o| self.deliveries.with_label_values(&[route, o])),
            dead_letters: self.dead_letters.with_label_values(&[route]),
            duplicates: self.duplicates.with_label_values(&[route]),
            commit: self.store_commit.clone(),
            store_errors: self.store_errors.clone(),
        }
    }

    /// A store commit (admit) took `took`.
    pub fn observe_commit(&self, took: Duration) {
        self.store_commit.observe(took.as_secs_f64());
    }

    /// A store operation (one of [`store_op::ALL`]) failed.
    pub fn store_error(&self, op: &str) {
        self.store_errors.with_label_values(&[op]).inc();
    }

    /// The store's depth and oldest waiting message per route, replacing what was shown.
    /// `routes` are the configured routes (their series exist at zero); rows of other routes
    /// (removed by a reload, messages still held) are shown too.
    pub fn queue_depth(
        &self,
        routes: &[String],
        depth: &[(String, &'static str, u64)],
        oldest: &[(String, Duration)],
    ) {
        self.queue_messages.reset();
        self.queue_oldest.reset();
        for r in routes {
            for st in ["queued", "delivering", "delivered", "dead"] {
                self.queue_messages.with_label_values(&[r, st]).set(0);
            }
            self.queue_oldest.with_label_values(&[r]).set(0);
        }
        for (route, state, n) in depth {
            self.queue_messages
                .with_label_values(&[route.as_str(), *state])
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        for (route, age) in oldest {
            self.queue_oldest
                .with_label_values(&[route])
                .set(i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
        }
    }

    /// Drop every series of a route a reload removed.
    pub fn forget_route(&self, route: &str) {
        for o in outcome::ALL {
            let _ = self.requests.remove_label_values(&[route, o]);
        }
        for r in crate::reject::REASONS {
            let _ = self.rejections.remove_label_values(&[route, r]);
        }
        for a in session_action::ALL {
            let _ = self.session_ids.remove_label_values(&[route, a]);
        }
        let _ = self.inflight.remove_label_values(&[route]);
        let _ = self.upstream_duration.remove_label_values(&[route]);
        let _ = self.overhead_duration.remove_label_values(&[route]);
        let _ = self.upstream_unsolicited.remove_label_values(&[route]);
        let _ = self.panics.remove_label_values(&[route]);
        for o in delivery_outcome::ALL {
            let _ = self.deliveries.remove_label_values(&[route, o]);
        }
        let _ = self.dead_letters.remove_label_values(&[route]);
        let _ = self.duplicates.remove_label_values(&[route]);
    }

    /// A policy reload finished with `outcome` (`ok` or `error`).
    pub fn policy_reload(&self, outcome: &str) {
        self.policy_reloads.with_label_values(&[outcome]).inc();
    }

    /// A policy is now in force.
    pub fn policy_loaded(&self, generation: u64, routes: usize) {
        self.policy_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.routes_loaded
            .set(i64::try_from(routes).unwrap_or(i64::MAX));
    }

    /// The `@salesforce` ranges in force came from `source` and date from `date_unix`; `None`
    /// when no list uses them (the series disappears).
    pub fn salesforce_ranges(&self, in_force: Option<(&str, i64)>) {
        self.ranges_date.reset();
        if let Some((source, date)) = in_force {
            self.ranges_date.with_label_values(&[source]).set(date);
        }
    }

    /// Create the refresh counter's series at zero (when the refresh is on).
    pub fn init_ranges_refresh(&self) {
        for o in ["ok", "unchanged", "error"] {
            self.ranges_refreshes.with_label_values(&[o]);
        }
    }

    /// A periodic refresh of the ranges ended with `outcome` (`ok`, `unchanged` or `error`).
    pub fn ranges_refresh(&self, outcome: &str) {
        self.ranges_refreshes.with_label_values(&[outcome]).inc();
    }

    /// Figures kept by other parts of the process, copied in before a scrape.
    pub fn outside(&self, f: Outside) {
        catch_up(&self.audit_write_failures, f.audit_lost);
        catch_up(&self.log_lines_dropped, f.log_dropped);
        self.upstream_idle
            .set(i64::try_from(f.upstream_idle).unwrap_or(i64::MAX));
    }

    /// Every metric in the Prometheus text exposition format ([`prometheus::TEXT_FORMAT`]).
    pub fn render(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        self.render_at(now)
    }

    fn render_at(&self, now_unix: i64) -> String {
        // A copy, so the lock is not held through gather (a request never takes it: the
        // client certificates are atomics read here).
        let not_after: Vec<((String, String), i64)> = self
            .not_after()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for ((kind, name), at) in &not_after {
            self.cert_expiry
                .with_label_values(&[kind.as_str(), name.as_str()])
                .set(at.saturating_sub(now_unix));
        }
        for (route, at) in self.client_last_seen.load().iter() {
            let at = at.load(Ordering::Relaxed);
            if at != 0 {
                self.cert_expiry
                    .with_label_values(&[cert_kind::CLIENT_LAST_SEEN, route])
                    .set(at.saturating_sub(now_unix));
            }
        }
        let families = self.registry.gather();
        let mut out = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&families, &mut out) {
            tracing::error!(error = %e, "cannot encode metrics; the scrape will be incomplete");
            out.push_str("# obmguard: metrics encoding failed, see the log\n");
        }
        out
    }

    fn not_after(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), i64>> {
        // A panic while holding this lock leaves a consistent map: keep serving it.
        self.cert_not_after
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_value(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn counters_increase_and_render_by_name() {
        let m = Metrics::new().unwrap();
        m.request("orders", outcome::ACKED);
        m.request("orders", outcome::ACKED);
        m.rejection("-", "source_ip");
        m.tls_failure("public", "no_client_cert");
        m.client_cert_rejection("unknown_issuer");
        m.connection_refused("public", "per_source_limit");
        m.proxy_protocol_error("public", "untrusted");
        m.timeout(stage::UPSTREAM);
        m.route("orders").session_id(session_action::STRIPPED);
        m.policy_reload("ok");
        m.outside(Outside {
            audit_lost: 3,
            log_dropped: 2,
            upstream_idle: 4,
        });
        m.outside(Outside {
            audit_lost: 1,
            ..Outside::default()
        });
        let text = m.render();
        assert_eq!(
            line_value(&text, "obmguard_audit_write_failures_total"),
            Some(3.0),
            "never backwards"
        );
        assert_eq!(
            line_value(&text, "obmguard_log_lines_dropped_total"),
            Some(2.0)
        );
        assert_eq!(
            line_value(&text, "obmguard_upstream_idle_connections"),
            Some(0.0)
        );
        assert_eq!(
            line_value(
                &text,
                r#"obmguard_requests_total{outcome="acked",route="orders"}"#
            ),
            Some(2.0)
        );
        for name in [
            REJECTIONS_TOTAL,
            TLS_HANDSHAKE_FAILURES_TOTAL,
            CLIENT_CERT_REJECTIONS_TOTAL,
            CONNECTIONS_REFUSED_TOTAL,
            PROXY_PROTOCOL_ERRORS_TOTAL,
            TIMEOUTS_TOTAL,
            SESSION_IDS_TOTAL,
            POLICY_RELOADS_TOTAL,
            AUDIT_WRITE_FAILURES_TOTAL,
            POLICY_GENERATION,
            ROUTES_LOADED,
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "missing {name}");
        }
        assert!(text.contains(r#"obmguard_rejections_total{reason="source_ip",route="-"} 1"#));
    }

    #[test]
    fn build_info_is_one_with_version() {
        let text = Metrics::new().unwrap().render();
        let expected = format!(
            "obmguard_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&expected), "{text}");
    }

    #[test]
    fn init_route_creates_zero_series_for_every_outcome() {
        let m = Metrics::new().unwrap();
        let _orders = m.route("orders");
        let text = m.render();
        for o in outcome::ALL {
            let series = format!(r#"obmguard_requests_total{{outcome="{o}",route="orders"}}"#);
            assert_eq!(line_value(&text, &series), Some(0.0), "{series}");
        }
    }

    #[test]
    fn histogram_count_moves() {
        let m = Metrics::new().unwrap();
        let orders = m.route("orders");
        orders.observe_upstream(Duration::from_millis(30));
        orders.observe_upstream(Duration::from_millis(70));
        orders.observe_overhead(Duration::from_micros(300));
        m.observe_token_fetch("ok", Duration::from_millis(200));
        let text = m.render();
        assert_eq!(
            line_value(
                &text,
                r#"obmguard_upstream_duration_seconds_count{route="orders"}"#
            ),
            Some(2.0)
        );
        assert_eq!(
            line_value(
                &text,
                r#"obmguard_upstream_duration_seconds_bucket{route="orders",le="0.05"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            line_value(
                &text,
                r#"obmguard_overhead_duration_seconds_bucket{route="orders",le="0.0005"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            line_value(
                &text,
                r#"obmguard_token_fetch_duration_seconds_count{outcome="ok"}"#
            ),
            Some(1.0)
        );
    }

    #[test]
    fn gauge_guards_go_back_down_when_dropped() {
        let m = Metrics::new().unwrap();
        let orders = m.route("orders");
        let a = orders.inflight();
        let b = orders.inflight();
        let c = m.connection_open("public");
        let text = m.render();
        assert_eq!(
            line_value(&text, r#"obmguard_inflight_requests{route="orders"}"#),
            Some(2.0)
        );
        assert_eq!(
            line_value(&text, r#"obmguard_connections_open{listener="public"}"#),
            Some(1.0)
        );
        drop((a, b, c));
        let text = m.render();
        assert_eq!(
            line_value(&text, r#"obmguard_inflight_requests{route="orders"}"#),
            Some(0.0)
        );
        assert_eq!(
            line_value(&text, r#"obmguard_connections_open{listener="public"}"#),
            Some(0.0)
        );
    }

    #[test]
    fn cert_expiry_is_seconds_remaining_at_each_render() {
        let m = Metrics::new().unwrap();
        m.cert_expiry(cert_kind::SERVER, "proxy.example.com", 1_000_000);
        let series =
            r#"obmguard_certificate_expiry_seconds{kind="server",name="proxy.example.com"}"#;
        assert_eq!(line_value(&m.render_at(999_000), series), Some(1000.0));
        assert_eq!(line_value(&m.render_at(999_900), series), Some(100.0));
        assert_eq!(line_value(&m.render_at(1_000_050), series), Some(-50.0));
    }

    #[test]
    fn forgotten_certificates_disappear_from_the_scrape() {
        let m = Metrics::new().unwrap();
        m.cert_expiry(cert_kind::PIN, "old.pem", 1_000);
        m.cert_expiry(cert_kind::CA, "root.pem", 2_000);
        assert!(m.render_at(0).contains(r#"name="old.pem""#));
        m.forget_cert_expiry(cert_kind::PIN);
        let text = m.render_at(0);
        assert!(!text.contains(r#"name="old.pem""#));
        assert!(text.contains(r#"name="root.pem""#));
    }

    #[test]
    fn policy_gauges_follow_the_policy_in_force() {
        let m = Metrics::new().unwrap();
        m.policy_loaded(3, 7);
        let text = m.render();
        assert_eq!(line_value(&text, "obmguard_policy_generation "), Some(3.0));
        assert_eq!(line_value(&text, "obmguard_routes_loaded "), Some(7.0));
    }

    #[test]
    fn two_instances_do_not_share_series() {
        let a = Metrics::new().unwrap();
        let b = Metrics::new().unwrap();
        a.request("orders", outcome::NACKED);
        assert!(!b.render().contains(r#"outcome="nacked""#));
    }
}
