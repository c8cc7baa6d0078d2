//! Configuration: `obmguard.toml` plus a directory of route policies, turned into validated
//! runtime types. Stage code never sees a raw string from a file.
//!
//! [`load`] is the one entry point: `check`, `serve` and live reload all call it, so they
//! accept and refuse exactly the same files. It reports every problem in one pass, each with
//! file, line and key and what to change, and opens every certificate, key and secret the
//! configuration names. It never prints a value from a file that could be a secret.
//!
//! Configuration knows no stage: it holds plain validated data (addresses, durations, DER
//! certificates, pins, names), and each stage builds what it runs from that data (tls.rs its
//! rustls configuration, identity.rs the check of a route's [`IdentityPolicy`]). PEM parsing
//! and key checks live in [`crate::certs`], shared by this validation and the TLS stage.
//!
//! Layout: [`file`] mirrors the files (serde), `build` reads them through [`Inputs`] and calls
//! one builder per section (`server`, `trust` for `[client_cert]`, `source`, `timeouts`,
//! `limits`, and per policy file `route` and `oauth`), each taking defaults and ranges from
//! [`defaults`]. Sections to come (`[store]`, `[delivery]`) follow the same pattern: a file
//! beside these and one call in `build::load`.

mod build;
pub mod defaults;
pub mod diag;
pub mod file;
pub mod inputs;
mod limits;
mod oauth;
pub mod ranges;
mod route;
mod secrets;
mod server;
mod source;
mod store;
#[cfg(test)]
mod tests;
mod timeouts;
mod trust;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use diag::{Problem, Problems};
pub use file::{DeliveryMode, UnknownWord};
pub use inputs::{Inputs, System};
pub use ranges::IpSet;
pub use trust::{parse_pin, BadPin};

use crate::sfid::SfId;
use crate::FastSet;

/// A whole, validated configuration: what one policy generation enforces.
#[derive(Debug)]
pub struct Config {
    /// The `obmguard.toml` this was loaded from.
    pub file: PathBuf,
    pub server: Server,
    pub trust: ClientTrust,
    pub source: Source,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub routes: Routes,
    /// `[store]`, when configured.
    pub store: Option<StoreConfig>,
    /// Non-fatal findings, printed by `check` and `serve`.
    pub warnings: Vec<Problem>,
}

#[derive(Debug)]
pub struct Server {
    pub listen: Vec<SocketAddr>,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// The parsed chain, leaf first (every certificate parsed by x509-parser).
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// Its private key, checked to belong to the leaf. `Debug` prints no key material.
    pub cert_key: PrivateKeyDer<'static>,
    /// `not_after` of the leaf (Unix seconds), for the expiry metric.
    pub cert_not_after: i64,
    pub cert_subject: String,
    pub admin_listen: Option<SocketAddr>,
    pub policies_dir: PathBuf,
    /// "-" for standard output, otherwise a file path.
    pub audit_log: String,
    pub threads: usize,
    /// Load balancers that must open every connection with a PROXY protocol header (v1 or
    /// v2), whose client address then counts; empty: no PROXY protocol.
    pub proxy_protocol_from: IpSet,
}

/// Who may complete the TLS handshake: certificates chaining to `roots`, or pinned ones.
#[derive(Debug, Clone)]
pub struct ClientTrust {
    pub roots: Vec<CertificateDer<'static>>,
    pub ca_file: Option<PathBuf>,
    /// SHA-256 of whole certificates (DER).
    pub pins: Vec<[u8; 32]>,
    /// SHA-256 of SubjectPublicKeyInfo (DER).
    pub spki_pins: Vec<[u8; 32]>,
    /// (name, not_after unix) of each CA, for the expiry metric.
    pub ca_expiry: Vec<(String, i64)>,
}

#[derive(Debug)]
pub struct Source {
    /// Everyone any route admits, plus trusted proxies: enforced before the TLS handshake.
    pub admitted: IpSet,
    /// Peers whose X-Forwarded-For is believed.
    pub trusted_proxies: IpSet,
    /// What `@salesforce` meant, when some list used it.
    pub salesforce: Option<ranges::SalesforceRanges>,
    /// Where `@salesforce` came from: `builtin`, `file` or `refreshed`.
    pub salesforce_origin: &'static str,
    /// `[source.salesforce_refresh]`, when on.
    pub refresh: Option<RangesRefresh>,
}

/// The opt-in periodic refresh of Salesforce's ranges while serving.
#[derive(Debug, Clone)]
pub struct RangesRefresh {
    pub interval: Duration,
    pub url: url::Url,
    /// CA certificates to trust instead of the system's roots (tests, TLS-inspecting proxies).
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Timeouts {
    pub tls_handshake: Duration,
    pub request_head: Duration,
    pub request_body: Duration,
    pub idle_keepalive: Duration,
    pub response_write: Duration,
    pub upstream_connect: Duration,
    pub drain: Duration,
    /// After this, a connection ends with its next answer (its certificate is checked anew on
    /// the next connection's handshake).
    pub max_connection_age: Duration,
    /// How long a TLS session ticket resumes a session (enforced by obmguard, not only told
    /// to the client).
    pub tls_ticket_lifetime: Duration,
    /// Reading the PROXY protocol header of a load balancer's connection.
    pub proxy_header: Duration,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub max_header_count: usize,
    pub max_header_bytes: usize,
    pub upstream_pool_size: usize,
    pub upstream_idle: Duration,
    pub max_response_bytes: usize,
}

/// Routes by exact path.
#[derive(Debug, Default)]
pub struct Routes {
    by_path: HashMap<String, Arc<Route>>,
}

impl Routes {
    pub fn get(&self, path: &str) -> Option<&Arc<Route>> {
        self.by_path.get(path)
    }
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.by_path.values()
    }
    pub fn len(&self) -> usize {
        self.by_path.len()
    }
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }
    pub fn by_name(&self, name: &str) -> Option<&Arc<Route>> {
        self.by_path.values().find(|r| r.name == name)
    }
}

/// One route: a path, who may use it, what its messages may hold, and where they go.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub path: String,
    pub file: PathBuf,
    pub upstream: Upstream,
    pub upstream_timeout: Duration,
    /// Reuse connections to the receiver. Off: one connection per message, so no answer
    /// can ever be read on behalf of another message (see upstream.rs).
    pub upstream_keepalive: bool,
    pub max_inflight: usize,
    /// `[identity]`, checked by the identity stage (`rule.check(&peer)`, see identity.rs).
    pub identity: Option<IdentityPolicy>,
    /// The effective source ranges (the route's own, or the global `[source] allow`).
    pub source: IpSet,
    pub message: MessagePolicy,
    pub oauth: Option<RouteOAuth>,
    /// `[delivery]`.
    pub delivery: DeliveryPolicy,
}

/// Where the store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEngine {
    /// The embedded SQLite store, in this directory (created 0700 if missing).
    Sqlite { path: PathBuf },
    /// A PostgreSQL database shared by a fleet; the URL is a secret (it may hold a password).
    Postgres {
        url: crate::secret::Secret,
        pool_size: usize,
    },
}

impl StoreEngine {
    /// What an operator may see: the directory, or the server without its password.
    pub fn describe(&self) -> String {
        match self {
            StoreEngine::Sqlite { path } => path.display().to_string(),
            StoreEngine::Postgres { .. } => "PostgreSQL ([store] url)".into(),
        }
    }
}

/// `[store]`: where queued messages and the duplicate window rest, and its bounds.
#[derive(Debug)]
pub struct StoreConfig {
    pub engine: StoreEngine,
    /// Messages held (not yet delivered) over all routes; one more is answered 503.
    pub max_messages: u64,
    /// Body bytes held over all routes; past it, 503.
    pub max_bytes: u64,
    /// How long a delivery holds a message before another worker may take it.
    pub lease: Duration,
    /// Bearer token for the admin listener's queue operations that change the store.
    pub admin_token: Option<crate::secret::Secret>,
}

/// A route's `[delivery]`: direct or queued, duplicates, retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryPolicy {
    pub mode: DeliveryMode,
    /// Drop messages whose every notification was accepted (queued) or acked (direct) within
    /// `dedupe_window`.
    pub dedupe: bool,
    /// Deliveries at once on this route (across the fleet with a shared store).
    pub concurrency: usize,
    /// After this age a message that still fails becomes a dead letter.
    pub max_age: Duration,
    pub dedupe_window: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// The route's own share of the store, when set.
    pub max_messages: Option<u64>,
    pub max_bytes: Option<u64>,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        let secs = |s: &defaults::Setting| Duration::from_secs(s.value() as u64);
        let ms = |s: &defaults::Setting| Duration::from_millis(s.value() as u64);
        DeliveryPolicy {
            mode: DeliveryMode::Direct,
            dedupe: false,
            concurrency: defaults::CONCURRENCY.value() as usize,
            max_age: secs(&defaults::MAX_AGE_SECONDS),
            dedupe_window: secs(&defaults::DEDUPE_WINDOW_SECONDS),
            retry_initial: ms(&defaults::RETRY_INITIAL_MS),
            retry_max: ms(&defaults::RETRY_MAX_MS),
            max_messages: None,
            max_bytes: None,
        }
    }
}

impl DeliveryPolicy {
    pub fn queued(&self) -> bool {
        self.mode == DeliveryMode::Queued
    }
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub url: url::Url,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// The Host header's value: the host (an IPv6 address in brackets), with `:port` unless
    /// it is the scheme's default.
    pub authority: String,
    /// Path and query sent in the request line.
    pub path_and_query: String,
    /// CAs for an https upstream; `None` means the system roots.
    pub ca: Option<Arc<pingora_core::protocols::tls::CaType>>,
    /// Identifies the trust anchors (0: system roots). pingora's connection pool does not
    /// key on the CA, so this keeps a connection verified against one route's CA from being
    /// reused by a route that trusts other anchors.
    pub trust_key: u64,
}

#[derive(Debug)]
pub struct MessagePolicy {
    pub organizations: FastSet<SfId>,
    /// `None`: any action.
    pub actions: Option<FastSet<SfId>>,
    pub max_body_bytes: usize,
    pub session_id: SessionMode,
    pub xml: XmlLimits,
}

/// A route's `[identity]` table as data: every listed condition must hold. The identity stage
/// (identity.rs) implements the check, as `IdentityRule`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityPolicy {
    /// Accepted subject common names (compared case-insensitively).
    pub subject_cn: Vec<String>,
    /// Accepted certificates: SHA-256 of the DER.
    pub pins: Vec<[u8; 32]>,
}

/// Bounds on the XML of a notification or an answer, enforced by the SOAP parser (which uses
/// this type as `soap::Limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XmlLimits {
    /// Deepest element nesting (the Envelope is depth 1).
    pub max_depth: usize,
    /// Most attributes (namespace declarations included) on one element.
    pub max_attributes: usize,
    /// Most `Notification` elements in one message (Salesforce sends at most 100).
    pub max_notifications: usize,
}

impl Default for XmlLimits {
    fn default() -> Self {
        XmlLimits {
            max_depth: defaults::MAX_DEPTH.value() as usize,
            max_attributes: defaults::MAX_ATTRIBUTES.value() as usize,
            max_notifications: defaults::MAX_NOTIFICATIONS,
        }
    }
}

/// What a route does with a SessionId that has a value (`message.session_id`; the words are
/// listed once, in file.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum SessionMode {
    #[default]
    Strip,
    Remove,
    Reject,
    Audit,
    Inject,
}

impl SessionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionMode::Strip => "strip",
            SessionMode::Remove => "remove",
            SessionMode::Reject => "reject",
            SessionMode::Audit => "audit",
            SessionMode::Inject => "inject",
        }
    }
}

#[derive(Debug)]
pub struct RouteOAuth {
    pub settings: crate::token::OAuthSettings,
    pub rewrite_urls: bool,
    /// Hosts besides the token's `instance_url` host that callback URLs may name when
    /// `rewrite_urls` is off (lower case).
    pub callback_hosts: Vec<String>,
    pub header: bool,
}

/// What one open connection can hold at most: rustls's record buffers both ways plus
/// pingora's request-head buffer (bounded by `limits.max_header_bytes`) and bookkeeping.
pub const CONNECTION_BYTES: usize = 64 * 1024;

impl Config {
    /// The most memory one message on `route` can hold while in flight: the buffered body,
    /// its rewritten copy (plus a token), the receiver's answer, and fixed overhead.
    pub fn request_bytes(&self, route: &Route) -> usize {
        2 * route.message.max_body_bytes + 4096 + self.limits.max_response_bytes + 64 * 1024
    }

    /// The worst case the configured limits allow: every listener full of connections, every
    /// route at its in-flight limit with maximal bodies. The limits enforce it.
    pub fn worst_case_bytes(&self) -> usize {
        let connections = self.server.listen.len() * self.limits.max_connections * CONNECTION_BYTES;
        let requests: usize = self
            .routes
            .iter()
            .map(|r| r.max_inflight * self.request_bytes(r))
            .sum();
        connections + requests
    }
}

/// Load and validate `obmguard.toml` and every policy it names.
pub fn load(path: &Path) -> Result<Config, Problems> {
    build::load(&System, path, None)
}

/// As [`load_with_ranges`], reading files and environment variables through `io`.
pub fn load_from(
    io: &dyn Inputs,
    path: &Path,
    refreshed: Option<&ranges::SalesforceRanges>,
) -> Result<Config, Problems> {
    build::load(io, path, refreshed)
}

/// As [`load`], with `@salesforce` taken from a set the periodic refresh fetched (used only
/// while `[source.salesforce_refresh]` is on).
pub fn load_with_ranges(
    path: &Path,
    refreshed: Option<&ranges::SalesforceRanges>,
) -> Result<Config, Problems> {
    build::load(&System, path, refreshed)
}
