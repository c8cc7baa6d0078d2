//! Salesforce-like Outbound Message bodies for tests and `obmguard-demo`, in exactly the shape
//! described in `obm-protocol.md`: `OrganizationId`, `ActionId`, `SessionId`, `EnterpriseUrl`,
//! `PartnerUrl`, then `Notification`s each holding an `sf:Account`.
//!
//! Every id here is a valid Salesforce id (correct case-checksum suffix). It deliberately does
//! not produce malformed or hostile documents: tests that need those write them by hand.

use std::fmt::Write;

/// The sample organization id, 18-character form.
pub const ORG_ID: &str = "00D5e000000AbCdEAK";
/// The sample organization id, 15-character (case-sensitive) form.
pub const ORG_ID_15: &str = "00D5e000000AbCd";
/// The sample outbound message (action) id, 18-character form.
pub const ACTION_ID: &str = "04k5e000000XyZaAAK";
/// The sample outbound message (action) id, 15-character form.
pub const ACTION_ID_15: &str = "04k5e000000XyZa";
/// A fake legacy session id, as Salesforce sent before the SessionId removal.
pub const SESSION_ID: &str = "00D5e000000AbCd!AQ4AQFakeSessionValue";
/// The SOAP API version used in the endpoint URLs.
pub const API_VERSION: &str = "59.0";

/// Parameters of one notification message. `Sample::default()` is a one-notification message
/// from [`ORG_ID`] / [`ACTION_ID`] carrying [`SESSION_ID`].
#[derive(Debug, Clone)]
pub struct Sample {
    /// `OrganizationId` (written as given).
    pub org_id: String,
    /// `ActionId` (written as given).
    pub action_id: String,
    /// `SessionId` text; `None` writes `<SessionId xsi:nil="true"/>`.
    pub session_id: Option<String>,
    /// How many `Notification` elements (Salesforce sends 1 to 100).
    pub notifications: usize,
    /// Host of the Enterprise/Partner URLs, e.g. `acme.my.salesforce.com`.
    pub instance: String,
    /// The index of the first notification's id ([`notification_id`]): messages with
    /// different values carry different Notification Ids.
    pub first_notification: usize,
}

impl Default for Sample {
    fn default() -> Self {
        Sample {
            org_id: ORG_ID.to_string(),
            action_id: ACTION_ID.to_string(),
            session_id: Some(SESSION_ID.to_string()),
            notifications: 1,
            instance: "acme.my.salesforce.com".to_string(),
            first_notification: 0,
        }
    }
}

impl Sample {
    /// The SOAP envelope as UTF-8 bytes. Values are XML-escaped. The URLs carry the first 15
    /// characters of `org_id`, as Salesforce's do. Notification `i` (from 0) has the id
    /// [`notification_id`]`(first_notification + i)` and an Account with id [`account_id`]`(i)`.
    pub fn body(&self) -> Vec<u8> {
        let org15: String = self.org_id.chars().take(15).collect();
        let base = format!("https://{}/services/Soap", escape(&self.instance));
        let session = match &self.session_id {
            Some(value) => format!("<SessionId>{}</SessionId>", escape(value)),
            None => r#"<SessionId xsi:nil="true"/>"#.to_string(),
        };
        let mut xml = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>{org}</OrganizationId>
   <ActionId>{action}</ActionId>
   {session}
   <EnterpriseUrl>{base}/c/{API_VERSION}/{org15}</EnterpriseUrl>
   <PartnerUrl>{base}/u/{API_VERSION}/{org15}</PartnerUrl>
"#,
            org = escape(&self.org_id),
            action = escape(&self.action_id),
            org15 = escape(&org15),
        );
        for i in 0..self.notifications {
            // Writing into a String cannot fail.
            let _ = write!(
                xml,
                r#"   <Notification>
    <Id>{}</Id>
    <sObject xsi:type="sf:Account" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
     <sf:Id>{}</sf:Id>
     <sf:Name>Acme Ltd {i}</sf:Name>
    </sObject>
   </Notification>
"#,
                notification_id(self.first_notification + i),
                account_id(i),
            );
        }
        xml.push_str("  </notifications>\n </soapenv:Body>\n</soapenv:Envelope>\n");
        xml.into_bytes()
    }
}

/// The 18-character id of notification `i`. Only digits vary, so the checksum suffix is always
/// `AAA` (no upper-case letters in the 15-character part).
pub fn notification_id(i: usize) -> String {
    format!("04l5e{:010}AAA", i % 10_000_000_000)
}

/// The 18-character id of the Account in notification `i` (same construction as
/// [`notification_id`]).
pub fn account_id(i: usize) -> String {
    format!("0015e{:010}AAA", i % 10_000_000_000)
}

/// One element found by [`find_element`]: its opening tag and its raw (unescaped) text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Element<'a> {
    /// The whole opening tag, `<` to `>` inclusive, attributes included.
    pub open_tag: &'a str,
    /// The text up to the next `</`; `None` for a self-closing element.
    pub text: Option<&'a str>,
}

impl Element<'_> {
    /// Whether the opening tag carries `nil="true"` (any prefix, either quote).
    pub fn is_nil(&self) -> bool {
        self.open_tag.contains("nil=\"true\"") || self.open_tag.contains("nil='true'")
    }
}

/// The first element named `local` (with or without a namespace prefix) in `doc`. A plain
/// string scan for test assertions on documents the test kit or the proxy wrote: it is not a
/// parser and must never be used to make a decision in the proxy.
pub fn find_element<'a>(doc: &'a str, local: &str) -> Option<Element<'a>> {
    let mut rest = doc;
    let mut offset = 0;
    while let Some(lt) = rest.find('<') {
        let start = offset + lt;
        let after = &doc[start + 1..];
        let name_len = after
            .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
            .unwrap_or(after.len());
        let name = &after[..name_len];
        if name == local || name.rsplit_once(':').is_some_and(|(_, l)| l == local) {
            let gt = after.find('>')?;
            let open_tag = &doc[start..start + gt + 2];
            if open_tag.ends_with("/>") {
                return Some(Element {
                    open_tag,
                    text: None,
                });
            }
            let body = &doc[start + gt + 2..];
            let end = body.find("</").unwrap_or(body.len());
            return Some(Element {
                open_tag,
                text: Some(&body[..end]),
            });
        }
        offset = start + 1;
        rest = &doc[offset..];
    }
    None
}

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Salesforce 18-character suffix of a 15-character id.
    fn suffix(id15: &str) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
        id15.as_bytes()
            .chunks(5)
            .map(|chunk| {
                let bits = chunk
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.is_ascii_uppercase())
                    .fold(0usize, |acc, (i, _)| acc | (1 << i));
                ALPHABET[bits] as char
            })
            .collect()
    }

    fn assert_valid(id18: &str) {
        assert_eq!(id18.len(), 18, "{id18}");
        assert_eq!(suffix(&id18[..15]), &id18[15..], "{id18}");
    }

    #[test]
    fn constants_are_valid_salesforce_ids() {
        assert_valid(ORG_ID);
        assert_valid(ACTION_ID);
        assert_eq!(&ORG_ID[..15], ORG_ID_15);
        assert_eq!(&ACTION_ID[..15], ACTION_ID_15);
        // The protocol notes' worked example.
        assert_eq!(suffix("00D5e000000AbCd"), "EAK");
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        for i in [0, 1, 99, 12345] {
            assert_valid(&notification_id(i));
            assert_valid(&account_id(i));
        }
        assert_ne!(notification_id(1), notification_id(2));
    }

    #[test]
    fn default_body_has_protocol_shape_in_order() {
        let body = String::from_utf8(Sample::default().body()).unwrap();
        let order = [
            "<OrganizationId>00D5e000000AbCdEAK</OrganizationId>",
            "<ActionId>04k5e000000XyZaAAK</ActionId>",
            "<SessionId>00D5e000000AbCd!AQ4AQFakeSessionValue</SessionId>",
            "<EnterpriseUrl>https://acme.my.salesforce.com/services/Soap/c/59.0/00D5e000000AbCd</EnterpriseUrl>",
            "<PartnerUrl>https://acme.my.salesforce.com/services/Soap/u/59.0/00D5e000000AbCd</PartnerUrl>",
            "<Notification>",
            r#"<sObject xsi:type="sf:Account" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">"#,
        ];
        let mut at = 0;
        for piece in order {
            let found = body[at..]
                .find(piece)
                .unwrap_or_else(|| panic!("{piece} missing"));
            at += found + piece.len();
        }
        assert_eq!(body.matches("<Notification>").count(), 1);
    }

    #[test]
    fn nil_session_and_many_notifications() {
        let sample = Sample {
            session_id: None,
            notifications: 100,
            ..Sample::default()
        };
        let body = String::from_utf8(sample.body()).unwrap();
        assert!(body.contains(r#"<SessionId xsi:nil="true"/>"#));
        assert_eq!(body.matches("<Notification>").count(), 100);
        assert_eq!(body.matches("</sObject>").count(), 100);
    }

    #[test]
    fn find_element_reads_text_prefix_and_nil() {
        let body = String::from_utf8(Sample::default().body()).unwrap();
        let sid = find_element(&body, "SessionId").unwrap();
        assert_eq!(sid.text, Some(SESSION_ID));
        assert!(!sid.is_nil());
        let nil = find_element(r#"<a><ns:SessionId xsi:nil="true"/></a>"#, "SessionId").unwrap();
        assert!(nil.is_nil());
        assert_eq!(nil.text, None);
        assert_eq!(
            find_element("<SessionIdX>1</SessionIdX>", "SessionId"),
            None
        );
        assert_eq!(find_element("<Ack", "Ack"), None);
    }

    #[test]
    fn values_are_escaped() {
        let sample = Sample {
            session_id: Some("a<b&c".to_string()),
            ..Sample::default()
        };
        let body = String::from_utf8(sample.body()).unwrap();
        assert!(body.contains("<SessionId>a&lt;b&amp;c</SessionId>"));
    }
}
