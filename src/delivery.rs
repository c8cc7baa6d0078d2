//! Queued delivery: the workers that take committed messages out of the store and deliver
//! them, with retries, leases and dead letters.
//!
//! ```text
//! Dispatcher (one task): for every route of the generation in force, while the route has
//!   fewer than `concurrency` deliveries running here: Store::claim (lease, fleet-wide
//!   concurrency) ─► spawn one delivery; sleep until a message is queued, a delivery ends,
//!   or a second passes
//! One delivery: [inject: parse the stored body, fetch a token now, rewrite] ─► Deliver
//!   ─► verified Ack: Store::delivered           (audit `delivered`)
//!   ─► anything else: RetryPolicy::after_failure ─► Store::retry_later (audit `retried`)
//!                                                ─► Store::dead        (audit `dead_lettered`)
//!   ─► a message the route can no longer send (a callback URL off the token's instance):
//!      Store::dead at once
//! ```
//! The delivery's settings are the route's in force when it is claimed, so a reload changes
//! them; a route moved from queued back to direct still delivers what it queued. A message of
//! a route no reload kept stays in the store (shown by `queue list`) until an operator drops
//! it or the route returns.
//!
//! What defends against loss: a message leaves the store only through `delivered` (after
//! the receiver's verified Ack, the same check as direct mode) or an operator's `drop`. A
//! worker that dies mid-delivery leaves its lease; the lease expires and another worker (or
//! the next start, through [`recover`]) takes the message again. So delivery is at least
//! once: a crash between the receiver's Ack and `delivered` delivers that message again.
//!
//! Every delivery counts as a message in flight, so SIGTERM's drain waits for it (up to
//! `timeouts.drain_ms`); the dispatcher claims nothing once draining began.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::audit::{self, AuditRecord, SessionIdSeen};
use crate::metrics::{delivery_outcome, store_op};
use crate::pipeline::Deliver;
use crate::policy::SessionPlan;
use crate::reject::{Failure, Rejection};
use crate::runtime::{RouteState, Runtime};
use crate::store::{AfterFailure, Claimed, Filter, Retention, RetryPolicy, State, Store};
use crate::upstream::Delivery;
use crate::{inject, soap};

/// Values of the audit record's `decision` for a delivery of a queued message.
pub mod decision {
    pub const DELIVERED: &str = "delivered";
    pub const RETRIED: &str = "retried";
    pub const DEAD_LETTERED: &str = "dead_lettered";
}

/// How often the dispatcher looks for due messages when nothing wakes it.
const POLL: Duration = Duration::from_secs(1);
/// How long the dispatcher lets wake-ups gather before it claims.
const GATHER: Duration = Duration::from_millis(2);
/// How often the queue metrics are refreshed and delivered messages pruned.
const HOUSEKEEPING: Duration = Duration::from_secs(5);
/// Delivered messages are kept this long (for `queue list --state delivered`).
const KEEP_DELIVERED: Duration = Duration::from_secs(24 * 3600);

/// This process's name as a lease owner: `host/pid/start/`, `start` random per process
/// start. A lease records who holds a message, so a restart can tell its own dead
/// predecessor's leases from a live process's; the random part tells a restarted container
/// (always PID 1 under the same host name) from the one before it.
pub fn worker_id() -> String {
    format!(
        "{}/{}/{:08x}/",
        hostname(),
        std::process::id(),
        rand::random::<u32>()
    )
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Whether the lease owner `owner` is a process of this host that no longer runs, as seen by
/// the live process `me` (both [`worker_id`]s).
fn dead_here(owner: &str, me: &str) -> bool {
    let host = format!("{}/", hostname());
    let Some(rest) = owner.strip_prefix(&host) else {
        return false;
    };
    if owner == me {
        return false;
    }
    let pid = rest.split('/').next().unwrap_or("");
    let my_pid = std::process::id().to_string();
    // Our own PID with another start value: a predecessor (this process is alive, so that
    // one is not). Another PID: dead when /proc has no such process.
    pid == my_pid || !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Start-up: messages leased by a process of this host that no longer runs are due now
/// (a worker that died mid-delivery). A live process's leases (a graceful upgrade's old
/// process, still delivering) are left alone; another host's expire by themselves.
pub async fn recover(store: &dyn Store, me: &str) -> usize {
    let delivering = Filter {
        state: Some(State::Delivering),
        ..Filter::default()
    };
    let Ok(list) = store.list(&delivering).await else {
        return 0;
    };
    let mut dead_owners: Vec<String> = list
        .iter()
        .filter_map(|m| m.lease_owner.clone())
        .filter(|o| dead_here(o, me))
        .collect();
    dead_owners.sort();
    dead_owners.dedup();
    let mut n = 0;
    for owner in dead_owners {
        match store.release(&owner, SystemTime::now()).await {
            Ok(k) => n += k,
            Err(e) => {
                tracing::error!(error = %e, "cannot take back messages of a process that died")
            }
        }
    }
    if n > 0 {
        tracing::warn!(
            messages = n,
            "took back messages whose delivery a stopped process left unfinished: they are delivered again (at least once)"
        );
    }
    n
}

/// The route's retry schedule.
pub fn retry_policy(route: &crate::config::Route) -> RetryPolicy {
    let d = &route.delivery;
    RetryPolicy {
        initial: d.retry_initial,
        max: d.retry_max,
        max_age: d.max_age,
    }
}

/// The lease a delivery on `route` takes: `[store] lease_ms`, but never shorter than the
/// longest the delivery may legitimately take (a token fetch, then the receiver's timeout,
/// plus a margin), so a slow but live delivery never loses its message to a second worker.
pub fn lease_for(route: &crate::config::Route, lease_ms: Duration) -> Duration {
    let token = route
        .oauth
        .as_ref()
        .map_or(Duration::ZERO, |o| o.settings.total_timeout);
    lease_ms.max(route.upstream_timeout + token + Duration::from_secs(2))
}

/// The background service that runs the dispatcher and the housekeeping.
pub struct Deliveries {
    pub rt: Arc<Runtime>,
}

#[async_trait]
impl BackgroundService for Deliveries {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(store) = self.rt.store.clone() else {
            return;
        };
        recover(store.as_ref(), &self.rt.worker_id).await;
        let running: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let mut last_housekeeping: Option<std::time::Instant> = None;
        loop {
            if self.rt.is_draining() {
                return;
            }
            if last_housekeeping.is_none_or(|t| t.elapsed() >= HOUSEKEEPING) {
                housekeeping(&self.rt, store.as_ref()).await;
                last_housekeeping = Some(std::time::Instant::now());
            }
            dispatch(&self.rt, &store, &running).await;
            tokio::select! {
                _ = self.rt.queued.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => return,
            }
            // Let a burst of messages queued (or deliveries ended) gather, so one claim takes
            // several: a claim is a write transaction.
            tokio::time::sleep(GATHER).await;
        }
    }
}

/// Claim and start deliveries on every route, up to each route's concurrency.
async fn dispatch(
    rt: &Arc<Runtime>,
    store: &Arc<dyn Store>,
    running: &Arc<Mutex<HashMap<String, usize>>>,
) {
    let gen = rt.current();
    let lease = gen
        .config
        .store
        .as_ref()
        .map_or(Duration::from_secs(30), |s| s.lease);
    for state in gen.routes() {
        let name = &state.route.name;
        let limit = state.route.delivery.concurrency;
        let lease = lease_for(&state.route, lease);
        loop {
            if rt.is_draining() {
                return;
            }
            let here = running
                .lock()
                .map(|m| m.get(name).copied().unwrap_or(0))
                .unwrap_or(limit);
            if here >= limit {
                break;
            }
            let claimed = store
                .claim_batch(
                    name,
                    &rt.worker_id,
                    lease,
                    limit,
                    limit - here,
                    SystemTime::now(),
                )
                .await;
            let batch = match claimed {
                Ok(b) if b.is_empty() => break,
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(route = %name, error = %e, "cannot claim queued messages; trying again shortly");
                    state.metrics.store_error(store_op::CLAIM);
                    break;
                }
            };
            for m in batch {
                if let Ok(mut map) = running.lock() {
                    *map.entry(name.clone()).or_default() += 1;
                }
                start_delivery(rt, store, running, state, m);
            }
        }
    }
}

/// One claimed message's delivery, as a task of its own.
fn start_delivery(
    rt: &Arc<Runtime>,
    store: &Arc<dyn Store>,
    running: &Arc<Mutex<HashMap<String, usize>>>,
    state: &Arc<RouteState>,
    m: Claimed,
) {
    let (rt, store, running, state) = (rt.clone(), store.clone(), running.clone(), state.clone());
    tokio::spawn(async move {
        let worker = rt.worker_id.clone();
        let counter = rt.inflight_counter().clone();
        counter.fetch_add(1, Ordering::AcqRel);
        let one = Attempt {
            store: store.as_ref(),
            receiver: &rt.receivers,
            audit: &rt.audit,
            metrics: &rt.metrics,
            worker: &worker,
        };
        // A panic in one delivery must not take the count down with it: the lease
        // expires and the message is tried again.
        let result =
            futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(one.run(&state, m)))
                .await;
        if result.is_err() {
            tracing::error!(route = %state.route.name, "a delivery panicked; the message is tried again when its lease ends");
            state.metrics.panic();
        }
        counter.fetch_sub(1, Ordering::AcqRel);
        if let Ok(mut map) = running.lock() {
            if let Some(n) = map.get_mut(&state.route.name) {
                *n = n.saturating_sub(1);
            }
        }
        rt.queued.notify_one();
    });
}

/// Queue metrics, and forgetting delivered messages and old duplicate-window entries.
async fn housekeeping(rt: &Runtime, store: &dyn Store) {
    let gen = rt.current();
    let routes: Vec<String> = gen.routes().map(|r| r.route.name.clone()).collect();
    let depth = store.depth().await;
    let oldest = store.oldest_waiting(SystemTime::now()).await;
    match (depth, oldest) {
        (Ok(depth), Ok(oldest)) => {
            let depth: Vec<(String, &'static str, u64)> = depth
                .into_iter()
                .map(|d| (d.route, d.state.as_str(), d.messages))
                .collect();
            rt.metrics.queue_depth(&routes, &depth, &oldest);
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot read the queue's depth");
            rt.metrics.store_error(store_op::DEPTH);
        }
    }
    let seen = gen
        .routes()
        .map(|r| r.route.delivery.dedupe_window)
        .max()
        .unwrap_or_default();
    let keep = Retention {
        delivered: KEEP_DELIVERED,
        seen,
    };
    if let Err(e) = store.prune(SystemTime::now(), &keep).await {
        tracing::error!(error = %e, "cannot prune the store");
        rt.metrics.store_error(store_op::PRUNE);
    }
}

/// One delivery of one claimed message, with what it needs from outside.
pub struct Attempt<'a> {
    pub store: &'a dyn Store,
    pub receiver: &'a dyn Deliver,
    pub audit: &'a audit::AuditLog,
    pub metrics: &'a crate::metrics::Metrics,
    pub worker: &'a str,
}

/// How one attempt ended, before the store is told.
enum Verdict {
    Delivered,
    /// Worth another try: the label for `obmguard_deliveries_total` and why.
    Failed(&'static str, Rejection),
    /// The route cannot send this message as it stands: dead at once.
    Refused(Rejection),
}

impl Attempt<'_> {
    /// Deliver `m` on `state`'s route and record the outcome in the store, the metrics and
    /// the audit trail.
    pub async fn run(&self, state: &RouteState, m: Claimed) {
        let started = std::time::Instant::now();
        let verdict = self.send(state, &m).await;
        let route = &state.route;
        let policy = retry_policy(route);
        let now = SystemTime::now();
        let (decision, reason, finished) = match &verdict {
            Verdict::Delivered => {
                state.metrics.delivery(delivery_outcome::DELIVERED);
                let r = self.store.delivered(m.id, self.worker).await;
                (decision::DELIVERED, None, r)
            }
            Verdict::Failed(label, why) => {
                state.metrics.delivery(label);
                let seed = (m.id as u64) ^ u64::from(std::process::id()) << 32;
                match policy.after_failure(m.attempts, m.age_from, now, seed) {
                    AfterFailure::RetryAt(at) => {
                        let r = self
                            .store
                            .retry_later(m.id, self.worker, at, &why.to_string())
                            .await;
                        (decision::RETRIED, Some(why.reason()), r)
                    }
                    AfterFailure::Dead => {
                        state.metrics.dead_letter();
                        let r = self.store.dead(m.id, self.worker, &why.to_string()).await;
                        tracing::warn!(route = %route.name, message = m.id, attempts = m.attempts, "a message reached its maximum age undelivered: it is a dead letter (obmguard queue replay puts it back)");
                        (decision::DEAD_LETTERED, Some(why.reason()), r)
                    }
                }
            }
            Verdict::Refused(why) => {
                state.metrics.delivery(delivery_outcome::REFUSED);
                state.metrics.dead_letter();
                tracing::warn!(route = %route.name, message = m.id, reason = why.reason(), "the route cannot send this message as it stands: it is a dead letter");
                let r = self.store.dead(m.id, self.worker, &why.to_string()).await;
                (decision::DEAD_LETTERED, Some(why.reason()), r)
            }
        };
        match finished {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(route = %route.name, message = m.id, "the message's lease had passed to another worker before this delivery ended")
            }
            Err(e) => {
                tracing::error!(route = %route.name, message = m.id, error = %e, "cannot record the delivery's outcome; the message is tried again when its lease ends (it may be delivered twice)");
                state.metrics.store_error(store_op::FINISH);
            }
        }
        self.record(state, &m, decision, reason, started.elapsed());
    }

    async fn send(&self, state: &RouteState, m: &Claimed) -> Verdict {
        let route = &state.route;
        let inject = route.message.session_id == crate::config::SessionMode::Inject;
        let token = if inject {
            match inject::token(state, SessionPlan::Inject).await {
                Ok(t) => t,
                Err(f) => return Verdict::Failed(delivery_outcome::TOKEN_UNAVAILABLE, f.into()),
            }
        } else {
            None
        };
        let body = match &token {
            None => m.body.clone(),
            Some(t) => match inject_into(state, &m.body, t) {
                Ok(b) => b,
                Err(Rejection::Failed(f @ Failure::TokenUnavailable(_))) => {
                    return Verdict::Failed(delivery_outcome::TOKEN_UNAVAILABLE, f.into())
                }
                Err(r) => return Verdict::Refused(r),
            },
        };
        let bearer = token
            .as_ref()
            .filter(|_| route.oauth.as_ref().is_some_and(|o| o.header));
        let delivery = Delivery {
            route,
            body,
            client_ip: None,
            soap_action: None,
            bearer: bearer.map(|t| t.access_token.expose()),
            request_id: &m.request_id,
        };
        let (result, report) = self.receiver.deliver(&delivery).await;
        if report.unsolicited {
            state.metrics.unsolicited();
        }
        state.metrics.observe_upstream(report.elapsed);
        match inject::after_delivery(state, token.as_deref(), result) {
            Ok(()) => Verdict::Delivered,
            Err(f) => {
                let label = match f {
                    Failure::UpstreamNack
                    | Failure::UpstreamFault(_)
                    | Failure::UpstreamStatus(_) => delivery_outcome::NACKED,
                    _ => delivery_outcome::UPSTREAM_ERROR,
                };
                Verdict::Failed(label, f.into())
            }
        }
    }

    fn record(
        &self,
        state: &RouteState,
        m: &Claimed,
        decision: &str,
        reason: Option<&str>,
        took: Duration,
    ) {
        let rec = AuditRecord {
            time: audit::timestamp(SystemTime::now()).into(),
            request_id: m.request_id.as_str().into(),
            route: state.route.name.as_str().into(),
            peer: "-".into(),
            client_ip: "-".into(),
            client_cert_sha256: None,
            client_cert_subject: None,
            // As the request's record has it (Salesforce sends the 18-character form).
            organization_id: Some(
                crate::sfid::SfId::parse(&m.organization_id)
                    .map_or_else(|_| m.organization_id.as_str().into(), |o| o.to_18().into()),
            ),
            action_id: Some(m.action_id.as_str().into()),
            notification_ids: m
                .notification_ids
                .iter()
                .map(|n| n.as_str().into())
                .collect(),
            sobject_types: Vec::new(),
            session_id: SessionIdSeen::Unknown,
            session_action: None,
            mode: Some(state.route.message.session_id.as_str().into()),
            decision: decision.into(),
            reason: reason.map(Into::into),
            upstream_status: None,
            ack: Some(decision == decision::DELIVERED),
            duration_ms: took.as_secs_f64() * 1000.0,
            upstream_ms: None,
            message_id: Some(m.id),
            attempt: Some(m.attempts),
            vpce_id: None,
        };
        // A record lost is counted by the audit log (obmguard_audit_write_failures_total).
        let _ = self.audit.write(&rec);
        tracing::info!(
            route = %state.route.name,
            message = m.id,
            attempt = m.attempts,
            request_id = %m.request_id,
            decision,
            reason = reason.unwrap_or("-"),
            "delivery"
        );
    }
}

/// An inject route's stored body (nil SessionId) with a token valid now, and its callback
/// URLs rewritten or verified as the route says.
fn inject_into(
    state: &RouteState,
    stored: &Bytes,
    token: &crate::token::Token,
) -> Result<Bytes, Rejection> {
    let route = &state.route;
    let msg = soap::parse(stored, &route.message.xml)
        .map_err(|_| Rejection::from(Failure::Internal("a stored message does not parse")))?;
    let how = inject::rewrite_for(SessionPlan::Inject, Some(token), route.oauth.as_ref())?;
    let out =
        soap::rewrite(stored, &msg, &how).map_err(|e| inject::rewrite_refused(&route.name, e))?;
    Ok(match out {
        std::borrow::Cow::Borrowed(_) => stored.clone(),
        std::borrow::Cow::Owned(v) => Bytes::from(v),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_owner_is_dead_only_when_it_is_this_hosts_and_not_running() {
        let me = worker_id();
        let host = hostname();
        let pid = std::process::id();
        assert!(!dead_here(&me, &me), "this process");
        assert!(
            dead_here(&format!("{host}/{pid}/00000000/"), &me),
            "same PID, another start: a restarted container's predecessor"
        );
        assert!(!dead_here("elsewhere/1/00000000/", &me), "another host's");
        assert!(
            !dead_here(&format!("{host}/1/00000000/"), &me),
            "PID 1 runs here"
        );
        assert!(dead_here(&format!("{host}/999999999/00000000/"), &me));
    }
}
