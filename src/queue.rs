//! Stage 6 of a queued route (and the duplicate check of a direct one): the store on the
//! request path.
//!
//! - Queued: commit the message durably, then say so; the pipeline answers Salesforce with an
//!   Ack only after [`admit`] returned `Queued` (the commit's fsync is done) or `Duplicate`
//!   (every notification in it was accepted before). Over a bound, or when the store cannot
//!   commit, the answer is 503 and Salesforce retries: never an Ack for what is not stored.
//! - Direct with `dedupe`: [`seen_before`] before delivery (every notification already acked
//!   by the receiver: Ack, deliver nothing), [`record_acked`] after the receiver's Ack.
//!
//! Threat model: the store outlives the request and is read by operators, so it must never
//! hold a secret. What is committed is the body as it will be forwarded after the session
//! policy: a session id is stripped or removed before, and an inject route's token is put in
//! at delivery time (tokens expire while messages wait). `check` refuses queued with audit,
//! the one mode that forwards session ids. Not here: delivering (`delivery`), the engine
//! (`store`).

use std::borrow::Cow;
use std::time::{Instant, SystemTime};

use bytes::Bytes;

use crate::config::Config;
use crate::policy::SessionPlan;
use crate::reject::{Failure, Rejection};
use crate::runtime::RouteState;
use crate::sfid::SfId;
use crate::soap::{self, CallbackUrls, Message, SessionRewrite};
use crate::store::{Admission, Bounds, NewMessage, Store};

/// Why the pipeline answered Salesforce with an Ack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// The receiver's verified Ack (direct mode).
    Delivered,
    /// Committed durably (queued mode); delivery follows. Carries the store's message id.
    Queued(i64),
    /// Every notification was accepted (queued) or acked (direct) before: not delivered again.
    Duplicate,
}

/// The body a queued route stores: as it will be forwarded, but with no token in it. An
/// inject route stores the nil form and injects at delivery time; with `rewrite_urls` its
/// callback URLs are tried now, so a message the rewrite would refuse is refused while
/// Salesforce is still listening.
pub fn body_to_store(
    state: &RouteState,
    body: &Bytes,
    msg: &Message,
    session: SessionPlan,
) -> Result<Bytes, Rejection> {
    let route = &state.route;
    let how = match session {
        SessionPlan::Keep => SessionRewrite::Keep,
        SessionPlan::Nil | SessionPlan::Inject => SessionRewrite::Nil,
        SessionPlan::Remove => SessionRewrite::Remove,
    };
    if session == SessionPlan::Inject && route.oauth.as_ref().is_some_and(|o| o.rewrite_urls) {
        let probe = SessionRewrite::Inject {
            token: "probe",
            urls: CallbackUrls::Rewrite("https://probe.invalid"),
        };
        soap::rewrite(body, msg, &probe)
            .map_err(|e| crate::inject::rewrite_refused(&route.name, e))?;
    }
    let stored = soap::rewrite(body, msg, &how)
        .map_err(|e| crate::inject::rewrite_refused(&route.name, e))?;
    Ok(match stored {
        Cow::Borrowed(_) => body.clone(),
        Cow::Owned(v) => Bytes::from(v),
    })
}

/// The organization id's canonical 15-character form and the Notification Ids in their
/// 18-character form (the policy stage has validated every one).
fn keys(msg: &Message) -> Result<(String, Vec<String>), Failure> {
    let bad = |_| Failure::Internal("an id the policy accepted does not parse");
    let org = SfId::parse(&msg.organization_id).map_err(bad)?;
    let ids = msg
        .notification_ids
        .iter()
        .map(|n| SfId::parse(n).map(|id| id.to_18()).map_err(bad))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((org.as_15().to_string(), ids))
}

/// Commit a checked message on a queued route.
pub async fn admit(
    store: &dyn Store,
    config: &Config,
    state: &RouteState,
    msg: &Message,
    body: Bytes,
    request_id: &str,
) -> Result<Accepted, Failure> {
    let route = &state.route;
    let d = &route.delivery;
    let (organization_id, notification_ids) = keys(msg)?;
    let global = config.store.as_ref().ok_or(Failure::StoreUnavailable)?;
    let bounds = Bounds {
        max_messages: global.max_messages,
        max_bytes: global.max_bytes,
        per_route_max_messages: d.max_messages,
        per_route_max_bytes: d.max_bytes,
    };
    let m = NewMessage {
        route: route.name.clone(),
        organization_id,
        notification_ids,
        action_id: msg.action_id.clone(),
        body,
        accepted_at: SystemTime::now(),
        request_id: request_id.to_string(),
    };
    let started = Instant::now();
    let admitted = store
        .admit(m, d.dedupe.then_some(d.dedupe_window), &bounds)
        .await;
    state.metrics.observe_commit(started.elapsed());
    match admitted {
        Ok(Admission::Stored { id }) => Ok(Accepted::Queued(id)),
        Ok(Admission::Duplicate) => {
            state.metrics.duplicate();
            Ok(Accepted::Duplicate)
        }
        Ok(Admission::Full(bound)) => {
            tracing::warn!(route = %route.name, bound = bound.as_str(), "the store is full: message refused with 503 (Salesforce retries)");
            Err(Failure::StoreFull(bound.as_str()))
        }
        Err(e) => {
            tracing::error!(route = %route.name, error = %e, "cannot commit the message: refused with 503 (Salesforce retries)");
            state.metrics.store_error(crate::metrics::store_op::ADMIT);
            Err(Failure::StoreUnavailable)
        }
    }
}

/// Direct mode with `dedupe`: whether the receiver acked every notification of this message
/// within the route's window. A store that cannot answer is a 503: delivering blind could
/// deliver twice, which is what the operator turned dedupe on to prevent.
pub async fn seen_before(
    store: &dyn Store,
    state: &RouteState,
    msg: &Message,
) -> Result<bool, Failure> {
    let route = &state.route;
    let (org, ids) = keys(msg)?;
    let window = route.delivery.dedupe_window;
    match store
        .seen_all(&route.name, &org, &ids, window, SystemTime::now())
        .await
    {
        Ok(seen) => {
            if seen {
                state.metrics.duplicate();
            }
            Ok(seen)
        }
        Err(e) => {
            tracing::error!(route = %route.name, error = %e, "cannot check for duplicates: refused with 503 (Salesforce retries)");
            state.metrics.store_error(crate::metrics::store_op::SEEN);
            Err(Failure::StoreUnavailable)
        }
    }
}

/// Direct mode with `dedupe`: the receiver acked this message. A failure to record it is
/// logged and counted; the Ack stands (the receiver has the message), and a retry of it may
/// then be delivered again.
pub async fn record_acked(store: &dyn Store, state: &RouteState, msg: &Message) {
    let route = &state.route;
    let Ok((org, ids)) = keys(msg) else { return };
    if let Err(e) = store
        .record_acked(&route.name, &org, &ids, SystemTime::now())
        .await
    {
        tracing::error!(route = %route.name, error = %e, "cannot record the receiver's Ack for duplicate detection: a retry of this message may be delivered again");
        state.metrics.store_error(crate::metrics::store_op::RECORD);
    }
}
