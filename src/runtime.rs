//! What one running proxy holds: the policy generation in force, swapped whole on reload, and
//! the long-lived parts every request uses (TLS acceptor, token broker, receiver pool, audit
//! log, metrics).
//!
//! A request takes the current generation once, when its headers arrive, and finishes on it,
//! whatever reloads happen meanwhile. Settings that shape the process itself (listen
//! addresses, threads, the admin listener, the audit file, pool sizes) are read at start;
//! a reload that changes them logs that a restart is needed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::audit::AuditLog;
use crate::config::{Config, IpSet, Route};
use crate::metrics::{cert_kind, Metrics};
use crate::tls::TlsStage;
use crate::token::{FetchOutcome, TokenBroker, TokenSource};
use crate::upstream::Receivers;

/// One validated policy set and what belongs to it.
pub struct Generation {
    pub number: u64,
    pub config: Arc<Config>,
    /// In-flight counters by route name, carried across generations.
    inflight: HashMap<String, Arc<AtomicUsize>>,
    /// Token sources by route name, for routes with `[oauth]`.
    tokens: HashMap<String, Arc<TokenSource>>,
}

impl Generation {
    fn build(
        number: u64,
        config: Config,
        old: Option<&Generation>,
        broker: &TokenBroker,
    ) -> Generation {
        let mut inflight = HashMap::new();
        let mut tokens = HashMap::new();
        for r in config.routes.iter() {
            let counter = old
                .and_then(|o| o.inflight.get(&r.name).cloned())
                .unwrap_or_default();
            inflight.insert(r.name.clone(), counter);
            if let Some(o) = &r.oauth {
                tokens.insert(r.name.clone(), broker.source(&o.settings));
            }
        }
        Generation {
            number,
            config: Arc::new(config),
            inflight,
            tokens,
        }
    }

    pub fn token_source(&self, route: &str) -> Option<&Arc<TokenSource>> {
        self.tokens.get(route)
    }
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
    generation: ArcSwap<Generation>,
    next_generation: AtomicU64,
    /// The pre-TLS admission set, shared with every listener's connection filter.
    pub admitted: Arc<ArcSwap<IpSet>>,
    pub tls: TlsStage,
    pub metrics: Arc<Metrics>,
    pub tokens: TokenBroker,
    pub receivers: Receivers,
    pub audit: AuditLog,
    /// The last good `@salesforce` set fetched by the periodic refresh, used by every reload
    /// while `[source.salesforce_refresh]` is on.
    pub refreshed_ranges: arc_swap::ArcSwapOption<crate::config::ranges::SalesforceRanges>,
    ready: AtomicBool,
    draining: AtomicBool,
    inflight_total: Arc<AtomicUsize>,
}

impl Runtime {
    /// Build the runtime around a first, already validated configuration.
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Result<Arc<Runtime>, String> {
        let audit = AuditLog::open(&config.server.audit_log).map_err(|e| e.to_string())?;
        let sc = crate::tls::server_config(&config, metrics.clone()).map_err(|e| e.to_string())?;
        let m = metrics.clone();
        let tokens = TokenBroker::new(Arc::new(move |outcome: FetchOutcome, took: Duration| {
            m.observe_token_fetch(outcome.label(), took);
        }));
        let receivers = Receivers::new(&config.limits, config.timeouts.upstream_connect);
        let first = Generation::build(1, config, None, &tokens);
        let rt = Arc::new(Runtime {
            admitted: Arc::new(ArcSwap::from_pointee(first.config.source.admitted.clone())),
            generation: ArcSwap::from_pointee(first),
            next_generation: AtomicU64::new(2),
            tls: TlsStage::new(sc),
            metrics,
            tokens,
            receivers,
            audit,
            refreshed_ranges: arc_swap::ArcSwapOption::empty(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            inflight_total: Arc::new(AtomicUsize::new(0)),
        });
        rt.announce(&rt.current());
        Ok(rt)
    }

    /// The generation in force now.
    pub fn current(&self) -> Arc<Generation> {
        self.generation.load_full()
    }

    /// Validate-then-swap: build the TLS configuration for `config` and, only if that works,
    /// make it the generation in force. Returns the new generation number.
    pub fn apply(&self, config: Config) -> Result<u64, String> {
        let sc =
            crate::tls::server_config(&config, self.metrics.clone()).map_err(|e| e.to_string())?;
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
        let generation = Generation::build(number, config, Some(&self.current()), &self.tokens);
        self.admitted
            .store(Arc::new(generation.config.source.admitted.clone()));
        self.tls.replace(sc);
        self.announce(&generation);
        self.generation.store(Arc::new(generation));
        number
    }

    /// Publish a generation's metrics (policy generation, routes, certificate expiry).
    fn announce(&self, g: &Generation) {
        for r in g.config.routes.iter() {
            self.metrics.init_route(&r.name);
        }
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
    pub fn begin(&self, generation: &Generation, route: &Route) -> Option<InflightSlot> {
        let counter = generation.inflight.get(&route.name)?.clone();
        if counter.fetch_add(1, Ordering::AcqRel) >= route.max_inflight {
            counter.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.inflight_total.fetch_add(1, Ordering::AcqRel);
        Some(InflightSlot {
            route: counter,
            total: self.inflight_total.clone(),
            _gauge: self.metrics.inflight(&route.name),
        })
    }

    pub fn inflight(&self) -> usize {
        self.inflight_total.load(Ordering::Acquire)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
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
