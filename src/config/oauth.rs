//! A route's `[oauth]`: the grant and credentials obmguard uses to fetch the token that
//! `session_id = "inject"` puts in a message. The token broker (token/) checks the settings
//! once more with [`crate::token::validate_settings`] (a signing key that does not load, an
//! http token URL to a non-loopback host), which `check` reports here.

use std::path::Path;
use std::time::Duration;

use super::build::{int, millis, span, Ctx};
use super::defaults as k;
use super::diag::FileDiag;
use super::file::{self, ClientAuthName, FlowName, S};
use super::secrets::{resolve_secret, Inline};
use super::RouteOAuth;
use crate::token::{ClientAuth, Flow, OAuthSettings};

pub(super) fn build(
    d: &mut FileDiag,
    ctx: &Ctx,
    base: &Path,
    o: &S<file::OAuthSection>,
) -> Option<RouteOAuth> {
    let errors_before = d.error_count();
    let oa = o.get_ref();
    let token_url = match url::Url::parse(oa.token_url.get_ref()) {
        Ok(u) => Some(u),
        Err(_) => {
            d.error(
                span(&oa.token_url),
                "oauth.token_url",
                "not a URL: write e.g. https://acme.my.salesforce.com/services/oauth2/token",
            );
            None
        }
    };
    let client_id = resolve_secret(
        d,
        ctx,
        base,
        "oauth.client_id",
        &oa.client_id,
        Inline::Allowed,
    );
    let flow = match oa.flow.get_ref() {
        FlowName::ClientCredentials => client_credentials(d, ctx, base, o),
        FlowName::JwtBearer => jwt_bearer(d, ctx, base, o),
    };
    let ttl = Duration::from_secs(int(d, &k::TTL_SECONDS, &oa.ttl_seconds) as u64);
    let connect_timeout = millis(d, &k::CONNECT_TIMEOUT_MS, &oa.connect_timeout_ms);
    let total_timeout = millis(d, &k::TIMEOUT_MS, &oa.timeout_ms);
    let mut callback_hosts = Vec::new();
    for (i, h) in oa.callback_hosts.iter().enumerate() {
        let host = h.get_ref().trim().to_ascii_lowercase();
        let plain = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
        if plain {
            callback_hosts.push(host);
        } else {
            d.error(
                span(h),
                &format!("oauth.callback_hosts[{i}]"),
                "write a plain host name such as acme.my.salesforce.com (no scheme, port, path or wildcard)",
            );
        }
    }
    if d.error_count() != errors_before {
        return None;
    }
    let settings = OAuthSettings {
        token_url: token_url?,
        client_id: client_id?.expose().to_string(),
        flow: flow?,
        ttl,
        connect_timeout,
        total_timeout,
    };
    if let Err(m) = crate::token::validate_settings(&settings) {
        d.error(span(o), "oauth", m);
        return None;
    }
    Some(RouteOAuth {
        settings,
        rewrite_urls: oa.rewrite_urls.unwrap_or(k::REWRITE_URLS.flag()),
        callback_hosts,
        header: oa.header.unwrap_or(k::HEADER.flag()),
    })
}

/// `flow = "client_credentials"`: a client secret, sent in the body or with HTTP Basic.
fn client_credentials(
    d: &mut FileDiag,
    ctx: &Ctx,
    base: &Path,
    o: &S<file::OAuthSection>,
) -> Option<Flow> {
    let oa = o.get_ref();
    for (field, present) in [
        ("username", oa.username.is_some()),
        ("private_key", oa.private_key.is_some()),
        ("audience", oa.audience.is_some()),
    ] {
        if present {
            d.error(
                span(o),
                &format!("oauth.{field}"),
                format!("{field} belongs to flow = \"jwt_bearer\"; remove it"),
            );
        }
    }
    let client_auth = match oa.client_auth.as_ref().map(|s| *s.get_ref()) {
        None | Some(ClientAuthName::Body) => ClientAuth::Body,
        Some(ClientAuthName::Basic) => ClientAuth::Basic,
    };
    let Some(s) = &oa.client_secret else {
        d.error(
            span(o),
            "oauth.client_secret",
            "client_credentials needs client_secret = { env = \"VAR\" } or { file = \"/path\" }",
        );
        return None;
    };
    let client_secret = resolve_secret(d, ctx, base, "oauth.client_secret", s, Inline::Refused)?;
    Some(Flow::ClientCredentials {
        client_secret,
        client_auth,
    })
}

/// `flow = "jwt_bearer"`: a user to act as and an RSA key that signs the assertion.
fn jwt_bearer(d: &mut FileDiag, ctx: &Ctx, base: &Path, o: &S<file::OAuthSection>) -> Option<Flow> {
    let oa = o.get_ref();
    if oa.client_secret.is_some() || oa.client_auth.is_some() {
        d.error(
            span(o),
            "oauth.client_secret",
            "client_secret and client_auth belong to flow = \"client_credentials\"; remove them",
        );
    }
    let username = oa
        .username
        .as_ref()
        .map(|u| u.get_ref().trim().to_string())
        .filter(|u| !u.is_empty());
    if username.is_none() {
        d.error(
            span(o),
            "oauth.username",
            "jwt_bearer needs username (the integration user obmguard acts as)",
        );
    }
    let key = match &oa.private_key {
        None => {
            d.error(
                span(o),
                "oauth.private_key",
                "jwt_bearer needs private_key = { file = \"/run/secrets/key.pem\" } (RS256)",
            );
            None
        }
        Some(k) => resolve_secret(d, ctx, base, "oauth.private_key", k, Inline::Refused),
    };
    let audience = oa
        .audience
        .as_ref()
        .map(|a| a.get_ref().clone())
        .unwrap_or_else(|| k::AUDIENCE.text().to_string());
    Some(Flow::JwtBearer {
        username: username?,
        private_key_pem: key?,
        audience,
    })
}
