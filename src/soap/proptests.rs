//! Property tests: the rewrite on generated Salesforce-like messages, and panic-freedom of both
//! parsers on arbitrary and mutated input.

use proptest::prelude::*;

use super::fixtures::{Encoding, Fixture, Notif, Session};
use super::{
    parse, parse_answer, rewrite, CallbackUrls, Limits, Message, SessionIdState, SessionRewrite,
};

/// In every generated session id, and nowhere else.
const MARKER: &str = "Qz7SeSsMaRkQz";
/// In every sObject field named SessionId, which must survive every rewrite.
const FIELD_MARKER: &str = "Fx3FiElDmArKx";

fn prefix() -> impl Strategy<Value = String> {
    "[a-wyz][a-z0-9]{0,5}".prop_filter("not sf", |p| p != "sf")
}

fn sf_id() -> impl Strategy<Value = String> {
    prop_oneof!["[0-9A-Za-z]{15}", "[0-9A-Za-z]{18}"]
}

/// Printable ASCII, markup characters included.
fn printable() -> impl Strategy<Value = String> {
    "[ -~]{0,24}"
}

fn session() -> impl Strategy<Value = Session> {
    let value = (printable(), printable()).prop_map(|(a, b)| format!("{a}{MARKER}{b}"));
    let enc = prop_oneof![
        Just(Encoding::Text),
        Just(Encoding::CData),
        Just(Encoding::SplitRefs)
    ];
    prop_oneof![
        Just(Session::Absent),
        Just(Session::Nil),
        Just(Session::Empty),
        // A request's CDATA may not hold `]]>` (it ends the section) nor `<` (refused).
        (value, enc).prop_filter_map("CDATA cannot hold ]]> or <", |(v, e)| {
            (!(matches!(e, Encoding::CData) && (v.contains("]]>") || v.contains('<'))))
                .then_some(Session::Value(v, e))
        }),
    ]
}

fn notification() -> impl Strategy<Value = Notif> {
    let field = prop_oneof![
        ("[A-Za-z][A-Za-z0-9_]{0,8}", printable()),
        printable().prop_map(|v| ("SessionId".to_owned(), format!("{FIELD_MARKER}{v}"))),
    ];
    (
        sf_id(),
        "[A-Z][A-Za-z]{0,10}",
        prop::collection::vec(field, 0..4),
    )
        .prop_map(|(id, sobject, fields)| Notif {
            id,
            sobject,
            fields,
        })
}

prop_compose! {
    fn fixture()(
        bom in any::<bool>(),
        decl in prop_oneof![
            Just(None),
            Just(Some(r#"<?xml version="1.0"?>"#)),
            Just(Some(r#"<?xml version="1.0" encoding="UTF-8"?>"#)),
        ],
        prefixes in (prefix(), prop::option::of(prefix()), prefix())
            .prop_filter("distinct prefixes", |(s, o, x)| {
                s != x && o.as_ref().is_none_or(|o| o != s && o != x)
            }),
        ws in prop::sample::select(vec!["", " ", "\n", "\n  ", "\r\n\t"]),
        header in any::<bool>(),
        org in sf_id(),
        action in sf_id(),
        session in session(),
        urls in any::<bool>(),
        notifications in prop::collection::vec(notification(), 1..=5),
    ) -> Fixture {
        let (soap_prefix, out_prefix, xsi_prefix) = prefixes;
        Fixture {
            bom, decl, soap_prefix, out_prefix, xsi_prefix, ws: ws.to_owned(), header,
            org, action, session, urls, notifications,
        }
    }
}

fn modes() -> [SessionRewrite<'static>; 5] {
    [
        SessionRewrite::Keep,
        SessionRewrite::Nil,
        SessionRewrite::Remove,
        SessionRewrite::Inject {
            token: "00DNEW!AQ<tok>&en",
            urls: CallbackUrls::Verify {
                instance_url: "https://acme.my.salesforce.com",
                also: &[],
            },
        },
        SessionRewrite::Inject {
            token: "00DNEW!AQ<tok>&en",
            urls: CallbackUrls::Rewrite("https://fresh.my.salesforce.com/"),
        },
    ]
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Where the rewrite may change bytes: the SessionId element, or the insertion point.
fn changed_span(msg: &Message) -> (usize, usize) {
    match &msg.spans.session {
        Some(el) => (el.start, el.end),
        None => (msg.spans.action.end, msg.spans.action.end),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn rewrites_generated_messages_safely(f in fixture()) {
        let limits = Limits::default();
        let body = f.build();
        let msg = parse(&body, &limits).map_err(|e| TestCaseError::fail(format!("{e}\n{}", f.text())))?;
        let had_field = f.notifications.iter().flat_map(|n| &n.fields).any(|(k, _)| k == "SessionId");
        for how in modes() {
            let out = rewrite(&body, &msg, &how).unwrap().into_owned();
            let again = parse(&out, &limits);
            prop_assert!(again.is_ok(), "{how:?}: {:?}", again);
            let again = again.unwrap();
            let twice = rewrite(&out, &again, &how).unwrap();
            prop_assert_eq!(twice.as_ref(), &out[..], "not idempotent: {:?}", how);
            prop_assert_eq!(contains(&out, FIELD_MARKER), had_field);
            prop_assert_eq!(&again.notification_ids, &msg.notification_ids);
            match how {
                SessionRewrite::Keep => prop_assert_eq!(&out, &body),
                _ => prop_assert!(!contains(&out, MARKER), "{:?} left the session id", how),
            }
            let outside_only = !matches!(how, SessionRewrite::Inject { urls: CallbackUrls::Rewrite(_), .. });
            if outside_only {
                let (start, end) = changed_span(&msg);
                let tail = body.len() - end;
                prop_assert_eq!(&out[..start], &body[..start]);
                prop_assert_eq!(&out[out.len() - tail..], &body[end..]);
            }
            let want = match (how, msg.session_id) {
                (SessionRewrite::Keep, s) => s,
                (SessionRewrite::Nil, SessionIdState::Absent) => SessionIdState::Absent,
                (SessionRewrite::Nil, _) => SessionIdState::Nil,
                (SessionRewrite::Remove, _) => SessionIdState::Absent,
                (SessionRewrite::Inject { .. }, _) => SessionIdState::Value,
            };
            prop_assert_eq!(again.session_id, want);
            if let SessionRewrite::Inject { urls: CallbackUrls::Rewrite(_), .. } = how {
                if f.urls {
                    prop_assert!(again.enterprise_url.unwrap().starts_with("https://fresh.my.salesforce.com/services/"));
                    prop_assert!(again.partner_url.unwrap().starts_with("https://fresh.my.salesforce.com/services/"));
                }
            }
        }
    }

    #[test]
    fn never_panics_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse(&body, &Limits::default());
        let _ = parse_answer(&body, &Limits::default());
    }

}

proptest! {
    // Most mutations break the XML; run enough cases that plenty still parse.
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn never_panics_on_mutated_messages(
        f in fixture(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, prop::sample::select(vec![
            "<", ">", "&", "&amp;", "&#0;", "<!--", "-->", "]]>", "<![CDATA[", "\"", "'", "/>", "</",
            "xmlns=\"\"", " xsi:nil=\"true\"", "<SessionId>", "</SessionId>", "\u{0}", "\u{FEFF}", "\u{e9}",
        ])), 1..6),
    ) {
        let limits = Limits::default();
        let mut body = f.build();
        for (at, op, snippet) in edits {
            let i = at.index(body.len() + 1);
            match op {
                0 => { body.splice(i..i, snippet.bytes()); }
                1 => { body.truncate(i); }
                2 => { if i < body.len() { body.remove(i); } }
                _ => { if i < body.len() { body[i] ^= 0x20; } }
            }
        }
        let _ = parse_answer(&body, &limits);
        if let Ok(msg) = parse(&body, &limits) {
            // Anything accepted must rewrite into something accepted, with no old value left.
            let out = rewrite(&body, &msg, &SessionRewrite::Nil).unwrap().into_owned();
            let again = parse(&out, &limits);
            prop_assert!(again.is_ok(), "{:?}", again);
            let again = again.unwrap();
            prop_assert!(matches!(again.session_id, SessionIdState::Nil | SessionIdState::Absent));
            let twice = rewrite(&out, &again, &SessionRewrite::Nil).unwrap();
            prop_assert_eq!(twice.as_ref(), &out[..]);
        }
    }
}
