//! What one running proxy holds: the policy generation in force, swapped whole on reload, and
//! the long-lived parts every request uses (TLS acceptor, token broker, receiver pool, audit
//! log, metrics).
//!
//! A request takes the current generation once, when its headers arrive, and finishes on it,
//! whatever reloads happen meanwhile. Settings that shape the process itself (listen
//! addresses, threads, the admin listener, the audit file, pool sizes) are read at start;
//! a reload that changes them logs that a restart is needed.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::accept::Admission;
use crate::audit::AuditLog;
use crate::config::{Config, Route};
use crate::metrics::{cert_kind, Metrics, RouteMetrics};
use crate::tls::TlsStage;
use crate::token::{FetchOutcome, TokenBroker, TokenProvider};
use crate::upstream::Receivers;
use crate::FastMap;

/// One validated policy set and what belongs to it.
pub struct Generation {
    pub number: u64,
    pub config: Arc<Config>,
    /// Each route's state, by path.
    routes: FastMap<String, Arc<RouteState>>,
}

/// What a route needs at run time, built once per policy generation: its metric handles, its
/// in-flight counter and last-seen client certificate (both carried across generations), and
/// its token source.
pub struct RouteState {
    pub route: Arc<Route>,
    pub metrics: RouteMetrics,
    inflight: Arc<AtomicUsize>,
    /// notAfter (Unix seconds) of the last client certificate seen on the route; 0: none.
    pub client_not_after: Arc<AtomicI64>,
    /// For routes with `[oauth]`.
    pub tokens: Option<Arc<dyn TokenProvider>>,
    /// How many token failures may be logged (carried across generations): a token endpoint
    /// that is down fails every message and every retry of a queued one.
    pub token_warnings: Arc<crate::accept::RateLimit>,
}

/// Where a generation gets each inject route's token provider.
pub type TokenFactory<'a> = &'a dyn Fn(&crate::config::RouteOAuth) -> Arc<dyn TokenProvider>;

impl Generation {
    /// Build a generation's per-route state for `config`, carrying in-flight counters and
    /// last-seen certificates over from `old` (by route name).
    pub fn build(
        number: u64,
        config: Config,
        old: Option<&Generation>,
        tokens: TokenFactory<'_>,
        metrics: &Metrics,
    ) -> Generation {
        let mut routes = FastMap::default();
        for r in config.routes.iter() {
            let previous = old.and_then(|o| o.by_name(&r.name));
            let tokens = r.oauth.as_ref().map(tokens);
            let state = RouteState {
                route: r.clone(),
                metrics: metrics.route(&r.name),
                inflight: previous.map(|p| p.inflight.clone()).unwrap_or_default(),
                client_not_after: previous
                    .map(|p| p.client_not_after.clone())
                    .unwrap_or_default(),
                tokens,
                token_warnings: previous.map_or_else(
                    || {
                        Arc::new(crate::accept::RateLimit::new(
                            crate::upstream::WARNINGS_PER_WINDOW,
                            crate::upstream::WARNING_WINDOW,
                        ))
                    },
                    |p| p.token_warnings.clone(),
                ),
            };
            routes.insert(r.path.clone(), Arc::new(state));
        }
        Generation {
            number,
            config: Arc::new(config),
            routes,
        }
    }

    /// The route for a request path (matched exactly).
    pub fn route(&self, path: &str) -> Option<&Arc<RouteState>> {
        self.routes.get(path)
    }

    /// Every route's state, in no particular order.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<RouteState>> {
        self.routes.values()
    }

    fn by_name(&self, name: &str) -> Option<&Arc<RouteState>> {
        self.routes.values().find(|r| r.route.name == name)
    }

    /// Claim an in-flight slot on `route`, or `None` when the route is at its limit.
    pub fn begin(&self, route: &RouteState, total: &Arc<AtomicUsize>) -> Option<InflightSlot> {
        let counter = route.inflight.clone();
        if counter.fetch_add(1, Ordering::AcqRel) >= route.route.max_inflight {
            counter.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        total.fetch_add(1, Ordering::AcqRel);
        Some(InflightSlot {
            route: counter,
            total: total.clone(),
            _gauge: route.metrics.inflight(),
        })
    }
}

/// Why a runtime could not be built, or a new policy set not put in force.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    Audit(crate::audit::AuditError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Store(crate::store::StoreError),
}

/// What a new connection takes once: the generation in force and its TLS acceptor.
pub struct InForce {
    pub generation: Arc<Generation>,
    pub tls: Arc<TlsStage>,
}

/// A request's claim on its route's in-flight budget; released on drop.
pub struct InflightSlot {
    route: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
    _gauge: crate::metrics::GaugeGuard,
}

impl Drop for InflightSlot {
    fn drop(&mut self) {
        self.route.fetch_sub(1, Ordering::AcqRel);
        self.total.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct Runtime {
    /// The generation in force and its TLS acceptor, swapped as one.
    in_force: ArcSwap<InForce>,
    next_generation: AtomicU64,
    /// The pre-TLS admission sets, shared with every listener's connection filter.
    pub admitted: Arc<ArcSwap<Admission>>,
    pub metrics: Arc<Metrics>,
    pub tokens: TokenBroker,
    pub receivers: Receivers,
    pub audit: AuditLog,
    /// The message store, when `[store]` is configured (opened at start; changing `[store]`
    /// needs a restart).
    pub store: Option<Arc<dyn crate::store::Store>>,
    /// Told when a message is queued, so a delivery worker looks at once.
    pub queued: tokio::sync::Notify,
    /// This process as a lease owner ([`crate::delivery::worker_id`]).
    pub worker_id: String,
    /// The last good `@salesforce` set fetched by the periodic refresh, used by every reload
    /// while `[source.salesforce_refresh]` is on.
    pub refreshed_ranges: arc_swap::ArcSwapOption<crate::config::ranges::SalesforceRanges>,
    ready: AtomicBool,
    draining: AtomicBool,
    inflight_total: Arc<AtomicUsize>,
}

impl Runtime {
    /// Build the runtime around a first, already validated configuration.
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Result<Arc<Runtime>, RuntimeError> {
        let audit = AuditLog::open(&config.server.audit_log).map_err(RuntimeError::Audit)?;
        let sc = crate::tls::server_config(&config, metrics.clone())?;
        let m = metrics.clone();
        let tokens = TokenBroker::new(Arc::new(move |outcome: FetchOutcome, took: Duration| {
            m.observe_token_fetch(outcome.label(), took);
        }));
        let receivers = Receivers::new(&config.limits, config.timeouts.upstream_connect);
        let store = match &config.store {
            Some(s) => Some(crate::store::open(s).map_err(RuntimeError::Store)?),
            None => None,
        };
        let first = Generation::build(1, config, None, &|o| tokens.source(&o.settings), &metrics);
        let rt = Arc::new(Runtime {
            admitted: Arc::new(ArcSwap::from_pointee(Admission::of(&first.config))),
            in_force: ArcSwap::from_pointee(InForce {
                generation: Arc::new(first),
                tls: Arc::new(TlsStage::new(sc)),
            }),
            next_generation: AtomicU64::new(2),
            metrics,
            tokens,
            receivers,
            audit,
            store,
            queued: tokio::sync::Notify::new(),
            worker_id: crate::delivery::worker_id(),
            refreshed_ranges: arc_swap::ArcSwapOption::empty(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            inflight_total: Arc::new(AtomicUsize::new(0)),
        });
        rt.announce(&rt.current());
        Ok(rt)
    }

    /// The generation in force now and its TLS acceptor, for a new connection.
    pub fn in_force(&self) -> Arc<InForce> {
        self.in_force.load_full()
    }

    /// The generation in force now.
    pub fn current(&self) -> Arc<Generation> {
        self.in_force.load().generation.clone()
    }

    /// Validate-then-swap: build the TLS configuration for `config` and, only if that works,
    /// make it the generation in force. Returns the new generation number.
    pub fn apply(&self, config: Config) -> Result<u64, RuntimeError> {
        let sc = crate::tls::server_config(&config, self.metrics.clone())?;
        let old = self.current();
        for note in restart_notes(&old.config, &config) {
            tracing::warn!(
                "{note} changed: restart obmguard to apply it (the rest of the reload is in force)"
            );
        }
        Ok(self.install(config, sc))
    }

    fn install(&self, config: Config, sc: Arc<rustls::ServerConfig>) -> u64 {
        let number = self.next_generation.fetch_add(1, Ordering::AcqRel);
        let old = self.current();
        let generation = Generation::build(
            number,
            config,
            Some(&old),
            &|o| self.tokens.source(&o.settings),
            &self.metrics,
        );
        for r in old.config.routes.iter() {
            if generation.by_name(&r.name).is_none() {
                self.metrics.forget_route(&r.name);
            }
        }
        self.admitted
            .store(Arc::new(Admission::of(&generation.config)));
        self.announce(&generation);
        self.in_force.store(Arc::new(InForce {
            generation: Arc::new(generation),
            tls: Arc::new(TlsStage::new(sc)),
        }));
        number
    }

    /// Publish a generation's metrics (policy generation, routes, certificate expiry).
    fn announce(&self, g: &Generation) {
        self.metrics.set_client_last_seen(
            g.routes
                .values()
                .map(|r| (r.route.name.clone(), r.client_not_after.clone()))
                .collect(),
        );
        self.record_cert_expiry(&g.config);
        let src = &g.config.source;
        let date = src
            .salesforce
            .as_ref()
            .and_then(|r| r.as_of)
            .map(|d| d.midnight().assume_utc().unix_timestamp());
        self.metrics
            .salesforce_ranges(date.map(|d| (src.salesforce_origin, d)));
        self.metrics.policy_loaded(g.number, g.config.routes.len());
    }

    fn record_cert_expiry(&self, c: &Config) {
        let m = &self.metrics;
        m.forget_cert_expiry(cert_kind::SERVER);
        m.forget_cert_expiry(cert_kind::CA);
        m.forget_cert_expiry(cert_kind::PIN);
        m.cert_expiry(
            cert_kind::SERVER,
            &c.server.cert_subject,
            c.server.cert_not_after,
        );
        for (name, not_after) in &c.trust.ca_expiry {
            m.cert_expiry(cert_kind::CA, name, *not_after);
        }
    }

    /// Claim an in-flight slot on `route`, or `None` when the route is at its limit.
    pub fn begin(&self, generation: &Generation, route: &RouteState) -> Option<InflightSlot> {
        generation.begin(route, &self.inflight_total)
    }

    /// The counter of messages in flight over all routes.
    pub fn inflight_counter(&self) -> &Arc<AtomicUsize> {
        &self.inflight_total
    }

    pub fn inflight(&self) -> usize {
        self.inflight_total.load(Ordering::Acquire)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Figures the metrics copy in before a scrape.
    pub fn outside_figures(&self) -> crate::metrics::Outside {
        crate::metrics::Outside {
            audit_lost: self.audit.lost(),
            log_dropped: crate::sink::log().map_or(0, |s| s.dropped()),
            upstream_idle: self.receivers.idle_connections(),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_draining()
    }

    /// From now on: no new connections, and no keep-alive after the current request.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

fn restart_notes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut notes = Vec::new();
    if old.server.listen != new.server.listen {
        notes.push("server.listen");
    }
    if old.server.admin_listen != new.server.admin_listen {
        notes.push("server.admin_listen");
    }
    if old.server.audit_log != new.server.audit_log {
        notes.push("server.audit_log");
    }
    let engine = |c: &Config| c.store.as_ref().map(|s| s.engine.clone());
    if engine(old) != engine(new) {
        notes.push("[store] path, url or pool_size");
    }
    if old.server.threads != new.server.threads {
        notes.push("server.threads");
    }
    if old.limits.upstream_pool_size != new.limits.upstream_pool_size
        || old.limits.max_response_bytes != new.limits.max_response_bytes
        || old.timeouts.upstream_connect != new.timeouts.upstream_connect
    {
        notes.push("the upstream pool settings");
    }
    notes
}
