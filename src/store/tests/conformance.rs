//! What every engine owes the [`Store`] contract. Each test takes an [`Engine`] and opens the
//! store through it; `engines!` in the parent runs each on SQLite and on PostgreSQL.

use super::*;

pub(super) async fn a_message_is_admitted_claimed_and_delivered(e: &dyn Engine) {
    let store = e.open().await;
    let m = msg(
        "orders",
        &[1, 2],
        "<soapenv:Envelope>one</soapenv:Envelope>",
        t(0),
    );
    let id = stored(&*store, m.clone()).await;
    assert_eq!(state_of(&*store, id).await, State::Queued);

    let c = store
        .claim("orders", "w1", LEASE, 4, t(1))
        .await
        .unwrap()
        .expect("due");
    assert_eq!(c.id, id);
    assert_eq!(c.route, "orders");
    assert_eq!(c.body, m.body);
    assert_eq!(c.notification_ids, m.notification_ids);
    assert_eq!(c.organization_id, ORG);
    assert_eq!(c.action_id, m.action_id);
    assert_eq!(c.request_id, m.request_id);
    assert_eq!(c.attempts, 1);
    assert_eq!(c.accepted_at, t(0));
    assert_eq!(c.age_from, t(0));
    assert_eq!(c.lease_until, t(1) + LEASE);
    assert_eq!(state_of(&*store, id).await, State::Delivering);
    assert!(store
        .claim("orders", "w2", LEASE, 4, t(2))
        .await
        .unwrap()
        .is_none());

    assert!(store.delivered(id, "w1").await.unwrap());
    let shown = store.show(id, false).await.unwrap().unwrap().summary;
    assert_eq!(shown.state, State::Delivered);
    assert!(shown.finished_at.is_some());
    assert_eq!(shown.lease_owner, None);
    assert!(store
        .claim("orders", "w1", LEASE, 4, t(100))
        .await
        .unwrap()
        .is_none());
    assert!(!store.delivered(id, "w1").await.unwrap(), "delivered twice");
}

pub(super) async fn a_worker_that_died_loses_its_lease_to_another_worker(e: &dyn Engine) {
    let store = e.open().await;
    let id = stored(&*store, msg("orders", &[1], "<x/>", t(0))).await;
    store
        .claim("orders", "w1", LEASE, 4, t(0))
        .await
        .unwrap()
        .unwrap();

    assert!(store
        .claim("orders", "w2", LEASE, 4, t(29))
        .await
        .unwrap()
        .is_none());
    let again = store
        .claim("orders", "w2", LEASE, 4, t(30))
        .await
        .unwrap()
        .expect("lease expired");
    assert_eq!(again.id, id);
    assert_eq!(again.attempts, 2, "the dead worker's try counts");
    let shown = store.show(id, false).await.unwrap().unwrap().summary;
    assert_eq!(shown.lease_owner.as_deref(), Some("w2"));

    // The first worker comes back: it no longer holds the lease.
    assert!(!store.retry_later(id, "w1", t(90), "late").await.unwrap());
    assert!(!store.dead(id, "w1", "late").await.unwrap());
    assert_eq!(state_of(&*store, id).await, State::Delivering);
    // ...but an Ack it got is a fact.
    assert!(store.delivered(id, "w1").await.unwrap());
    assert!(!store.retry_later(id, "w2", t(90), "timeout").await.unwrap());
    assert_eq!(state_of(&*store, id).await, State::Delivered);
}

pub(super) async fn release_takes_back_only_the_named_owners_leases(e: &dyn Engine) {
    let store = e.open().await;
    let a = stored(&*store, msg("orders", &[1], "<a/>", t(0))).await;
    let b = stored(&*store, msg("orders", &[2], "<b/>", t(0))).await;
    let c = stored(&*store, msg("orders", &[3], "<c/>", t(0))).await;
    for (worker, want) in [("host/10/aa/", a), ("host/10/aa/", b), ("host/100/bb/", c)] {
        let got = store.claim("orders", worker, LEASE, 4, t(0)).await.unwrap();
        assert_eq!(got.unwrap().id, want);
    }
    // A prefix that is not a whole owner's name matches nothing of `host/100/`'s.
    assert_eq!(store.release("host/10/aa/", t(1)).await.unwrap(), 2);
    assert_eq!(state_of(&*store, a).await, State::Queued);
    assert_eq!(state_of(&*store, b).await, State::Queued);
    assert_eq!(state_of(&*store, c).await, State::Delivering);
    // Due at once, long before the lease would have ended.
    let again = store
        .claim("orders", "host/11/cc/", LEASE, 4, t(1))
        .await
        .unwrap();
    assert_eq!(again.unwrap().id, a);
    assert_eq!(store.release("nobody/", t(1)).await.unwrap(), 0);
}

pub(super) async fn a_batch_claim_takes_the_due_messages_in_order_up_to_the_concurrency(
    e: &dyn Engine,
) {
    let store = e.open().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(stored(&*store, msg("orders", &[n], "<x/>", t(0))).await);
    }
    let first = store
        .claim_batch("orders", "w1", LEASE, 4, 3, t(1))
        .await
        .unwrap();
    assert_eq!(first.iter().map(|m| m.id).collect::<Vec<_>>(), ids[..3]);
    assert!(first
        .iter()
        .all(|m| m.attempts == 1 && m.lease_until == t(1) + LEASE));
    // One lease left before the route's concurrency (4).
    let second = store
        .claim_batch("orders", "w2", LEASE, 4, 3, t(1))
        .await
        .unwrap();
    assert_eq!(second.iter().map(|m| m.id).collect::<Vec<_>>(), ids[3..4]);
    assert!(store
        .claim_batch("orders", "w2", LEASE, 4, 3, t(1))
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .claim_batch("invoices", "w2", LEASE, 4, 3, t(1))
        .await
        .unwrap()
        .is_empty());
}

pub(super) async fn claims_stop_at_the_route_concurrency(e: &dyn Engine) {
    let store = e.open().await;
    for n in 1..=3 {
        stored(&*store, msg("orders", &[n], "<x/>", t(0))).await;
    }
    let other = stored(&*store, msg("invoices", &[9], "<x/>", t(0))).await;

    let a = store
        .claim("orders", "w1", LEASE, 2, t(1))
        .await
        .unwrap()
        .unwrap();
    let b = store
        .claim("orders", "w2", LEASE, 2, t(1))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(a.id, b.id);
    assert!(store
        .claim("orders", "w3", LEASE, 2, t(1))
        .await
        .unwrap()
        .is_none());
    let c = store
        .claim("invoices", "w3", LEASE, 2, t(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.id, other, "another route has its own count");

    assert!(store.delivered(a.id, "w1").await.unwrap());
    let third = store
        .claim("orders", "w3", LEASE, 2, t(2))
        .await
        .unwrap()
        .unwrap();
    assert!(third.id != a.id && third.id != b.id);

    // An expired lease no longer counts (and its message is due again).
    assert!(store
        .claim("orders", "w4", LEASE, 2, t(10))
        .await
        .unwrap()
        .is_none());
    let after = store
        .claim("orders", "w4", LEASE, 2, t(31))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.id, b.id);
    assert!(store
        .claim("orders", "w5", LEASE, 0, t(100))
        .await
        .unwrap()
        .is_none());
}

pub(super) async fn a_message_waits_for_its_retry_time(e: &dyn Engine) {
    let store = e.open().await;
    let first = stored(&*store, msg("orders", &[1], "<x/>", t(0))).await;
    let second = stored(&*store, msg("orders", &[2], "<x/>", t(5))).await;
    assert!(store
        .claim("orders", "w", LEASE, 4, t(4))
        .await
        .unwrap()
        .is_some_and(|c| c.id == first));
    assert!(store
        .retry_later(first, "w", t(60), "receiver answered 503")
        .await
        .unwrap());
    let next = store
        .claim("orders", "w", LEASE, 4, t(6))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.id, second, "the retried one is not due yet");
    assert!(store.delivered(second, "w").await.unwrap());
    assert!(store
        .claim("orders", "w", LEASE, 4, t(59))
        .await
        .unwrap()
        .is_none());
    let again = store
        .claim("orders", "w", LEASE, 4, t(60))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.id, again.attempts), (first, 2));
    let shown = store.show(first, false).await.unwrap().unwrap().summary;
    assert_eq!(shown.last_error.as_deref(), Some("receiver answered 503"));
}

pub(super) async fn failures_follow_the_backoff_schedule_until_the_message_is_a_dead_letter(
    e: &dyn Engine,
) {
    let store = e.open().await;
    let policy = RetryPolicy {
        initial: Duration::from_secs(30),
        max: Duration::from_secs(7200),
        max_age: Duration::from_secs(24 * 3600),
    };
    let id = stored(&*store, msg("orders", &[1], "<x/>", t(0))).await;
    let deadline = t(0) + policy.max_age;
    let mut now = t(0);
    let mut schedule = policy.initial;
    let mut tries = 0;
    loop {
        let c = store
            .claim("orders", "w", LEASE, 1, now)
            .await
            .unwrap()
            .expect("due now");
        tries += 1;
        assert_eq!(c.attempts, tries);
        match policy.after_failure(c.attempts, c.age_from, now, c.id as u64) {
            AfterFailure::RetryAt(at) => {
                let wait = at.duration_since(now).unwrap();
                if at < deadline {
                    assert!(
                        wait <= schedule && wait >= schedule * 3 / 4,
                        "try {tries}: {wait:?}"
                    );
                }
                schedule = (schedule * 2).min(policy.max);
                assert!(store
                    .retry_later(c.id, "w", at, "receiver answered 503")
                    .await
                    .unwrap());
                let early = at - Duration::from_millis(1);
                assert!(store
                    .claim("orders", "w", LEASE, 1, early)
                    .await
                    .unwrap()
                    .is_none());
                now = at;
            }
            AfterFailure::Dead => {
                assert!(store
                    .dead(c.id, "w", "gave up after 24h: receiver answered 503")
                    .await
                    .unwrap());
                break;
            }
        }
        assert!(tries < 100, "never dead-lettered");
    }
    assert_eq!(now, deadline, "the last try is at the maximum age");
    // 30 s doubling to 2 h: 8 tries to reach the cap (about 2 h 8 min), then every 2 h.
    assert!((15..=25).contains(&tries), "{tries} tries in 24 h");
    let shown = store.show(id, false).await.unwrap().unwrap().summary;
    assert_eq!(shown.state, State::Dead);
    assert_eq!(shown.attempts, tries);
    assert!(shown.last_error.unwrap().starts_with("gave up"));
    assert!(store
        .claim("orders", "w", LEASE, 1, t(999_999))
        .await
        .unwrap()
        .is_none());
}

pub(super) async fn a_message_whose_notifications_were_all_accepted_in_the_window_is_a_duplicate(
    e: &dyn Engine,
) {
    let store = e.open().await;
    stored(&*store, msg("orders", &[1, 2], "<x/>", t(0))).await;
    assert_eq!(
        admit(&*store, msg("orders", &[1, 2], "<x/>", t(3600))).await,
        Admission::Duplicate
    );
    assert_eq!(
        admit(&*store, msg("orders", &[2, 1], "<x/>", t(3600))).await,
        Admission::Duplicate
    );
    assert_eq!(
        admit(&*store, msg("orders", &[2], "<x/>", t(3600))).await,
        Admission::Duplicate
    );
    assert_eq!(
        store.list(&Filter::default()).await.unwrap().len(),
        1,
        "nothing stored"
    );
}

pub(super) async fn a_partial_overlap_is_stored_and_its_notifications_recorded(e: &dyn Engine) {
    let store = e.open().await;
    stored(&*store, msg("orders", &[1, 2], "<x/>", t(0))).await;
    stored(&*store, msg("orders", &[2, 3], "<x/>", t(10))).await;
    assert_eq!(
        admit(&*store, msg("orders", &[1, 3], "<x/>", t(20))).await,
        Admission::Duplicate
    );
    assert_eq!(store.list(&Filter::default()).await.unwrap().len(), 2);
}

pub(super) async fn notifications_accepted_before_the_window_are_accepted_again(e: &dyn Engine) {
    let store = e.open().await;
    stored(&*store, msg("orders", &[1], "<x/>", t(0))).await;
    let window = WINDOW.as_secs();
    assert_eq!(
        admit(&*store, msg("orders", &[1], "<x/>", t(window))).await,
        Admission::Duplicate
    );
    stored(&*store, msg("orders", &[1], "<x/>", t(window + 1))).await;
    // The partial overlap refreshed nothing here, but the new acceptance starts a new window.
    assert_eq!(
        admit(&*store, msg("orders", &[1], "<x/>", t(2 * window))).await,
        Admission::Duplicate
    );
}

pub(super) async fn duplicates_are_per_route_and_per_organization(e: &dyn Engine) {
    let store = e.open().await;
    stored(&*store, msg("orders", &[1], "<x/>", t(0))).await;
    stored(&*store, msg("invoices", &[1], "<x/>", t(1))).await;
    let mut other_org = msg("orders", &[1], "<x/>", t(2));
    other_org.organization_id = "00D5e000000ZzZz".into();
    stored(&*store, other_org).await;
}

pub(super) async fn without_a_window_nothing_is_a_duplicate(e: &dyn Engine) {
    let store = e.open().await;
    for n in 0..2 {
        let a = store
            .admit(
                msg("orders", &[1], "<x/>", t(n)),
                None,
                &Bounds::unbounded(),
            )
            .await
            .unwrap();
        assert!(matches!(a, Admission::Stored { .. }));
    }
    assert!(!store
        .seen_all("orders", ORG, &[nid(1)], WINDOW, t(3))
        .await
        .unwrap());
}

pub(super) async fn the_duplicate_window_survives_a_restart(e: &dyn Engine) {
    {
        let store = e.open().await;
        stored(&*store, msg("orders", &[1, 2], "<x/>", t(0))).await;
        store
            .record_acked("direct", ORG, &[nid(7)], t(0))
            .await
            .unwrap();
    }
    let store = e.open().await;
    assert_eq!(
        admit(&*store, msg("orders", &[1, 2], "<x/>", t(60))).await,
        Admission::Duplicate
    );
    assert!(store
        .seen_all("direct", ORG, &[nid(7)], WINDOW, t(60))
        .await
        .unwrap());
}

pub(super) async fn direct_mode_finds_notifications_the_receiver_acked_within_the_window(
    e: &dyn Engine,
) {
    let store = e.open().await;
    let (a, b, c) = (nid(1), nid(2), nid(3));
    assert!(!store
        .seen_all("direct", ORG, std::slice::from_ref(&a), WINDOW, t(0))
        .await
        .unwrap());
    store
        .record_acked("direct", ORG, &[a.clone(), b.clone()], t(0))
        .await
        .unwrap();
    assert!(store
        .seen_all("direct", ORG, &[a.clone(), b.clone()], WINDOW, t(10))
        .await
        .unwrap());
    assert!(store
        .seen_all("direct", ORG, std::slice::from_ref(&b), WINDOW, t(10))
        .await
        .unwrap());
    assert!(!store
        .seen_all("direct", ORG, &[a.clone(), c.clone()], WINDOW, t(10))
        .await
        .unwrap());
    assert!(!store
        .seen_all("direct", ORG, &[], WINDOW, t(10))
        .await
        .unwrap());
    assert!(!store
        .seen_all("other", ORG, std::slice::from_ref(&a), WINDOW, t(10))
        .await
        .unwrap());
    assert!(!store
        .seen_all(
            "direct",
            "00D5e000000ZzZz",
            std::slice::from_ref(&a),
            WINDOW,
            t(10)
        )
        .await
        .unwrap());
    let past = WINDOW.as_secs() + 1;
    assert!(!store
        .seen_all("direct", ORG, std::slice::from_ref(&a), WINDOW, t(past))
        .await
        .unwrap());
    // The partial overlap was delivered and recorded: now all of it is known.
    store
        .record_acked("direct", ORG, &[a.clone(), c.clone()], t(20))
        .await
        .unwrap();
    assert!(store
        .seen_all("direct", ORG, &[a, b, c], WINDOW, t(30))
        .await
        .unwrap());
}

pub(super) async fn bounds_refuse_what_would_pass_them(e: &dyn Engine) {
    let store = e.open().await;
    let body = "x".repeat(100);
    let bounds = Bounds {
        max_messages: 3,
        max_bytes: 10_000,
        per_route_max_messages: Some(2),
        per_route_max_bytes: Some(250),
    };
    let put = |route: &str, n: u32, body: &str| {
        let (store, m) = (store.clone(), msg(route, &[n], body, t(u64::from(n))));
        async move { store.admit(m, Some(WINDOW), &bounds).await.unwrap() }
    };
    assert!(matches!(put("a", 1, &body).await, Admission::Stored { .. }));
    assert!(matches!(put("a", 2, &body).await, Admission::Stored { .. }));
    assert_eq!(
        put("a", 3, "y").await,
        Admission::Full(Bound::RouteMessages)
    );
    assert_eq!(
        put("a", 1, &body).await,
        Admission::Duplicate,
        "a duplicate needs no room"
    );
    assert_eq!(
        put("b", 4, &"z".repeat(251)).await,
        Admission::Full(Bound::RouteBytes)
    );
    assert!(matches!(put("b", 5, &body).await, Admission::Stored { .. }));
    assert_eq!(put("c", 6, "w").await, Admission::Full(Bound::Messages));

    let bytes = Bounds {
        max_messages: 100,
        max_bytes: 350,
        ..Bounds::unbounded()
    };
    let m = msg("c", &[7], &body, t(7));
    assert_eq!(
        store.admit(m.clone(), None, &bytes).await.unwrap(),
        Admission::Full(Bound::Bytes)
    );

    // Delivering frees room; a dead letter keeps it.
    let c = store
        .claim("a", "w", LEASE, 4, t(100))
        .await
        .unwrap()
        .unwrap();
    assert!(store.delivered(c.id, "w").await.unwrap());
    assert!(matches!(
        store.admit(m.clone(), None, &bytes).await.unwrap(),
        Admission::Stored { .. }
    ));
    let c = store
        .claim("b", "w", LEASE, 4, t(100))
        .await
        .unwrap()
        .unwrap();
    assert!(store.dead(c.id, "w", "gave up").await.unwrap());
    assert_eq!(
        store.admit(m.clone(), None, &bytes).await.unwrap(),
        Admission::Full(Bound::Bytes)
    );
    // Dropping it frees its room.
    assert_eq!(
        store
            .drop_messages(&Filter {
                id: Some(c.id),
                ..Filter::default()
            })
            .await
            .unwrap(),
        1
    );
    assert!(matches!(
        store.admit(m, None, &bytes).await.unwrap(),
        Admission::Stored { .. }
    ));
}

/// Five messages over two routes in every state, for the operator commands.
pub(super) async fn populated(store: &dyn Store) -> [i64; 5] {
    let q1 = stored(store, msg("orders", &[1], "<a/>", t(0))).await;
    let q2 = stored(store, msg("orders", &[2, 3], "<b/>", t(3600))).await;
    let inv = stored(store, msg("invoices", &[4], "<c/>", t(7200))).await;
    let delivered = stored(store, msg("invoices", &[5], "<d/>", t(7300))).await;
    let dead = stored(store, msg("orders", &[6], "<e/>", t(7400))).await;
    // Claim in order until the wanted one is out; the others are put back as they were.
    for (id, outcome) in [(delivered, State::Delivered), (dead, State::Dead)] {
        let route = if id == delivered {
            "invoices"
        } else {
            "orders"
        };
        loop {
            let c = store
                .claim(route, "op", LEASE, 10, t(8000))
                .await
                .unwrap()
                .unwrap();
            if c.id != id {
                assert!(store
                    .retry_later(c.id, "op", t(8000), "put back")
                    .await
                    .unwrap());
                continue;
            }
            match outcome {
                State::Delivered => assert!(store.delivered(id, "op").await.unwrap()),
                _ => assert!(store.dead(id, "op", "gave up").await.unwrap()),
            }
            break;
        }
    }
    [q1, q2, inv, delivered, dead]
}

pub(super) async fn list_filters_by_route_state_age_notification_id_and_limit(e: &dyn Engine) {
    let store = e.open().await;
    let [q1, q2, inv, delivered, dead] = populated(&*store).await;

    assert_eq!(
        ids(&*store, Filter::default()).await,
        vec![q1, q2, inv, delivered, dead]
    );
    let route = |r: &str| Filter {
        route: Some(r.into()),
        ..Filter::default()
    };
    assert_eq!(ids(&*store, route("orders")).await, vec![q1, q2, dead]);
    let state = |s| Filter {
        state: Some(s),
        ..Filter::default()
    };
    assert_eq!(ids(&*store, state(State::Queued)).await, vec![q1, q2, inv]);
    assert_eq!(ids(&*store, state(State::Delivered)).await, vec![delivered]);
    assert_eq!(ids(&*store, state(State::Dead)).await, vec![dead]);
    assert_eq!(
        ids(&*store, state(State::Delivering)).await,
        Vec::<i64>::new()
    );
    let before = Filter {
        accepted_before: Some(t(3601)),
        ..Filter::default()
    };
    assert_eq!(ids(&*store, before).await, vec![q1, q2]);
    let by_nid = Filter {
        notification_id: Some(nid(3)),
        ..Filter::default()
    };
    assert_eq!(ids(&*store, by_nid).await, vec![q2]);
    let limited = Filter {
        limit: Some(2),
        ..Filter::default()
    };
    assert_eq!(ids(&*store, limited).await, vec![q1, q2]);
    let both = Filter {
        state: Some(State::Queued),
        ..route("invoices")
    };
    assert_eq!(ids(&*store, both).await, vec![inv]);
    assert_eq!(
        ids(
            &*store,
            Filter {
                id: Some(dead),
                ..Filter::default()
            }
        )
        .await,
        vec![dead]
    );

    let json = serde_json::to_value(store.list(&route("orders")).await.unwrap()).unwrap();
    let second = &json[1];
    assert_eq!(second["route"], "orders");
    assert_eq!(second["state"], "queued");
    assert_eq!(
        second["notification_ids"],
        serde_json::json!([nid(2), nid(3)])
    );
    assert_eq!(second["attempts"], 1);
    assert_eq!(second["accepted_at"], crate::audit::timestamp(t(3600)));
    assert_eq!(json[2]["state"], "dead");
    assert_eq!(json[2]["last_error"], "gave up");
    assert!(second.get("body").is_none());
}

pub(super) async fn show_gives_the_body_only_when_asked(e: &dyn Engine) {
    let store = e.open().await;
    let id = stored(&*store, msg("orders", &[1], "<the-body/>", t(0))).await;
    let plain = store.show(id, false).await.unwrap().unwrap();
    assert_eq!(plain.body, None);
    assert_eq!(plain.summary.body_bytes, 11);
    let full = store.show(id, true).await.unwrap().unwrap();
    assert_eq!(full.body.as_deref(), Some(&b"<the-body/>"[..]));
    assert!(serde_json::to_string(&full)
        .unwrap()
        .find("the-body")
        .is_none());
    assert!(store.show(id + 100, true).await.unwrap().is_none());
}

pub(super) async fn retry_now_makes_waiting_and_dead_messages_due_at_once(e: &dyn Engine) {
    let store = e.open().await;
    let [q1, q2, inv, delivered, dead] = populated(&*store).await;
    // q1, q2 were put back due at t(8000); make one wait far ahead.
    let c = store
        .claim("orders", "w", LEASE, 10, t(8000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.id, q1);
    assert!(store
        .retry_later(q1, "w", t(90_000), "later")
        .await
        .unwrap());
    let c = store
        .claim("orders", "w", LEASE, 10, t(8000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.id, q2, "q2 is now delivering and is left alone");

    let orders = Filter {
        route: Some("orders".into()),
        ..Filter::default()
    };
    assert_eq!(
        store.retry_now(&orders, t(8001)).await.unwrap(),
        2,
        "q1 and the dead one"
    );
    assert_eq!(state_of(&*store, dead).await, State::Queued);
    assert_eq!(state_of(&*store, q2).await, State::Delivering);
    let s = store.show(q1, false).await.unwrap().unwrap().summary;
    assert_eq!(s.next_attempt_at, t(8001));
    let d = store.show(dead, false).await.unwrap().unwrap().summary;
    assert_eq!(
        (d.age_from, d.finished_at),
        (t(7400), None),
        "retry keeps the age"
    );

    let c = store
        .claim("orders", "w2", LEASE, 10, t(8001))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.id, q1);
    let delivered_filter = Filter {
        id: Some(delivered),
        ..Filter::default()
    };
    assert_eq!(
        store.retry_now(&delivered_filter, t(8002)).await.unwrap(),
        0
    );
    let by_nid = Filter {
        notification_id: Some(nid(4)),
        ..Filter::default()
    };
    assert_eq!(store.retry_now(&by_nid, t(8002)).await.unwrap(), 1);
    assert_eq!(
        store
            .show(inv, false)
            .await
            .unwrap()
            .unwrap()
            .summary
            .next_attempt_at,
        t(8002)
    );
}

pub(super) async fn replay_puts_dead_letters_back_with_a_fresh_age(e: &dyn Engine) {
    let store = e.open().await;
    let [q1, _, _, delivered, dead] = populated(&*store).await;
    assert_eq!(
        store
            .replay(
                &Filter {
                    id: Some(q1),
                    ..Filter::default()
                },
                t(9000)
            )
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .replay(
                &Filter {
                    id: Some(delivered),
                    ..Filter::default()
                },
                t(9000)
            )
            .await
            .unwrap(),
        0
    );
    let dead_only = Filter {
        state: Some(State::Dead),
        ..Filter::default()
    };
    assert_eq!(store.replay(&dead_only, t(9000)).await.unwrap(), 1);
    let s = store.show(dead, false).await.unwrap().unwrap().summary;
    assert_eq!(s.state, State::Queued);
    assert_eq!((s.age_from, s.next_attempt_at), (t(9000), t(9000)));
    assert_eq!((s.attempts, s.replays), (0, 1));
    assert_eq!(s.accepted_at, t(7400), "accepted_at is history");
    let policy = RetryPolicy::default();
    assert!(!policy.expired(
        s.age_from,
        t(9000) + policy.max_age - Duration::from_secs(1)
    ));
    assert_eq!(store.replay(&dead_only, t(9001)).await.unwrap(), 0);
}

pub(super) async fn drop_deletes_what_the_filter_matches(e: &dyn Engine) {
    let store = e.open().await;
    let [q1, q2, inv, delivered, dead] = populated(&*store).await;
    let dead_only = Filter {
        state: Some(State::Dead),
        ..Filter::default()
    };
    assert_eq!(store.drop_messages(&dead_only).await.unwrap(), 1);
    let by_nid = Filter {
        notification_id: Some(nid(2)),
        ..Filter::default()
    };
    assert_eq!(store.drop_messages(&by_nid).await.unwrap(), 1);
    let old = Filter {
        accepted_before: Some(t(1)),
        ..Filter::default()
    };
    assert_eq!(store.drop_messages(&old).await.unwrap(), 1);
    assert_eq!(ids(&*store, Filter::default()).await, vec![inv, delivered]);
    let limited = Filter {
        limit: Some(1),
        route: Some("invoices".into()),
        ..Filter::default()
    };
    assert_eq!(store.drop_messages(&limited).await.unwrap(), 1);
    assert_eq!(ids(&*store, Filter::default()).await, vec![delivered]);
    for id in [q1, q2, dead, inv] {
        assert!(store.show(id, false).await.unwrap().is_none());
    }
    // A dropped message's worker learns it on its next mark.
    let id = stored(&*store, msg("orders", &[9], "<x/>", t(9000))).await;
    store
        .claim("orders", "w", LEASE, 1, t(9000))
        .await
        .unwrap()
        .unwrap();
    store
        .drop_messages(&Filter {
            id: Some(id),
            ..Filter::default()
        })
        .await
        .unwrap();
    assert!(!store.delivered(id, "w").await.unwrap());
}

pub(super) async fn depth_and_oldest_waiting_per_route(e: &dyn Engine) {
    let store = e.open().await;
    populated(&*store).await;
    let claimed = store
        .claim("orders", "w", LEASE, 10, t(8000))
        .await
        .unwrap()
        .unwrap();
    let depth = store.depth().await.unwrap();
    let row = |route: &str, state| {
        depth
            .iter()
            .find(|d| d.route == route && d.state == state)
            .cloned()
    };
    assert_eq!(
        row("orders", State::Queued).map(|d| (d.messages, d.bytes)),
        Some((1, 4))
    );
    assert_eq!(
        row("orders", State::Delivering).map(|d| d.messages),
        Some(1)
    );
    assert_eq!(row("orders", State::Dead).map(|d| d.messages), Some(1));
    assert_eq!(row("invoices", State::Queued).map(|d| d.messages), Some(1));
    assert_eq!(
        row("invoices", State::Delivered).map(|d| d.messages),
        Some(1)
    );
    assert_eq!(depth.len(), 5);
    assert_eq!(claimed.accepted_at, t(0));

    let oldest = store.oldest_waiting(t(10_000)).await.unwrap();
    assert_eq!(
        oldest,
        vec![
            ("invoices".to_string(), Duration::from_secs(10_000 - 7200)),
            ("orders".to_string(), Duration::from_secs(10_000)),
        ]
    );
}

pub(super) async fn prune_forgets_delivered_messages_and_old_duplicate_entries(e: &dyn Engine) {
    let store = e.open().await;
    let kept = stored(&*store, msg("orders", &[1], "<x/>", t(0))).await;
    let gone = stored(&*store, msg("orders", &[2], "<x/>", t(1))).await;
    let c = store
        .claim("orders", "w", LEASE, 1, t(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.id, kept);
    assert!(store.retry_later(kept, "w", t(100), "later").await.unwrap());
    store
        .claim("orders", "w", LEASE, 1, t(3))
        .await
        .unwrap()
        .unwrap();
    assert!(store.delivered(gone, "w").await.unwrap());
    store
        .record_acked("direct", ORG, &[nid(3)], t(0))
        .await
        .unwrap();
    store
        .record_acked("direct", ORG, &[nid(4)], SystemTime::now())
        .await
        .unwrap();

    let keep = Retention {
        delivered: HOUR,
        seen: WINDOW,
    };
    let now = SystemTime::now();
    assert_eq!(
        store.prune(now, &keep).await.unwrap(),
        Pruned {
            delivered: 0,
            seen: 3
        }
    );
    assert!(
        store.show(gone, false).await.unwrap().is_some(),
        "delivered within the hour"
    );
    let later = now + 2 * HOUR;
    assert_eq!(
        store.prune(later, &keep).await.unwrap(),
        Pruned {
            delivered: 1,
            seen: 0
        }
    );
    assert!(store.show(gone, false).await.unwrap().is_none());
    assert!(
        store.show(kept, false).await.unwrap().is_some(),
        "waiting messages stay"
    );
    assert!(store
        .seen_all("direct", ORG, &[nid(4)], WINDOW, later)
        .await
        .unwrap());
    assert!(!store
        .seen_all("direct", ORG, &[nid(3)], WINDOW * 1000, later)
        .await
        .unwrap());
}

pub(super) async fn another_process_sees_and_changes_the_store_while_serve_runs(e: &dyn Engine) {
    let serve = e.open().await;
    let cli = e.open().await;
    let a = stored(&*serve, msg("orders", &[1], "<x/>", t(0))).await;
    let b = stored(&*serve, msg("orders", &[2], "<x/>", t(1))).await;
    assert_eq!(ids(&*cli, Filter::default()).await, vec![a, b]);

    assert_eq!(
        cli.drop_messages(&Filter {
            id: Some(a),
            ..Filter::default()
        })
        .await
        .unwrap(),
        1
    );
    let c = serve
        .claim("orders", "w", LEASE, 4, t(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.id, b, "serve sees the drop");
    assert!(serve
        .retry_later(b, "w", t(10_000), "receiver down")
        .await
        .unwrap());
    assert_eq!(cli.retry_now(&Filter::default(), t(3)).await.unwrap(), 1);
    assert_eq!(
        serve
            .claim("orders", "w", LEASE, 4, t(3))
            .await
            .unwrap()
            .unwrap()
            .id,
        b
    );

    // Both write at once: the busy timeout makes them wait for each other, nothing fails.
    let mut tasks = Vec::new();
    for n in 0..100u32 {
        let store = if n % 2 == 0 {
            serve.clone()
        } else {
            cli.clone()
        };
        tasks.push(tokio::spawn(async move {
            store
                .admit(
                    msg("bulk", &[100 + n], "<x/>", t(5)),
                    Some(WINDOW),
                    &Bounds::unbounded(),
                )
                .await
        }));
    }
    for task in tasks {
        assert!(matches!(task.await.unwrap(), Ok(Admission::Stored { .. })));
    }
    let bulk = Filter {
        route: Some("bulk".into()),
        ..Filter::default()
    };
    assert_eq!(serve.list(&bulk).await.unwrap().len(), 100);
    assert_eq!(cli.list(&bulk).await.unwrap().len(), 100);
    e.check().await;
}

pub(super) async fn a_message_without_notifications_is_a_callers_bug(e: &dyn Engine) {
    let store = e.open().await;
    for m in [
        msg("orders", &[], "<x/>", t(0)),
        msg("", &[1], "<x/>", t(0)),
    ] {
        let err = store
            .admit(m, Some(WINDOW), &Bounds::unbounded())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
        assert!(!err.is_environmental());
    }
    assert!(store.list(&Filter::default()).await.unwrap().is_empty());
}

pub(super) async fn bodies_come_back_byte_for_byte(e: &dyn Engine) {
    let store = e.open().await;
    let xml = "<soapenv:Envelope><n>caf\u{e9} &amp; <![CDATA[x]]></n></soapenv:Envelope>";
    let id = stored(&*store, msg("orders", &[1], xml, t(0))).await;
    let mut odd = msg("orders", &[2], "", t(0));
    odd.body = Bytes::from_static(b"\x00\xff<a/>\r\n");
    let odd_id = stored(&*store, odd).await;
    let mut empty = msg("orders", &[3], "", t(0));
    empty.body = Bytes::new();
    let empty_id = stored(&*store, empty).await;
    for (id, want) in [
        (id, xml.as_bytes()),
        (odd_id, &b"\x00\xff<a/>\r\n"[..]),
        (empty_id, &b""[..]),
    ] {
        let shown = store.show(id, true).await.unwrap().unwrap();
        assert_eq!(shown.body.as_deref(), Some(want));
        assert_eq!(shown.summary.body_bytes, want.len() as u64);
        let c = store
            .claim("orders", "w", LEASE, 4, t(1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((c.id, &c.body[..]), (id, want));
    }
}

/// Admits of the same notifications at once, through several handles: one is stored, every
/// other one is a duplicate (the check and the record are one atomic step).
pub(super) async fn concurrent_admits_of_the_same_notifications_store_one(e: &dyn Engine) {
    let handles = [e.open().await, e.open().await];
    for round in 0..5u32 {
        let mut tasks = Vec::new();
        for n in 0..8u32 {
            let store = Arc::clone(&handles[(n % 2) as usize]);
            // Every admit carries the round's two ids, in either order.
            let ids = if n % 2 == 0 {
                [10 * round + 1, 10 * round + 2]
            } else {
                [10 * round + 2, 10 * round + 1]
            };
            tasks.push(tokio::spawn(async move {
                store
                    .admit(
                        msg("orders", &ids, "<x/>", t(u64::from(n))),
                        Some(WINDOW),
                        &Bounds::unbounded(),
                    )
                    .await
                    .unwrap()
            }));
        }
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        let stored_count = outcomes
            .iter()
            .filter(|a| matches!(a, Admission::Stored { .. }))
            .count();
        assert_eq!(stored_count, 1, "round {round}: {outcomes:?}");
        assert_eq!(
            outcomes
                .iter()
                .filter(|a| **a == Admission::Duplicate)
                .count(),
            7
        );
    }
    assert_eq!(handles[0].list(&Filter::default()).await.unwrap().len(), 5);
}
