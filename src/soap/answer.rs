//! The receiver's answer: a real Ack, a Nack, a SOAP fault, or something else.
//!
//! obmguard relays success to Salesforce only for [`Answer::Ack`], so this parser is strict in
//! the direction that matters: `Ack` needs a well-formed `Envelope > [Header] > Body >
//! notificationsResponse > Ack` (outbound namespace) holding exactly one xsd:boolean true.
//! Everything else is a failure of some kind; the variants only say which, for the audit trail.
//! The answer passes the same safety checks as a request, except that comments are tolerated.

use std::cell::RefCell;

use super::scan::{trim_xml, Item, Ns, Scanner};
use super::Limits;

/// The most bytes of a faultstring kept. The caller scrubs secrets from it and only then cuts
/// it to what it relays (cutting first could leave a piece of a secret behind).
const FAULTSTRING_MAX: usize = 8 * 1024;

/// What the receiver said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `<Ack>true</Ack>`: the only answer that may be relayed as success.
    Ack,
    /// `<Ack>false</Ack>`.
    Nack,
    /// A SOAP fault in the Body.
    Fault {
        /// `faultcode` text, unescaped and trimmed.
        faultcode: Option<String>,
        /// `faultstring` text, unescaped, trimmed, at most 8 KiB (cut on a character boundary).
        faultstring: Option<String>,
    },
    /// Not a readable SOAP answer; the label says why.
    Malformed(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Envelope { body: bool },
    Body { child: bool },
    Response,
    Ack,
    Fault,
    FaultCode,
    FaultString,
    Opaque,
}

/// The longest answer remembered as an Ack (a receiver's Ack is a few hundred bytes).
const REMEMBERED_MAX: usize = 2 * 1024;

thread_local! {
    /// The last answer this thread read as an Ack, with the limits it was read under.
    ///
    /// A receiver answers every message with the same bytes, and the verdict depends on
    /// nothing but the bytes and the limits: the same bytes under the same limits are the same
    /// Ack, compared byte for byte instead of read again. Only an Ack is remembered, and only
    /// the last one, so a receiver whose answers differ is read every time.
    static LAST_ACK: RefCell<Option<(Limits, Box<[u8]>)>> = const { RefCell::new(None) };
}

/// Classify the receiver's answer body. Never fails: anything unreadable is `Malformed`.
pub fn parse_answer(body: &[u8], limits: &Limits) -> Answer {
    let known = LAST_ACK.with_borrow(|last| {
        last.as_ref()
            .is_some_and(|(l, b)| l == limits && **b == *body)
    });
    if known {
        return Answer::Ack;
    }
    let answer = match classify(body, limits) {
        Ok(answer) => answer,
        Err(why) => Answer::Malformed(why),
    };
    if answer == Answer::Ack && body.len() <= REMEMBERED_MAX {
        LAST_ACK.set(Some((*limits, body.into())));
    }
    answer
}

fn classify(body: &[u8], limits: &Limits) -> Result<Answer, &'static str> {
    let mut scanner = Scanner::new(body, limits, true).map_err(|e| e.reason())?;
    let mut stack: Vec<Ctx> = Vec::with_capacity(8);
    let mut text = String::new();
    let mut ack: Option<bool> = None;
    let mut acks = 0usize;
    let mut fault = false;
    let mut faultcode = None;
    let mut faultstring = None;
    loop {
        match scanner.next().map_err(|e| e.reason())? {
            Item::Open { ns, local, .. } => {
                // SOAP 1.1 fault children are unqualified; some stacks qualify them anyway.
                let fault_child = matches!(ns, Ns::None | Ns::Soap);
                let child = match (stack.last_mut(), ns, local) {
                    (None, Ns::Soap, "Envelope") => Ctx::Envelope { body: false },
                    (None, ..) => return Err("not_soap"),
                    (Some(Ctx::Envelope { body: false }), Ns::Soap, "Header") => Ctx::Opaque,
                    (Some(Ctx::Envelope { body }), Ns::Soap, "Body") if !*body => {
                        *body = true;
                        Ctx::Body { child: false }
                    }
                    (Some(Ctx::Envelope { .. }), ..) => return Err("unexpected_content"),
                    (Some(Ctx::Body { child }), ns, local) if !*child => {
                        *child = true;
                        match (ns, local) {
                            (Ns::Outbound, "notificationsResponse") => Ctx::Response,
                            (Ns::Soap, "Fault") => {
                                fault = true;
                                Ctx::Fault
                            }
                            // A published tutorial answers `<notifications><Ack>...`; Salesforce
                            // accepts only notificationsResponse (its article 000381752).
                            (Ns::Outbound | Ns::None, _) => {
                                return Err("not_notifications_response")
                            }
                            _ => return Err("unexpected_content"),
                        }
                    }
                    (Some(Ctx::Body { .. }), ..) => return Err("unexpected_content"),
                    (Some(Ctx::Response), Ns::Outbound, "Ack") => {
                        acks += 1;
                        if acks > 1 {
                            return Err("two_acks");
                        }
                        text.clear();
                        Ctx::Ack
                    }
                    (Some(Ctx::Response), ..) => return Err("unexpected_content"),
                    (Some(Ctx::Fault), _, "faultcode") if fault_child => {
                        text.clear();
                        Ctx::FaultCode
                    }
                    (Some(Ctx::Fault), _, "faultstring") if fault_child => {
                        text.clear();
                        Ctx::FaultString
                    }
                    (Some(Ctx::Ack | Ctx::FaultCode | Ctx::FaultString), ..) => {
                        return Err("unexpected_content")
                    }
                    (Some(Ctx::Fault | Ctx::Opaque), ..) => Ctx::Opaque,
                };
                stack.push(child);
            }
            Item::Close { .. } => match stack.pop() {
                Some(Ctx::Ack) => {
                    ack = match trim_xml(&text) {
                        "true" | "1" => Some(true),
                        "false" | "0" => Some(false),
                        _ => return Err("ack_not_boolean"),
                    }
                }
                Some(Ctx::FaultCode) => faultcode = Some(trim_xml(&text).to_owned()),
                Some(Ctx::FaultString) => {
                    let mut t = trim_xml(&text);
                    if t.len() > FAULTSTRING_MAX {
                        let mut end = FAULTSTRING_MAX;
                        while !t.is_char_boundary(end) {
                            end -= 1;
                        }
                        t = &t[..end];
                    }
                    faultstring = Some(t.to_owned())
                }
                _ => {}
            },
            Item::Chars(_, chars) => match stack.last() {
                Some(ctx @ (Ctx::Ack | Ctx::FaultCode | Ctx::FaultString)) => {
                    // Bound what is kept: a faultstring is cut anyway, but an Ack's text must
                    // be read whole: dropping its tail could turn `true ... false` into `true`.
                    if text.len() < FAULTSTRING_MAX + 64 {
                        chars.push_to(&mut text);
                    } else if matches!(ctx, Ctx::Ack) {
                        return Err("ack_not_boolean");
                    }
                }
                Some(Ctx::Opaque) => {}
                _ if chars.is_blank() => {}
                _ => return Err("unexpected_content"),
            },
            Item::Eof => break,
        }
    }
    if fault {
        return Ok(Answer::Fault {
            faultcode,
            faultstring,
        });
    }
    match ack {
        Some(true) => Ok(Answer::Ack),
        Some(false) => Ok(Answer::Nack),
        None => Err("no_ack"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(ack: &str) -> Vec<u8> {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">
 <soapenv:Body>
  <notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">{ack}</notificationsResponse>
 </soapenv:Body>
</soapenv:Envelope>"#
        )
        .into_bytes()
    }

    fn answer(body: &[u8]) -> Answer {
        parse_answer(body, &Limits::default())
    }

    #[test]
    fn acks_true_one_and_padded_true() {
        assert_eq!(answer(&response("<Ack>true</Ack>")), Answer::Ack);
        assert_eq!(answer(&response("<Ack>1</Ack>")), Answer::Ack);
        assert_eq!(answer(&response("<Ack> true\n</Ack>")), Answer::Ack);
    }

    #[test]
    fn acks_with_prefixes_a_header_and_comments() {
        let body = br#"<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><!-- hi --><e:Header><x/></e:Header><e:Body><o:notificationsResponse xmlns:o="http://soap.sforce.com/2005/09/outbound"><o:Ack>true</o:Ack></o:notificationsResponse></e:Body></e:Envelope>"#;
        assert_eq!(answer(body), Answer::Ack);
    }

    #[test]
    fn a_remembered_ack_takes_the_same_bytes_under_the_same_limits() {
        let ack = response("<Ack>true</Ack>");
        assert_eq!(answer(&ack), Answer::Ack);
        // One byte other, the same length: read, not remembered.
        let mut other = ack.clone();
        let at = other.windows(4).position(|w| w == b"true").unwrap();
        other[at..at + 4].copy_from_slice(b"tru\x01");
        assert_eq!(answer(&other), Answer::Malformed("control_character"));
        assert_eq!(answer(&ack), Answer::Ack);
        let nack = response("<Ack>0000</Ack>");
        assert_eq!(nack.len(), ack.len());
        assert_eq!(answer(&nack), Answer::Malformed("ack_not_boolean"));
        // A prefix or a longer answer that starts with it.
        assert_eq!(answer(&ack), Answer::Ack);
        assert!(matches!(
            answer(&ack[..ack.len() - 1]),
            Answer::Malformed(_)
        ));
        let mut longer = ack.clone();
        longer.extend_from_slice(b"<x/>");
        assert_eq!(answer(&longer), Answer::Malformed("content_outside_root"));
        // The same bytes under limits they break are read again, and refused.
        assert_eq!(answer(&ack), Answer::Ack);
        let shallow = Limits {
            max_depth: 3,
            ..Limits::default()
        };
        assert!(matches!(parse_answer(&ack, &shallow), Answer::Malformed(_)));
        assert_eq!(answer(&ack), Answer::Ack);
        // A receiver whose answers change is read every time.
        let padded = response("<Ack> true </Ack>");
        assert_eq!(answer(&padded), Answer::Ack);
        assert_eq!(answer(&response("<Ack>false</Ack>")), Answer::Nack);
        assert_eq!(answer(&ack), Answer::Ack);
    }

    #[test]
    fn nacks_false_and_zero() {
        assert_eq!(answer(&response("<Ack>false</Ack>")), Answer::Nack);
        assert_eq!(answer(&response("<Ack>0</Ack>")), Answer::Nack);
    }

    #[test]
    fn refuses_other_ack_values_and_two_acks() {
        assert_eq!(
            answer(&response("<Ack>yes</Ack>")),
            Answer::Malformed("ack_not_boolean")
        );
        assert_eq!(
            answer(&response("<Ack>TRUE</Ack>")),
            Answer::Malformed("ack_not_boolean")
        );
        assert_eq!(
            answer(&response("<Ack>true</Ack><Ack>true</Ack>")),
            Answer::Malformed("two_acks")
        );
        assert_eq!(answer(&response("")), Answer::Malformed("no_ack"));
    }

    #[test]
    fn refuses_an_ack_in_the_wrong_namespace() {
        let body = response(r#"<Ack xmlns="urn:other">true</Ack>"#);
        assert_eq!(answer(&body), Answer::Malformed("unexpected_content"));
        let body = br#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notificationsResponse><Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#;
        assert_eq!(
            answer(body),
            Answer::Malformed("not_notifications_response")
        );
    }

    #[test]
    fn a_notifications_answer_is_not_an_ack() {
        for inner in ["<Ack>true</Ack>", "<Ack>1</Ack>"] {
            let body = format!(
                r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound">{inner}</notifications></soapenv:Body></soapenv:Envelope>"#
            );
            assert_eq!(
                answer(body.as_bytes()),
                Answer::Malformed("not_notifications_response")
            );
        }
    }

    #[test]
    fn reads_a_fault_with_an_escaped_faultstring() {
        let body = br#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><soapenv:Fault><faultcode>soapenv:Server</faultcode><faultstring> database &amp; queue &lt;down&gt; </faultstring><detail><x>1</x></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;
        assert_eq!(
            answer(body),
            Answer::Fault {
                faultcode: Some("soapenv:Server".into()),
                faultstring: Some("database & queue <down>".into()),
            }
        );
    }

    #[test]
    fn bounds_a_long_faultstring() {
        let long = "é".repeat(2000);
        let body = format!(
            r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>{long}</faultstring></s:Fault></s:Body></s:Envelope>"#
        );
        let Answer::Fault {
            faultstring: Some(s),
            ..
        } = answer(body.as_bytes())
        else {
            panic!("not a fault")
        };
        assert_eq!(s.chars().count(), 2000);
        let long = "é".repeat(20_000);
        let body = format!(
            r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>{long}</faultstring></s:Fault></s:Body></s:Envelope>"#
        );
        let Answer::Fault {
            faultstring: Some(s),
            ..
        } = answer(body.as_bytes())
        else {
            panic!("not a fault")
        };
        assert_eq!(s.len(), FAULTSTRING_MAX);
    }

    #[test]
    fn refuses_html_truncated_and_doctype_answers() {
        assert!(matches!(
            answer(b"<html><body>502 Bad Gateway</body></html>"),
            Answer::Malformed("not_soap")
        ));
        let full = response("<Ack>true</Ack>");
        assert_eq!(
            answer(&full[..full.len() - 20]),
            Answer::Malformed("truncated")
        );
        let mut with_doctype = b"<!DOCTYPE x [<!ENTITY t \"true\">]>".to_vec();
        with_doctype.extend_from_slice(&response("<Ack>&t;</Ack>"));
        assert!(matches!(answer(&with_doctype), Answer::Malformed(_)));
        assert_eq!(answer(b""), Answer::Malformed("no_root"));
        assert_eq!(answer(b"OK"), Answer::Malformed("content_outside_root"));
    }

    #[test]
    fn refuses_an_unknown_entity_in_the_ack() {
        assert_eq!(
            answer(&response("<Ack>&t;</Ack>")),
            Answer::Malformed("entity")
        );
    }

    #[test]
    fn refuses_a_body_with_two_children() {
        let body = br#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack></notificationsResponse><soapenv:Fault/></soapenv:Body></soapenv:Envelope>"#;
        assert_eq!(answer(body), Answer::Malformed("unexpected_content"));
    }
}
