//! Apply the SessionId policy to a parsed body: keep it, turn it nil, remove it, or inject an
//! OAuth access token in its place (and point the URLs at the token's instance).
//!
//! The rewrite is one linear copy of the body around the spans [`super::parse`] recorded. Only
//! the SessionId element (and, with an instance URL, the text of `EnterpriseUrl`/`PartnerUrl`)
//! changes; prefixes, whitespace, declarations and the BOM are preserved. The whole SessionId
//! element is replaced, so no piece of the old value survives. Running a rewrite on its own
//! output (re-parsed) gives the same bytes.

use std::borrow::Cow;
use std::ops::Range;

use super::notification::{Element, Message, SessionIdState};
use super::scan::{escape_text_into, is_xml_char, XSI_NS};

/// What to do with the `SessionId` element.
#[derive(Clone, Copy)]
pub enum SessionRewrite<'a> {
    /// Forward the body unchanged.
    Keep,
    /// Make the element `xsi:nil` (it stays, for receivers generated from the WSDL).
    Nil,
    /// Delete the element.
    Remove,
    /// Put `token` in the element (adding one after `ActionId` if absent), and make sure every
    /// callback URL beside it leads to the token's instance: a receiver calls back wherever
    /// `EnterpriseUrl`/`PartnerUrl` say, with the token.
    Inject {
        /// The access token (a secret: this is its one legitimate destination).
        token: &'a str,
        /// What to do with the callback URLs.
        urls: CallbackUrls<'a>,
    },
}

/// How inject mode treats `EnterpriseUrl` and `PartnerUrl`. Either way a message whose URL
/// is not a plain `https://host[:port]/path` is refused: no token goes out beside a URL
/// obmguard has not read the way every receiver will.
#[derive(Clone, Copy, Debug)]
pub enum CallbackUrls<'a> {
    /// Point every URL at this origin (the token's `instance_url`: `https://host[:port]`,
    /// optionally with a trailing `/`), keeping its path.
    Rewrite(&'a str),
    /// Leave the URLs as sent, but only when each names the host of `instance_url` or one of
    /// `also` (lower case).
    Verify {
        /// The token's `instance_url`.
        instance_url: &'a str,
        /// Further hosts the route allows.
        also: &'a [String],
    },
}

impl std::fmt::Debug for SessionRewrite<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionRewrite::Keep => f.write_str("Keep"),
            SessionRewrite::Nil => f.write_str("Nil"),
            SessionRewrite::Remove => f.write_str("Remove"),
            SessionRewrite::Inject { urls, .. } => f
                .debug_struct("Inject")
                .field("token", &"[redacted]")
                .field("urls", urls)
                .finish(),
        }
    }
}

/// Why a rewrite could not be made. Each is a bug or a bad token answer, not a bad request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// The body is not the one the [`Message`] was parsed from.
    #[error("internal error: the body given to the rewrite is not the one that was parsed")]
    BodyMismatch,
    /// The token holds a character XML cannot carry.
    #[error("the access token contains a character that cannot be written in XML; check the token server")]
    TokenNotXml,
    /// The instance URL is not `http(s)://host[:port]` with at most a `/` path.
    #[error("the token's instance_url {0:?} is not an https origin such as https://example.my.salesforce.com")]
    InstanceUrl(String),
    /// A callback URL that cannot be rewritten, or names a host the token must not go to.
    #[error("the {0} is not an https URL on the Salesforce instance this route's token belongs to; obmguard does not send a token beside it")]
    CallbackUrl(&'static str),
}

/// Rewrite `body` (the bytes `msg` was parsed from). Returns the body itself when nothing
/// changes: `Keep`, `Nil` on a nil or absent element, `Remove` on an absent one.
pub fn rewrite<'b>(
    body: &'b [u8],
    msg: &Message,
    how: &SessionRewrite<'_>,
) -> Result<Cow<'b, [u8]>, RewriteError> {
    let spans = &msg.spans;
    if body.len() != spans.body_len {
        return Err(RewriteError::BodyMismatch);
    }
    let session = spans.session.as_ref();
    let mut out = Splice::new(body);
    match (how, session, msg.session_id) {
        (SessionRewrite::Keep, _, _)
        | (SessionRewrite::Nil, _, SessionIdState::Nil | SessionIdState::Absent)
        | (SessionRewrite::Remove, None, _) => return Ok(Cow::Borrowed(body)),
        (SessionRewrite::Nil, Some(el), _) => {
            out.copy_to(el.start)?;
            write_nil(&mut out, el, spans.nil_prefix, spans.nil_prefix_bound)?;
            out.skip_to(el.end);
        }
        (SessionRewrite::Nil, None, _) => return Err(RewriteError::BodyMismatch),
        (SessionRewrite::Remove, Some(el), _) => {
            out.copy_to(el.start)?;
            out.skip_to(el.end);
        }
        (SessionRewrite::Inject { token, urls }, _, _) => {
            if !token.chars().all(is_xml_char) {
                return Err(RewriteError::TokenNotXml);
            }
            // Decide on the URLs before writing anything.
            let rewritten = callback_rewrites(body, msg, urls)?;
            match session {
                Some(el) => {
                    out.copy_to(el.start)?;
                    write_token_element(&mut out, el, None, token)?;
                    out.skip_to(el.end);
                }
                None => {
                    let action = &spans.action;
                    out.copy_to(action.end)?;
                    write_token_element(&mut out, action, Some("SessionId"), token)?;
                }
            }
            for (span, url) in rewritten.into_iter().flatten() {
                out.copy_to(span.start)?;
                escape_text_into(&mut out.out, &url);
                out.skip_to(span.end);
            }
        }
    }
    Ok(Cow::Owned(out.finish()?))
}

/// The output being built: copies of the body interleaved with replacements.
struct Splice<'b> {
    body: &'b [u8],
    out: Vec<u8>,
    copied: usize,
}

impl<'b> Splice<'b> {
    fn new(body: &'b [u8]) -> Self {
        Splice {
            body,
            out: Vec::with_capacity(body.len() + 256),
            copied: 0,
        }
    }

    /// Copy the body up to `to`.
    fn copy_to(&mut self, to: usize) -> Result<(), RewriteError> {
        let part = self
            .body
            .get(self.copied..to)
            .ok_or(RewriteError::BodyMismatch)?;
        self.out.extend_from_slice(part);
        self.copied = to;
        Ok(())
    }

    /// Drop the body up to `to` (its replacement was written).
    fn skip_to(&mut self, to: usize) {
        self.copied = to;
    }

    /// Copy a span of the body (a name or declaration being reused).
    fn reuse(&mut self, range: std::ops::Range<usize>) -> Result<(), RewriteError> {
        let part = self.body.get(range).ok_or(RewriteError::BodyMismatch)?;
        self.out.extend_from_slice(part);
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<u8>, RewriteError> {
        self.copy_to(self.body.len())?;
        Ok(self.out)
    }
}

/// `<QNAME decls [xmlns:P="XSI"] P:nil="true"/>`
fn write_nil(
    out: &mut Splice<'_>,
    el: &Element,
    prefix: &str,
    bound: bool,
) -> Result<(), RewriteError> {
    out.out.push(b'<');
    out.reuse(el.qname.clone())?;
    for decl in &el.ns_decls {
        // A local declaration of the prefix to another namespace gives way to ours.
        if !bound && decl.declares_nil_prefix {
            continue;
        }
        out.out.push(b' ');
        out.reuse(decl.span.clone())?;
    }
    let o = &mut out.out;
    if !bound {
        o.extend_from_slice(b" xmlns:");
        o.extend_from_slice(prefix.as_bytes());
        o.extend_from_slice(b"=\"");
        o.extend_from_slice(XSI_NS.as_bytes());
        o.push(b'"');
    }
    o.push(b' ');
    o.extend_from_slice(prefix.as_bytes());
    o.extend_from_slice(b":nil=\"true\"/>");
    Ok(())
}

/// `<QNAME decls>TOKEN</QNAME>`. With `local`, the name is `el`'s prefix plus `local` (a new
/// SessionId modelled on ActionId).
fn write_token_element(
    out: &mut Splice<'_>,
    el: &Element,
    local: Option<&str>,
    token: &str,
) -> Result<(), RewriteError> {
    let qname = out
        .body
        .get(el.qname.clone())
        .ok_or(RewriteError::BodyMismatch)?;
    let prefix_len = match local {
        Some(_) => qname.iter().position(|&b| b == b':').map_or(0, |i| i + 1),
        None => qname.len(),
    };
    let name_start = el.qname.start;
    let write_name = |out: &mut Splice<'_>| -> Result<(), RewriteError> {
        out.reuse(name_start..name_start + prefix_len)?;
        if let Some(local) = local {
            out.out.extend_from_slice(local.as_bytes());
        }
        Ok(())
    };
    out.out.push(b'<');
    write_name(out)?;
    for decl in &el.ns_decls {
        out.out.push(b' ');
        out.reuse(decl.span.clone())?;
    }
    out.out.push(b'>');
    escape_text_into(&mut out.out, token);
    out.out.extend_from_slice(b"</");
    write_name(out)?;
    out.out.push(b'>');
    Ok(())
}

/// A span of the body and the text that replaces it.
type Replacement = (Range<usize>, String);

/// The new text of each callback URL that changes (in document order), or the refusal: a
/// URL that cannot be rewritten, or (when verifying) names a host the token must not reach.
/// An absent or empty URL leads nowhere and is left alone.
fn callback_rewrites(
    body: &[u8],
    msg: &Message,
    urls: &CallbackUrls<'_>,
) -> Result<[Option<Replacement>; 2], RewriteError> {
    let spans = &msg.spans;
    let callbacks = [
        ("EnterpriseUrl", &spans.enterprise_text, &msg.enterprise_url),
        ("PartnerUrl", &spans.partner_text, &msg.partner_url),
    ];
    let mut out = [None, None];
    for (slot, (what, span, value)) in out.iter_mut().zip(callbacks) {
        let (Some(span), Some(value)) = (span, value) else {
            continue;
        };
        if value.is_empty() {
            continue;
        }
        let refused = RewriteError::CallbackUrl(what);
        match *urls {
            CallbackUrls::Rewrite(instance) => {
                let origin = instance_origin(instance)?;
                let (_, path) = callback_url(value).ok_or(refused)?;
                *slot = Some((span.clone(), format!("{origin}{path}")));
            }
            CallbackUrls::Verify { instance_url, also } => {
                let origin = instance_origin(instance_url)?;
                let instance_host = host_of(&origin[HTTPS.len()..]);
                // Forwarded as written, so it must be written literally: what was checked
                // is then what every receiver reads.
                if body.get(span.clone()) != Some(value.as_bytes()) {
                    return Err(refused);
                }
                let (authority, _) = callback_url(value).ok_or(refused.clone())?;
                let same_port = authority.split_once(':').map(|(_, p)| p)
                    == origin[HTTPS.len()..].split_once(':').map(|(_, p)| p);
                let host = host_of(authority);
                let allowed = (host == instance_host && same_port) || also.contains(&host);
                if !allowed {
                    return Err(refused);
                }
            }
        }
    }
    Ok(out)
}

const HTTPS: &str = "https://";

fn host_of(authority: &str) -> String {
    authority
        .split_once(':')
        .map_or(authority, |(h, _)| h)
        .to_ascii_lowercase()
}

/// A callback URL as Salesforce writes it, `https://host[:port]/path`, split into the
/// authority (`host[:port]`) and the path. Anything else is `None`: another scheme, a
/// scheme-relative URL, user info, an IP literal, a percent-encoded or non-ASCII host,
/// a query or fragment, backslashes, whitespace. What is accepted reads the same in every URL
/// parser, so the host checked is the host a receiver calls.
fn callback_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix(HTTPS)?;
    let slash = rest.find('/')?;
    let (authority, path) = rest.split_at(slash);
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let host_ok = host.len() <= 253
        && host.split('.').all(label_ok)
        // A name, not an address: the last label of a host name is never all digits.
        && !host
            .rsplit('.')
            .next()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let path_ok = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'-' | b'_'));
    (host_ok && port_ok && path_ok).then_some((authority, path))
}

/// `https://host[:port]` of the token's `instance_url` (a trailing `/` is allowed).
fn instance_origin(url: &str) -> Result<&str, RewriteError> {
    let origin = url.strip_suffix('/').unwrap_or(url);
    match callback_url(&format!("{origin}/")) {
        Some((_, "/")) => Ok(origin),
        _ => Err(RewriteError::InstanceUrl(super::scan::shorten(url))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soap::fixtures::{Encoding, Fixture, Session, ENTERPRISE_URL, SESSION_VALUE};
    use crate::soap::{parse, Limits};

    const MARKER: &str = "SeSsIoNmArKeR";
    const ACME: CallbackUrls<'static> = CallbackUrls::Verify {
        instance_url: "https://acme.my.salesforce.com",
        also: &[],
    };

    fn run(body: &[u8], how: SessionRewrite<'_>) -> Vec<u8> {
        let msg = parse(body, &Limits::default()).unwrap();
        let out = rewrite(body, &msg, &how).unwrap().into_owned();
        // Every output parses and is a fixed point of the same rewrite.
        let again = parse(&out, &Limits::default()).unwrap();
        assert_eq!(rewrite(&out, &again, &how).unwrap().as_ref(), &out[..]);
        out
    }

    fn text(b: Vec<u8>) -> String {
        String::from_utf8(b).unwrap()
    }

    fn fixture_text(f: &Fixture, how: SessionRewrite<'_>) -> String {
        text(run(&f.build(), how))
    }

    #[test]
    fn keep_returns_the_body_itself() {
        let body = Fixture::default().build();
        let msg = parse(&body, &Limits::default()).unwrap();
        let out = rewrite(&body, &msg, &SessionRewrite::Keep).unwrap();
        assert!(matches!(out, Cow::Borrowed(b) if b == &body[..]));
    }

    #[test]
    fn nil_replaces_a_valued_session_id_in_every_encoding() {
        for enc in [Encoding::Text, Encoding::CData, Encoding::SplitRefs] {
            let f = Fixture {
                session: Session::Value(SESSION_VALUE.into(), enc),
                ..Fixture::default()
            };
            let out = fixture_text(&f, SessionRewrite::Nil);
            assert!(!out.contains(MARKER), "{enc:?}");
            assert!(out.contains("<SessionId xsi:nil=\"true\"/>"), "{out}");
            let m = parse(out.as_bytes(), &Limits::default()).unwrap();
            assert_eq!(m.session_id, SessionIdState::Nil);
        }
    }

    #[test]
    fn nil_keeps_every_other_byte() {
        let f = Fixture {
            bom: true,
            decl: Some(r#"<?xml version="1.0" encoding="UTF-8"?>"#),
            soap_prefix: "env".into(),
            out_prefix: Some("ns1".into()),
            ..Fixture::default()
        };
        let before = f.text();
        let after = fixture_text(&f, SessionRewrite::Nil);
        let start = before.find("<ns1:SessionId>").unwrap();
        let end = before.find("</ns1:SessionId>").unwrap() + "</ns1:SessionId>".len();
        let nil = "<ns1:SessionId xsi:nil=\"true\"/>";
        assert_eq!(
            after,
            format!("{}{nil}{}", &before[..start], &before[end..])
        );
        assert!(after.starts_with('\u{FEFF}'));
    }

    #[test]
    fn nil_leaves_nil_and_absent_bodies_untouched() {
        for session in [Session::Nil, Session::Absent] {
            let body = Fixture {
                session,
                ..Fixture::default()
            }
            .build();
            let msg = parse(&body, &Limits::default()).unwrap();
            let out = rewrite(&body, &msg, &SessionRewrite::Nil).unwrap();
            assert!(matches!(out, Cow::Borrowed(_)));
        }
    }

    #[test]
    fn nil_replaces_an_empty_element() {
        let f = Fixture {
            session: Session::Empty,
            ..Fixture::default()
        };
        let out = fixture_text(&f, SessionRewrite::Nil);
        assert!(out.contains("<SessionId xsi:nil=\"true\"/>"));
    }

    #[test]
    fn nil_declares_xsi_when_it_is_not_in_scope() {
        let f = Fixture {
            xsi_prefix: "i".into(),
            ..Fixture::default()
        };
        let out = fixture_text(&f, SessionRewrite::Nil);
        assert!(out.contains(
            "<SessionId xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:nil=\"true\"/>"
        ));
    }

    #[test]
    fn nil_copies_the_element_own_declarations_and_overrides_a_foreign_xsi() {
        let body = Fixture::default().text().replace(
            "<SessionId>",
            "<o:SessionId xmlns:o=\"http://soap.sforce.com/2005/09/outbound\" xmlns:xsi='urn:other'>",
        ).replace("</SessionId>", "</o:SessionId>");
        let out = text(run(body.as_bytes(), SessionRewrite::Nil));
        assert!(out.contains(
            "<o:SessionId xmlns:o=\"http://soap.sforce.com/2005/09/outbound\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:nil=\"true\"/>"
        ), "{out}");
    }

    #[test]
    fn nil_on_an_element_prefixed_xsi_uses_another_prefix() {
        let body = Fixture::default()
            .text()
            .replace(
                "<SessionId>",
                "<xsi:SessionId xmlns:xsi=\"http://soap.sforce.com/2005/09/outbound\">",
            )
            .replace("</SessionId>", "</xsi:SessionId>");
        let out = text(run(body.as_bytes(), SessionRewrite::Nil));
        assert!(out.contains(
            "<xsi:SessionId xmlns:xsi=\"http://soap.sforce.com/2005/09/outbound\" xmlns:xsi1=\"http://www.w3.org/2001/XMLSchema-instance\" xsi1:nil=\"true\"/>"
        ), "{out}");
        let m = parse(out.as_bytes(), &Limits::default()).unwrap();
        assert_eq!(m.session_id, SessionIdState::Nil);
    }

    #[test]
    fn remove_deletes_only_the_element() {
        let f = Fixture::default();
        let before = f.text();
        let after = fixture_text(&f, SessionRewrite::Remove);
        let start = before.find("<SessionId>").unwrap();
        let end = before.find("</SessionId>").unwrap() + "</SessionId>".len();
        assert_eq!(after, format!("{}{}", &before[..start], &before[end..]));
        let m = parse(after.as_bytes(), &Limits::default()).unwrap();
        assert_eq!(m.session_id, SessionIdState::Absent);
    }

    #[test]
    fn inject_replaces_the_value_and_escapes_the_token() {
        let how = SessionRewrite::Inject {
            token: "00Dx!AQ<new>&token",
            urls: ACME,
        };
        let out = fixture_text(&Fixture::default(), how);
        assert!(!out.contains(MARKER));
        assert!(out.contains("<SessionId>00Dx!AQ&lt;new&gt;&amp;token</SessionId>"));
        assert!(out.contains(ENTERPRISE_URL));
    }

    #[test]
    fn inject_drops_xsi_nil_and_keeps_declarations() {
        let body = Fixture {
            session: Session::Nil,
            ..Fixture::default()
        }
        .text()
        .replace(
            "<SessionId xsi:nil=\"true\"/>",
            "<n:SessionId xmlns:n=\"http://soap.sforce.com/2005/09/outbound\" xsi:nil=\"true\"/>",
        );
        let how = SessionRewrite::Inject {
            token: "tok",
            urls: ACME,
        };
        let out = text(run(body.as_bytes(), how));
        assert!(out.contains(
            "<n:SessionId xmlns:n=\"http://soap.sforce.com/2005/09/outbound\">tok</n:SessionId>"
        ));
    }

    #[test]
    fn inject_adds_an_absent_element_after_action_id() {
        let f = Fixture {
            session: Session::Absent,
            out_prefix: Some("ns1".into()),
            ..Fixture::default()
        };
        let how = SessionRewrite::Inject {
            token: "tok",
            urls: ACME,
        };
        let out = fixture_text(&f, how);
        assert!(out.contains("</ns1:ActionId><ns1:SessionId>tok</ns1:SessionId>"));
        let m = parse(out.as_bytes(), &Limits::default()).unwrap();
        assert_eq!(m.session_id, SessionIdState::Value);
    }

    #[test]
    fn inject_copies_action_id_declarations_for_an_added_element() {
        let body = Fixture {
            session: Session::Absent,
            ..Fixture::default()
        }
        .text()
        .replace(
            "<ActionId>04k5e000000XyZaAAK</ActionId>",
            "<a:ActionId xmlns:a=\"http://soap.sforce.com/2005/09/outbound\">04k5e000000XyZaAAK</a:ActionId>",
        );
        let how = SessionRewrite::Inject {
            token: "tok",
            urls: ACME,
        };
        let out = text(run(body.as_bytes(), how));
        assert!(out.contains(
            "</a:ActionId><a:SessionId xmlns:a=\"http://soap.sforce.com/2005/09/outbound\">tok</a:SessionId>"
        ));
    }

    #[test]
    fn inject_moves_the_urls_to_the_instance() {
        for instance in [
            "https://new.my.salesforce.com",
            "https://new.my.salesforce.com/",
        ] {
            let how = SessionRewrite::Inject {
                token: "tok",
                urls: CallbackUrls::Rewrite(instance),
            };
            let out = fixture_text(&Fixture::default(), how);
            let m = parse(out.as_bytes(), &Limits::default()).unwrap();
            assert_eq!(
                m.enterprise_url.as_deref(),
                Some("https://new.my.salesforce.com/services/Soap/c/59.0/00D5e000000AbCd")
            );
            assert_eq!(
                m.partner_url.as_deref(),
                Some("https://new.my.salesforce.com/services/Soap/u/59.0/00D5e000000AbCd")
            );
        }
    }

    #[test]
    fn inject_keeps_the_port_and_path_of_a_rewritten_url() {
        let body = Fixture::default().text().replace(
            ENTERPRISE_URL,
            "https://old.example.com:8443/services/Soap/c/59.0/00D5e000000AbCd",
        );
        let how = SessionRewrite::Inject {
            token: "tok",
            urls: CallbackUrls::Rewrite("https://new.example.com:9443"),
        };
        let out = text(run(body.as_bytes(), how));
        assert!(out.contains(
            "<EnterpriseUrl>https://new.example.com:9443/services/Soap/c/59.0/00D5e000000AbCd</EnterpriseUrl>"
        ));
    }

    /// URLs a receiver could read differently from obmguard, or that lead elsewhere: never
    /// a token beside them, whether rewriting or verifying.
    const UNREADABLE: &[&str] = &[
        "ftp://acme.my.salesforce.com/services/Soap/c/59.0/x",
        "http://acme.my.salesforce.com/services/Soap/c/59.0/x",
        "wss://acme.my.salesforce.com/services/Soap/c/59.0/x",
        "//acme.my.salesforce.com/services/Soap/c/59.0/x",
        "https://user@acme.my.salesforce.com/p",
        "https://acme.my.salesforce.com@evil.example/p",
        "https://evil.example?@acme.my.salesforce.com/p",
        "https://evil.example#@acme.my.salesforce.com/p",
        "https://acme.my.salesforce.com/p?x=1",
        "https://acme.my.salesforce.com/p#f",
        "https://%61cme.my.salesforce.com/p",
        "https://acme.my.salesforce.com%2F@evil.example/p",
        "https:\\\\evil.example\\p",
        "https://evil.example\\@acme.my.salesforce.com/p",
        "https://acme.my.salesforce.com\\@evil.example/p",
        "https://acme.my.salesforce.com",
        "https://127.0.0.1/p",
        "https://[::1]/p",
        "https://acme.my.salesforce.com:/p",
        "https://acme.my.salesforce.com:99999999/p",
        "HTTPS://acme.my.salesforce.com/p",
        "https://acme.my.salesforce.com/p%2e",
        "https://acme .my.salesforce.com/p",
        "not a url",
    ];

    #[test]
    fn inject_refuses_callback_urls_it_cannot_read() {
        for odd in UNREADABLE {
            let escaped = crate::soap::fixtures::escape(odd);
            let body = Fixture::default().text().replace(ENTERPRISE_URL, &escaped);
            let msg = parse(body.as_bytes(), &Limits::default()).unwrap();
            for urls in [CallbackUrls::Rewrite("https://new.example.com"), ACME] {
                let how = SessionRewrite::Inject { token: "tok", urls };
                assert_eq!(
                    rewrite(body.as_bytes(), &msg, &how),
                    Err(RewriteError::CallbackUrl("EnterpriseUrl")),
                    "{odd} {urls:?}"
                );
            }
        }
    }

    #[test]
    fn verify_accepts_only_the_instance_host_or_the_allowed_ones() {
        let also = ["other.my.salesforce.com".to_owned()];
        let verify = CallbackUrls::Verify {
            instance_url: "https://ACME.my.salesforce.com/",
            also: &also,
        };
        let ok_body = Fixture::default().text();
        let out = text(run(
            ok_body.as_bytes(),
            SessionRewrite::Inject {
                token: "t",
                urls: verify,
            },
        ));
        assert!(out.contains(ENTERPRISE_URL), "left as sent");
        let allowed = ok_body.replace("acme.my.salesforce.com", "other.my.salesforce.com");
        run(
            allowed.as_bytes(),
            SessionRewrite::Inject {
                token: "t",
                urls: verify,
            },
        );
        for host in [
            "evil.example",
            "acme.my.salesforce.com.evil.example",
            "acme.my.salesforce.com:8443",
        ] {
            let body = ok_body.replace("acme.my.salesforce.com", host);
            let msg = parse(body.as_bytes(), &Limits::default()).unwrap();
            let how = SessionRewrite::Inject {
                token: "t",
                urls: verify,
            };
            assert!(
                matches!(
                    rewrite(body.as_bytes(), &msg, &how),
                    Err(RewriteError::CallbackUrl(_))
                ),
                "{host}"
            );
        }
        // Written with a character reference: what was checked is not what is forwarded.
        let body = ok_body.replacen("acme.my", "&#97;cme.my", 1);
        let msg = parse(body.as_bytes(), &Limits::default()).unwrap();
        let how = SessionRewrite::Inject {
            token: "t",
            urls: verify,
        };
        assert_eq!(
            rewrite(body.as_bytes(), &msg, &how),
            Err(RewriteError::CallbackUrl("EnterpriseUrl"))
        );
    }

    #[test]
    fn refuses_a_bad_instance_url_or_token() {
        let body = Fixture::default().build();
        let msg = parse(&body, &Limits::default()).unwrap();
        for bad in [
            "https://x/path",
            "javascript:alert(1)",
            "https://",
            "https://a b",
        ] {
            let how = SessionRewrite::Inject {
                token: "tok",
                urls: CallbackUrls::Rewrite(bad),
            };
            assert!(matches!(
                rewrite(&body, &msg, &how),
                Err(RewriteError::InstanceUrl(_))
            ));
        }
        let how = SessionRewrite::Inject {
            token: "a\u{0}b",
            urls: ACME,
        };
        assert_eq!(rewrite(&body, &msg, &how), Err(RewriteError::TokenNotXml));
    }

    #[test]
    fn refuses_a_body_that_was_not_parsed() {
        let body = Fixture::default().build();
        let msg = parse(&body, &Limits::default()).unwrap();
        assert_eq!(
            rewrite(&body[1..], &msg, &SessionRewrite::Nil),
            Err(RewriteError::BodyMismatch)
        );
    }

    #[test]
    fn debug_redacts_the_token() {
        let how = SessionRewrite::Inject {
            token: "secret-token",
            urls: ACME,
        };
        assert!(!format!("{how:?}").contains("secret-token"));
    }
}
