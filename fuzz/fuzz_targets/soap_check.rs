//! The invariants of the `soap` fuzz target, shared with the corpus replay in obmguard's unit
//! tests (`src/soap/corpus_replay.rs` includes this file by path). A panic is a finding. On
//! every body `parse` accepts:
//! - a namespace-aware reader (see `view`) accepts it too and sees the same OrganizationId,
//!   ActionId, URLs, Notification ids, sObject types and SessionId state;
//! - each rewrite (Keep, Nil, Remove, Inject with an instance URL) succeeds, its output parses
//!   again, gives the expected SessionId state to both readers, keeps every other field, keeps
//!   the bytes before (and, for Nil/Remove, after) the SessionId element, and is a fixed point
//!   of the same rewrite;
//! - after Nil, Remove or Inject, no session id value of 8 characters or more (raw or
//!   unescaped) is left in the output unless it also occurs outside the SessionId element.
//!
//! `Message` never holds the session id, so the value comes from the reader's byte spans.
//! The including module provides `obm` (the obmguard crate) and `view` (the oracle).

use super::obm::sfid::SfId;
use super::obm::soap::{
    parse, rewrite, CallbackUrls, Limits, Message, RewriteError, SessionIdState, SessionRewrite,
};
use super::view::{self, contains, trim, Elem, OUT, SOAP, XSI};

const TOKEN: &str = "00D000000000001!AQ.tok";
const INSTANCE: &str = "https://x.example.com";

const MODES: [SessionRewrite<'static>; 4] = [
    SessionRewrite::Keep,
    SessionRewrite::Nil,
    SessionRewrite::Remove,
    SessionRewrite::Inject {
        token: TOKEN,
        urls: CallbackUrls::Rewrite(INSTANCE),
    },
];

const NOTIFS: [(&str, &str); 3] = [(SOAP, "Envelope"), (SOAP, "Body"), (OUT, "notifications")];

/// The children of `notifications` and of `Notification` that obmguard reads, as the reader saw
/// them.
struct Fields<'e> {
    org: Vec<&'e str>,
    action: Vec<&'e str>,
    session: Vec<&'e Elem>,
    enterprise: Vec<&'e str>,
    partner: Vec<&'e str>,
    ids: Vec<&'e str>,
    types: Vec<&'e str>,
    action_el: Option<&'e Elem>,
}

impl<'e> Fields<'e> {
    fn of(els: &'e [Elem]) -> Self {
        let field = |local| at(els, &[(OUT, local)]).into_iter();
        let notification = |local| at(els, &[(OUT, "Notification"), (OUT, local)]).into_iter();
        let text = |e: &'e Elem| trim(&e.text);
        Fields {
            org: field("OrganizationId").map(text).collect(),
            action: field("ActionId").map(text).collect(),
            session: field("SessionId").collect(),
            enterprise: field("EnterpriseUrl").map(text).collect(),
            partner: field("PartnerUrl").map(text).collect(),
            ids: notification("Id").map(text).collect(),
            types: notification("sObject")
                .map(|e| {
                    let t = e.attr(XSI, "type").map_or("", |a| trim(&a.raw));
                    t.split_once(':').map_or(t, |(_, local)| local)
                })
                .collect(),
            action_el: field("ActionId").next(),
        }
    }

    fn session_state(&self) -> SessionIdState {
        match self.session.first() {
            None => SessionIdState::Absent,
            Some(e) if !trim(&e.text).is_empty() => SessionIdState::Value,
            // Raw, as obmguard reads it: `xsi:nil="&#116;rue"` is Empty to obmguard (harmless:
            // the policy only tells Value from the rest).
            Some(e) if matches!(e.attr(XSI, "nil").map(|a| trim(&a.raw)), Some("true" | "1")) => {
                SessionIdState::Nil
            }
            Some(_) => SessionIdState::Empty,
        }
    }
}

/// The elements at `NOTIFS` followed by `below`.
fn at<'e>(els: &'e [Elem], below: &[(&str, &str)]) -> Vec<&'e Elem> {
    let path = [&NOTIFS[..], below].concat();
    els.iter().filter(|e| e.is(&path)).collect()
}

fn read(body: &[u8], what: &str) -> Vec<Elem> {
    view::read(body).unwrap_or_else(|e| {
        panic!("obmguard accepted {what} that a namespace-aware reader refuses: {e}")
    })
}

/// obmguard's parse and the reader agree on everything obmguard reads.
fn assert_agrees(msg: &Message, f: &Fields<'_>, what: &str) {
    assert_eq!(
        f.org,
        [msg.organization_id.as_str()],
        "OrganizationId ({what})"
    );
    assert_eq!(f.action, [msg.action_id.as_str()], "ActionId ({what})");
    assert_eq!(
        f.enterprise,
        msg.enterprise_url
            .as_deref()
            .into_iter()
            .collect::<Vec<_>>(),
        "EnterpriseUrl ({what})"
    );
    assert_eq!(
        f.partner,
        msg.partner_url.as_deref().into_iter().collect::<Vec<_>>(),
        "PartnerUrl ({what})"
    );
    assert_eq!(f.ids, msg.notification_ids, "Notification ids ({what})");
    assert_eq!(f.types, msg.sobject_types, "sObject types ({what})");
    assert!(f.session.len() <= 1, "two SessionId elements ({what})");
    assert_eq!(
        f.session_state(),
        msg.session_id,
        "SessionId state ({what})"
    );
}

/// Parsing an id never panics, and its two spellings round-trip.
fn check_id(s: &str) {
    let Ok(id) = SfId::parse(s) else { return };
    assert_eq!(id.as_15().len(), 15);
    assert_eq!(s.get(..15), Some(id.as_15()));
    let long = id.to_18();
    assert_eq!(long, id.to_string());
    assert_eq!(SfId::parse(&long), Ok(id));
    assert_eq!(SfId::parse(id.as_15()), Ok(id));
    let lower_suffix = format!("{}{}", id.as_15(), long[15..].to_ascii_lowercase());
    assert_eq!(SfId::parse(&lower_suffix), Ok(id));
}

fn check_rewrite(data: &[u8], msg: &Message, before: &Fields<'_>, how: &SessionRewrite<'_>) {
    let out = match rewrite(data, msg, how) {
        Ok(out) => out,
        // Inject refuses a message whose callback URL it cannot rewrite: nothing is forwarded.
        Err(RewriteError::CallbackUrl(_)) if matches!(how, SessionRewrite::Inject { .. }) => return,
        Err(e) => panic!("rewrite {how:?} refused a parsed body: {e}"),
    };
    let out: &[u8] = &out;
    let what = format!("the output of {how:?}");
    let msg2 = parse(out, &Limits::default())
        .unwrap_or_else(|e| panic!("{what} does not parse again: {e}"));

    let expected = match how {
        SessionRewrite::Keep => msg.session_id,
        SessionRewrite::Nil if msg.session_id == SessionIdState::Absent => SessionIdState::Absent,
        SessionRewrite::Nil => SessionIdState::Nil,
        SessionRewrite::Remove => SessionIdState::Absent,
        SessionRewrite::Inject { .. } => SessionIdState::Value,
    };
    assert_eq!(msg2.session_id, expected, "SessionId state of {what}");
    assert_eq!(msg2.organization_id, msg.organization_id);
    assert_eq!(msg2.action_id, msg.action_id);
    assert_eq!(msg2.notification_ids, msg.notification_ids);
    assert_eq!(msg2.sobject_types, msg.sobject_types);
    for (old, new) in [
        (&msg.enterprise_url, &msg2.enterprise_url),
        (&msg.partner_url, &msg2.partner_url),
    ] {
        let moved = match (how, old, new) {
            (SessionRewrite::Inject { .. }, Some(old), Some(new)) => new
                .strip_prefix(INSTANCE)
                .is_some_and(|path| path.starts_with('/') && old.ends_with(path)),
            _ => false,
        };
        assert!(moved || old == new, "a URL changed in {what}");
    }
    if matches!(how, SessionRewrite::Keep) {
        assert_eq!(out, data, "Keep changed the body");
        assert_eq!(&msg2, msg);
    }

    let again = rewrite(out, &msg2, how)
        .unwrap_or_else(|e| panic!("rewrite {how:?} refused its own output: {e}"));
    assert_eq!(&*again, out, "{how:?} is not idempotent");

    let els = read(out, &what);
    let after = Fields::of(&els);
    assert_agrees(&msg2, &after, &what);
    if let SessionRewrite::Inject { token, .. } = how {
        assert_eq!(after.session.first().map(|e| e.text.as_str()), Some(*token));
    }

    // Bytes outside the SessionId element are kept (the URLs may follow it and change).
    let old = before.session.first();
    match (how, old, before.action_el) {
        (SessionRewrite::Nil | SessionRewrite::Remove, Some(el), _) => {
            assert!(out.starts_with(&data[..el.span.start]), "{what}: prefix");
            assert!(out.ends_with(&data[el.span.end..]), "{what}: suffix");
        }
        (SessionRewrite::Inject { .. }, Some(el), _) => {
            assert!(out.starts_with(&data[..el.span.start]), "{what}: prefix");
        }
        (SessionRewrite::Inject { .. }, None, Some(action)) => {
            assert!(out.starts_with(&data[..action.span.end]), "{what}: prefix");
        }
        _ => {}
    }

    // No old session id left behind.
    let Some(el) = old else { return };
    if matches!(how, SessionRewrite::Keep) {
        return;
    }
    let mut cut = data[..el.span.start].to_vec();
    cut.extend_from_slice(&data[el.span.end..]);
    let start_tag = &data[el.span.start..el.content.start];
    let new_urls: Vec<&str> = [&msg2.enterprise_url, &msg2.partner_url]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    let raw = trim(std::str::from_utf8(&data[el.content.clone()]).unwrap_or_default());
    for value in [raw, trim(&el.text)] {
        let v = value.as_bytes();
        let explained = v.len() < 8
            || contains(&cut, v)
            || contains(start_tag, v)
            || TOKEN.contains(value)
            || XSI.contains(value)
            || new_urls.iter().any(|u| u.contains(value));
        assert!(
            explained || !contains(out, v),
            "{what} still holds the old session id {value:?}"
        );
    }
}

/// Check one body; panics on a finding.
pub fn check(data: &[u8]) {
    let Ok(msg) = parse(data, &Limits::default()) else {
        return;
    };
    for id in [&msg.organization_id, &msg.action_id]
        .into_iter()
        .chain(&msg.notification_ids)
    {
        check_id(id);
    }
    let els = read(data, "a body");
    let before = Fields::of(&els);
    assert_agrees(&msg, &before, "the body");
    for how in &MODES {
        check_rewrite(data, &msg, &before, how);
    }
}
