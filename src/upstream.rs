//! Stage 6: calling the receiver and judging its answer.
//!
//! obmguard buffers both ways: the receiver gets the whole rewritten body with a fresh
//! Content-Length, and Salesforce gets 200 only after the receiver's whole answer has been
//! read (bounded) and parsed as `<Ack>true</Ack>`. Everything else is a SOAP fault with 502
//! (504 for a timeout), so Salesforce retries: a false Ack would lose the message for good.
//!
//! Connections come from pingora's pooled connector (keep-alive, bounded pool, idle timeout).
//! A pooled connection that turns out dead before any byte of answer arrived is retried once
//! on a fresh connection; the receiver de-duplicates on Notification Id, as it must anyway.
//! Not done here: retries after the receiver answered, or any store-and-forward.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora_core::connectors::http::Connector;
use pingora_core::connectors::ConnectorOptions;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;

use crate::config::{Limits, Route};
use crate::reject::Rejection;
use crate::soap::{self, Answer};

/// What the receiver did, for the audit record and metrics.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub status: Option<u16>,
    pub ack: Option<bool>,
    pub elapsed: Duration,
}

/// One message on its way to the receiver.
pub struct Delivery<'a> {
    pub route: &'a Route,
    pub body: Bytes,
    pub client_ip: IpAddr,
    pub soap_action: Option<&'a [u8]>,
    pub bearer: Option<&'a str>,
    pub request_id: &'a str,
}

/// The pooled client for all receivers.
pub struct Receivers {
    connector: Connector,
    connect_timeout: Duration,
    idle: Duration,
    max_response: usize,
}

enum Failure {
    /// Nothing came back: safe to try once more on a fresh connection.
    BeforeAnswer(Rejection),
    Final(Rejection),
}

impl Receivers {
    pub fn new(limits: &Limits, connect_timeout: Duration) -> Self {
        Receivers {
            connector: Connector::new(Some(ConnectorOptions::new(limits.upstream_pool_size))),
            connect_timeout,
            idle: limits.upstream_idle,
            max_response: limits.max_response_bytes,
        }
    }

    /// Deliver one message within the route's deadline and return the receiver's Ack body.
    pub async fn deliver(&self, d: &Delivery<'_>) -> (Result<Bytes, Rejection>, Report) {
        let start = Instant::now();
        let mut report = Report::default();
        let limit = d.route.upstream_timeout;
        let result = match tokio::time::timeout(limit, self.exchange(d, &mut report)).await {
            Ok(r) => r,
            Err(_) => Err(Rejection::UpstreamTimeout(limit.as_secs().max(1))),
        };
        report.elapsed = start.elapsed();
        (result, report)
    }

    async fn exchange(&self, d: &Delivery<'_>, report: &mut Report) -> Result<Bytes, Rejection> {
        let peer = self.peer(d.route).await?;
        let (session, reused) = self.connector.get_http_session(&peer).await.map_err(|e| {
            tracing::warn!(route = %d.route.name, error = %e, "receiver unreachable");
            Rejection::UpstreamUnreachable
        })?;
        match self.once(session, &peer, d, report).await {
            Ok(b) => Ok(b),
            Err(Failure::Final(r)) => Err(r),
            Err(Failure::BeforeAnswer(r)) if !reused => Err(r),
            Err(Failure::BeforeAnswer(_)) => {
                // A pooled connection the receiver had already closed: try a fresh one.
                let (session, _) = self.connector.get_http_session(&peer).await.map_err(|e| {
                    tracing::warn!(route = %d.route.name, error = %e, "receiver unreachable");
                    Rejection::UpstreamUnreachable
                })?;
                self.once(session, &peer, d, report)
                    .await
                    .map_err(|f| match f {
                        Failure::BeforeAnswer(r) | Failure::Final(r) => r,
                    })
            }
        }
    }

    async fn peer(&self, route: &Route) -> Result<HttpPeer, Rejection> {
        let up = &route.upstream;
        let addr: SocketAddr = match up.host.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, up.port),
            Err(_) => tokio::net::lookup_host((up.host.as_str(), up.port))
                .await
                .ok()
                .and_then(|mut it| it.next())
                .ok_or_else(|| {
                    tracing::warn!(route = %route.name, host = %up.host, "receiver host does not resolve");
                    Rejection::UpstreamUnreachable
                })?,
        };
        let mut peer = HttpPeer::new(addr, up.tls, up.host.clone());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.connect_timeout);
        o.total_connection_timeout = Some(self.connect_timeout * 2);
        o.read_timeout = Some(route.upstream_timeout);
        o.write_timeout = Some(route.upstream_timeout);
        o.idle_timeout = Some(self.idle);
        o.verify_cert = true;
        o.verify_hostname = true;
        o.ca = up.ca.clone();
        peer.group_key = up.trust_key;
        Ok(peer)
    }

    fn request_header(&self, d: &Delivery<'_>) -> Result<RequestHeader, Rejection> {
        let up = &d.route.upstream;
        let internal = |_| Rejection::UpstreamUnreachable;
        let mut h = RequestHeader::build("POST", up.path_and_query.as_bytes(), Some(8))
            .map_err(internal)?;
        let default_port = if up.tls { 443 } else { 80 };
        let host = match (up.port == default_port, up.host.contains(':')) {
            (true, false) => up.host.clone(),
            (true, true) => format!("[{}]", up.host),
            (false, false) => format!("{}:{}", up.host, up.port),
            (false, true) => format!("[{}]:{}", up.host, up.port),
        };
        h.insert_header("Host", host).map_err(internal)?;
        h.insert_header("Content-Type", "text/xml; charset=UTF-8")
            .map_err(internal)?;
        h.insert_header("SOAPAction", d.soap_action.unwrap_or(b"\"\""))
            .map_err(internal)?;
        h.insert_header("Content-Length", d.body.len().to_string())
            .map_err(internal)?;
        h.insert_header("X-Forwarded-For", d.client_ip.to_string())
            .map_err(internal)?;
        h.insert_header("X-Request-Id", d.request_id)
            .map_err(internal)?;
        if let Some(token) = d.bearer {
            h.insert_header("Authorization", format!("Bearer {token}"))
                .map_err(internal)?;
        }
        Ok(h)
    }

    async fn once(
        &self,
        mut s: HttpSession,
        peer: &HttpPeer,
        d: &Delivery<'_>,
        report: &mut Report,
    ) -> Result<Bytes, Failure> {
        let header = self.request_header(d).map_err(Failure::Final)?;
        let name = &d.route.name;
        let before = |e: Box<pingora_core::Error>| {
            tracing::warn!(route = %name, error = %e, "sending to the receiver failed");
            Failure::BeforeAnswer(Rejection::UpstreamUnreachable)
        };
        s.write_request_header(Box::new(header))
            .await
            .map_err(before)?;
        s.write_request_body(d.body.clone(), true)
            .await
            .map_err(before)?;
        s.finish_request_body().await.map_err(before)?;
        s.read_response_header().await.map_err(|e| {
            tracing::warn!(route = %name, error = %e, "no answer from the receiver");
            Failure::BeforeAnswer(Rejection::UpstreamUnreachable)
        })?;
        let status = s.response_header().map(|h| h.status.as_u16()).unwrap_or(0);
        report.status = Some(status);
        let mut body = Vec::new();
        loop {
            match s.read_response_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > self.max_response {
                        return Err(Failure::Final(Rejection::UpstreamBadAnswer(
                            "the answer is larger than limits.max_response_bytes",
                        )));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(route = %name, error = %e, "the receiver's answer was cut short");
                    return Err(Failure::Final(Rejection::UpstreamBadAnswer(
                        "the answer was cut short",
                    )));
                }
            }
        }
        let verdict = judge(status, &body, &d.route.message.xml);
        report.ack = match &verdict {
            Ok(()) => Some(true),
            Err(Rejection::UpstreamNack) => Some(false),
            Err(_) => None,
        };
        self.connector
            .release_http_session(s, peer, Some(self.idle))
            .await;
        verdict.map(|()| Bytes::from(body)).map_err(Failure::Final)
    }
}

/// 200 + a well-formed `<Ack>true</Ack>` is the only success.
fn judge(status: u16, body: &[u8], limits: &soap::Limits) -> Result<(), Rejection> {
    match (status, soap::parse_answer(body, limits)) {
        (200, Answer::Ack) => Ok(()),
        (_, Answer::Nack) => Err(Rejection::UpstreamNack),
        (_, Answer::Fault { faultstring, .. }) => Err(Rejection::UpstreamFault(
            faultstring.unwrap_or_else(|| "no faultstring".into()),
        )),
        (200, Answer::Malformed(why)) => Err(Rejection::UpstreamBadAnswer(why)),
        (other, _) => Err(Rejection::UpstreamStatus(other)),
    }
}

/// Shared so every connection task can reach it.
pub type SharedReceivers = Arc<Receivers>;

#[cfg(test)]
mod tests {
    use super::*;

    const ACK: &[u8] = br#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#;

    #[test]
    fn only_200_with_ack_true_is_success() {
        let l = soap::Limits::default();
        assert!(judge(200, ACK, &l).is_ok());
        assert!(matches!(
            judge(500, ACK, &l),
            Err(Rejection::UpstreamStatus(500))
        ));
        assert!(matches!(
            judge(200, b"<html>ok</html>", &l),
            Err(Rejection::UpstreamBadAnswer(_))
        ));
        assert!(matches!(
            judge(200, b"", &l),
            Err(Rejection::UpstreamBadAnswer(_))
        ));
        let nack = String::from_utf8(ACK.to_vec())
            .unwrap()
            .replace("true", "false");
        assert!(matches!(
            judge(200, nack.as_bytes(), &l),
            Err(Rejection::UpstreamNack)
        ));
    }
}
