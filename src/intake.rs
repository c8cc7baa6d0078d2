//! Stage 4a: the HTTP request around the notification: head checks and bounded buffering of
//! the body.
//!
//! Threat model: the peer passed mTLS but may still be hostile or broken. pingora keeps a
//! request with both Content-Length and Transfer-Encoding (Transfer-Encoding wins), a classic
//! smuggling shape, so we refuse it. pingora has no body limit, so we count bytes ourselves:
//! a declared length over the route's limit is refused before a byte of body is read, a
//! chunked body as soon as it crosses the limit, and the whole body must arrive within one
//! deadline (not per read), so dripping bytes cannot hold a slot forever.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora_core::protocols::http::ServerSession;
use pingora_http::RequestHeader;

use crate::config::Limits;
use crate::reject::Refusal;

/// The request path without its query string: routes match it exactly.
pub fn path(req: &RequestHeader) -> &str {
    req.uri.path()
}

/// Which of Content-Length and Transfer-Encoding the raw request head names (case-insensitive,
/// at the start of a line after the request line), in one pass over its line starts.
fn raw_length_headers(raw: &[u8]) -> (bool, bool) {
    let names = |line: &[u8], name: &[u8]| {
        line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name)
            && line[name.len()] == b':'
    };
    let (mut content_length, mut transfer_encoding) = (false, false);
    for newline in memchr::memchr_iter(b'\n', raw) {
        let line = &raw[newline + 1..];
        content_length |= names(line, b"content-length");
        transfer_encoding |= names(line, b"transfer-encoding");
    }
    (content_length, transfer_encoding)
}

/// pingora drops Content-Length when Transfer-Encoding is also present, so look at the head as
/// it arrived: that combination is a request-smuggling shape and is never forwarded (the
/// pipeline refuses it).
pub fn raw_length_conflict(session: &ServerSession) -> bool {
    match session {
        ServerSession::H1(h1) => raw_length_headers(&h1.get_headers_raw_bytes()) == (true, true),
        _ => false,
    }
}

/// Refuse request shapes we never forward, before looking at the body.
pub fn check_framing(req: &RequestHeader, limits: &Limits) -> Result<(), Refusal> {
    let h = &req.headers;
    if h.contains_key(http::header::TRANSFER_ENCODING)
        && h.contains_key(http::header::CONTENT_LENGTH)
    {
        return Err(Refusal::AmbiguousLength);
    }
    if h.get_all(http::header::CONTENT_LENGTH).iter().count() > 1 {
        return Err(Refusal::AmbiguousLength);
    }
    let bytes: usize = h.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if h.len() > limits.max_header_count || bytes > limits.max_header_bytes {
        return Err(Refusal::HeadersTooLarge);
    }
    Ok(())
}

/// POST with a SOAP content type, and a declared length within `max_body`.
pub fn check_message_head(req: &RequestHeader, max_body: usize) -> Result<(), Refusal> {
    if req.method != http::Method::POST {
        return Err(Refusal::Method);
    }
    // The media type, before any parameter, compared without regard to case.
    let soap = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split_once(';').map_or(v, |(media, _)| media).trim())
        .is_some_and(|media| {
            media.eq_ignore_ascii_case("text/xml")
                || media.eq_ignore_ascii_case("application/soap+xml")
        });
    if !soap {
        return Err(Refusal::ContentType);
    }
    if let Some(v) = req.headers.get(http::header::CONTENT_LENGTH) {
        let n: u64 = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or(Refusal::AmbiguousLength)?;
        if n > max_body as u64 {
            return Err(Refusal::BodyTooLarge(max_body));
        }
    }
    Ok(())
}

/// Read the whole body, at most `max` bytes, within `deadline`.
pub async fn read_body(
    session: &mut ServerSession,
    max: usize,
    deadline: Duration,
) -> Result<Bytes, Refusal> {
    let read = async {
        // A body that arrives in one chunk (the usual case) is used as pingora hands it over;
        // only a body in several chunks is gathered into one buffer.
        let mut first: Option<Bytes> = None;
        let mut buf = BytesMut::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    let held = first.as_ref().map_or(0, Bytes::len) + buf.len();
                    if held + chunk.len() > max {
                        return Err(Refusal::BodyTooLarge(max));
                    }
                    match first.take() {
                        None if buf.is_empty() => first = Some(chunk),
                        earlier => {
                            if let Some(earlier) = earlier {
                                buf.extend_from_slice(&earlier);
                            }
                            buf.extend_from_slice(&chunk);
                        }
                    }
                }
                Ok(None) => return Ok(first.unwrap_or_else(|| buf.freeze())),
                Err(_) => return Err(Refusal::BodyIncomplete),
            }
        }
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(r) => r,
        Err(_) => Err(Refusal::BodyTimeout(deadline.as_secs().max(1))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(dead_code)]
    fn limits() -> Limits {
        Limits {
            max_connections: 10,
            max_connections_per_source: 10,
            max_header_count: 8,
            max_header_bytes: 1024,
            upstream_pool_size: 1,
            upstream_idle: Duration::from_secs(1),
            max_response_bytes: 1024,
        }
    }

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/obm", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn refuses_content_length_with_transfer_encoding() {
        let r = req(&[("Content-Length", "5"), ("Transfer-Encoding", "chunked")]);
        assert!(matches!(
            check_framing(&r, &limits()),
            Err(Refusal::AmbiguousLength)
        ));
        let r = req(&[("Content-Length", "5"), ("Content-Length", "6")]);
        assert!(matches!(
            check_framing(&r, &limits()),
            Err(Refusal::AmbiguousLength)
        ));
    }

    #[test]
    fn finds_headers_in_the_raw_head_case_insensitively() {
        let raw = b"POST / HTTP/1.1\r\nHost: x\r\ncontent-LENGTH: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(raw_length_headers(raw), (true, true));
        let first = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nHost: x\r\n\r\n";
        assert_eq!(raw_length_headers(first), (false, true));
        let last = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:5";
        assert_eq!(raw_length_headers(last), (true, false));
        let in_path = b"POST /content-length: HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(raw_length_headers(in_path), (false, false));
        let prefixed = b"POST / HTTP/1.1\r\nX-Content-Length: 5\r\nX: transfer-encoding: a\r\n\r\n";
        assert_eq!(raw_length_headers(prefixed), (false, false));
        let bare = b"POST / HTTP/1.1\r\nContent-Length\r\nTransfer-Encoding\n:\r\n\r\n";
        assert_eq!(raw_length_headers(bare), (false, false));
    }

    #[test]
    fn refuses_too_many_headers() {
        let many: Vec<(String, String)> = (0..9)
            .map(|i| (format!("x-h{i}"), "v".to_string()))
            .collect();
        let refs: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert!(matches!(
            check_framing(&req(&refs), &limits()),
            Err(Refusal::HeadersTooLarge)
        ));
    }

    #[test]
    fn content_type_and_declared_length() {
        let ok = req(&[
            ("Content-Type", "text/xml; charset=UTF-8"),
            ("Content-Length", "100"),
        ]);
        assert!(check_message_head(&ok, 100).is_ok());
        assert!(matches!(
            check_message_head(&ok, 99),
            Err(Refusal::BodyTooLarge(99))
        ));
        let soap12 = req(&[("Content-Type", "Application/SOAP+XML")]);
        assert!(check_message_head(&soap12, 100).is_ok());
        let json = req(&[("Content-Type", "application/json")]);
        assert!(matches!(
            check_message_head(&json, 100),
            Err(Refusal::ContentType)
        ));
        assert!(matches!(
            check_message_head(&req(&[]), 100),
            Err(Refusal::ContentType)
        ));
    }
}
