//! The decisions for one message, stage by stage. `proxy` reads the request head off the
//! connection and writes the answer; everything between is here, with the outside world behind
//! traits ([`Deliver`] for the receiver, [`Request`] for the request, [`Clock`], and the
//! route's [`crate::token::TokenProvider`]), so any combination of route, identity, policy,
//! session mode and receiver outcome can be tested in process.
//!
//! ```text
//! intake::check_framing         400 (CL+TE, two lengths) / 431
//! route by exact path           404
//! accept::client_ip + ranges    403
//! identity: validity, rule      403
//! intake::check_message_head    405 / 415 / 413 (declared length)
//! in-flight slot                503
//! Request::read_body            413 / 408 / 400, one deadline
//! soap::parse                   400
//! policy::check                 400 / 403 (ids, org, action, session id)
//! queued route:
//!   queue::body_to_store        403 (callback URL): the body as forwarded, without a token
//!   queue::admit                Ack once durably committed (or a duplicate); 503 if full
//!                               or the store fails
//! direct route:
//!   queue::seen_before          Ack without delivery for a duplicate (with dedupe); 503
//!   inject::token               503
//!   soap::rewrite               403 (callback URL) / 500
//!   Deliver::deliver            Ack, or 502 / 504
//!   inject::after_delivery      drop an invalid token, scrub and cut a relayed fault
//!   queue::record_acked         (with dedupe)
//! ```
//! Each step's refusal is a [`Refusal`] (the sender's to fix, 4xx) or a [`Failure`] (ours or
//! the receiver's, 5xx); `reject` turns either into the answer. What was learnt on the way goes
//! into [`Facts`] for the record stage, whatever the outcome.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_http::RequestHeader;

use crate::accept::Shown;
pub use crate::queue::Accepted;
use crate::record::Facts;
use crate::reject::{Failure, Refusal, Rejection};
use crate::runtime::Generation;
use crate::store::Store;
use crate::upstream::{Delivery, Receivers, Report};
use crate::{accept, inject, intake, policy, queue, soap};

/// The request header whose value goes to the receiver as it came (`SOAPAction`), looked up
/// by a ready name: a name given as text is parsed again on every lookup.
static SOAPACTION: http::HeaderName = http::HeaderName::from_static("soapaction");

/// The receiver, as the pipeline sees it.
#[async_trait]
pub trait Deliver: Send + Sync {
    /// Deliver one message; `Ok` is the receiver's verified Ack.
    async fn deliver(&self, d: &Delivery<'_>) -> (Result<(), Failure>, Report);
}

#[async_trait]
impl Deliver for Receivers {
    async fn deliver(&self, d: &Delivery<'_>) -> (Result<(), Failure>, Report) {
        Receivers::deliver(self, d).await
    }
}

/// The request as it arrives: its head at once, its body only once the head has passed every
/// check. The head is borrowed from where it was read, never copied: the pipeline is done with
/// it before it asks for the body.
#[async_trait]
pub trait Request: Send {
    /// The head as read off the connection.
    fn head(&self) -> &RequestHeader;
    /// The raw head named both Content-Length and Transfer-Encoding (pingora keeps only one).
    fn raw_length_conflict(&self) -> bool;
    /// The whole body, at most `max` bytes, within `deadline`.
    async fn read_body(&mut self, max: usize, deadline: Duration) -> Result<Bytes, Refusal>;
}

/// Wall-clock time, for the certificate validity check.
pub trait Clock: Send + Sync {
    fn unix_now(&self) -> i64;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_now(&self) -> i64 {
        crate::tls::unix_now()
    }
}

/// What the pipeline needs from outside, besides the policy generation.
pub struct Outside<'a> {
    pub receiver: &'a dyn Deliver,
    pub clock: &'a dyn Clock,
    /// Messages in flight over all routes (for the drain).
    pub inflight_total: &'a Arc<AtomicUsize>,
    /// The store, when `[store]` is configured.
    pub store: Option<&'a dyn Store>,
    /// Told when a message was queued, so a delivery worker looks at once.
    pub queued: &'a tokio::sync::Notify,
}

/// Run one message through every stage. `Ok` means Salesforce gets an Ack, and says why. `facts`
/// collects what the record stage needs; `facts.body_read` says whether the body was consumed
/// (if not, the connection cannot be reused).
pub async fn run(
    out: &Outside<'_>,
    gen: &Generation,
    request: &mut dyn Request,
    f: &mut Facts,
) -> Result<Accepted, Rejection> {
    let config = &gen.config;
    if request.raw_length_conflict() {
        return Err(Refusal::AmbiguousLength.into());
    }
    let req = request.head();
    intake::check_framing(req, &config.limits)?;
    let state = gen
        .route(intake::path(req))
        .ok_or(Refusal::UnknownPath)?
        .clone();
    f.route = Some(state.clone());
    let route = &state.route;

    let xff = req
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.as_bytes());
    let client = accept::client_ip(f.origin.client.get(), xff, &config.source.trusted_proxies);
    if client != f.client_ip.get() {
        f.client_ip = Shown::new(client);
    }
    if !route.source.contains(client) {
        return Err(Refusal::SourceIp(client).into());
    }
    f.identity
        .check_validity(out.clock.unix_now())
        .map_err(Refusal::Identity)?;
    if let Some(rule) = &route.identity {
        rule.check(&f.identity).map_err(Refusal::Identity)?;
    }
    state
        .client_not_after
        .store(f.identity.not_after, Ordering::Relaxed);

    intake::check_message_head(req, route.message.max_body_bytes)?;
    let soap_action = req
        .headers
        .get(&SOAPACTION)
        .map(|v| Bytes::copy_from_slice(v.as_bytes()));
    let _slot = gen
        .begin(&state, out.inflight_total)
        .ok_or(Failure::Overloaded)?;
    let body = request
        .read_body(route.message.max_body_bytes, config.timeouts.request_body)
        .await?;
    f.body_read = true;

    let msg = soap::parse(&body, &route.message.xml).map_err(Refusal::BadXml)?;
    let plan = policy::check(&msg, &route.message);
    f.message = Some(msg);
    let plan = plan?;
    f.plan = Some(plan);
    let msg = f
        .message
        .as_ref()
        .ok_or(Failure::Internal("message lost"))?;

    let store = || out.store.ok_or(Failure::StoreUnavailable);
    if route.delivery.queued() {
        let stored = queue::body_to_store(&state, &body, msg, plan.session)?;
        let accepted = queue::admit(store()?, config, &state, msg, stored, &f.request_id).await?;
        if let Accepted::Queued(id) = accepted {
            f.queued = Some(id);
            out.queued.notify_one();
        }
        return Ok(accepted);
    }
    if route.delivery.dedupe && queue::seen_before(store()?, &state, msg).await? {
        return Ok(Accepted::Duplicate);
    }

    let token = inject::token(&state, plan.session).await?;
    let how = inject::rewrite_for(plan.session, token.as_deref(), route.oauth.as_ref())?;
    let rewritten =
        soap::rewrite(&body, msg, &how).map_err(|e| inject::rewrite_refused(&route.name, e))?;
    let forwarded = match rewritten {
        std::borrow::Cow::Borrowed(_) => body.clone(),
        std::borrow::Cow::Owned(v) => Bytes::from(v),
    };
    let bearer = token
        .as_ref()
        .filter(|_| route.oauth.as_ref().is_some_and(|o| o.header));
    let delivery = Delivery {
        route,
        body: forwarded,
        client_ip: Some(f.client_ip.text()),
        soap_action: soap_action.as_deref(),
        bearer: bearer.map(|t| t.access_token.expose()),
        request_id: &f.request_id,
    };
    let (result, report) = out.receiver.deliver(&delivery).await;
    if report.unsolicited {
        state.metrics.unsolicited();
    }
    f.upstream = Some(report);
    inject::after_delivery(&state, token.as_deref(), result)?;
    if route.delivery.dedupe {
        queue::record_acked(store()?, &state, msg).await;
    }
    Ok(Accepted::Delivered)
}

#[cfg(test)]
mod tests;
