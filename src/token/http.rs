//! The one HTTP path to token endpoints, shared by both grants (the `oauth2` crate calls it
//! through [`oauth2::AsyncHttpClient`]; the JWT grant calls [`HttpClient::send`] directly).
//!
//! Rules enforced here: https only (http only to loopback), checked before sending; redirects
//! never followed (a 3xx is an error); no proxy taken from the environment; connect and total
//! timeouts; the body read in chunks up to [`BODY_LIMIT`]; a non-success status becomes
//! [`TokenError::Status`] with the OAuth `error` fields; a success must be JSON. It does not
//! parse the token response (see `grant.rs`).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::{is_allowed_url, url_for_display, TokenError};

/// Largest answer read from a token endpoint (a Salesforce answer is well under 2 KiB).
pub(super) const BODY_LIMIT: usize = 64 * 1024;
/// Longest `error` / `error_description` kept from an error answer.
const ERROR_FIELD_LIMIT: usize = 200;

/// A reqwest client configured for token requests.
pub(super) struct HttpClient {
    client: Result<reqwest::Client, TokenError>,
    total_timeout: Duration,
}

impl HttpClient {
    pub(super) fn new(connect_timeout: Duration, total_timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(connect_timeout)
            .timeout(total_timeout)
            .build()
            .map_err(|e| TokenError::Client {
                detail: error_chain(&e.without_url()),
            });
        HttpClient {
            client,
            total_timeout,
        }
    }

    /// Sends one request; returns the response only for a 2xx JSON answer within the limits.
    pub(super) async fn send(
        &self,
        request: oauth2::HttpRequest,
    ) -> Result<oauth2::HttpResponse, TokenError> {
        let client = self.client.as_ref().map_err(Clone::clone)?;
        let url =
            url::Url::parse(&request.uri().to_string()).map_err(|_| TokenError::InsecureUrl {
                url: "(unparsable URL)".to_owned(),
            })?;
        if !is_allowed_url(&url) {
            return Err(TokenError::InsecureUrl {
                url: url_for_display(&url),
            });
        }
        let request = reqwest::Request::try_from(request).map_err(|e| self.transport_error(e))?;
        let mut response = client
            .execute(request)
            .await
            .map_err(|e| self.transport_error(e))?;

        let status = response.status();
        if status.is_redirection() {
            return Err(TokenError::Redirect {
                status: status.as_u16(),
            });
        }
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(e))?
        {
            if body.len() + chunk.len() > BODY_LIMIT {
                return Err(TokenError::TooLarge { limit: BODY_LIMIT });
            }
            body.extend_from_slice(&chunk);
        }

        let is_json = content_type
            .split(';')
            .next()
            .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
        if !status.is_success() {
            let fields: OAuthErrorBody = if is_json {
                serde_json::from_slice(&body).unwrap_or_default()
            } else {
                OAuthErrorBody::default()
            };
            return Err(TokenError::Status {
                status: status.as_u16(),
                error: fields.error.as_deref().map(printable),
                error_description: fields.error_description.as_deref().map(printable),
            });
        }
        if !is_json {
            return Err(TokenError::NotJson {
                content_type: printable(&content_type),
            });
        }
        let mut out = http::Response::builder().status(status);
        if let Some(headers) = out.headers_mut() {
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
        }
        out.body(body).map_err(|e| TokenError::BadResponse {
            detail: e.to_string(),
        })
    }

    fn transport_error(&self, error: reqwest::Error) -> TokenError {
        if error.is_timeout() {
            TokenError::Timeout {
                after: self.total_timeout,
            }
        } else {
            TokenError::Unreachable {
                detail: error_chain(&error.without_url()),
            }
        }
    }
}

impl<'c> oauth2::AsyncHttpClient<'c> for HttpClient {
    type Error = TokenError;
    type Future =
        Pin<Box<dyn Future<Output = Result<oauth2::HttpResponse, TokenError>> + Send + 'c>>;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

/// The OAuth error fields Salesforce sends with a 400 (they hold no secret).
#[derive(Default, serde::Deserialize)]
struct OAuthErrorBody {
    error: Option<String>,
    error_description: Option<String>,
}

/// Bounded, control-character-free copy of a server-supplied string for logs and errors.
fn printable(value: &str) -> String {
    value
        .chars()
        .take(ERROR_FIELD_LIMIT)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// An error and its sources, e.g. "error sending request: client error (Connect): Connection refused".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
