//! Stage 5: what inject mode decides around the access token.
//!
//! - Fetch a token for the message (from the route's [`TokenProvider`]); without one the
//!   message is answered 503 and Salesforce retries.
//! - Decide how the callback URLs beside the token are treated: rewritten to the token's
//!   instance, or verified against it ([`CallbackUrls`]); the rewrite itself (in `soap`) refuses
//!   a URL it cannot read, and that refusal is the sender's to fix.
//! - After delivery: drop the cached token when the receiver reports `INVALID_SESSION_ID`, and
//!   scrub the token from anything of the receiver's that goes back to Salesforce before it is
//!   cut to size (a cut token would survive a scrub done after the cut).
//!
//! Threat model: the token is a live credential for the org. Its one legitimate destination
//! is the receiver, inside the body (or an `Authorization` header when the route asks); it must
//! never reach Salesforce's monitoring, a log line, the audit trail or a host the message names
//! that is not the token's instance. Not here: fetching and caching (`token`), HTTP (`upstream`).

use std::sync::Arc;

use crate::config::RouteOAuth;
use crate::policy::SessionPlan;
use crate::reject::{Failure, Refusal, Rejection};
use crate::runtime::RouteState;
use crate::soap::{CallbackUrls, RewriteError, SessionRewrite};
use crate::token::{Token, TokenFailure};

/// The longest receiver faultstring relayed to Salesforce, in characters.
pub const FAULTSTRING_MAX: usize = 512;

/// The token for a message the plan injects into; `None` for every other plan.
pub async fn token(route: &RouteState, plan: SessionPlan) -> Result<Option<Arc<Token>>, Failure> {
    if plan != SessionPlan::Inject {
        return Ok(None);
    }
    let source = route
        .tokens
        .as_ref()
        .ok_or(Failure::Internal("inject without a token source"))?;
    match source.token().await {
        Ok(t) => Ok(Some(t)),
        Err(e) => {
            let (log, suppressed) = route.token_warnings.admit(std::time::Instant::now());
            if suppressed > 0 {
                tracing::warn!(route = %route.route.name, suppressed, "token failures not logged in the last minute (each is counted in the metrics and the audit trail)");
            }
            if log {
                tracing::warn!(route = %route.route.name, error = %e, "no access token for inject");
            }
            Err(Failure::TokenUnavailable(e.kind()))
        }
    }
}

/// How the SessionId element is rewritten for `plan`, with `token` when injecting.
pub fn rewrite_for<'a>(
    plan: SessionPlan,
    token: Option<&'a Token>,
    oauth: Option<&'a RouteOAuth>,
) -> Result<SessionRewrite<'a>, Failure> {
    Ok(match (plan, token, oauth) {
        (SessionPlan::Keep, ..) => SessionRewrite::Keep,
        (SessionPlan::Nil, ..) => SessionRewrite::Nil,
        (SessionPlan::Remove, ..) => SessionRewrite::Remove,
        (SessionPlan::Inject, Some(t), Some(o)) => SessionRewrite::Inject {
            token: t.access_token.expose(),
            urls: if o.rewrite_urls {
                CallbackUrls::Rewrite(t.instance_url.as_str())
            } else {
                CallbackUrls::Verify {
                    instance_url: t.instance_url.as_str(),
                    also: &o.callback_hosts,
                }
            },
        },
        (SessionPlan::Inject, ..) => return Err(Failure::Internal("inject without a token")),
    })
}

/// A rewrite that could not be made, as the answer to Salesforce.
pub fn rewrite_refused(route: &str, e: RewriteError) -> Rejection {
    tracing::warn!(route, error = %e, "rewrite refused");
    match e {
        RewriteError::BodyMismatch => Failure::Internal("rewrite").into(),
        RewriteError::CallbackUrl(what) => Refusal::CallbackUrl(what).into(),
        RewriteError::TokenNotXml | RewriteError::InstanceUrl(_) => {
            Failure::TokenUnavailable(TokenFailure::UnsafeToken).into()
        }
    }
}

/// After delivery: drop a token the receiver reports as invalid, and make a relayed fault safe
/// to send back (scrubbed of the token, then cut to [`FAULTSTRING_MAX`]).
pub fn after_delivery(
    route: &RouteState,
    token: Option<&Token>,
    result: Result<(), Failure>,
) -> Result<(), Failure> {
    let Err(Failure::UpstreamFault(text)) = result else {
        return result;
    };
    if let (Some(t), Some(source)) = (token, &route.tokens) {
        // The receiver called back with our token and Salesforce refused it (revoked, or the
        // org's session timeout is shorter than ttl_seconds): fetch a new one for the retry.
        if text.contains("INVALID_SESSION_ID") {
            tracing::warn!(route = %route.route.name, "the receiver reports INVALID_SESSION_ID: the cached token is dropped");
            source.invalidate(t);
        }
    }
    let secret = token.map(|t| t.access_token.expose());
    Err(Failure::UpstreamFault(relayable(&text, secret)))
}

/// A receiver's faultstring as it may go back to Salesforce: the secret (and its
/// percent-encoded form, and its part after `!`) replaced first, then cut to
/// [`FAULTSTRING_MAX`] characters, then any tail that is the start of the secret replaced too,
/// so no piece of a token survives the cut.
pub fn relayable(text: &str, secret: Option<&str>) -> String {
    const MARK: &str = "<access token>";
    let Some(secret) = secret.filter(|s| s.len() >= 8) else {
        return text.chars().take(FAULTSTRING_MAX).collect();
    };
    let mut forms = vec![secret.to_owned(), percent_encode(secret)];
    if let Some((_, tail)) = secret.split_once('!') {
        if tail.len() >= 16 {
            forms.push(tail.to_owned());
        }
    }
    let mut out = text.to_owned();
    for form in &forms {
        out = out.replace(form.as_str(), MARK);
    }
    let mut out: String = out.chars().take(FAULTSTRING_MAX).collect();
    for form in &forms {
        let longest = (6..form.len().min(out.len()) + 1)
            .rev()
            .find(|&k| form.is_char_boundary(k) && out.ends_with(&form[..k]));
        if let Some(k) = longest {
            out.truncate(out.len() - k);
            out.push_str(MARK);
        }
    }
    out
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_scrubbed_before_the_faultstring_is_cut() {
        let token = format!("00D5e000000AbCd!AQ{}", "x".repeat(110));
        for pad in [0, 300, 450, 511 - 20, 600] {
            let text = format!("{}{token} tail", "p".repeat(pad));
            let out = relayable(&text, Some(&token));
            assert!(out.chars().count() <= FAULTSTRING_MAX + 20, "{pad}");
            assert!(!out.contains("AQxxxxxx"), "{pad}: {out}");
            assert!(!out.contains(&token[..20]), "{pad}");
        }
        let encoded = percent_encode(&token);
        let out = relayable(&format!("echo {encoded}"), Some(&token));
        assert!(!out.contains("AQ"), "{out}");
        assert_eq!(relayable("plain", Some(&token)), "plain");
        assert_eq!(relayable(&"é".repeat(600), None).chars().count(), 512);
    }
}
