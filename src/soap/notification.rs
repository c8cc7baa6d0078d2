//! The Outbound Message request: `Envelope > [Header] > Body > notifications` with, in order,
//! `OrganizationId`, `ActionId`, optional `SessionId`, `EnterpriseUrl`, `PartnerUrl`, then
//! 1..=limit `Notification` elements (`Id`, `sObject`).
//!
//! [`parse`] checks that shape on resolved namespaces and records what the policy stage and the
//! audit trail need, plus the byte spans the rewrite needs. It never keeps the session id
//! value: only whether there is one. The content of `sObject` and of a SOAP `Header` is not
//! interpreted (it still passes every check of [`super::scan`]); an element named `SessionId`
//! anywhere but directly under `notifications` in the outbound namespace is just data.

use std::ops::Range;

use quick_xml::events::BytesStart;
use quick_xml::name::{PrefixDeclaration, QName};

use super::scan::{offset_in, trim_xml, Chars, Item, Ns, Scanner, XsiAttrs};
use super::{Limits, XmlError};

/// What the message says about the session id. The value itself is never kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionIdState {
    /// No `SessionId` element.
    Absent,
    /// `<SessionId xsi:nil="true"/>` (no character data).
    Nil,
    /// The element is present with no character data (or only whitespace) and is not nil.
    Empty,
    /// The element holds character data other than whitespace (text, CDATA or references),
    /// whether or not it also says `xsi:nil`.
    Value,
}

/// A parsed Outbound Message: what later stages and the audit trail need. Never holds the
/// session id value, so it is safe to log with `{:?}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `OrganizationId`, trimmed, not validated.
    pub organization_id: String,
    /// `ActionId`, trimmed, not validated.
    pub action_id: String,
    /// Whether and how `SessionId` is present.
    pub session_id: SessionIdState,
    /// `EnterpriseUrl`, trimmed, when present.
    pub enterprise_url: Option<String>,
    /// `PartnerUrl`, trimmed, when present.
    pub partner_url: Option<String>,
    /// Each `Notification/Id`, trimmed, in document order.
    pub notification_ids: Vec<String>,
    /// The local part of each `sObject`'s `xsi:type` (`Account` for `sf:Account`), in order.
    pub sobject_types: Vec<String>,
    pub(super) spans: Spans,
}

/// Byte offsets into the parsed body, for [`super::rewrite`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Spans {
    pub(super) body_len: usize,
    pub(super) action: Element,
    pub(super) session: Option<Element>,
    /// The prefix a nil rewrite uses for `nil` (`xsi`, unless the element itself is `xsi:`).
    pub(super) nil_prefix: &'static str,
    /// Whether `nil_prefix` already resolves to the XSI namespace inside the SessionId element.
    pub(super) nil_prefix_bound: bool,
    pub(super) enterprise_text: Option<Range<usize>>,
    pub(super) partner_text: Option<Range<usize>>,
}

/// Where one element lies.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Element {
    /// From the `<` of the start tag...
    pub(super) start: usize,
    /// ...to just after the `>` of the end tag (or of the empty-element tag).
    pub(super) end: usize,
    /// The qualified name as written.
    pub(super) qname: Range<usize>,
    /// The start tag's `xmlns`/`xmlns:*` attributes as written (`key="value"`).
    pub(super) ns_decls: Vec<NsDecl>,
}

/// One namespace declaration attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NsDecl {
    pub(super) span: Range<usize>,
    /// It declares [`Spans::nil_prefix`] (to something other than XSI when not bound).
    pub(super) declares_nil_prefix: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    OrganizationId,
    ActionId,
    SessionId,
    EnterpriseUrl,
    PartnerUrl,
    NotificationId,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::OrganizationId => "OrganizationId",
            Field::ActionId => "ActionId",
            Field::SessionId => "SessionId",
            Field::EnterpriseUrl => "EnterpriseUrl",
            Field::PartnerUrl => "PartnerUrl",
            Field::NotificationId => "Notification/Id",
        }
    }

    /// The most bytes of character data the field may hold, whitespace included: an id is 15
    /// or 18 characters, a URL a few dozen.
    fn max_len(self) -> usize {
        match self {
            Field::EnterpriseUrl | Field::PartnerUrl => 2048,
            _ => 256,
        }
    }

    /// Position in the `notifications` sequence (Notification is 5).
    fn rank(self) -> u8 {
        match self {
            Field::OrganizationId => 0,
            Field::ActionId => 1,
            Field::SessionId => 2,
            Field::EnterpriseUrl => 3,
            Field::PartnerUrl => 4,
            Field::NotificationId => 6,
        }
    }
}

const NOTIFICATION_RANK: u8 = 5;

/// Where the parser is. Each open element has one.
#[derive(Debug, Clone, Copy)]
enum Ctx {
    Envelope {
        header: bool,
        body: bool,
    },
    Body {
        done: bool,
    },
    /// `last`: rank of the last child seen.
    Notifications {
        last: Option<u8>,
    },
    Notification {
        stage: u8,
    },
    Leaf(Field),
    /// `soapenv:Header`: Salesforce sends none, so it may only be empty.
    Header,
    /// sObject content: checked by the scanner and for attributes, not interpreted.
    Opaque,
}

impl Ctx {
    fn name(self) -> &'static str {
        match self {
            Ctx::Envelope { .. } => "Envelope",
            Ctx::Body { .. } => "Body",
            Ctx::Notifications { .. } => "notifications",
            Ctx::Notification { .. } => "Notification",
            Ctx::Leaf(f) => f.name(),
            Ctx::Header => "the SOAP Header",
            Ctx::Opaque => "an sObject",
        }
    }
}

/// Parse and check an Outbound Message request. See the module documentation for the shape.
pub fn parse(body: &[u8], limits: &Limits) -> Result<Message, XmlError> {
    let mut scanner = Scanner::new(body, limits, false)?;
    let mut p = Parser {
        limits: *limits,
        stack: Vec::with_capacity(16),
        // Holds one field's text at a time: room for an id or a Salesforce URL, so it is
        // allocated once, not grown from id to URL.
        text: String::with_capacity(128),
        leaf_after: 0,
        session_value: false,
        session_nil: false,
        notifications: 0,
        msg: Message {
            organization_id: String::new(),
            action_id: String::new(),
            session_id: SessionIdState::Absent,
            enterprise_url: None,
            partner_url: None,
            notification_ids: Vec::new(),
            sobject_types: Vec::new(),
            spans: Spans {
                body_len: body.len(),
                nil_prefix: "xsi",
                ..Spans::default()
            },
        },
    };
    loop {
        match scanner.next()? {
            Item::Open {
                tag,
                ns,
                local,
                xsi,
                at,
                after,
            } => {
                p.open(&scanner, &tag, (ns, local), xsi, at, after)?;
                scanner.skip_blank_text(p.in_element_content());
            }
            Item::Close { at, end } => {
                p.close(at, end)?;
                scanner.skip_blank_text(p.in_element_content());
            }
            Item::Chars(at, chars) => p.chars(at, chars)?,
            Item::Eof => return Ok(p.msg),
        }
    }
}

struct Parser {
    limits: Limits,
    stack: Vec<Ctx>,
    /// Character data of the open leaf (never filled for SessionId).
    text: String,
    /// Offset just after the open leaf's start tag.
    leaf_after: usize,
    session_value: bool,
    session_nil: bool,
    notifications: usize,
    msg: Message,
}

impl Parser {
    fn open(
        &mut self,
        scanner: &Scanner<'_>,
        tag: &BytesStart<'_>,
        (ns, local): (Ns, &str),
        xsi: XsiAttrs<'_>,
        at: usize,
        after: usize,
    ) -> Result<(), XmlError> {
        let unexpected = |parent: &'static str| XmlError::UnexpectedElement {
            at,
            name: super::scan::shorten(tag.name().into_inner()),
            parent,
        };
        let attribute = || XmlError::UnexpectedAttribute {
            at,
            name: super::scan::shorten(tag.name().into_inner()),
        };
        // What Salesforce sends, and so all that is accepted: namespace declarations anywhere,
        // `xsi:nil` (and `xsi:type` string) on SessionId, `xsi:type` on sObject, `xsi:nil` and
        // `xsi:type` on the sObject's fields. Anything else (`href`, `id`, `soapenc:` and
        // other foreign attributes) is refused: rpc/encoded stacks such as Axis 1.4 follow
        // `href` to an element with that `id` and would read a value the rewrite never saw.
        let in_sobject = matches!(self.stack.last(), Some(Ctx::Opaque));
        let child = match self.stack.last_mut() {
            None if ns == Ns::Soap && local == "Envelope" => Ctx::Envelope {
                header: false,
                body: false,
            },
            None => return Err(XmlError::NotSoapEnvelope),
            Some(Ctx::Envelope { header, body }) => match (ns, local) {
                (Ns::Soap, "Header") if !*header && !*body => {
                    *header = true;
                    Ctx::Header
                }
                (Ns::Soap, "Body") if !*body => {
                    *body = true;
                    Ctx::Body { done: false }
                }
                _ => return Err(unexpected("Envelope")),
            },
            Some(Ctx::Body { done }) => {
                if *done || ns != Ns::Outbound || local != "notifications" {
                    return Err(unexpected("Body"));
                }
                *done = true;
                Ctx::Notifications { last: None }
            }
            Some(Ctx::Notifications { last }) => {
                let field = match (ns, local) {
                    (Ns::Outbound, "OrganizationId") => Some(Field::OrganizationId),
                    (Ns::Outbound, "ActionId") => Some(Field::ActionId),
                    (Ns::Outbound, "SessionId") => Some(Field::SessionId),
                    (Ns::Outbound, "EnterpriseUrl") => Some(Field::EnterpriseUrl),
                    (Ns::Outbound, "PartnerUrl") => Some(Field::PartnerUrl),
                    (Ns::Outbound, "Notification") => None,
                    _ => return Err(unexpected("notifications")),
                };
                let rank = field.map_or(NOTIFICATION_RANK, Field::rank);
                let in_order = match *last {
                    None => true,
                    Some(l) => rank > l || (rank == NOTIFICATION_RANK && l == NOTIFICATION_RANK),
                };
                if !in_order {
                    return Err(unexpected("notifications"));
                }
                if rank > 0 && last.is_none() {
                    return Err(XmlError::Missing {
                        what: "OrganizationId",
                    });
                }
                if rank > 1 && *last == Some(0) {
                    return Err(XmlError::Missing { what: "ActionId" });
                }
                *last = Some(rank);
                match field {
                    Some(f) => self.open_leaf(scanner, tag, f, xsi, at, after)?,
                    None => {
                        self.notifications += 1;
                        if self.notifications > self.limits.max_notifications {
                            return Err(XmlError::TooManyNotifications {
                                limit: self.limits.max_notifications,
                            });
                        }
                        Ctx::Notification { stage: 0 }
                    }
                }
            }
            Some(Ctx::Notification { stage }) => match (*stage, ns, local) {
                (0, Ns::Outbound, "Id") => {
                    *stage = 1;
                    self.open_leaf(scanner, tag, Field::NotificationId, xsi, at, after)?
                }
                (1, Ns::Outbound, "sObject") => {
                    *stage = 2;
                    let ty = sobject_type(scanner, xsi, at)?;
                    self.msg.sobject_types.push(ty);
                    Ctx::Opaque
                }
                _ => return Err(unexpected("Notification")),
            },
            Some(Ctx::Leaf(f)) => return Err(unexpected(f.name())),
            // A SessionId (or a second notifications) in the Header is what a DOM, XPath or
            // regex receiver may find first: the Header must be empty.
            Some(Ctx::Header) => return Err(unexpected("the SOAP Header (Salesforce sends none)")),
            // The outbound and envelope namespaces have their place, and it is not in an
            // sObject: an outbound `SessionId` there is what a lenient receiver could read.
            Some(Ctx::Opaque) if matches!(ns, Ns::Outbound | Ns::Soap) => {
                return Err(unexpected("an sObject"))
            }
            Some(Ctx::Opaque) => Ctx::Opaque,
        };
        let allowed = match child {
            _ if xsi.other => false,
            Ctx::Opaque if in_sobject => true,
            // The sObject itself: its xsi:type was read above.
            Ctx::Opaque => !xsi.nil_attr,
            Ctx::Leaf(Field::SessionId) => xsi
                .type_
                .is_none_or(|t| t.rsplit(':').next() == Some("string")),
            _ => !xsi.nil_attr && xsi.type_.is_none(),
        };
        if !allowed {
            return Err(attribute());
        }
        self.stack.push(child);
        Ok(())
    }

    fn open_leaf(
        &mut self,
        scanner: &Scanner<'_>,
        tag: &BytesStart<'_>,
        field: Field,
        xsi: XsiAttrs<'_>,
        at: usize,
        after: usize,
    ) -> Result<Ctx, XmlError> {
        self.text.clear();
        self.leaf_after = after;
        match field {
            Field::ActionId => {
                self.msg.spans.action = element(scanner, tag, at, None)?;
            }
            Field::SessionId => {
                let prefix = tag.name().prefix().map(|p| p.into_inner());
                let (nil_prefix, probe) = if prefix == Some("xsi") {
                    ("xsi1", "xsi1:nil")
                } else {
                    ("xsi", "xsi:nil")
                };
                self.msg.spans.nil_prefix = nil_prefix;
                self.msg.spans.nil_prefix_bound = scanner.element_ns(probe) == Some(Ns::Xsi);
                self.msg.spans.session = Some(element(scanner, tag, at, Some(nil_prefix))?);
                self.session_value = false;
                self.session_nil = xsi.nil;
            }
            _ => {}
        }
        Ok(Ctx::Leaf(field))
    }

    /// Whether the innermost open element holds elements, not a value: there, text that is
    /// only whitespace means nothing (`chars` ignores it), so the scanner need not produce it.
    /// Inside a value it must, as written: `&#48; &#48;` is `0 0`, not `00`.
    fn in_element_content(&self) -> bool {
        matches!(self.stack.last(), Some(ctx) if !matches!(ctx, Ctx::Leaf(_)))
    }

    fn close(&mut self, at: usize, end: usize) -> Result<(), XmlError> {
        let Some(ctx) = self.stack.pop() else {
            return Err(XmlError::Malformed {
                at,
                detail: "an end tag without a start tag".to_owned(),
            });
        };
        match ctx {
            Ctx::Leaf(field) => {
                let value = trim_xml(&self.text).to_owned();
                let spans = &mut self.msg.spans;
                let content = self.leaf_after..at;
                match field {
                    Field::OrganizationId => self.msg.organization_id = value,
                    Field::ActionId => {
                        self.msg.action_id = value;
                        spans.action.end = end;
                    }
                    Field::SessionId => {
                        if let Some(s) = spans.session.as_mut() {
                            s.end = end;
                        }
                        self.msg.session_id = if self.session_value {
                            SessionIdState::Value
                        } else if self.session_nil {
                            SessionIdState::Nil
                        } else {
                            SessionIdState::Empty
                        };
                    }
                    Field::EnterpriseUrl => {
                        self.msg.enterprise_url = Some(value);
                        spans.enterprise_text = Some(content);
                    }
                    Field::PartnerUrl => {
                        self.msg.partner_url = Some(value);
                        spans.partner_text = Some(content);
                    }
                    Field::NotificationId => self.msg.notification_ids.push(value),
                }
            }
            Ctx::Notifications { last } => match last {
                None => {
                    return Err(XmlError::Missing {
                        what: "OrganizationId",
                    })
                }
                Some(0) => return Err(XmlError::Missing { what: "ActionId" }),
                Some(NOTIFICATION_RANK) => {}
                Some(_) => {
                    return Err(XmlError::Missing {
                        what: "Notification",
                    })
                }
            },
            Ctx::Notification { stage: 0 } => {
                return Err(XmlError::Missing {
                    what: "Id in a Notification",
                })
            }
            Ctx::Notification { stage: 1 } => {
                return Err(XmlError::Missing {
                    what: "sObject in a Notification",
                })
            }
            Ctx::Envelope { body: false, .. } => {
                return Err(XmlError::Missing { what: "SOAP Body" })
            }
            Ctx::Body { done: false } => {
                return Err(XmlError::Missing {
                    what: "notifications element",
                })
            }
            Ctx::Notification { .. }
            | Ctx::Envelope { .. }
            | Ctx::Body { .. }
            | Ctx::Header
            | Ctx::Opaque => {}
        }
        Ok(())
    }

    fn chars(&mut self, at: usize, chars: Chars<'_>) -> Result<(), XmlError> {
        match self.stack.last() {
            Some(Ctx::Leaf(Field::SessionId)) => self.session_value |= !chars.is_blank(),
            Some(Ctx::Leaf(field)) => {
                chars.push_to(&mut self.text);
                // Bounded, so a megabyte "id" costs nothing downstream (logs, audit, policy).
                let limit = field.max_len();
                if self.text.len() > limit {
                    return Err(XmlError::FieldTooLong {
                        what: field.name(),
                        limit,
                    });
                }
            }
            Some(Ctx::Opaque) => {}
            Some(ctx) if !chars.is_blank() => {
                return Err(XmlError::UnexpectedText {
                    at,
                    parent: ctx.name(),
                })
            }
            _ => {}
        }
        Ok(())
    }
}

/// Record where an element's name and namespace declarations are. `nil_prefix` marks the
/// declaration of that prefix, which a nil rewrite may have to replace.
fn element(
    scanner: &Scanner<'_>,
    tag: &BytesStart<'_>,
    at: usize,
    nil_prefix: Option<&str>,
) -> Result<Element, XmlError> {
    let body = scanner.body();
    let lost = || XmlError::Malformed {
        at,
        detail: "an attribute the tokenizer did not borrow from the body".to_owned(),
    };
    let mut ns_decls = Vec::new();
    for attr in tag.attributes().with_checks(false) {
        let attr = attr.map_err(|_| lost())?;
        let Some(decl) = attr.key.as_namespace_binding() else {
            continue;
        };
        let key_at = offset_in(body, attr.key.into_inner()).ok_or_else(lost)?;
        let value_at = offset_in(body, &attr.value).ok_or_else(lost)?;
        // Include the closing quote.
        let span = key_at..value_at + attr.value.len() + 1;
        if !matches!(body.as_bytes().get(span.end - 1), Some(b'"' | b'\'')) {
            return Err(lost());
        }
        let declares_nil_prefix =
            matches!(decl, PrefixDeclaration::Named(p) if Some(p) == nil_prefix);
        ns_decls.push(NsDecl {
            span,
            declares_nil_prefix,
        });
    }
    let name = tag.name().into_inner();
    Ok(Element {
        start: at,
        end: at,
        qname: at + 1..at + 1 + name.len(),
        ns_decls,
    })
}

/// The local part of `sObject/@xsi:type`, whose prefix must be declared.
fn sobject_type(scanner: &Scanner<'_>, xsi: XsiAttrs<'_>, at: usize) -> Result<String, XmlError> {
    let Some(value) = xsi.type_ else {
        return Err(XmlError::Missing {
            what: "xsi:type on an sObject",
        });
    };
    if value.contains('&') {
        return Err(XmlError::Malformed {
            at,
            detail: "a reference inside xsi:type".to_owned(),
        });
    }
    if value.len() > 256 {
        return Err(XmlError::FieldTooLong {
            what: "xsi:type of an sObject",
            limit: 256,
        });
    }
    if scanner.element_ns(value).is_none() {
        return Err(XmlError::UndeclaredPrefix {
            at,
            name: super::scan::shorten(value),
        });
    }
    Ok(QName(value).local_name().into_inner().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soap::fixtures::{Encoding, Fixture, Notif, Session, ENTERPRISE_URL, SESSION_VALUE};

    fn ok(body: &[u8]) -> Message {
        match parse(body, &Limits::default()) {
            Ok(m) => m,
            Err(e) => panic!("refused: {e}\n{}", String::from_utf8_lossy(body)),
        }
    }

    fn refused(body: &[u8]) -> XmlError {
        parse(body, &Limits::default()).expect_err("accepted a body it should refuse")
    }

    /// The default fixture with `from` replaced by `to` (exactly once).
    fn edited(from: &str, to: &str) -> Vec<u8> {
        let text = Fixture::default().text();
        assert_eq!(
            text.matches(from).count(),
            1,
            "fixture has no single {from:?}"
        );
        text.replacen(from, to, 1).into_bytes()
    }

    const EXAMPLE: &str = r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
    xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>00D5e000000AbCdEAK</OrganizationId>
   <ActionId>04k5e000000XyZaAAK</ActionId>
   <SessionId>00D5e000000AbCd!AQ4AQFakeSessionValue</SessionId>
   <EnterpriseUrl>https://acme.my.salesforce.com/services/Soap/c/59.0/00D5e000000AbCd</EnterpriseUrl>
   <PartnerUrl>https://acme.my.salesforce.com/services/Soap/u/59.0/00D5e000000AbCd</PartnerUrl>
   <Notification>
    <Id>04l5e00000AbCdEAAV</Id>
    <sObject xsi:type="sf:Account" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
     <sf:Id>0015e00000QwErTAAV</sf:Id>
     <sf:Name>Acme Ltd</sf:Name>
    </sObject>
   </Notification>
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>"#;

    #[test]
    fn parses_the_protocol_example() {
        let m = ok(EXAMPLE.as_bytes());
        assert_eq!(m.organization_id, "00D5e000000AbCdEAK");
        assert_eq!(m.action_id, "04k5e000000XyZaAAK");
        assert_eq!(m.session_id, SessionIdState::Value);
        assert_eq!(m.enterprise_url.as_deref(), Some(ENTERPRISE_URL));
        assert_eq!(
            m.partner_url.as_deref(),
            Some("https://acme.my.salesforce.com/services/Soap/u/59.0/00D5e000000AbCd")
        );
        assert_eq!(m.notification_ids, ["04l5e00000AbCdEAAV"]);
        assert_eq!(m.sobject_types, ["Account"]);
    }

    #[test]
    fn never_keeps_the_session_id_value() {
        let m = ok(&Fixture::default().build());
        assert!(!format!("{m:?}").contains("SeSsIoNmArKeR"));
    }

    #[test]
    fn parses_prefixed_namespaces() {
        let f = Fixture {
            soap_prefix: "env".into(),
            out_prefix: Some("ns1".into()),
            ..Fixture::default()
        };
        let m = ok(&f.build());
        assert_eq!(m.session_id, SessionIdState::Value);
        assert_eq!(m.notification_ids.len(), 1);
    }

    #[test]
    fn matches_on_namespace_not_prefix() {
        let body = EXAMPLE
            .replace("<notifications xmlns=", "<a:notifications xmlns:a=")
            .replace("</notifications>", "</a:notifications>")
            .replace("<OrganizationId>", "<a:OrganizationId>")
            .replace("</OrganizationId>", "</a:OrganizationId>");
        // Unprefixed children are in no namespace now: only OrganizationId is in the right one.
        assert!(matches!(
            refused(body.as_bytes()),
            XmlError::UnexpectedElement { .. }
        ));
        let wrong_ns = EXAMPLE.replace(
            "xmlns=\"http://soap.sforce.com/2005/09/outbound\"",
            "xmlns=\"http://soap.sforce.com/2005/09/inbound\"",
        );
        assert!(matches!(
            refused(wrong_ns.as_bytes()),
            XmlError::UnexpectedElement { parent: "Body", .. }
        ));
        let soap_wrong = EXAMPLE.replace(
            "xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\"",
            "xmlns:soapenv=\"http://www.w3.org/2003/05/soap-envelope\"",
        );
        assert_eq!(refused(soap_wrong.as_bytes()), XmlError::NotSoapEnvelope);
    }

    #[test]
    fn accepts_a_bom_and_an_xml_declaration() {
        for decl in [
            None,
            Some(r#"<?xml version="1.0"?>"#),
            Some(r#"<?xml version="1.0" encoding="UTF-8"?>"#),
            Some(r#"<?xml version='1.0' encoding='utf-8' standalone='yes'?>"#),
        ] {
            for bom in [false, true] {
                let f = Fixture {
                    bom,
                    decl,
                    ..Fixture::default()
                };
                assert_eq!(ok(&f.build()).session_id, SessionIdState::Value);
            }
        }
    }

    #[test]
    fn reads_every_session_id_form() {
        let cases = [
            (Session::Absent, SessionIdState::Absent),
            (Session::Nil, SessionIdState::Nil),
            (Session::Empty, SessionIdState::Empty),
            (
                Session::Value(SESSION_VALUE.into(), Encoding::Text),
                SessionIdState::Value,
            ),
            (
                Session::Value(SESSION_VALUE.into(), Encoding::CData),
                SessionIdState::Value,
            ),
            (
                Session::Value(SESSION_VALUE.into(), Encoding::SplitRefs),
                SessionIdState::Value,
            ),
            (
                Session::Value("  \n ".into(), Encoding::Text),
                SessionIdState::Empty,
            ),
        ];
        for (session, want) in cases {
            let f = Fixture {
                session: session.clone(),
                ..Fixture::default()
            };
            assert_eq!(ok(&f.build()).session_id, want, "{session:?}");
        }
    }

    #[test]
    fn a_value_wins_over_xsi_nil() {
        let body = edited("<SessionId>", r#"<SessionId xsi:nil="true">"#);
        assert_eq!(ok(&body).session_id, SessionIdState::Value);
        let body = edited(
            "<SessionId>",
            r#"<SessionId xsi:nil="1"><![CDATA[ ]]>&#32;"#,
        )
        .into_iter()
        .collect::<Vec<u8>>();
        let text = String::from_utf8(body)
            .unwrap()
            .replace(&crate::soap::fixtures::escape(SESSION_VALUE), "");
        assert_eq!(ok(text.as_bytes()).session_id, SessionIdState::Nil);
    }

    #[test]
    fn nil_in_another_namespace_is_a_foreign_attribute() {
        for tag in [
            r#"<SessionId xmlns:xsi="urn:not-xsi" xsi:nil="true">"#,
            r#"<SessionId nil="true">"#,
        ] {
            let body = edited("<SessionId>", tag);
            let text = String::from_utf8(body)
                .unwrap()
                .replace(&crate::soap::fixtures::escape(SESSION_VALUE), "");
            assert!(
                matches!(
                    refused(text.as_bytes()),
                    XmlError::UnexpectedAttribute { .. }
                ),
                "{tag}"
            );
        }
    }

    #[test]
    fn refuses_soap_encoding_references_and_foreign_attributes_everywhere() {
        let cases = [
            ("<SessionId>", r##"<SessionId href="#s1">"##),
            ("<SessionId>", r#"<SessionId id="s1">"#),
            (
                "<SessionId>",
                r#"<SessionId xmlns:enc="http://schemas.xmlsoap.org/soap/encoding/" enc:root="1">"#,
            ),
            ("<SessionId>", r#"<SessionId xsi:type="soapenc:Array">"#),
            ("<EnterpriseUrl>", r##"<EnterpriseUrl href="#u1">"##),
            ("<PartnerUrl>", r#"<PartnerUrl id="u1">"#),
            ("<OrganizationId>", r#"<OrganizationId xsi:nil="false">"#),
            ("<ActionId>", r#"<ActionId xsi:type="xsd:string">"#),
            ("<Notification>", r#"<Notification id="n">"#),
            ("<Id>", r##"<Id href="#x">"##),
            ("<sf:Id>", r#"<sf:Id id="s1">"#),
            ("<sf:Id>", r##"<sf:Id href="#s1">"##),
            ("<notifications ", r#"<notifications id="n" "#),
            (
                "<soapenv:Body>",
                r#"<soapenv:Body soapenv:encodingStyle="x">"#,
            ),
        ];
        for (from, to) in cases {
            let body = edited(from, to);
            assert!(
                matches!(refused(&body), XmlError::UnexpectedAttribute { .. }),
                "{to}"
            );
        }
        // What Salesforce does send stays accepted.
        ok(&edited(
            "<SessionId>",
            r#"<SessionId xsi:type="xsd:string">"#,
        ));
        ok(&edited("<sf:Id>", r#"<sf:Id xsi:type="xsd:string">"#));
    }

    #[test]
    fn refuses_header_content_and_outbound_elements_out_of_place() {
        let header = |inner: &str| {
            Fixture::default().text().replacen(
                "<soapenv:Body>",
                &format!("<soapenv:Header>{inner}</soapenv:Header><soapenv:Body>"),
                1,
            )
        };
        ok(header("\n ").as_bytes());
        for inner in [
            r#"<SessionId xmlns="http://soap.sforce.com/2005/09/outbound">x</SessionId>"#,
            r#"<x:Trace xmlns:x="urn:x">1</x:Trace>"#,
            r#"<multiRef id="s1">secret</multiRef>"#,
            "text",
        ] {
            let e = refused(header(inner).as_bytes());
            assert!(
                matches!(
                    e,
                    XmlError::UnexpectedElement { .. } | XmlError::UnexpectedText { .. }
                ),
                "{inner}: {e}"
            );
        }
        for inner in [
            r#"<SessionId>secret</SessionId>"#,
            r#"<o:SessionId xmlns:o="http://soap.sforce.com/2005/09/outbound">s</o:SessionId>"#,
            r#"<sf:Address><e:Body xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"/></sf:Address>"#,
        ] {
            let body = edited("<sf:Id>", &format!("{inner}<sf:Id>"));
            assert!(
                matches!(
                    refused(&body),
                    XmlError::UnexpectedElement {
                        parent: "an sObject",
                        ..
                    }
                ),
                "{inner}"
            );
        }
    }

    #[test]
    fn refuses_fields_longer_than_any_salesforce_value() {
        let long = "0".repeat(300);
        let body = edited(
            "<OrganizationId>00D5e000000AbCdEAK",
            &format!("<OrganizationId>{long}"),
        );
        assert!(matches!(
            refused(&body),
            XmlError::FieldTooLong {
                what: "OrganizationId",
                ..
            }
        ));
    }

    #[test]
    fn trims_15_and_18_character_ids() {
        let f = Fixture {
            org: "\n  00D5e000000AbCd  ".into(),
            action: "04k5e000000XyZaAAK".into(),
            ..Fixture::default()
        };
        let m = ok(&f.build());
        assert_eq!(m.organization_id, "00D5e000000AbCd");
        assert_eq!(m.action_id, "04k5e000000XyZaAAK");
    }

    /// Whitespace-only text is skipped between elements, never inside a value: a receiver
    /// reads `&#69; &#65;` as `E A`, and so must the checks (`EA` would make a valid id).
    #[test]
    fn whitespace_inside_a_value_is_kept_between_references_and_cdata() {
        let body = EXAMPLE
            .replace(
                "<OrganizationId>00D5e000000AbCdEAK<",
                "<OrganizationId>00D5e000000AbCd&#69; &#65;\tK<",
            )
            .replace(
                "<Id>04l5e00000AbCdEAAV<",
                "<Id>04l5e00000AbCdE&#65;\n<![CDATA[A]]> V<",
            )
            .replace(
                "<ActionId>04k5e000000XyZaAAK<",
                "<ActionId>04k5e000000XyZaAAK \r\n<",
            );
        let m = ok(body.as_bytes());
        assert_eq!(m.organization_id, "00D5e000000AbCdE A\tK");
        assert_eq!(m.notification_ids, ["04l5e00000AbCdEA\nA V"]);
        assert_eq!(m.action_id, "04k5e000000XyZaAAK");
    }

    /// Between elements the scanner skips whitespace-only text; an element after it is still
    /// found where its `<` is (the rewrite cuts there), and text that is not only whitespace
    /// is still refused, at its first character.
    #[test]
    fn skipped_whitespace_moves_no_position() {
        let spaced = |ws: &str| {
            Fixture {
                ws: ws.into(),
                ..Fixture::default()
            }
            .text()
        };
        let indented = spaced("\n \t\r\n");
        let compact = spaced("");
        for body in [&indented, &compact] {
            let m = ok(body.as_bytes());
            let session = m.spans.session.as_ref().expect("a SessionId element");
            assert!(body[session.start..].starts_with("<SessionId"), "{body}");
            assert!(body[..session.end].ends_with("</SessionId>"), "{body}");
            assert!(body[m.spans.action.end..].starts_with(['\n', '<']));
        }
        let text = indented.replacen(
            "<soapenv:Body>\n \t\r\n",
            "<soapenv:Body>\n \t\r\nhello ",
            1,
        );
        match refused(text.as_bytes()) {
            XmlError::UnexpectedText { at, parent: "Body" } => {
                assert_eq!(&text[at..at + 6], "hello ");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn accepts_1_and_100_notifications_and_refuses_101_and_0() {
        assert_eq!(
            ok(&Fixture::with_notifications(1).build())
                .notification_ids
                .len(),
            1
        );
        let m = ok(&Fixture::with_notifications(100).build());
        assert_eq!(m.notification_ids.len(), 100);
        assert_eq!(m.sobject_types.len(), 100);
        assert_eq!(
            refused(&Fixture::with_notifications(101).build()),
            XmlError::TooManyNotifications { limit: 100 }
        );
        assert_eq!(
            refused(&Fixture::with_notifications(0).build()),
            XmlError::Missing {
                what: "Notification"
            }
        );
    }

    #[test]
    fn leaves_an_sobject_field_named_session_id_alone() {
        let mut n = Notif::account(1);
        n.fields.push(("SessionId".into(), "field value".into()));
        let f = Fixture {
            session: Session::Absent,
            notifications: vec![n],
            ..Fixture::default()
        };
        let m = ok(&f.build());
        assert_eq!(m.session_id, SessionIdState::Absent);
        assert_eq!(m.spans.session, None);
    }

    #[test]
    fn accepts_an_empty_header_before_the_body() {
        let f = Fixture {
            header: true,
            ..Fixture::default()
        };
        assert_eq!(ok(&f.build()).session_id, SessionIdState::Value);
    }

    #[test]
    fn rejects_doctype() {
        let body = format!("<!DOCTYPE x>{}", Fixture::default().text());
        assert!(matches!(refused(body.as_bytes()), XmlError::Doctype { .. }));
        let body = format!(
            "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY e \"v\">]>{}",
            Fixture::default().text()
        );
        assert!(matches!(refused(body.as_bytes()), XmlError::Doctype { .. }));
    }

    #[test]
    fn rejects_unknown_entities_in_text_and_attributes() {
        let body = edited("Acme &amp; Sons", "Acme &nbsp; Sons");
        assert!(matches!(refused(&body), XmlError::Entity { .. }));
        let body = edited(
            "xsi:type=\"sf:Account\"",
            "xsi:type=\"sf:Account\" a=\"&e;\"",
        );
        assert!(matches!(refused(&body), XmlError::Entity { .. }));
    }

    #[test]
    fn rejects_invalid_character_references() {
        for r in [
            "&#0;",
            "&#x0;",
            "&#xD800;",
            "&#x1;",
            "&#xFFFE;",
            "&#99999999999;",
            "&#x;",
            "&#X41;",
            "&#-1;",
            "&#x110000;",
        ] {
            let body = edited("Acme &amp; Sons", &format!("Acme {r} Sons"));
            assert!(matches!(refused(&body), XmlError::CharRef { .. }), "{r}");
        }
        // Valid ones pass, including leading zeros.
        let body = edited("Acme &amp; Sons", "Acme &#x00041;&#9;&#x1F600; Sons");
        ok(&body);
    }

    #[test]
    fn rejects_processing_instructions() {
        let body = edited("<Notification>", "<?php echo 1 ?><Notification>");
        assert!(matches!(
            refused(&body),
            XmlError::ProcessingInstruction { .. }
        ));
        let body = format!("<?xml-stylesheet href=\"a\"?>{}", Fixture::default().text());
        assert!(matches!(
            refused(body.as_bytes()),
            XmlError::ProcessingInstruction { .. }
        ));
    }

    #[test]
    fn rejects_a_declaration_not_at_the_very_start() {
        let body = format!(" <?xml version=\"1.0\"?>{}", Fixture::default().text());
        assert!(matches!(
            refused(body.as_bytes()),
            XmlError::MisplacedDeclaration { .. }
        ));
        let body = format!(
            "<?xml version=\"1.0\"?><?xml version=\"1.0\"?>{}",
            Fixture::default().text()
        );
        assert!(matches!(
            refused(body.as_bytes()),
            XmlError::MisplacedDeclaration { .. }
        ));
        let body = edited("<Notification>", "<?xml version=\"1.0\"?><Notification>");
        assert!(matches!(
            refused(&body),
            XmlError::MisplacedDeclaration { .. }
        ));
    }

    #[test]
    fn rejects_other_encodings_and_versions() {
        for enc in ["ISO-8859-1", "UTF-16", "utf-32"] {
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"{enc}\"?>{}",
                Fixture::default().text()
            );
            assert!(matches!(
                refused(body.as_bytes()),
                XmlError::Encoding { .. }
            ));
        }
        let body = format!("<?xml version=\"1.1\"?>{}", Fixture::default().text());
        assert_eq!(refused(body.as_bytes()), XmlError::Version);
    }

    #[test]
    fn rejects_utf16_and_utf32_byte_order_marks() {
        for bom in [
            &b"\xFF\xFE"[..],
            b"\xFE\xFF",
            b"\xFF\xFE\0\0",
            b"\0\0\xFE\xFF",
        ] {
            let mut body = bom.to_vec();
            body.extend_from_slice(&Fixture::default().build());
            assert_eq!(refused(&body), XmlError::ForeignBom);
        }
    }

    #[test]
    fn rejects_invalid_utf8() {
        let mut body = Fixture::default().build();
        let at = body.len() - 30;
        body[at] = 0xC3;
        body[at + 1] = b'(';
        assert_eq!(refused(&body), XmlError::InvalidUtf8 { at });
    }

    #[test]
    fn rejects_control_characters_in_text_and_attributes() {
        let body = edited("Acme &amp; Sons", "Acme \u{1} Sons");
        assert!(matches!(
            refused(&body),
            XmlError::ControlCharacter { code: 1, .. }
        ));
        let body = edited(
            "xsi:type=\"sf:Account\"",
            "xsi:type=\"sf:Account\" a=\"\u{1b}\"",
        );
        assert!(matches!(
            refused(&body),
            XmlError::ControlCharacter { code: 0x1b, .. }
        ));
        let body = edited("Acme &amp; Sons", "Acme \u{FFFF} Sons");
        assert!(matches!(refused(&body), XmlError::ControlCharacter { .. }));
        // Tab, CR and LF are fine.
        ok(&edited("Acme &amp; Sons", "Acme\t\r\nSons"));
    }

    #[test]
    fn rejects_comments_anywhere() {
        for (from, to) in [
            ("<SessionId>", "<SessionId><!---->"),
            ("<Notification>", "<!-- x --><Notification>"),
            ("<sf:Id>", "<!-- x --><sf:Id>"),
        ] {
            assert!(matches!(
                refused(&edited(from, to)),
                XmlError::Comment { .. }
            ));
        }
        let body = format!("<!-- x -->{}", Fixture::default().text());
        assert!(matches!(refused(body.as_bytes()), XmlError::Comment { .. }));
        let body = format!("{}<!-- x -->", Fixture::default().text());
        assert!(matches!(refused(body.as_bytes()), XmlError::Comment { .. }));
    }

    #[test]
    fn rejects_nesting_deeper_than_the_limit() {
        // Envelope, Body, notifications, Notification, sObject = 5; the field is 6.
        let deep = |n: usize| {
            let inner = format!("{}{}", "<sf:a>".repeat(n), "</sf:a>".repeat(n));
            edited("<sf:Id>", &format!("{inner}<sf:Id>"))
        };
        ok(&deep(64 - 5));
        assert!(matches!(
            refused(&deep(64 - 5 + 1)),
            XmlError::TooDeep { limit: 64, .. }
        ));
        assert!(matches!(refused(&deep(100_000)), XmlError::TooDeep { .. }));
    }

    #[test]
    fn rejects_too_many_attributes() {
        let attrs = |n: usize| {
            (0..n)
                .map(|i| format!(" xmlns:a{i}=\"urn:v\""))
                .collect::<String>()
        };
        ok(&edited("<sf:Id>", &format!("<sf:Id{}>", attrs(32))));
        assert!(matches!(
            refused(&edited("<sf:Id>", &format!("<sf:Id{}>", attrs(33)))),
            XmlError::TooManyAttributes { limit: 32, .. }
        ));
    }

    #[test]
    fn rejects_duplicate_attributes() {
        let body = edited("<sf:Id>", "<sf:Id a=\"1\" a='2'>");
        assert!(matches!(
            refused(&body),
            XmlError::DuplicateAttribute { .. }
        ));
        let body = edited("<SessionId>", "<SessionId xmlns:q=\"a\" xmlns:q=\"b\">");
        assert!(matches!(
            refused(&body),
            XmlError::DuplicateAttribute { .. }
        ));
    }

    #[test]
    fn rejects_malformed_markup() {
        for (from, to) in [
            ("<sf:Id>", "<sf:Id a=b>"),
            ("<sf:Id>", "<sf:Id a=\"<\">"),
            ("Acme &amp; Sons", "Acme & Sons"),
            ("<sf:Id>", "<sf:Id a=\"&amp\">"),
        ] {
            assert!(
                matches!(refused(&edited(from, to)), XmlError::Malformed { .. }),
                "{to}"
            );
        }
        assert!(matches!(
            refused(b"<soapenv:Envelope"),
            XmlError::Malformed { .. }
        ));
    }

    /// The attribute checks that share one scan of the value: a `<` anywhere (also after a
    /// reference) is malformed, before a reference in a namespace declaration is; a prefixed
    /// attribute name needs a local part.
    #[test]
    fn attribute_values_and_names_are_checked_in_one_scan() {
        let detail = |from: &str, to: &str| match refused(&edited(from, to)) {
            XmlError::Malformed { detail, .. } => detail,
            other => panic!("{to}: {other:?}"),
        };
        for to in [
            "<sf:Id a=\"<\">",
            "<sf:Id a=\"x&amp;y<\">",
            "<sf:Id a=\"&amp;<&amp;\">",
        ] {
            assert_eq!(detail("<sf:Id>", to), "`<` in an attribute value", "{to}");
        }
        let ns = "xmlns=\"http://soap.sforce.com/2005/09/outbound\"";
        assert_eq!(
            detail(ns, "xmlns=\"http://soap.sforce.com/&amp;<\""),
            "`<` in an attribute value"
        );
        assert!(matches!(
            refused(&edited(ns, "xmlns=\"http://soap.sforce.com/&amp;\"")),
            XmlError::ReferenceInNamespace { .. }
        ));
        assert_eq!(
            detail("<sf:Id>", "<sf:Id xsi:=\"x\">"),
            "an attribute name with an empty local part"
        );
        // A reference in an ordinary attribute value is checked, not refused for being one.
        assert!(matches!(
            refused(&edited("<sf:Id>", "<sf:Id a=\"&bogus;\">")),
            XmlError::Entity { .. }
        ));
    }

    #[test]
    fn rejects_a_second_root_and_content_outside_the_root() {
        let text = Fixture::default().text();
        assert!(matches!(
            refused(format!("{text}<x/>").as_bytes()),
            XmlError::SecondRoot { .. }
        ));
        assert!(matches!(
            refused(format!("{text}{text}").as_bytes()),
            XmlError::SecondRoot { .. }
        ));
        assert!(matches!(
            refused(format!("junk{text}").as_bytes()),
            XmlError::ContentOutsideRoot { .. }
        ));
        assert!(matches!(
            refused(format!("{text}junk").as_bytes()),
            XmlError::ContentOutsideRoot { .. }
        ));
        assert!(matches!(
            refused(format!("{text}&amp;").as_bytes()),
            XmlError::ContentOutsideRoot { .. }
        ));
        // Whitespace around the root is fine.
        ok(format!("\n\t {text}\n\n").as_bytes());
        assert_eq!(refused(b"   "), XmlError::NoRoot);
    }

    #[test]
    fn rejects_a_truncated_body() {
        let body = Fixture::default().build();
        for cut in [body.len() - 12, body.len() / 2] {
            let err = refused(&body[..cut]);
            assert!(
                matches!(err, XmlError::Truncated { .. } | XmlError::Malformed { .. }),
                "{err}"
            );
        }
        let whole_tag_cut = Fixture::default()
            .text()
            .replace("</soapenv:Envelope>\n", "");
        assert!(matches!(
            refused(whole_tag_cut.as_bytes()),
            XmlError::Truncated { open: 1, .. }
        ));
    }

    #[test]
    fn rejects_mismatched_end_tags() {
        let body = edited("</ActionId>", "</OrganizationId>");
        assert!(matches!(refused(&body), XmlError::MismatchedEndTag { .. }));
        let body = edited("<sf:Id>", "<sf:Other><sf:Id>");
        assert!(matches!(refused(&body), XmlError::MismatchedEndTag { .. }));
    }

    #[test]
    fn rejects_a_wrong_envelope_structure() {
        assert_eq!(
            refused(b"<notifications xmlns=\"http://soap.sforce.com/2005/09/outbound\"/>"),
            XmlError::NotSoapEnvelope
        );
        let no_body = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"/>"#;
        assert_eq!(
            refused(no_body.as_bytes()),
            XmlError::Missing { what: "SOAP Body" }
        );
        let empty_body = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body/></s:Envelope>"#;
        assert_eq!(
            refused(empty_body.as_bytes()),
            XmlError::Missing {
                what: "notifications element"
            }
        );
        let header_after = Fixture::default()
            .text()
            .replace("</soapenv:Body>", "</soapenv:Body><soapenv:Header/>");
        assert!(matches!(
            refused(header_after.as_bytes()),
            XmlError::UnexpectedElement {
                parent: "Envelope",
                ..
            }
        ));
        let text_in_body = edited("<soapenv:Body>", "<soapenv:Body>hello");
        assert!(matches!(
            refused(&text_in_body),
            XmlError::UnexpectedText { parent: "Body", .. }
        ));
    }

    #[test]
    fn rejects_children_out_of_order_or_unknown() {
        let f = Fixture::default().text();
        let swapped = f
            .replace("<ActionId>04k5e000000XyZaAAK</ActionId>", "@@")
            .replace(
                "<OrganizationId>",
                "<ActionId>04k5e000000XyZaAAK</ActionId><OrganizationId>",
            )
            .replace("@@", "");
        assert_eq!(
            refused(swapped.as_bytes()),
            XmlError::Missing {
                what: "OrganizationId"
            }
        );
        let body = edited("<EnterpriseUrl>", "<Extra/><EnterpriseUrl>");
        assert!(matches!(
            refused(&body),
            XmlError::UnexpectedElement {
                parent: "notifications",
                ..
            }
        ));
        let twice = edited("<EnterpriseUrl>", "<SessionId/><EnterpriseUrl>");
        assert!(matches!(
            refused(&twice),
            XmlError::UnexpectedElement {
                parent: "notifications",
                ..
            }
        ));
        let url_after_notification = f.replace(
            "</notifications>",
            "<PartnerUrl>x</PartnerUrl></notifications>",
        );
        assert!(matches!(
            refused(url_after_notification.as_bytes()),
            XmlError::UnexpectedElement { .. }
        ));
        let sobject_first = edited("<Id>04l5e00000AbC000</Id>", "");
        assert!(matches!(
            refused(&sobject_first),
            XmlError::UnexpectedElement {
                parent: "Notification",
                ..
            }
        ));
    }

    #[test]
    fn rejects_missing_organization_and_action_ids() {
        let no_org = edited("<OrganizationId>00D5e000000AbCdEAK</OrganizationId>", "");
        assert_eq!(
            refused(&no_org),
            XmlError::Missing {
                what: "OrganizationId"
            }
        );
        let no_action = edited("<ActionId>04k5e000000XyZaAAK</ActionId>", "");
        assert_eq!(refused(&no_action), XmlError::Missing { what: "ActionId" });
        let only_ids = Fixture {
            session: Session::Absent,
            urls: false,
            notifications: vec![],
            ..Fixture::default()
        };
        assert_eq!(
            refused(&only_ids.build()),
            XmlError::Missing {
                what: "Notification"
            }
        );
    }

    #[test]
    fn rejects_elements_inside_text_fields() {
        for (from, to) in [
            ("<OrganizationId>", "<OrganizationId><b/>"),
            ("<ActionId>", "<ActionId><b>x</b>"),
            ("<SessionId>", "<SessionId><SessionId/>"),
            ("<EnterpriseUrl>", "<EnterpriseUrl><a/>"),
            ("<PartnerUrl>", "<PartnerUrl><a/>"),
            ("<Id>04l", "<Id><x/>04l"),
        ] {
            assert!(
                matches!(
                    refused(&edited(from, to)),
                    XmlError::UnexpectedElement { .. }
                ),
                "{to}"
            );
        }
    }

    #[test]
    fn rejects_references_in_namespace_declarations() {
        let body = EXAMPLE.replace(
            "xmlns=\"http://soap.sforce.com/2005/09/outbound\"",
            "xmlns=\"http://soap.sforce.com/2005/09/&#x6f;utbound\"",
        );
        assert!(matches!(
            refused(body.as_bytes()),
            XmlError::ReferenceInNamespace { .. }
        ));
    }

    #[test]
    fn rejects_undeclared_prefixes() {
        let body = edited("<sf:Id>", "<zz:Id>").into_iter().collect::<Vec<_>>();
        let body = String::from_utf8(body)
            .unwrap()
            .replacen("</sf:Id>", "</zz:Id>", 1);
        assert!(matches!(
            refused(body.as_bytes()),
            XmlError::UndeclaredPrefix { .. }
        ));
        let body = edited("xsi:type=\"sf:Account\"", "xsi:type=\"zz:Account\"");
        assert!(matches!(refused(&body), XmlError::UndeclaredPrefix { .. }));
        let body = edited("<SessionId>", "<SessionId zz:nil=\"true\">");
        assert!(matches!(refused(&body), XmlError::UndeclaredPrefix { .. }));
        let body = edited("xsi:type=\"sf:Account\"", "");
        assert_eq!(
            refused(&body),
            XmlError::Missing {
                what: "xsi:type on an sObject"
            }
        );
    }

    #[test]
    fn reports_positions_after_a_bom() {
        let f = Fixture {
            bom: true,
            ..Fixture::default()
        };
        let text = f
            .text()
            .replacen("<Notification>", "<!--c--><Notification>", 1);
        let at = text.find("<!--").unwrap();
        assert_eq!(refused(text.as_bytes()), XmlError::Comment { at });
    }

    #[test]
    fn error_reasons_are_short_labels() {
        let e = refused(b"<!DOCTYPE x><x/>");
        assert_eq!(e.reason(), "doctype");
        assert!(!e.to_string().is_empty());
    }
}
