//! Token caching: one [`TokenSource`] per credential set, shared through [`TokenBroker`].
//!
//! A source hands out its cached token until it expires. In the refresh window before expiry
//! (the last 10% of the lifetime, at most 60 s) the first caller refreshes while concurrent
//! callers keep using the still-valid token; with no usable token, concurrent callers wait for
//! one shared fetch. A failed fetch is remembered for a back-off (1 s doubling to 30 s, reset
//! on success) during which callers get that error at once: a request never waits for
//! retries. A still-valid token is always preferred over an error. There is no background
//! task: refreshing happens on demand.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::http::HttpClient;
use super::{grant, CredentialKey, OAuthSettings, Token, TokenError};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const MAX_REFRESH_AHEAD: Duration = Duration::from_secs(60);

/// Result of one fetch, for the metrics histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    /// A token was obtained.
    Ok,
    /// The fetch failed, with [`TokenError::reason`].
    Err(&'static str),
}

impl FetchOutcome {
    /// Metric label: `ok`, or the failure's [`TokenError::reason`] (a small fixed set).
    pub fn label(&self) -> &'static str {
        match self {
            FetchOutcome::Ok => "ok",
            FetchOutcome::Err(reason) => reason,
        }
    }
}

/// Called after every fetch with its outcome and duration.
pub type FetchObserver = Arc<dyn Fn(FetchOutcome, Duration) + Send + Sync>;

/// All token sources of the process, keyed by credential set.
pub struct TokenBroker {
    observer: FetchObserver,
    // Entries live as long as the broker: their number is bounded by the distinct credential
    // sets ever configured, and keeping them lets a reload reuse a warm cache.
    sources: Mutex<HashMap<CredentialKey, Arc<TokenSource>>>,
}

impl TokenBroker {
    /// A broker reporting every fetch to `observer`.
    pub fn new(observer: FetchObserver) -> Self {
        TokenBroker {
            observer,
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// The source for these settings: the same credential set always gives the same `Arc`.
    pub fn source(&self, settings: &OAuthSettings) -> Arc<TokenSource> {
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        sources
            .entry(settings.key())
            .or_insert_with(|| Arc::new(TokenSource::new(settings.clone(), self.observer.clone())))
            .clone()
    }
}

impl fmt::Debug for TokenBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("TokenBroker")
            .field("sources", &sources.len())
            .finish_non_exhaustive()
    }
}

/// Fetches, caches and refreshes the token of one credential set.
pub struct TokenSource {
    settings: OAuthSettings,
    http: HttpClient,
    observer: FetchObserver,
    state: Mutex<State>,
    // Held for the duration of a fetch: the single flight.
    fetching: tokio::sync::Mutex<()>,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field(
                "token_url",
                &super::url_for_display(&self.settings.token_url),
            )
            .field("client_id", &self.settings.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    token: Option<Cached>,
    failure: Option<Failure>,
}

struct Cached {
    token: Arc<Token>,
    refresh_at: Instant,
}

struct Failure {
    error: TokenError,
    retry_at: Instant,
    backoff: Duration,
}

/// What the cache can answer without fetching.
enum Lookup {
    /// Use this token; no fetch needed.
    Ready(Arc<Token>),
    /// Recent failure and no valid token: answer this error.
    Failed(TokenError),
    /// Valid, but in its refresh window: refresh if nobody else is.
    Refresh(Arc<Token>),
    /// Nothing usable: fetch.
    Empty,
}

impl TokenSource {
    fn new(settings: OAuthSettings, observer: FetchObserver) -> Self {
        TokenSource {
            http: HttpClient::new(settings.connect_timeout, settings.total_timeout),
            settings,
            observer,
            state: Mutex::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// A valid token: the cached one, or a fresh one (one fetch shared by concurrent callers).
    pub async fn token(&self) -> Result<Arc<Token>, TokenError> {
        match self.lookup(Instant::now()) {
            Lookup::Ready(token) => return Ok(token),
            Lookup::Failed(error) => return Err(error),
            Lookup::Refresh(token) => {
                // Someone is already refreshing: the current token is still good.
                let Ok(_guard) = self.fetching.try_lock() else {
                    return Ok(token);
                };
                return match self.lookup(Instant::now()) {
                    Lookup::Empty | Lookup::Refresh(_) => {
                        self.fetch_and_store().await.or(Ok(token))
                    }
                    Lookup::Ready(fresh) => Ok(fresh),
                    Lookup::Failed(_) => Ok(token),
                };
            }
            Lookup::Empty => {}
        }
        let _guard = self.fetching.lock().await;
        // Whoever held the lock may have just fetched (or failed): share that outcome.
        match self.lookup(Instant::now()) {
            Lookup::Ready(token) | Lookup::Refresh(token) => Ok(token),
            Lookup::Failed(error) => Err(error),
            Lookup::Empty => self.fetch_and_store().await,
        }
    }

    /// Drops the cached token if it is still `stale`, after the receiver reported an invalid
    /// session; the next [`TokenSource::token`] fetches a new one.
    pub fn invalidate(&self, stale: &Token) {
        let mut state = self.lock_state();
        if state
            .token
            .as_ref()
            .is_some_and(|c| c.token.access_token.ct_eq(&stale.access_token))
        {
            state.token = None;
            tracing::info!(
                token_url = %super::url_for_display(&self.settings.token_url),
                "access token invalidated after the receiver reported an invalid session"
            );
        }
    }

    /// One fetch that bypasses and leaves alone the cache (for `obmguard token`).
    pub async fn fetch_once(&self) -> Result<Arc<Token>, TokenError> {
        self.fetch().await.map(Arc::new)
    }

    fn lookup(&self, now: Instant) -> Lookup {
        let state = self.lock_state();
        let valid = state.token.as_ref().filter(|c| c.token.expires_at > now);
        let backing_off = state.failure.as_ref().filter(|f| f.retry_at > now);
        match (valid, backing_off) {
            (Some(c), Some(_)) => Lookup::Ready(c.token.clone()),
            (None, Some(failure)) => Lookup::Failed(failure.error.clone()),
            (Some(c), None) if now >= c.refresh_at => Lookup::Refresh(c.token.clone()),
            (Some(c), None) => Lookup::Ready(c.token.clone()),
            (None, None) => Lookup::Empty,
        }
    }

    async fn fetch_and_store(&self) -> Result<Arc<Token>, TokenError> {
        let result = self.fetch().await.map(Arc::new);
        let mut state = self.lock_state();
        match &result {
            Ok(token) => {
                let remaining = token.expires_at.saturating_duration_since(Instant::now());
                state.token = Some(Cached {
                    token: token.clone(),
                    refresh_at: token.expires_at - (remaining / 10).min(MAX_REFRESH_AHEAD),
                });
                state.failure = None;
            }
            Err(error) => {
                let backoff = state
                    .failure
                    .as_ref()
                    .map_or(FIRST_BACKOFF, |f| (f.backoff * 2).min(MAX_BACKOFF));
                state.failure = Some(Failure {
                    error: error.clone(),
                    retry_at: Instant::now() + backoff,
                    backoff,
                });
            }
        }
        result
    }

    async fn fetch(&self) -> Result<Token, TokenError> {
        let started = Instant::now();
        let result = grant::fetch(&self.http, &self.settings).await;
        let elapsed = started.elapsed();
        let token_url = super::url_for_display(&self.settings.token_url);
        match &result {
            Ok(token) => {
                tracing::info!(
                    %token_url,
                    instance = token.instance_url.host_str().unwrap_or(""),
                    issued_at_ms = token.issued_at_ms,
                    token_len = token.access_token.len(),
                    lifetime_s = token.expires_at.saturating_duration_since(started).as_secs(),
                    "obtained an access token"
                );
                (self.observer)(FetchOutcome::Ok, elapsed);
            }
            Err(error) => {
                tracing::warn!(%token_url, reason = error.reason(), "token fetch failed: {error}");
                (self.observer)(FetchOutcome::Err(error.reason()), elapsed);
            }
        }
        result
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is always left consistent (plain assignments), so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::tests::{client_credentials, server};
    use crate::token::ClientAuth;
    use obmguard_testkit::token_server::Mode;

    fn source(settings: &OAuthSettings) -> Arc<TokenSource> {
        TokenBroker::new(Arc::new(|_, _| {})).source(settings)
    }

    /// Moves the cached token into its refresh window without waiting for it.
    fn enter_refresh_window(source: &TokenSource) {
        if let Some(cached) = source.lock_state().token.as_mut() {
            cached.refresh_at = Instant::now();
        }
    }

    #[tokio::test]
    async fn refreshes_ahead_of_expiry() {
        let server = server(|_| {}).await;
        let source = source(&client_credentials(server.url(), ClientAuth::Body));
        let first = source.token().await.unwrap();
        enter_refresh_window(&source);
        let second = source.token().await.unwrap();
        assert_ne!(first.access_token, second.access_token);
        assert!(first.expires_at > Instant::now(), "refreshed before expiry");
        assert_eq!(server.requests(), 2);
    }

    #[tokio::test]
    async fn failed_refresh_keeps_serving_the_valid_token() {
        let server = server(|_| {}).await;
        let source = source(&client_credentials(server.url(), ClientAuth::Body));
        let first = source.token().await.unwrap();
        enter_refresh_window(&source);
        server.set_mode(Mode::Status500);
        assert!(Arc::ptr_eq(&first, &source.token().await.unwrap()));
        assert!(Arc::ptr_eq(&first, &source.token().await.unwrap()));
        assert_eq!(server.requests(), 2, "second call is inside the back-off");
    }

    #[tokio::test]
    async fn backoff_doubles_up_to_its_limit_and_resets_on_success() {
        let server = server(|_| {}).await;
        server.set_mode(Mode::Status500);
        let source = source(&client_credentials(server.url(), ClientAuth::Body));
        let mut seen = Vec::new();
        for _ in 0..7 {
            source.token().await.unwrap_err();
            let mut state = source.lock_state();
            let failure = state.failure.as_mut().unwrap();
            seen.push(failure.backoff.as_secs());
            failure.retry_at = Instant::now();
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 30, 30]);
        server.set_mode(Mode::Ok);
        source.token().await.unwrap();
        assert!(source.lock_state().failure.is_none());
    }

    #[test]
    fn token_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let source = source(&client_credentials(
            "https://acme.my.salesforce.com/services/oauth2/token"
                .parse()
                .unwrap(),
            ClientAuth::Body,
        ));
        assert_send(&source.token());
        assert_send(&source.fetch_once());
    }
}
