//! The SOAP stage through the running proxy: each refusal's status and fault, that nothing
//! reached the receiver, the session id policies, and that only a real Ack becomes 200.

use crate::harness::*;
use obmguard_testkit::messages::{Sample, SESSION_ID};
use obmguard_testkit::receiver::{Behaviour, Receiver};

struct Env {
    w: World,
    recv: Receiver,
    p: Proxy,
}

/// Routes: /strip /remove /reject /audit, plus /small (max_body_bytes 2048) and /actions
/// (action allow-list that does not contain the sample's action).
async fn env() -> Env {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let mut s = Setup::new(&w);
    for mode in ["strip", "remove", "reject", "audit"] {
        s = s.route(
            &format!("{mode}.toml"),
            route(
                mode,
                &format!("/{mode}"),
                &recv.url(&format!("/{mode}")),
                mode,
            ),
        );
    }
    let small = route("small", "/small", &recv.url("/small"), "strip") + "max_body_bytes = 2048\n";
    let actions = route("actions", "/actions", &recv.url("/actions"), "strip")
        + "action_ids = [\"04k5e000000XyZb\"]\n";
    s = s.route("small.toml", small).route("actions.toml", actions);
    let p = Proxy::start(&w, &s).await;
    Env { w, recv, p }
}

async fn refused(e: &Env, path: &str, body: &[u8], status: u16, fault: &str) {
    let before = e.recv.count();
    let r = e.p.post(&e.w.salesforce(), path, body).await.unwrap();
    assert_eq!(r.status, status, "{path}: {}", r.body_str());
    let f = r.fault_string().unwrap_or_default();
    assert!(
        f.contains(fault),
        "{path}: fault {f:?} should contain {fault:?}"
    );
    assert!(r.body_str().contains(if status >= 500 {
        "soapenv:Server"
    } else {
        "soapenv:Client"
    }));
    assert_eq!(
        e.recv.count(),
        before,
        "{path}: nothing may reach the receiver"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_or_malformed_xml_is_refused_and_never_forwarded() {
    let e = env().await;
    let good = String::from_utf8(notification(Some(SESSION_ID))).unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "doctype",
            good.replacen(
                "<soapenv:Envelope",
                "<!DOCTYPE x [<!ENTITY a \"b\">]><soapenv:Envelope",
                1,
            ),
            "DOCTYPE",
        ),
        ("entity", good.replace("Acme Ltd", "&ext;"), "entity"),
        (
            "processing instruction",
            good.replacen("<soapenv:Body>", "<?evil x?><soapenv:Body>", 1),
            "processing instruction",
        ),
        (
            "utf-16 declaration",
            good.replacen("encoding=\"UTF-8\"", "encoding=\"UTF-16\"", 1),
            "encoding",
        ),
        (
            "control character",
            good.replace("Acme Ltd", "Acme\u{1}Ltd"),
            "character",
        ),
        (
            "comment",
            good.replace("Acme Ltd", "Acme<!-- hidden -->Ltd"),
            "comment",
        ),
        ("trailing content", format!("{good}<x/>"), ""),
        ("unclosed", good[..good.len() - 25].to_string(), ""),
        (
            "not a notification",
            good.replace("http://soap.sforce.com/2005/09/outbound", "urn:other"),
            "",
        ),
        (
            "deep nesting",
            good.replace(
                "Acme Ltd",
                &format!("{}{}", "<sf:a>".repeat(80), "</sf:a>".repeat(80)),
            ),
            "deep",
        ),
    ];
    for (what, body, fault) in cases {
        let r =
            e.p.post(&e.w.salesforce(), "/strip", body.as_bytes())
                .await
                .unwrap();
        assert_eq!(r.status, 400, "{what}: {}", r.body_str());
        let f = r.fault_string().unwrap_or_default();
        assert!(
            f.to_lowercase().contains(&fault.to_lowercase()),
            "{what}: {f}"
        );
        assert!(
            !f.contains("AQ4AQFakeSessionValue"),
            "{what}: no session id in a fault"
        );
    }
    let mut bad_utf8 = good.clone().into_bytes();
    let at = good.find("Acme").unwrap();
    bad_utf8[at] = 0xff;
    refused(&e, "/strip", &bad_utf8, 400, "UTF-8").await;
    let too_many = Sample {
        notifications: 101,
        ..Sample::default()
    }
    .body();
    refused(&e, "/strip", &too_many, 400, "100").await;
    assert_eq!(e.recv.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn size_content_type_org_and_action_rules() {
    let e = env().await;
    let big = Sample {
        notifications: 20,
        ..Sample::default()
    }
    .body();
    assert!(big.len() > 2048);
    refused(&e, "/small", &big, 413, "larger than this route's limit").await;
    // Chunked: no Content-Length, crosses the limit while streaming.
    let mut raw = b"POST /small HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in big.chunks(512) {
        raw.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        raw.extend_from_slice(part);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let mut c = e.p.connect(&e.w.salesforce()).await.unwrap();
    assert_eq!(c.send_raw(&raw).await.unwrap().status, 413);
    let mut c = e.p.connect(&e.w.salesforce()).await.unwrap();
    let body = notification(None);
    let mut raw = format!("POST /strip HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    raw.extend_from_slice(&body);
    assert_eq!(c.send_raw(&raw).await.unwrap().status, 415);
    let other_org = Sample {
        org_id: "00D5e000000XyZw".into(),
        ..Sample::default()
    }
    .body();
    refused(
        &e,
        "/strip",
        &other_org,
        403,
        "organization 00D5e000000XyZw",
    )
    .await;
    let bad_checksum = Sample {
        org_id: "00D5e000000AbCdEAF".into(),
        ..Sample::default()
    }
    .body();
    refused(&e, "/strip", &bad_checksum, 400, "checksum").await;
    refused(
        &e,
        "/actions",
        &notification(None),
        403,
        "outbound message action",
    )
    .await;
    // The 15-character form of the configured 18-character org id is the same org.
    let org15 = Sample {
        org_id: obmguard_testkit::messages::ORG_ID_15.into(),
        ..Sample::default()
    }
    .body();
    assert_eq!(e.p.status(&e.w.salesforce(), "/strip", &org15).await, 200);
    assert_eq!(e.recv.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn session_id_modes_do_what_they_say() {
    let e = env().await;
    let with = notification(Some(SESSION_ID));
    let secret = "AQ4AQFakeSessionValue";
    assert!(String::from_utf8_lossy(&with).contains(secret));

    assert_eq!(e.p.status(&e.w.salesforce(), "/strip", &with).await, 200);
    let got = e.recv.last().unwrap();
    assert!(got.is_session_id_nil() && !got.body_str().contains(secret));
    // Everything else is byte-identical: only the SessionId element changed.
    let original = String::from_utf8(with.clone()).unwrap();
    let start = original.find("<SessionId>").unwrap();
    let end = original.find("</SessionId>").unwrap() + "</SessionId>".len();
    let forwarded = got.body_str();
    assert!(forwarded.starts_with(&original[..start]) && forwarded.ends_with(&original[end..]));

    assert_eq!(e.p.status(&e.w.salesforce(), "/remove", &with).await, 200);
    let got = e.recv.last().unwrap();
    assert!(!got.body_str().contains("SessionId") && !got.body_str().contains(secret));

    refused(&e, "/reject", &with, 403, "Send Session ID").await;
    assert_eq!(
        e.p.status(&e.w.salesforce(), "/reject", &notification(None))
            .await,
        200,
        "a nil SessionId passes reject"
    );

    assert_eq!(e.p.status(&e.w.salesforce(), "/audit", &with).await, 200);
    assert_eq!(
        e.recv.last().unwrap().body,
        with,
        "audit forwards unchanged"
    );

    let m = e.p.metrics().await;
    for (route, action) in [
        ("strip", "stripped"),
        ("remove", "removed"),
        ("reject", "rejected"),
        ("audit", "audited"),
    ] {
        assert_eq!(
            metric(
                &m,
                &format!("obmguard_session_ids_total{{action=\"{action}\",route=\"{route}\"}}")
            ),
            1.0,
            "{route}\n{m}"
        );
    }
    assert!(!m.contains(secret));
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_real_ack_from_the_receiver_becomes_200() {
    let e = env().await;
    let body = notification(None);
    // Acks first: each answer below follows one that the proxy's threads read as an Ack.
    for _ in 0..4 {
        assert_eq!(e.p.status(&e.w.salesforce(), "/strip", &body).await, 200);
    }
    for (behaviour, status, fault) in [
        (Behaviour::Nack, 502, "Ack false"),
        (
            Behaviour::Fault("receiver <db> is down".into()),
            502,
            "receiver <db> is down",
        ),
        (Behaviour::Html, 502, "not an Ack"),
        (Behaviour::Status(500), 502, "HTTP 500"),
        (Behaviour::Garbage, 502, "not an Ack"),
        (Behaviour::Huge(4 * 1024 * 1024), 502, "larger than"),
        (Behaviour::Reset, 502, ""),
    ] {
        e.recv.set_behaviour(behaviour.clone());
        let r = e.p.post(&e.w.salesforce(), "/strip", &body).await.unwrap();
        assert_eq!(r.status, status, "{behaviour:?}: {}", r.body_str());
        assert_ne!(r.ack(), Some(true), "{behaviour:?}: never a false Ack");
        assert!(
            r.fault_string().unwrap_or_default().contains(fault),
            "{behaviour:?}: {}",
            r.body_str()
        );
    }
    e.recv.set_behaviour(Behaviour::Ack);
    assert_eq!(e.p.status(&e.w.salesforce(), "/strip", &body).await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversize_body_sent_in_full_still_gets_its_413() {
    let e = env().await;
    // The client writes the whole 4 MiB before reading: the refusal must not reset the
    // connection under it.
    let body = vec![b' '; 4 * 1024 * 1024];
    let mut raw = format!(
        "POST /small HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    let mut c = e.p.connect(&e.w.salesforce()).await.unwrap();
    let r = c.send_raw(&raw).await.unwrap();
    assert_eq!(r.status, 413, "{}", r.body_str());
    assert_eq!(e.recv.count(), 0);
}
