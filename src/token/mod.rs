//! Stage 5: the OAuth token broker. Obtains Salesforce access tokens (client credentials or
//! JWT bearer), caches them per credential set, refreshes them ahead of expiry, and hands them
//! to the rewrite that puts a fresh token where the SessionId used to be.
//!
//! Threat model: the token endpoint's answer is untrusted input (it may come from a
//! misconfigured or hostile host): it is size-bounded, must be JSON, and the token and
//! `instance_url` must pass strict checks before they are injected into a SOAP body or used as
//! a callback URL. Credentials must never leak: secrets live in [`Secret`], requests go only to
//! the configured URL (no redirects, no proxy from the environment, https except loopback), and
//! no error, log line or `Debug` output carries a token, a client secret, an assertion or a key.
//! Not defended: a compromised token endpoint that issues valid-looking tokens, or a process
//! that reads our memory.
//!
//! This module does not decide *when* a token is needed (the route policy does) and does not
//! retry inside one call: a failed fetch fails the request quickly (Salesforce retries), and a
//! short back-off keeps a broken endpoint from being hammered.

mod broker;
mod grant;
mod http;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::secret::Secret;

pub use broker::{FetchObserver, FetchOutcome, TokenBroker, TokenSource};

/// Default lifetime of a token when the endpoint sends no `expires_in` (`ttl_seconds`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Default time allowed to open a connection to the token endpoint.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time allowed for one whole token request, connection included.
pub const DEFAULT_TOTAL_TIMEOUT: Duration = Duration::from_secs(10);

/// How a client-credentials request presents the client secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientAuth {
    /// `client_id` and `client_secret` as form fields in the request body.
    Body,
    /// HTTP Basic authentication (RFC 6749 section 2.3.1).
    Basic,
}

/// The OAuth grant used to obtain a token.
#[derive(Debug, Clone)]
pub enum Flow {
    /// `grant_type=client_credentials`, run as the connected app's integration user.
    ClientCredentials {
        /// The connected app's consumer secret.
        client_secret: Secret,
        /// Where the secret goes in the request.
        client_auth: ClientAuth,
    },
    /// RFC 7523 JWT bearer grant, signed with the connected app's certificate key.
    JwtBearer {
        /// The Salesforce username the token is issued for (`sub`).
        username: String,
        /// PEM of the RSA private key (PKCS#8 or PKCS#1) whose certificate the app holds.
        private_key_pem: Secret,
        /// `aud` claim, e.g. `https://login.salesforce.com`.
        audience: String,
    },
}

/// Validated runtime settings for one route's token source.
#[derive(Debug, Clone)]
pub struct OAuthSettings {
    /// e.g. `https://acme.my.salesforce.com/services/oauth2/token`.
    pub token_url: url::Url,
    /// The connected app's consumer key.
    pub client_id: String,
    /// The grant and its credentials.
    pub flow: Flow,
    /// How long a token is trusted when the endpoint sends no `expires_in`.
    pub ttl: Duration,
    /// Time allowed to connect to the token endpoint.
    pub connect_timeout: Duration,
    /// Time allowed for the whole token request.
    pub total_timeout: Duration,
}

/// Identifies a distinct credential set: settings with equal keys share one token cache.
/// Holds a SHA-256 of the secret material, never the secret itself.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CredentialKey {
    token_url: String,
    client_id: String,
    flow: &'static str,
    client_auth: Option<ClientAuth>,
    username: String,
    audience: String,
    secret_sha256: [u8; 32],
    // Settings that change how the shared source behaves: two routes that differ here get
    // separate caches rather than silently using the first route's values.
    ttl: Duration,
    connect_timeout: Duration,
    total_timeout: Duration,
}

impl OAuthSettings {
    /// The credential-set key under which [`TokenBroker`] shares one cache.
    pub fn key(&self) -> CredentialKey {
        let (flow, client_auth, username, audience, secret) = match &self.flow {
            Flow::ClientCredentials {
                client_secret,
                client_auth,
            } => (
                "client_credentials",
                Some(*client_auth),
                "",
                "",
                client_secret,
            ),
            Flow::JwtBearer {
                username,
                private_key_pem,
                audience,
            } => (
                "jwt_bearer",
                None,
                username.as_str(),
                audience.as_str(),
                private_key_pem,
            ),
        };
        let mut hash = Sha256::new();
        hash.update(b"obmguard token credential key\0");
        hash.update(secret.expose().as_bytes());
        CredentialKey {
            token_url: self.token_url.to_string(),
            client_id: self.client_id.clone(),
            flow,
            client_auth,
            username: username.to_owned(),
            audience: audience.to_owned(),
            secret_sha256: hash.finalize().into(),
            ttl: self.ttl,
            connect_timeout: self.connect_timeout,
            total_timeout: self.total_timeout,
        }
    }
}

/// Checks settings before they are used; every problem found is reported, joined by "; ".
/// Messages say what to change and never contain key or secret material.
pub fn validate_settings(settings: &OAuthSettings) -> Result<(), String> {
    let mut problems = Vec::new();
    if !is_allowed_url(&settings.token_url) {
        problems.push(format!(
            "token_url {} must use https (plain http is allowed only to 127.0.0.1, ::1 or localhost)",
            url_for_display(&settings.token_url)
        ));
    }
    if !settings.token_url.username().is_empty() || settings.token_url.password().is_some() {
        problems.push(
            "token_url must not contain user:password; put the credentials in their own settings"
                .to_owned(),
        );
    }
    if settings.client_id.trim().is_empty() {
        problems.push("client_id is empty: set the connected app's consumer key".to_owned());
    }
    match &settings.flow {
        Flow::ClientCredentials { client_secret, .. } => {
            if client_secret.is_empty() {
                problems.push(
                    "client_secret is empty: set the connected app's consumer secret".to_owned(),
                );
            }
        }
        Flow::JwtBearer {
            username,
            private_key_pem,
            audience,
        } => {
            if username.trim().is_empty() {
                problems.push("username is empty: set the Salesforce user to run as".to_owned());
            }
            if audience.trim().is_empty() {
                problems.push(
                    "audience is empty: set it to https://login.salesforce.com (or test.salesforce.com, or the community URL)"
                        .to_owned(),
                );
            }
            if let Err(problem) = grant::check_signing_key(private_key_pem) {
                problems.push(problem);
            }
        }
    }
    for (name, value) in [
        ("ttl_seconds", settings.ttl),
        ("connect_timeout", settings.connect_timeout),
        ("total_timeout", settings.total_timeout),
    ] {
        if value.is_zero() {
            problems.push(format!("{name} must be greater than zero"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// An access token and where to use it.
#[derive(Debug)]
pub struct Token {
    /// The bearer token; goes only into the forwarded SOAP body or an Authorization header.
    pub access_token: Secret,
    /// The org's instance (`https://acme.my.salesforce.com/`), for EnterpriseUrl/PartnerUrl.
    pub instance_url: url::Url,
    /// Salesforce's `issued_at` (milliseconds since the epoch), when sent.
    pub issued_at_ms: Option<u64>,
    /// When we stop using this token (local monotonic clock).
    pub expires_at: Instant,
}

/// Why a token could not be obtained. No variant carries a token, secret, assertion or key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The URL is plain http to a non-loopback host.
    #[error("refusing to send credentials to {url}: use an https URL (http is allowed only to loopback)")]
    InsecureUrl {
        /// The offending URL without query or credentials.
        url: String,
    },
    /// Connecting or sending failed.
    #[error("token endpoint unreachable: {detail}; check token_url, DNS and the network path")]
    Unreachable {
        /// What the transport reported.
        detail: String,
    },
    /// No complete answer within the total timeout.
    #[error(
        "token endpoint did not answer within {after:?}; check the endpoint or raise total_timeout"
    )]
    Timeout {
        /// The configured total timeout.
        after: Duration,
    },
    /// The endpoint answered with a redirect, which is never followed.
    #[error("token endpoint answered HTTP {status} (a redirect, not followed): set token_url to the final URL, usually https://<my-domain>.my.salesforce.com/services/oauth2/token")]
    Redirect {
        /// HTTP status code.
        status: u16,
    },
    /// The endpoint refused the request or failed.
    #[error("token endpoint answered HTTP {status}{}{}; {}",
        error.as_deref().map(|e| format!(" {e}")).unwrap_or_default(),
        error_description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default(),
        status_hint(*status))]
    Status {
        /// HTTP status code.
        status: u16,
        /// OAuth `error` field, when the body was JSON.
        error: Option<String>,
        /// OAuth `error_description` field, when the body was JSON.
        error_description: Option<String>,
    },
    /// A success status with a body that is not JSON (often an HTML login or proxy page).
    #[error("token endpoint answered with {content_type:?}, not JSON: token_url probably points at a web page, not /services/oauth2/token")]
    NotJson {
        /// The Content-Type received (empty when absent).
        content_type: String,
    },
    /// The answer exceeded the body limit.
    #[error("token endpoint's answer exceeds {limit} bytes; check token_url")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// JSON that is not a token response.
    #[error("token endpoint's answer is not a token response ({detail}); check token_url")]
    BadResponse {
        /// Which field or position is wrong (never a value).
        detail: String,
    },
    /// The access token has characters or a length we refuse to inject.
    #[error("token endpoint returned an access token of {length} bytes with characters outside [A-Za-z0-9!._~+/=-] or an unusual length; refusing to use it")]
    UnsafeToken {
        /// Length of the refused token.
        length: usize,
    },
    /// `instance_url` is not an https origin.
    #[error("token endpoint returned an unusable instance_url: {reason}")]
    BadInstanceUrl {
        /// What is wrong with it.
        reason: String,
    },
    /// Signing the JWT assertion failed.
    #[error("could not sign the JWT assertion ({detail}); check private_key (an RSA key of at least 2048 bits, PEM)")]
    Jwt {
        /// The signing library's error kind.
        detail: String,
    },
    /// The HTTP client could not be built.
    #[error("could not set up the HTTP client for the token endpoint: {detail}")]
    Client {
        /// What failed.
        detail: String,
    },
}

/// Why no token could be had, as a value (the [`TokenError`] without its details).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFailure {
    InsecureUrl,
    Unreachable,
    Timeout,
    Redirect,
    Status,
    NotJson,
    TooLarge,
    BadResponse,
    UnsafeToken,
    BadInstanceUrl,
    Jwt,
    Client,
}

impl TokenFailure {
    /// A short, fixed label for metrics and fault texts.
    pub fn label(self) -> &'static str {
        match self {
            TokenFailure::InsecureUrl => "insecure_url",
            TokenFailure::Unreachable => "unreachable",
            TokenFailure::Timeout => "timeout",
            TokenFailure::Redirect => "redirect",
            TokenFailure::Status => "status",
            TokenFailure::NotJson => "not_json",
            TokenFailure::TooLarge => "too_large",
            TokenFailure::BadResponse => "bad_response",
            TokenFailure::UnsafeToken => "unsafe_token",
            TokenFailure::BadInstanceUrl => "bad_instance_url",
            TokenFailure::Jwt => "jwt",
            TokenFailure::Client => "client",
        }
    }
}

impl TokenError {
    /// What kind of failure this is.
    pub fn kind(&self) -> TokenFailure {
        match self {
            TokenError::InsecureUrl { .. } => TokenFailure::InsecureUrl,
            TokenError::Unreachable { .. } => TokenFailure::Unreachable,
            TokenError::Timeout { .. } => TokenFailure::Timeout,
            TokenError::Redirect { .. } => TokenFailure::Redirect,
            TokenError::Status { .. } => TokenFailure::Status,
            TokenError::NotJson { .. } => TokenFailure::NotJson,
            TokenError::TooLarge { .. } => TokenFailure::TooLarge,
            TokenError::BadResponse { .. } => TokenFailure::BadResponse,
            TokenError::UnsafeToken { .. } => TokenFailure::UnsafeToken,
            TokenError::BadInstanceUrl { .. } => TokenFailure::BadInstanceUrl,
            TokenError::Jwt { .. } => TokenFailure::Jwt,
            TokenError::Client { .. } => TokenFailure::Client,
        }
    }

    /// A short, fixed label for metrics.
    pub fn reason(&self) -> &'static str {
        self.kind().label()
    }
}

fn status_hint(status: u16) -> &'static str {
    if (400..500).contains(&status) {
        "check client_id, the credentials and the connected app's policies (permitted users, run-as user)"
    } else {
        "the endpoint failed: check token_url and Salesforce's status; the next fetch is tried after a back-off"
    }
}

/// https anywhere, or http to a loopback host.
fn is_allowed_url(url: &url::Url) -> bool {
    match url.scheme() {
        "https" => url.host().is_some(),
        "http" => is_loopback(url),
        _ => false,
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).to_canonical().is_loopback(),
        None => false,
    }
}

/// Scheme, host, port and path only: never a query, fragment or userinfo.
fn url_for_display(url: &url::Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    shown
}

/// Where a route's access tokens come from: the [`TokenSource`] in production, anything in a
/// test of the request pipeline.
#[async_trait::async_trait]
pub trait TokenProvider: Send + Sync {
    /// A token valid now (cached, refreshed ahead of its lifetime, or fetched).
    async fn token(&self) -> Result<Arc<Token>, TokenError>;
    /// The receiver reported `stale` as an invalid session: do not hand it out again.
    fn invalidate(&self, stale: &Token);
}

#[async_trait::async_trait]
impl TokenProvider for TokenSource {
    async fn token(&self) -> Result<Arc<Token>, TokenError> {
        TokenSource::token(self).await
    }

    fn invalidate(&self, stale: &Token) {
        TokenSource::invalidate(self, stale)
    }
}

#[cfg(test)]
mod tests;
