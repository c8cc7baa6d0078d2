//! A lenient reader of what obmguard forwards, standing in for the permissive receivers that
//! sit behind it, and the differential check built on it. Test and fuzz code only
//! (`cfg(any(test, fuzzing))`): the fuzz crate reaches it as `obmguard::soap::lenient`.
//!
//! obmguard's own parser reads one place for each field (`Envelope/Body/notifications/X`). Real
//! receivers are looser, and whatever they read after the rewrite is what counts. [`read`] does
//! what such receivers do:
//! - SOAP-encoding references (Apache Axis 1.4 and other rpc/encoded stacks): an element with
//!   `href="#x"` (or SOAP 1.2 `ref="x"`) takes the content of the element with `id="x"`,
//!   wherever that is (an sObject field, a `multiRef` in the Header, a Body sibling); chains are
//!   followed, cycles stopped;
//! - DOM `getElementsByTagNameNS(OUT, "SessionId").item(0)` and XPath `//out:SessionId[1]`: the
//!   first outbound-namespace `SessionId` in document order, Header and sObjects included;
//!   likewise the first `EnterpriseUrl`/`PartnerUrl` (all of them are kept, since a receiver may
//!   pick any);
//! - `textContent`: the text of an element is all its descendant text;
//! - a regex receiver ([`regex_session`]): the first `<p:SessionId ...>text</p:SessionId>` found
//!   by a byte search, prefix and namespace ignored.
//!
//! [`check`] runs obmguard's pipeline (parse, policy, rewrite) in every session mode on a body
//! and reads each forwarded body with the lenient reader; every [`Violation`] is a way for a
//! receiver to see a session id, a token or a callback URL that obmguard did not mean it to.
//!
//! Never panics, on any input: a body quick-xml cannot read is reported in
//! [`Reading::error`] with what was read up to there.

use std::collections::HashMap;
use std::fmt;

use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

use crate::config::{MessagePolicy, SessionMode};
use crate::policy::{self, SessionPlan};
use crate::sfid::SfId;
use crate::soap::{parse, rewrite, CallbackUrls, Limits, SessionRewrite};

const SOAP: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const OUT: &str = "http://soap.sforce.com/2005/09/outbound";
const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// sObject field namespaces: record data, which obmguard deliberately forwards as it is.
const SOBJECT_NS: [&str; 2] = [
    "urn:sobject.enterprise.soap.sforce.com",
    "urn:sobject.partner.soap.sforce.com",
];
/// How many references a reader follows from one element.
const MAX_HOPS: usize = 16;

/// The access token [`check`] injects: `00DTOKEN!AQ` and 100 more characters.
pub const TOKEN: &str = concat!(
    "00DTOKEN!AQ",
    "0123456789abcdefghijABCDEFGHIJ0123456789abcdefghijABCDEFGHIJ",
    "0123456789abcdefghijABCDEFGHIJ0123456789"
);
/// The token's `instance_url`.
pub const INSTANCE: &str = "https://inst.my.salesforce.com";
/// The host every callback URL must name after an inject.
pub const INSTANCE_HOST: &str = "inst.my.salesforce.com";

/// One element, as the lenient reader saw it.
#[derive(Debug, Clone)]
struct El {
    ns: String,
    local: String,
    /// (namespace, local name, value unescaped when possible) of each non-`xmlns` attribute.
    attrs: Vec<(String, String, String)>,
    /// Offset of the `<`.
    at: usize,
    /// Index one past its last descendant (elements are in document order).
    end: usize,
    /// It is `Envelope/Body/notifications/<this>` (SOAP 1.1 and outbound namespaces).
    canonical: bool,
    /// It lies inside the SOAP `Header`.
    in_header: bool,
}

impl El {
    fn attr(&self, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(_, l, _)| l == local)
            .map(|(_, _, v)| v.as_str())
    }
}

/// What a permissive receiver reads for one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// The text content (descendant text, XML-trimmed) of the element, or of the element its
    /// reference chain ends at.
    pub text: String,
    /// That element says `xsi:nil="true"` (or `1`).
    pub nil: bool,
    /// The ids followed, in order (empty: no reference).
    pub via: Vec<String>,
    /// Offset of the element the receiver looked up (before references).
    pub at: usize,
    /// That element is the one obmguard reads (`Envelope/Body/notifications/<field>`).
    pub canonical: bool,
    /// That element lies in the SOAP Header.
    pub in_header: bool,
}

impl Value {
    /// Where it was read from, for messages.
    pub fn origin(&self) -> String {
        let place = if self.canonical {
            "notifications"
        } else if self.in_header {
            "Header"
        } else {
            "a non-canonical place"
        };
        match self.via.as_slice() {
            [] => format!("{place} @{}", self.at),
            via => format!("{place} @{} via href #{}", self.at, via.join(" -> #")),
        }
    }
}

/// The first `<p:SessionId ...>text</p:SessionId>` a byte search finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegexHit {
    /// Offset of its `<`.
    pub at: usize,
    /// The text between the tags, trimmed, predefined entities and character references left
    /// as written.
    pub text: String,
}

/// Everything the lenient reader believes about a body.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    /// The first outbound-namespace `SessionId` anywhere, references followed.
    pub session: Option<Value>,
    /// Every outbound-namespace `EnterpriseUrl`, in document order, references followed.
    pub enterprise_urls: Vec<Value>,
    /// Every outbound-namespace `PartnerUrl`, in document order, references followed.
    pub partner_urls: Vec<Value>,
    /// How many outbound-namespace `notifications` elements there are.
    pub notifications: usize,
    /// The regex receiver's reading ([`regex_session`]).
    pub regex: Option<RegexHit>,
    /// Namespace of the element the regex hit starts (when the reader got that far).
    pub regex_ns: Option<String>,
    /// Why quick-xml stopped before the end, if it did.
    pub error: Option<String>,
}

/// Read a body as a permissive receiver would. Never panics.
pub fn read(body: &[u8]) -> Reading {
    let doc = Doc::read(body);
    let first = |local: &str| doc.els.iter().position(|e| e.ns == OUT && e.local == local);
    let all = |local: &str| -> Vec<Value> {
        (0..doc.els.len())
            .filter(|&i| doc.els[i].ns == OUT && doc.els[i].local == local)
            .map(|i| doc.value(i))
            .collect()
    };
    let regex = regex_session(body);
    let regex_ns = regex.as_ref().and_then(|hit| {
        doc.els
            .iter()
            .find(|e| e.at == hit.at)
            .map(|e| e.ns.clone())
    });
    Reading {
        session: first("SessionId").map(|i| doc.value(i)),
        enterprise_urls: all("EnterpriseUrl"),
        partner_urls: all("PartnerUrl"),
        notifications: doc
            .els
            .iter()
            .filter(|e| e.ns == OUT && e.local == "notifications")
            .count(),
        regex,
        regex_ns,
        error: doc.error,
    }
}

/// Every element and text piece of a body, in document order.
struct Doc {
    els: Vec<El>,
    /// (owning element, text) pieces: text, CDATA, resolved references.
    texts: Vec<(usize, String)>,
    /// `id` value -> first element carrying it.
    ids: HashMap<String, usize>,
    error: Option<String>,
}

fn resolved(r: ResolveResult<'_>) -> String {
    match r {
        ResolveResult::Bound(ns) => ns.0.to_owned(),
        // Unknown prefixes are read as no namespace: lenient.
        ResolveResult::Unbound | ResolveResult::Unknown(_) => String::new(),
    }
}

fn trim(s: &str) -> &str {
    s.trim_matches([' ', '\t', '\r', '\n'])
}

impl Doc {
    fn read(body: &[u8]) -> Doc {
        let base = if body.starts_with(b"\xEF\xBB\xBF") {
            3
        } else {
            0
        };
        let mut doc = Doc {
            els: Vec::new(),
            texts: Vec::new(),
            ids: HashMap::new(),
            error: None,
        };
        let mut r = NsReader::from_reader(body.get(base..).unwrap_or_default());
        r.config_mut().expand_empty_elements = true;
        r.config_mut().check_end_names = false;
        let mut open: Vec<usize> = Vec::new();
        loop {
            let at = base.saturating_add(usize::try_from(r.buffer_position()).unwrap_or(0));
            let (res, event) = match r.read_resolved_event() {
                Ok(x) => x,
                Err(e) => {
                    doc.error = Some(e.to_string());
                    break;
                }
            };
            let ns = resolved(res);
            match event {
                Event::Start(e) => {
                    let el = doc.element(&r, &e, ns, at, &open);
                    let i = doc.els.len();
                    if let Some(id) = el.attr("id") {
                        doc.ids.entry(trim(id).to_owned()).or_insert(i);
                    }
                    doc.els.push(el);
                    open.push(i);
                }
                Event::End(_) => {
                    if let Some(i) = open.pop() {
                        let end = doc.els.len();
                        if let Some(el) = doc.els.get_mut(i) {
                            el.end = end;
                        }
                    }
                }
                Event::Text(t) => doc.text(&open, &t.into_inner()),
                Event::CData(c) => doc.text(&open, &c.into_inner()),
                Event::GeneralRef(g) => {
                    let c = match g.resolve_char_ref() {
                        Ok(Some(c)) => c.to_string(),
                        _ => resolve_predefined_entity(&g.into_inner())
                            .unwrap_or_default()
                            .to_owned(),
                    };
                    doc.text(&open, &c);
                }
                Event::Eof => break,
                _ => {}
            }
        }
        // Elements left open run to the end.
        let n = doc.els.len();
        for i in open {
            if let Some(el) = doc.els.get_mut(i) {
                el.end = n;
            }
        }
        doc
    }

    fn element(
        &self,
        r: &NsReader<&[u8]>,
        e: &BytesStart<'_>,
        ns: String,
        at: usize,
        open: &[usize],
    ) -> El {
        let local = e.local_name().into_inner().to_owned();
        let mut attrs = Vec::new();
        for a in e.attributes().with_checks(false).flatten() {
            if a.key.as_namespace_binding().is_some() {
                continue;
            }
            let (res, l) = r.resolver().resolve_attribute(a.key);
            let value = a
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map(|v| v.into_owned())
                .unwrap_or_else(|_| a.value.to_string());
            attrs.push((resolved(res), l.into_inner().to_owned(), value));
        }
        let path: Vec<(&str, &str)> = open
            .iter()
            .filter_map(|&i| self.els.get(i))
            .map(|p| (p.ns.as_str(), p.local.as_str()))
            .collect();
        let canonical = path == [(SOAP, "Envelope"), (SOAP, "Body"), (OUT, "notifications")];
        let in_header = path.get(..2) == Some(&[(SOAP, "Envelope"), (SOAP, "Header")][..]);
        El {
            ns,
            local,
            attrs,
            at,
            end: usize::MAX,
            canonical,
            in_header,
        }
    }

    fn text(&mut self, open: &[usize], s: &str) {
        if let Some(&i) = open.last() {
            self.texts.push((i, s.to_owned()));
        }
    }

    /// The id an element refers to: `href="#x"` (SOAP 1.1) or `ref="x"` (SOAP 1.2), any prefix.
    fn reference(&self, i: usize) -> Option<&str> {
        let el = self.els.get(i)?;
        if let Some(h) = el.attr("href") {
            return trim(h).strip_prefix('#');
        }
        el.attr("ref").map(trim)
    }

    fn value(&self, i: usize) -> Value {
        let mut cur = i;
        let mut via: Vec<String> = Vec::new();
        for _ in 0..MAX_HOPS {
            let Some(id) = self.reference(cur) else { break };
            let Some(&j) = self.ids.get(id) else { break };
            if via.iter().any(|v| v == id) {
                break;
            }
            via.push(id.to_owned());
            cur = j;
        }
        let (at, canonical, in_header) = self
            .els
            .get(i)
            .map_or((0, false, false), |e| (e.at, e.canonical, e.in_header));
        let target = self.els.get(cur);
        let end = target.map_or(cur, |e| e.end);
        let text: String = self
            .texts
            .iter()
            .filter(|(owner, _)| (cur..end).contains(owner))
            .map(|(_, t)| t.as_str())
            .collect();
        let nil = target.is_some_and(|e| {
            e.attrs
                .iter()
                .any(|(ns, l, v)| ns == XSI && l == "nil" && matches!(trim(v), "true" | "1"))
        });
        Value {
            text: trim(&text).to_owned(),
            nil,
            via,
            at,
            canonical,
            in_header,
        }
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

/// `[prefix:]SessionId` at `at`; the offset after it.
fn session_name(body: &[u8], at: usize) -> Option<usize> {
    let mut j = at;
    let start = j;
    while body.get(j).copied().is_some_and(is_name_byte) {
        j += 1;
    }
    let mut name = body.get(start..j)?;
    if body.get(j) == Some(&b':') {
        j += 1;
        let s = j;
        while body.get(j).copied().is_some_and(is_name_byte) {
            j += 1;
        }
        name = body.get(s..j)?;
    }
    (name == b"SessionId").then_some(j)
}

/// The regex receiver: the first match of
/// `<(?:\w+:)?SessionId(?:\s[^>]*)?>([^<]*)</(?:\w+:)?SessionId\s*>` in the raw bytes.
pub fn regex_session(body: &[u8]) -> Option<RegexHit> {
    let mut from = 0;
    while let Some(lt) = body
        .get(from..)
        .and_then(|rest| rest.iter().position(|&b| b == b'<'))
        .map(|p| from + p)
    {
        from = lt + 1;
        let Some(mut j) = session_name(body, lt + 1) else {
            continue;
        };
        match body.get(j) {
            Some(b'>') => {}
            Some(c) if c.is_ascii_whitespace() => {
                j += body[j..].iter().position(|&b| b == b'>')?;
            }
            _ => continue,
        }
        let content = j + 1;
        let close = body
            .get(content..)
            .and_then(|rest| rest.iter().position(|&b| b == b'<'))
            .map(|p| content + p)?;
        if body.get(close + 1) != Some(&b'/') {
            continue;
        }
        let Some(mut k) = session_name(body, close + 2) else {
            continue;
        };
        while body.get(k).is_some_and(u8::is_ascii_whitespace) {
            k += 1;
        }
        if body.get(k) != Some(&b'>') {
            continue;
        }
        let text = String::from_utf8_lossy(&body[content..close]);
        return Some(RegexHit {
            at: lt,
            text: trim(&text).to_owned(),
        });
    }
    None
}

/// A route's session mode, as [`check`] runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `strip`: a valued SessionId is made nil, any other form is forwarded unchanged.
    Strip,
    /// `remove`: the SessionId element is deleted.
    Remove,
    /// `reject`: a valued SessionId is refused, any other form is forwarded unchanged.
    Reject,
    /// `inject`: [`TOKEN`] goes in the SessionId, the URLs move to [`INSTANCE`].
    Inject,
}

/// The modes [`check`] runs (`audit` forwards the session id by design).
pub const MODES: [Mode; 4] = [Mode::Strip, Mode::Remove, Mode::Reject, Mode::Inject];

impl Mode {
    fn config(self) -> SessionMode {
        match self {
            Mode::Strip => SessionMode::Strip,
            Mode::Remove => SessionMode::Remove,
            Mode::Reject => SessionMode::Reject,
            Mode::Inject => SessionMode::Inject,
        }
    }
}

/// The class of a broken invariant (numbers are the red team's hole numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hole {
    /// 1: a value reached through a SOAP-encoding `href`/`id` reference.
    Reference,
    /// 2: inject mode sends the token beside a callback URL that is not the instance's.
    CallbackUrl,
    /// 5: a SessionId, URL or `notifications` other than the one obmguard rewrote.
    Duplicate,
    /// The forwarded body is not XML a receiver can read.
    NotXml,
}

impl fmt::Display for Hole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hole::Reference => "hole 1 (href/id reference)",
            Hole::CallbackUrl => "hole 2 (unverified callback URL)",
            Hole::Duplicate => "hole 5 (second SessionId/URL/notifications)",
            Hole::NotXml => "not XML after the rewrite",
        })
    }
}

/// One way a receiver can read what obmguard did not mean it to.
#[derive(Debug, Clone)]
pub struct Violation {
    pub hole: Hole,
    pub mode: Mode,
    /// What the lenient reader saw (values shortened).
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in {:?} mode: {}", self.hole, self.mode, self.detail)
    }
}

/// What obmguard forwards for `body` in `mode`, or why it refuses it. Runs the production
/// path: [`parse`] with default limits, [`policy::check`] with a route that allows the body's
/// own organization, [`rewrite`] as the proxy maps the plan (URL rewriting on for inject).
pub fn forwarded(body: &[u8], mode: Mode) -> Result<Vec<u8>, String> {
    let limits = Limits::default();
    let msg = parse(body, &limits).map_err(|e| format!("parse: {}", e.reason()))?;
    let org = SfId::parse(&msg.organization_id).map_err(|e| format!("org id: {e}"))?;
    let route = MessagePolicy {
        organizations: [org].into_iter().collect(),
        actions: None,
        max_body_bytes: 1 << 20,
        session_id: mode.config(),
        xml: limits,
    };
    let plan = policy::check(&msg, &route).map_err(|e| format!("policy: {e:?}"))?;
    let how = match plan.session {
        SessionPlan::Keep => SessionRewrite::Keep,
        SessionPlan::Nil => SessionRewrite::Nil,
        SessionPlan::Remove => SessionRewrite::Remove,
        SessionPlan::Inject => SessionRewrite::Inject {
            token: TOKEN,
            urls: CallbackUrls::Rewrite(INSTANCE),
        },
    };
    rewrite(body, &msg, &how)
        .map(|out| out.into_owned())
        .map_err(|e| format!("rewrite: {e}"))
}

/// `s` cut to `n` characters.
pub fn short(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).collect();
    if s.chars().nth(n).is_some() {
        out.push_str("...");
    }
    out
}

/// Why a callback URL a receiver would use with the token is not the instance's, if it is not.
pub fn bad_callback_url(text: &str) -> Option<String> {
    let prefix = format!("{INSTANCE}/");
    if !text.starts_with(&prefix) {
        return Some(format!("does not start with {prefix}"));
    }
    if text
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        return Some("holds whitespace, a control character or a backslash".to_owned());
    }
    let url = match url::Url::parse(text) {
        Ok(u) => u,
        Err(e) => return Some(format!("does not parse as a URL ({e})")),
    };
    if url.scheme() != "https" {
        return Some(format!("scheme {}", url.scheme()));
    }
    if url.host_str() != Some(INSTANCE_HOST) || url.port().is_some() {
        return Some(format!("host {:?} port {:?}", url.host_str(), url.port()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Some("has user info".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Some("has a query or a fragment".to_owned());
    }
    None
}

/// The class of a value read from the wrong place: through a reference, or from an element
/// obmguard does not read.
fn misread(v: &Value, otherwise: Hole) -> Hole {
    if !v.via.is_empty() {
        Hole::Reference
    } else if !v.canonical {
        Hole::Duplicate
    } else {
        otherwise
    }
}

/// Check what a receiver reads from one forwarded body.
pub fn check_forwarded(out: &[u8], mode: Mode) -> Vec<Violation> {
    let r = read(out);
    let mut v = Vec::new();
    let mut add = |hole, detail: String| v.push(Violation { hole, mode, detail });
    if let Some(e) = &r.error {
        add(Hole::NotXml, format!("quick-xml stops: {}", short(e, 120)));
    }
    if r.notifications > 1 {
        add(
            Hole::Duplicate,
            format!("{} notifications elements", r.notifications),
        );
    }
    // The regex receiver: sObject-namespace fields are record data obmguard forwards by design.
    let regex = r.regex.as_ref().filter(|_| {
        !r.regex_ns
            .as_deref()
            .is_some_and(|ns| SOBJECT_NS.contains(&ns))
    });
    if mode == Mode::Inject {
        match &r.session {
            Some(s) if s.text == TOKEN => {}
            Some(s) => add(
                misread(s, Hole::Duplicate),
                format!(
                    "DOM/XPath SessionId is {:?} ({}), not the token",
                    short(&s.text, 40),
                    s.origin()
                ),
            ),
            None => add(Hole::Duplicate, "no SessionId after inject".to_owned()),
        }
        match regex {
            Some(hit) if hit.text == TOKEN => {}
            Some(hit) => add(
                Hole::Duplicate,
                format!(
                    "regex SessionId is {:?} (@{}), not the token",
                    short(&hit.text, 40),
                    hit.at
                ),
            ),
            None => add(Hole::Duplicate, "the regex finds no SessionId".to_owned()),
        }
        for (name, urls) in [
            ("EnterpriseUrl", &r.enterprise_urls),
            ("PartnerUrl", &r.partner_urls),
        ] {
            for u in urls.iter().filter(|u| !u.text.is_empty()) {
                if let Some(why) = bad_callback_url(&u.text) {
                    add(
                        misread(u, Hole::CallbackUrl),
                        format!(
                            "token sent with {name} {:?} ({}): {why}",
                            short(&u.text, 60),
                            u.origin()
                        ),
                    );
                }
            }
        }
    } else {
        if let Some(s) = r.session.as_ref().filter(|s| !s.text.is_empty()) {
            add(
                misread(s, Hole::Duplicate),
                format!(
                    "DOM/XPath SessionId is {:?} ({}{})",
                    short(&s.text, 40),
                    s.origin(),
                    if s.nil { ", also xsi:nil" } else { "" }
                ),
            );
        }
        if let Some(hit) = regex.filter(|h| !h.text.is_empty()) {
            add(
                Hole::Duplicate,
                format!(
                    "regex SessionId is {:?} (@{})",
                    short(&hit.text, 40),
                    hit.at
                ),
            );
        }
    }
    v
}

/// Run every mode on `body` and check what each forwarded body gives a lenient receiver. A
/// body obmguard refuses in a mode satisfies that mode trivially.
pub fn check(body: &[u8]) -> Vec<Violation> {
    MODES
        .iter()
        .filter_map(|&mode| forwarded(body, mode).ok().map(|out| (mode, out)))
        .flat_map(|(mode, out)| check_forwarded(&out, mode))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soap::fixtures::{Fixture, Session, SESSION_VALUE};
    use proptest::prelude::*;

    fn wrap(header: &str, session: &str, fields: &str) -> String {
        format!(
            r#"<e:Envelope xmlns:e="{SOAP}" xmlns:xsi="{XSI}"><e:Header>{header}</e:Header><e:Body><notifications xmlns="{OUT}"><OrganizationId>00D5e000000AbCdEAK</OrganizationId><ActionId>04k5e000000XyZaAAK</ActionId>{session}<EnterpriseUrl>https://a.example/c</EnterpriseUrl><Notification><Id>04l5e00000AbC000AAV</Id><sObject xsi:type="sf:Account" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">{fields}</sObject></Notification></notifications></e:Body></e:Envelope>"#
        )
    }

    #[test]
    fn reads_the_session_id_where_salesforce_puts_it() {
        let r = read(&Fixture::default().build());
        let s = r.session.unwrap();
        assert_eq!(s.text, SESSION_VALUE);
        assert!(s.canonical && s.via.is_empty() && !s.nil);
        assert_eq!(r.regex.unwrap().text, SESSION_VALUE);
        assert_eq!(r.notifications, 1);
        assert_eq!(r.enterprise_urls.len(), 1);
        assert_eq!(r.partner_urls.len(), 1);
        assert!(r.error.is_none());
        let nil = Fixture {
            session: Session::Nil,
            ..Fixture::default()
        };
        let r = read(&nil.build());
        assert!(r.session.unwrap().nil);
        assert_eq!(r.regex, None);
    }

    #[test]
    fn follows_href_to_an_id_anywhere_and_through_chains() {
        let body = wrap(
            r##"<multiRef id="h" href="#f"/>"##,
            r##"<SessionId href="#h"/>"##,
            r#"<sf:Name id="f">00Dsmuggled</sf:Name>"#,
        );
        let s = read(body.as_bytes()).session.unwrap();
        assert_eq!(s.text, "00Dsmuggled");
        assert_eq!(s.via, ["h", "f"]);
        assert!(s.canonical);
        // A cycle stops; a dangling reference reads the element itself.
        let body = wrap(
            r##"<a id="x" href="#y"/><b id="y" href="#x"/>"##,
            r##"<SessionId href="#x"/>"##,
            r##"<sf:Name href="#nowhere"/>"##,
        );
        let s = read(body.as_bytes()).session.unwrap();
        assert_eq!(s.text, "");
        assert_eq!(s.via, ["x", "y"]);
        // SOAP 1.2 `ref` and a character reference in the attribute.
        let body = wrap(
            r#"<m id="z">v1</m>"#,
            r#"<SessionId xmlns:enc="http://www.w3.org/2003/05/soap-encoding" enc:ref="&#x7a;"/>"#,
            "",
        );
        assert_eq!(read(body.as_bytes()).session.unwrap().text, "v1");
    }

    #[test]
    fn takes_the_first_outbound_session_id_header_first() {
        let body = wrap(
            &format!(r#"<o:SessionId xmlns:o="{OUT}">fromHeader</o:SessionId>"#),
            "<SessionId>fromBody</SessionId>",
            "",
        );
        let r = read(body.as_bytes());
        let s = r.session.unwrap();
        assert_eq!(s.text, "fromHeader");
        assert!(s.in_header && !s.canonical);
        assert_eq!(r.regex.unwrap().text, "fromHeader");
        // Another namespace is not the outbound SessionId, but the regex reads it.
        let body = wrap(
            r#"<x:SessionId xmlns:x="urn:x">other</x:SessionId>"#,
            "",
            "",
        );
        let r = read(body.as_bytes());
        assert_eq!(r.session, None);
        assert_eq!(r.regex.unwrap().text, "other");
        assert_eq!(r.regex_ns.as_deref(), Some("urn:x"));
    }

    #[test]
    fn counts_every_notifications_element() {
        let body = wrap(&format!(r#"<notifications xmlns="{OUT}"/>"#), "", "");
        assert_eq!(read(body.as_bytes()).notifications, 2);
    }

    #[test]
    fn regex_reader_skips_the_nil_form_and_reads_the_next_match() {
        let hit = regex_session(
            b"<SessionId xsi:nil=\"true\"/><a/><x:SessionId a='1'> v </x:SessionId >",
        )
        .unwrap();
        assert_eq!(hit.text, "v");
        assert_eq!(hit.at, 31);
        assert_eq!(regex_session(b"<SessionIdX>v</SessionIdX>"), None);
        assert_eq!(regex_session(b"<SessionId>v"), None);
    }

    #[test]
    fn callback_urls_must_be_the_instance_with_a_plain_path() {
        assert_eq!(
            bad_callback_url("https://inst.my.salesforce.com/services/Soap/c/59.0/x"),
            None
        );
        for bad in [
            "https://evil.example/services",
            "https://inst.my.salesforce.com",
            "https://inst.my.salesforce.com.evil.example/",
            "https://inst.my.salesforce.com@evil.example/",
            "https://inst.my.salesforce.com/x?y",
            "https://inst.my.salesforce.com/x#y",
            "https://inst.my.salesforce.com:444/x",
            "https://inst.my.salesforce.com/\\evil",
            "wss://inst.my.salesforce.com/x",
        ] {
            assert!(bad_callback_url(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn the_plain_pipeline_gives_a_lenient_receiver_nothing_to_misread() {
        for session in [Session::Absent, Session::Nil, Session::Empty] {
            let f = Fixture {
                session,
                ..Fixture::default()
            };
            assert!(check(&f.build()).is_empty(), "{f:?}");
        }
        let v = check(&Fixture::default().build());
        assert!(v.is_empty(), "{v:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn never_panics_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..1024)) {
            let _ = read(&body);
            let _ = check(&body);
        }

        #[test]
        fn never_panics_on_markup_soup(parts in prop::collection::vec(prop::sample::select(vec![
            "<SessionId", "</SessionId>", "<a:SessionId", ">", "/>", " href=\"#i\"", " id=\"i\"",
            " ref='i'", "text", "&amp;", "&#x41;", "&bogus;", "<![CDATA[x]]>", "<", "\"", ":",
            " xmlns=\"http://soap.sforce.com/2005/09/outbound\"", " xmlns:a=\"urn:a\"", "<e>", "</e>",
        ]), 0..40)) {
            let body = parts.concat();
            let _ = read(body.as_bytes());
            let _ = check(body.as_bytes());
        }
    }
}
