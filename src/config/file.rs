//! The configuration files exactly as written: serde structs that mirror `obmguard.toml` and
//! one route policy file, with byte spans so that validation can name the line of each key.
//!
//! Nothing here is trusted or interpreted; [`super::build`] turns these into runtime types.
//! Every table denies unknown keys, so a typo is an error rather than a silently ignored rule.

use serde::Deserialize;
use toml::Spanned;

use super::SessionMode;

pub type S<T> = Spanned<T>;

/// A word that is not one of a key's allowed values. Shows the word only when it is a short
/// plain word (a mistyped mode), never a longer value that could be anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} is not {what}: use {}", shown(value), allowed_list(allowed))]
pub struct UnknownWord {
    pub value: String,
    pub what: &'static str,
    pub allowed: &'static [&'static str],
}

fn shown(value: &str) -> String {
    let plain = value.len() <= 32
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ' '));
    if plain {
        format!("\"{value}\"")
    } else {
        "this value".to_string()
    }
}

fn allowed_list(words: &[&str]) -> String {
    match words {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Deserialise a fieldless enum from one of a fixed list of words, with an [`UnknownWord`]
/// error (toml gives it the value's line) instead of serde's generic "unknown variant".
macro_rules! words {
    ($ty:ty, $what:literal, { $($word:literal => $variant:expr),+ $(,)? }) => {
        impl $ty {
            /// Every word this key accepts, in documentation order.
            pub const WORDS: &'static [&'static str] = &[$($word),+];
        }
        impl TryFrom<String> for $ty {
            type Error = UnknownWord;
            fn try_from(value: String) -> Result<Self, UnknownWord> {
                match value.as_str() {
                    $($word => Ok($variant),)+
                    _ => Err(UnknownWord { value, what: $what, allowed: <$ty>::WORDS }),
                }
            }
        }
    };
}

words!(SessionMode, "a mode", {
    "strip" => SessionMode::Strip,
    "remove" => SessionMode::Remove,
    "reject" => SessionMode::Reject,
    "audit" => SessionMode::Audit,
    "inject" => SessionMode::Inject,
});

/// `delivery.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum DeliveryMode {
    /// Relay the receiver's verdict (Ack only for the receiver's Ack).
    #[default]
    Direct,
    /// Commit durably, Ack, then deliver with retries.
    Queued,
}

words!(DeliveryMode, "a delivery mode", {
    "direct" => DeliveryMode::Direct,
    "queued" => DeliveryMode::Queued,
});

impl DeliveryMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryMode::Direct => "direct",
            DeliveryMode::Queued => "queued",
        }
    }
}

/// `oauth.flow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum FlowName {
    ClientCredentials,
    JwtBearer,
}

words!(FlowName, "an OAuth flow", {
    "client_credentials" => FlowName::ClientCredentials,
    "jwt_bearer" => FlowName::JwtBearer,
});

/// `oauth.client_auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ClientAuthName {
    Body,
    Basic,
}

words!(ClientAuthName, "a client_auth", {
    "body" => ClientAuthName::Body,
    "basic" => ClientAuthName::Basic,
});

/// `obmguard.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyFile {
    pub server: ServerSection,
    pub client_cert: Option<S<ClientCertSection>>,
    #[serde(default)]
    pub source: GlobalSourceSection,
    #[serde(default)]
    pub timeouts: TimeoutsSection,
    #[serde(default)]
    pub limits: LimitsSection,
    pub store: Option<S<StoreSection>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub listen: S<Vec<S<String>>>,
    pub tls_cert: S<String>,
    pub tls_key: S<String>,
    pub admin_listen: Option<S<String>>,
    pub policies: Option<S<String>>,
    pub audit_log: Option<S<String>>,
    pub threads: Option<S<i64>>,
    /// Load balancers that open each connection with a PROXY protocol header.
    #[serde(default)]
    pub proxy_protocol_from: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertSection {
    pub ca_bundle: Option<S<String>>,
    #[serde(default)]
    pub pin_sha256: Vec<S<String>>,
    #[serde(default)]
    pub pin_spki_sha256: Vec<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalSourceSection {
    #[serde(default)]
    pub allow: Vec<S<String>>,
    #[serde(default)]
    pub trusted_proxies: Vec<S<String>>,
    /// A copy of Salesforce's `ip-ranges.json` to use for `@salesforce` instead of the
    /// built-in one.
    pub salesforce_ranges: Option<S<String>>,
    /// Fetch Salesforce's ranges periodically while serving (opt-in).
    pub salesforce_refresh: Option<S<RefreshSection>>,
}

/// `[source.salesforce_refresh]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshSection {
    pub interval_minutes: Option<S<i64>>,
    pub url: Option<S<String>>,
    pub ca_file: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSection {
    pub tls_handshake_ms: Option<S<i64>>,
    pub request_head_ms: Option<S<i64>>,
    pub request_body_ms: Option<S<i64>>,
    pub idle_keepalive_ms: Option<S<i64>>,
    pub response_write_ms: Option<S<i64>>,
    pub upstream_connect_ms: Option<S<i64>>,
    pub drain_ms: Option<S<i64>>,
    pub max_connection_age_ms: Option<S<i64>>,
    pub tls_ticket_lifetime_ms: Option<S<i64>>,
    pub proxy_header_ms: Option<S<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub max_connections: Option<S<i64>>,
    pub max_connections_per_source: Option<S<i64>>,
    pub max_inflight_per_route: Option<S<i64>>,
    pub max_header_count: Option<S<i64>>,
    pub max_header_bytes: Option<S<i64>>,
    pub upstream_pool_size: Option<S<i64>>,
    pub upstream_idle_ms: Option<S<i64>>,
    pub max_response_bytes: Option<S<i64>>,
}

/// `[store]`: where queued messages and the duplicate window rest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// The embedded store's directory.
    pub path: Option<S<String>>,
    /// A PostgreSQL URL (a secret: it may hold a password), for a fleet.
    pub url: Option<S<SecretSource>>,
    pub pool_size: Option<S<i64>>,
    pub max_messages: Option<S<i64>>,
    pub max_bytes: Option<S<i64>>,
    pub lease_ms: Option<S<i64>>,
    /// Bearer token for the admin listener's queue operations that change the store.
    pub admin_token: Option<S<SecretSource>>,
}

/// One file under `policies/`: one route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: S<String>,
    pub path: S<String>,
    pub upstream: S<String>,
    pub upstream_timeout_ms: Option<S<i64>>,
    /// Reuse connections to the receiver (default false: see upstream.rs).
    pub upstream_keepalive: Option<bool>,
    /// PEM file of CAs trusted for an `https://` upstream instead of the system roots.
    pub upstream_ca: Option<S<String>>,
    pub max_inflight: Option<S<i64>>,
    pub identity: Option<S<IdentitySection>>,
    pub source: Option<S<RouteSourceSection>>,
    pub message: S<MessageSection>,
    pub oauth: Option<S<OAuthSection>>,
    pub delivery: Option<S<DeliverySection>>,
}

/// A route's `[delivery]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySection {
    pub mode: Option<S<DeliveryMode>>,
    pub dedupe: Option<S<bool>>,
    pub concurrency: Option<S<i64>>,
    pub max_age_seconds: Option<S<i64>>,
    pub dedupe_window_seconds: Option<S<i64>>,
    pub retry_initial_ms: Option<S<i64>>,
    pub retry_max_ms: Option<S<i64>>,
    pub max_messages: Option<S<i64>>,
    pub max_bytes: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySection {
    #[serde(default)]
    pub subject_cn: Vec<S<String>>,
    #[serde(default)]
    pub pin_sha256: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSourceSection {
    pub allow: S<Vec<S<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageSection {
    pub organization_ids: Option<S<Vec<S<String>>>>,
    #[serde(default)]
    pub action_ids: Vec<S<String>>,
    pub max_body_bytes: Option<S<i64>>,
    pub session_id: Option<S<SessionMode>>,
    pub max_depth: Option<S<i64>>,
    pub max_attributes: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthSection {
    pub flow: S<FlowName>,
    pub token_url: S<String>,
    pub client_id: S<SecretSource>,
    pub client_secret: Option<S<SecretSource>>,
    pub client_auth: Option<S<ClientAuthName>>,
    pub username: Option<S<String>>,
    pub private_key: Option<S<SecretSource>>,
    pub audience: Option<S<String>>,
    pub ttl_seconds: Option<S<i64>>,
    pub rewrite_urls: Option<bool>,
    #[serde(default)]
    pub callback_hosts: Vec<S<String>>,
    pub header: Option<bool>,
    pub connect_timeout_ms: Option<S<i64>>,
    pub timeout_ms: Option<S<i64>>,
}

/// Where a value comes from: `{ env = "NAME" }`, `{ file = "/path" }` or `{ value = "..." }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    pub env: Option<String>,
    pub file: Option<String>,
    pub value: Option<String>,
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSource")
            .field("env", &self.env)
            .field("file", &self.file)
            .field("value", &self.value.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}
