//! Stage 4b: the route's message rules: which organization and action may use it, and what
//! happens to a session id.
//!
//! Salesforce's IP ranges and (often) its CA are shared by every Salesforce customer, so the
//! organization id in the body is what tells your org from another: it is always checked.
//! Ids match in either form (15 case-sensitive, 18 with checksum); an 18-character id with a
//! wrong checksum is refused rather than guessed at. Every id the message carries (the
//! organization, the action and each Notification Id) must be a valid id, whether or not the
//! route lists actions: the audit trail and logs then only ever record real ids.

use crate::config::{MessagePolicy, SessionMode};
use crate::metrics::session_action;
use crate::reject::Refusal;
use crate::sfid::SfId;
use crate::soap::{Message, SessionIdState};

/// What to do with the SessionId element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionPlan {
    Keep,
    Nil,
    Remove,
    Inject,
}

/// The decision for one message that passed the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub session: SessionPlan,
    /// What the policy does to the SessionId element (the metric label and the audit's
    /// `session_action`): `stripped`, `audited` or `rejected` for a value, `removed` for any
    /// element present, `injected` always in inject mode; `None` when nothing happens.
    pub action: Option<&'static str>,
}

fn id(raw: &str, what: &str) -> Result<SfId, Refusal> {
    SfId::parse(raw).map_err(|e| Refusal::BadId(format!("the {what} id is invalid: {e}")))
}

/// Apply the rules; `Err` is a refusal (also for a session id the route rejects).
pub fn check(msg: &Message, policy: &MessagePolicy) -> Result<Plan, Refusal> {
    let org = id(&msg.organization_id, "organization")?;
    if !policy.organizations.contains(&org) {
        return Err(Refusal::Organization(org.to_18()));
    }
    let action = id(&msg.action_id, "action")?;
    if let Some(actions) = &policy.actions {
        if !actions.contains(&action) {
            return Err(Refusal::Action(action.to_18()));
        }
    }
    for n in &msg.notification_ids {
        id(n, "Notification")?;
    }
    let has_value = msg.session_id == SessionIdState::Value;
    let present = msg.session_id != SessionIdState::Absent;
    let plan = |session, action: Option<&'static str>| Ok(Plan { session, action });
    match policy.session_id {
        SessionMode::Strip if has_value => plan(SessionPlan::Nil, Some(session_action::STRIPPED)),
        SessionMode::Strip => plan(SessionPlan::Keep, None),
        SessionMode::Remove => plan(
            SessionPlan::Remove,
            present.then_some(session_action::REMOVED),
        ),
        SessionMode::Reject if has_value => Err(Refusal::SessionIdRejected),
        SessionMode::Reject => plan(SessionPlan::Keep, None),
        SessionMode::Audit => plan(
            SessionPlan::Keep,
            has_value.then_some(session_action::AUDITED),
        ),
        // Since February 2026 every message arrives nil: the injection is what happens.
        SessionMode::Inject => plan(SessionPlan::Inject, Some(session_action::INJECTED)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORG18: &str = "00D5e000000AbCdEAK";
    const ORG15: &str = "00D5e000000AbCd";

    fn policy(mode: SessionMode, actions: Option<&[&str]>) -> MessagePolicy {
        MessagePolicy {
            organizations: [SfId::parse(ORG15).unwrap()].into_iter().collect(),
            actions: actions.map(|a| a.iter().map(|s| SfId::parse(s).unwrap()).collect()),
            max_body_bytes: 1 << 20,
            session_id: mode,
            xml: Default::default(),
        }
    }

    fn msg(org: &str, session: &str) -> Message {
        let body = obmguard_testkit::messages::Sample {
            org_id: org.into(),
            session_id: (!session.is_empty()).then(|| session.to_string()),
            ..Default::default()
        }
        .body();
        crate::soap::parse(&body, &Default::default()).unwrap()
    }

    #[test]
    fn org_matches_in_either_form_and_bad_checksum_is_refused() {
        let p = policy(SessionMode::Strip, None);
        assert!(check(&msg(ORG18, ""), &p).is_ok());
        assert!(check(&msg(ORG15, ""), &p).is_ok());
        assert!(matches!(
            check(&msg("00D5e000000AbCdEAF", ""), &p),
            Err(Refusal::BadId(_))
        ));
        assert!(matches!(
            check(&msg("00D5e000000XyZw", ""), &p),
            Err(Refusal::Organization(_))
        ));
        // Case matters in the 15-character form.
        assert!(matches!(
            check(&msg("00D5e000000abcd", ""), &p),
            Err(Refusal::Organization(_))
        ));
    }

    #[test]
    fn session_modes() {
        let with = msg(ORG18, "00D5e000000AbCd!AQ4AQFakeSessionValue");
        let without = msg(ORG18, "");
        let plan = |m, msg: &Message| check(msg, &policy(m, None));
        assert_eq!(
            plan(SessionMode::Strip, &with).unwrap(),
            Plan {
                session: SessionPlan::Nil,
                action: Some("stripped")
            }
        );
        assert_eq!(
            plan(SessionMode::Strip, &without).unwrap(),
            Plan {
                session: SessionPlan::Keep,
                action: None
            }
        );
        assert!(matches!(
            plan(SessionMode::Reject, &with),
            Err(Refusal::SessionIdRejected)
        ));
        assert_eq!(
            plan(SessionMode::Reject, &without).unwrap().session,
            SessionPlan::Keep
        );
        assert_eq!(
            plan(SessionMode::Audit, &with).unwrap(),
            Plan {
                session: SessionPlan::Keep,
                action: Some("audited")
            }
        );
        assert_eq!(
            plan(SessionMode::Inject, &without).unwrap(),
            Plan {
                session: SessionPlan::Inject,
                action: Some("injected")
            }
        );
        assert_eq!(
            plan(SessionMode::Remove, &with).unwrap(),
            Plan {
                session: SessionPlan::Remove,
                action: Some("removed")
            }
        );
        assert_eq!(
            plan(SessionMode::Remove, &without).unwrap().action,
            Some("removed"),
            "a nil element is removed too"
        );
    }

    #[test]
    fn action_allow_list() {
        let p = policy(SessionMode::Strip, Some(&["04k5e000000XyZa"]));
        assert!(check(&msg(ORG18, ""), &p).is_ok());
        let p = policy(SessionMode::Strip, Some(&["04k5e000000XyZb"]));
        assert!(matches!(
            check(&msg(ORG18, ""), &p),
            Err(Refusal::Action(_))
        ));
    }
}
