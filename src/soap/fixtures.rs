//! Test fixtures: Salesforce-like Outbound Message bodies with the variations real captures
//! show (prefixes, BOM, declaration, session id forms, 1..=100 notifications). Shared by the
//! unit tests, the property tests and (copied) the benchmark.

use super::scan::{OUTBOUND_NS, SOAP_NS, XSI_NS};

/// The session id of [`Fixture::default`]: it contains a marker that appears nowhere else.
pub(crate) const SESSION_VALUE: &str = "00D5e000000AbCd!AQ4AQSeSsIoNmArKeR.Fake";

/// How a session id value is written.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Encoding {
    /// Escaped text.
    Text,
    /// One CDATA section.
    CData,
    /// Text, then character references for the middle third, then text.
    SplitRefs,
}

/// The SessionId element to write.
#[derive(Debug, Clone)]
pub(crate) enum Session {
    Absent,
    /// `<SessionId xsi:nil="true"/>`
    Nil,
    /// `<SessionId></SessionId>`
    Empty,
    Value(String, Encoding),
}

/// One `Notification`.
#[derive(Debug, Clone)]
pub(crate) struct Notif {
    pub id: String,
    pub sobject: String,
    /// sObject fields (local name, unescaped value), in the `sf` namespace.
    pub fields: Vec<(String, String)>,
}

impl Notif {
    pub(crate) fn account(i: usize) -> Notif {
        Notif {
            id: format!("04l5e00000AbC{i:03}"),
            sobject: "Account".into(),
            fields: vec![
                ("Id".into(), format!("0015e00000QwE{i:03}")),
                ("Name".into(), format!("Acme & Sons <{i}>")),
                (
                    "Description".into(),
                    "A customer since 1999, \"gold\" tier.".into(),
                ),
            ],
        }
    }
}

/// A request body to build. `Default` is the example of obm-protocol.md.
#[derive(Debug, Clone)]
pub(crate) struct Fixture {
    pub bom: bool,
    pub decl: Option<&'static str>,
    pub soap_prefix: String,
    /// `None`: `notifications` declares the outbound namespace as default.
    pub out_prefix: Option<String>,
    pub xsi_prefix: String,
    /// Written between elements.
    pub ws: String,
    pub header: bool,
    pub org: String,
    pub action: String,
    pub session: Session,
    pub urls: bool,
    pub notifications: Vec<Notif>,
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture {
            bom: false,
            decl: None,
            soap_prefix: "soapenv".into(),
            out_prefix: None,
            xsi_prefix: "xsi".into(),
            ws: "\n ".into(),
            header: false,
            org: "00D5e000000AbCdEAK".into(),
            action: "04k5e000000XyZaAAK".into(),
            session: Session::Value(SESSION_VALUE.into(), Encoding::Text),
            urls: true,
            notifications: vec![Notif::account(0)],
        }
    }
}

pub(crate) const ENTERPRISE_URL: &str =
    "https://acme.my.salesforce.com/services/Soap/c/59.0/00D5e000000AbCd";
pub(crate) const PARTNER_URL: &str =
    "https://acme.my.salesforce.com/services/Soap/u/59.0/00D5e000000AbCd";

pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Fixture {
    pub(crate) fn with_notifications(n: usize) -> Fixture {
        Fixture {
            notifications: (0..n).map(Notif::account).collect(),
            ..Fixture::default()
        }
    }

    pub(crate) fn text(&self) -> String {
        let sp = &self.soap_prefix;
        let xp = &self.xsi_prefix;
        let ws = &self.ws;
        let (op, out_decl) = match &self.out_prefix {
            None => (String::new(), format!("xmlns=\"{OUTBOUND_NS}\"")),
            Some(p) => (format!("{p}:"), format!("xmlns:{p}=\"{OUTBOUND_NS}\"")),
        };
        let mut s = String::new();
        if self.bom {
            s.push('\u{FEFF}');
        }
        if let Some(decl) = self.decl {
            s.push_str(decl);
            s.push('\n');
        }
        s += &format!(
            "<{sp}:Envelope xmlns:{sp}=\"{SOAP_NS}\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" xmlns:{xp}=\"{XSI_NS}\">{ws}"
        );
        if self.header {
            // Salesforce sends no Header content: an empty one is all that is accepted.
            s += &format!("<{sp}:Header xmlns:x=\"urn:x\">{ws}</{sp}:Header>{ws}");
        }
        s += &format!("<{sp}:Body>{ws}<{op}notifications {out_decl}>{ws}");
        s += &format!("<{op}OrganizationId>{}</{op}OrganizationId>{ws}", self.org);
        s += &format!("<{op}ActionId>{}</{op}ActionId>{ws}", self.action);
        match &self.session {
            Session::Absent => {}
            Session::Nil => s += &format!("<{op}SessionId {xp}:nil=\"true\"/>{ws}"),
            Session::Empty => s += &format!("<{op}SessionId></{op}SessionId>{ws}"),
            Session::Value(v, enc) => {
                s += &format!("<{op}SessionId>{}</{op}SessionId>{ws}", encode(v, *enc))
            }
        }
        if self.urls {
            s += &format!("<{op}EnterpriseUrl>{ENTERPRISE_URL}</{op}EnterpriseUrl>{ws}");
            s += &format!("<{op}PartnerUrl>{PARTNER_URL}</{op}PartnerUrl>{ws}");
        }
        for n in &self.notifications {
            s += &format!(
                "<{op}Notification>{ws}<{op}Id>{}</{op}Id>{ws}<{op}sObject {xp}:type=\"sf:{}\" xmlns:sf=\"urn:sobject.enterprise.soap.sforce.com\">{ws}",
                n.id, n.sobject
            );
            for (name, value) in &n.fields {
                s += &format!("<sf:{name}>{}</sf:{name}>{ws}", escape(value));
            }
            s += &format!("</{op}sObject>{ws}</{op}Notification>{ws}");
        }
        s += &format!("</{op}notifications>{ws}</{sp}:Body>{ws}</{sp}:Envelope>\n");
        s
    }

    pub(crate) fn build(&self) -> Vec<u8> {
        self.text().into_bytes()
    }
}

/// Write `value` as element content in the given form (`value` must not contain `]]>` for CDATA).
pub(crate) fn encode(value: &str, enc: Encoding) -> String {
    match enc {
        Encoding::Text => escape(value),
        Encoding::CData => format!("<![CDATA[{value}]]>"),
        Encoding::SplitRefs => {
            let chars: Vec<char> = value.chars().collect();
            let (a, b) = (chars.len() / 3, 2 * chars.len() / 3);
            let head: String = chars[..a].iter().collect();
            let tail: String = chars[b..].iter().collect();
            let middle: String = chars[a..b]
                .iter()
                .map(|c| format!("&#x{:X};", u32::from(*c)))
                .collect();
            format!("{}{middle}{}", escape(&head), escape(&tail))
        }
    }
}
