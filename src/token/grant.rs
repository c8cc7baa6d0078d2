//! The two grants (client credentials through the `oauth2` crate, RFC 7523 JWT bearer built
//! here because `oauth2` lacks it) and the checks every token answer must pass before use.
//! It does not cache or retry (see `broker.rs`) and does not speak HTTP itself (see `http.rs`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AuthType, ClientId, ClientSecret, ExtraTokenFields, RequestTokenError, StandardRevocableToken,
    StandardTokenResponse, TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};

use super::http::HttpClient;
use super::{is_allowed_url, ClientAuth, Flow, OAuthSettings, Token, TokenError};
use crate::secret::Secret;

/// Lifetime of a JWT assertion: Salesforce wants `exp` within 3 minutes.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(180);
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const MAX_TOKEN_LEN: usize = 4096;

/// Salesforce's fields beyond RFC 6749's (`id` and `signature` are not used, so not parsed).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SalesforceFields {
    instance_url: String,
    // Milliseconds as a string in Salesforce's answers; a number is tolerated.
    #[serde(default)]
    issued_at: Option<serde_json::Value>,
}

impl ExtraTokenFields for SalesforceFields {}

type SalesforceTokenResponse = StandardTokenResponse<SalesforceFields, BasicTokenType>;

/// Fetches one token with the settings' grant. `started` is when the attempt began: the
/// token's lifetime counts from then, so it ends no later than the endpoint intended.
pub(super) async fn fetch(
    http: &HttpClient,
    settings: &OAuthSettings,
) -> Result<Token, TokenError> {
    let started = Instant::now();
    let response = match &settings.flow {
        Flow::ClientCredentials {
            client_secret,
            client_auth,
        } => client_credentials(http, settings, client_secret, *client_auth).await?,
        Flow::JwtBearer {
            username,
            private_key_pem,
            audience,
        } => jwt_bearer(http, settings, username, private_key_pem, audience).await?,
    };
    into_token(response, started, settings.ttl)
}

async fn client_credentials(
    http: &HttpClient,
    settings: &OAuthSettings,
    client_secret: &Secret,
    client_auth: ClientAuth,
) -> Result<SalesforceTokenResponse, TokenError> {
    let client = oauth2::Client::<
        BasicErrorResponse,
        SalesforceTokenResponse,
        BasicTokenIntrospectionResponse,
        StandardRevocableToken,
        BasicRevocationErrorResponse,
    >::new(ClientId::new(settings.client_id.clone()))
    .set_client_secret(ClientSecret::new(client_secret.expose().to_owned()))
    .set_token_uri(TokenUrl::from_url(settings.token_url.clone()))
    .set_auth_type(match client_auth {
        ClientAuth::Body => AuthType::RequestBody,
        ClientAuth::Basic => AuthType::BasicAuth,
    });
    client
        .exchange_client_credentials()
        .request_async(http)
        .await
        .map_err(|e| match e {
            RequestTokenError::Request(inner) => inner,
            // Non-success answers are turned into TokenError::Status by the HTTP client, so
            // this arm is only reached by a 2xx body that parses as an OAuth error.
            RequestTokenError::ServerResponse(body) => TokenError::BadResponse {
                detail: format!("an OAuth error `{}` with a success status", body.error()),
            },
            RequestTokenError::Parse(parse, _body) => {
                bad_json(parse.inner(), Some(&parse.path().to_string()))
            }
            RequestTokenError::Other(detail) => TokenError::BadResponse { detail },
        })
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
}

async fn jwt_bearer(
    http: &HttpClient,
    settings: &OAuthSettings,
    username: &str,
    private_key_pem: &Secret,
    audience: &str,
) -> Result<SalesforceTokenResponse, TokenError> {
    let assertion = sign_assertion(&settings.client_id, username, audience, private_key_pem)?;
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", JWT_BEARER_GRANT)
        .append_pair("assertion", assertion.expose())
        .finish();
    let request = http::Request::post(settings.token_url.as_str())
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json")
        .body(body.into_bytes())
        .map_err(|_| TokenError::InsecureUrl {
            url: super::url_for_display(&settings.token_url),
        })?;
    let response = http.send(request).await?;
    serde_json::from_slice(response.body()).map_err(|e| bad_json(&e, None))
}

fn sign_assertion(
    client_id: &str,
    username: &str,
    audience: &str,
    private_key_pem: &Secret,
) -> Result<Secret, TokenError> {
    let key = EncodingKey::from_rsa_pem(private_key_pem.expose().as_bytes()).map_err(|e| {
        TokenError::Jwt {
            detail: format!("{:?}", e.kind()),
        }
    })?;
    let exp = unix_now().saturating_add(ASSERTION_LIFETIME).as_secs();
    let claims = Claims {
        iss: client_id,
        sub: username,
        aud: audience,
        exp,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key)
        .map(Secret::new)
        .map_err(|e| TokenError::Jwt {
            detail: format!("{:?}", e.kind()),
        })
}

/// Config-time check that the key is an RSA PEM that can actually sign RS256.
pub(super) fn check_signing_key(private_key_pem: &Secret) -> Result<(), String> {
    sign_assertion("check", "check", "check", private_key_pem)
        .map(drop)
        .map_err(|_| {
            "private_key is not a usable RSA private key: give a PEM file with \
             \"BEGIN PRIVATE KEY\" (PKCS#8) or \"BEGIN RSA PRIVATE KEY\" (PKCS#1), 2048 bits or more, \
             unencrypted"
                .to_owned()
        })
}

/// Checks the answer and turns it into a [`Token`] that is safe to inject.
fn into_token(
    response: SalesforceTokenResponse,
    started: Instant,
    ttl: Duration,
) -> Result<Token, TokenError> {
    let access_token = response.access_token().secret();
    if !is_safe_token(access_token) {
        return Err(TokenError::UnsafeToken {
            length: access_token.len(),
        });
    }
    let extra = response.extra_fields();
    let instance_url = check_instance_url(&extra.instance_url)?;
    let issued_at_ms = match &extra.issued_at {
        Some(serde_json::Value::String(ms)) => ms.parse().ok(),
        Some(serde_json::Value::Number(ms)) => ms.as_u64(),
        _ => None,
    };
    let lifetime = response
        .expires_in()
        .map_or(ttl, |expires_in| expires_in.min(ttl));
    Ok(Token {
        access_token: Secret::new(access_token.clone()),
        instance_url,
        issued_at_ms,
        expires_at: started + lifetime,
    })
}

/// Characters Salesforce tokens use (`00D5e000000AbCd!AQ4AQ...`), none of which needs
/// escaping in XML or an HTTP header.
fn is_safe_token(token: &str) -> bool {
    (1..=MAX_TOKEN_LEN).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!._~+/=-".contains(&b))
}

fn check_instance_url(raw: &str) -> Result<url::Url, TokenError> {
    let bad = |reason: &str| TokenError::BadInstanceUrl {
        reason: reason.to_owned(),
    };
    let url = url::Url::parse(raw).map_err(|_| bad("not a URL"))?;
    if !is_allowed_url(&url) {
        return Err(bad("not https (http is allowed only to loopback)"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("it contains user:password"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad(
            "it has a path, query or fragment; expected https://<host>",
        ));
    }
    Ok(url)
}

/// A parse error described by position and kind only: serde_json's messages can quote values.
fn bad_json(error: &serde_json::Error, path: Option<&str>) -> TokenError {
    let message = error.to_string();
    let what = if message.starts_with("missing field") {
        message
    } else {
        format!(
            "{:?} error at line {} column {}",
            error.classify(),
            error.line(),
            error.column()
        )
    };
    let detail = match path {
        Some(path) if path != "." => format!("{what}, at `{path}`"),
        _ => what,
    };
    TokenError::BadResponse { detail }
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_salesforce_shaped_tokens() {
        assert!(is_safe_token("00D5e000000AbCd!AQ4AQFake.Value_~+/=-"));
    }

    #[test]
    fn rejects_tokens_that_could_break_xml_or_headers() {
        for token in ["", "a b", "a<b", "a&b", "a\"b", "a\r\nb", "é"] {
            assert!(!is_safe_token(token), "{token:?}");
        }
        assert!(!is_safe_token(&"a".repeat(MAX_TOKEN_LEN + 1)));
    }

    #[test]
    fn instance_url_must_be_an_https_origin() {
        assert!(check_instance_url("https://acme.my.salesforce.com").is_ok());
        assert!(check_instance_url("http://127.0.0.1:8080/").is_ok());
        for bad in [
            "http://acme.my.salesforce.com",
            "https://acme.my.salesforce.com/services",
            "https://acme.my.salesforce.com/?q=1",
            "https://u:p@acme.my.salesforce.com",
            "javascript:alert(1)",
            "acme.my.salesforce.com",
        ] {
            assert!(check_instance_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parse_errors_do_not_quote_values() {
        let err = serde_json::from_str::<SalesforceTokenResponse>(
            r#"{"access_token": 12345678, "token_type": "Bearer", "instance_url": "https://x"}"#,
        )
        .unwrap_err();
        let shown = bad_json(&err, None).to_string();
        assert!(!shown.contains("12345678"), "{shown}");
    }

    #[test]
    fn missing_fields_are_named() {
        let err = serde_json::from_str::<SalesforceTokenResponse>(
            r#"{"access_token": "abc", "token_type": "Bearer"}"#,
        )
        .unwrap_err();
        assert!(bad_json(&err, None).to_string().contains("instance_url"));
    }
}
