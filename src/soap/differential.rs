//! Differential tests: obmguard's pipeline against a lenient receiver ([`super::lenient`]).
//!
//! Each test builds Salesforce-like messages, valid ones and hostile mutations of them, runs
//! parse, policy and rewrite in every session mode (strip, remove, reject, inject with a token
//! and URL rewriting) and reads each forwarded body as a permissive receiver would. The
//! invariants (see [`super::lenient::check_forwarded`]):
//! - strip, remove, and reject when it forwards: the receiver reads no session id value;
//! - inject: it reads exactly the token, and every callback URL it reads is
//!   `https://inst.my.salesforce.com/...` with no user info, query or fragment;
//! - one `notifications` element.
//!
//! A body `parse` refuses satisfies them trivially (nothing is forwarded). The hostile mutations
//! are the red team's holes 1 (SOAP-encoding `href`/`id` references), 2 (callback URLs inject
//! does not rewrite) and 5 (a second SessionId, URL or notifications outside the one obmguard
//! reads); the tests named after them fail until the product closes them. Failure messages
//! name the hole class, the mutation, the mode and a shortened body.

use std::fmt::Write as _;

use proptest::prelude::*;

use super::lenient::{self, Violation};
use super::scan::{OUTBOUND_NS, SOAP_NS, XSI_NS};

const SF_NS: &str = "urn:sobject.enterprise.soap.sforce.com";
const SOAPENC_NS: &str = "http://schemas.xmlsoap.org/soap/encoding/";
const SOAP12ENC_NS: &str = "http://www.w3.org/2003/05/soap-encoding";
/// A session id the sender hides outside the canonical SessionId element.
const SMUGGLED: &str = "00Dsmuggled!AQ.SmUgGlEdSeSsIoN";
/// The session id of valued base messages.
const SESSION: &str = "00D5e000000AbCd!AQ4AQReAlSeSsIoN";
const EVIL_URL: &str = "https://evil.example/services/Soap/c/59.0/00D5e000000AbCd";
const ENTERPRISE_URL: &str = "https://acme.my.salesforce.com/services/Soap/c/59.0/00D5e000000AbCd";
const PARTNER_URL: &str = "https://acme.my.salesforce.com/services/Soap/u/59.0/00D5e000000AbCd";

/// Callback URLs a sender can put in EnterpriseUrl/PartnerUrl (hole 2), as element content
/// (already escaped). Each is a URL inject mode must not send the token beside.
const HOSTILE_URLS: &[(&str, &str)] = &[
    ("no path", "https://evil.example"),
    ("no path, trailing dot", "https://evil.example."),
    (
        "userinfo",
        "https://user:pw@evil.example/services/Soap/c/59.0/x",
    ),
    (
        "userinfo, instance-looking",
        "https://inst.my.salesforce.com@evil.example/x",
    ),
    (
        "query before path",
        "https://evil.example?/services/Soap/c/59.0/x",
    ),
    (
        "fragment before path",
        "https://evil.example#/services/Soap/c/59.0/x",
    ),
    (
        "percent-encoded host",
        "https://evil%2Eexample/services/Soap/c/59.0/x",
    ),
    (
        "percent-encoded slash after host",
        "https://evil.example%2F/x",
    ),
    ("scheme-relative", "//evil.example/services/Soap/c/59.0/x"),
    ("wss scheme", "wss://evil.example/services/Soap/c/59.0/x"),
    ("ftp scheme", "ftp://evil.example/x"),
    ("javascript", "javascript:alert(1)//"),
    ("backslashes", "https:\\\\evil.example\\services\\Soap"),
    (
        "backslash after host",
        "https://evil.example\\@inst.my.salesforce.com/x",
    ),
    ("single slash", "https:/evil.example/services/Soap/c/59.0/x"),
    ("no slashes", "https:evil.example/services/Soap/c/59.0/x"),
    ("tab in host", "https://evil.example&#9;/x"),
    ("space in host", "https://evil .example/x"),
    (
        "query after path",
        "https://evil.example/services/Soap/c/59.0/x?sid=1",
    ),
    (
        "fragment after path",
        "https://evil.example/services/Soap/c/59.0/x#frag",
    ),
    ("relative path", "/services/Soap/c/59.0/x"),
    ("bare host", "evil.example/services/Soap/c/59.0/x"),
    ("unicode host", "https://évil.example/x"),
    ("ipv6 zone", "https://[fe80::1%25eth0]/x"),
];

/// Callback URLs inject rewrites correctly today (controls: these must pass).
const REWRITTEN_URLS: &[(&str, &str)] = &[
    ("other host with path", EVIL_URL),
    (
        "upper-case scheme and host",
        "HTTPS://EVIL.EXAMPLE/services/Soap/c/59.0/x",
    ),
    ("http", "http://evil.example/services/Soap/c/59.0/x"),
    ("port", "https://evil.example:8443/services/Soap/c/59.0/x"),
    ("ipv6", "https://[::1]/services/Soap/c/59.0/x"),
    (
        "instance suffix host",
        "https://inst.my.salesforce.com.evil.example/x",
    ),
    ("padded", "  https://evil.example/services/Soap/c/59.0/x \n"),
    (
        "character references",
        "https&#58;//evil.example&#x2F;services/Soap/c/59.0/x",
    ),
    (
        "CDATA",
        "<![CDATA[https://evil.example/services/Soap/c/59.0/x]]>",
    ),
];

/// The SessionId a base message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BaseSession {
    Absent,
    Nil,
    Empty,
    Value,
    CData,
    CharRefs,
}

/// Where a referenced (`id="x"`) element sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// A field of the first sObject (Salesforce's own namespace).
    SObjectField,
    /// An Axis-style `multiRef` directly in the SOAP Header.
    HeaderMultiRef,
    /// Deeper in a Header block.
    HeaderNested,
    /// A `multiRef` after `notifications` in the Body (rpc/encoded style).
    BodyAfter,
    /// A `multiRef` before `notifications` in the Body.
    BodyBefore,
    /// A child of `notifications` after the last Notification.
    NotificationsChild,
    /// Another canonical field carries the id (`PartnerUrl`, holding the value).
    SiblingField,
}

const TARGETS: [Target; 7] = [
    Target::SObjectField,
    Target::HeaderMultiRef,
    Target::HeaderNested,
    Target::BodyAfter,
    Target::BodyBefore,
    Target::NotificationsChild,
    Target::SiblingField,
];

/// How a reference is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefForm {
    /// `href="#r1"`
    Href,
    /// `href="&#x23;r1"`: the `#` as a character reference.
    HrefCharRef,
    /// `href="#r1"` on an element that also says `xsi:nil="true"`.
    HrefAndNil,
    /// `href="#r1"` on `<X href="#r1"></X>` (start and end tag).
    HrefStartEnd,
    /// SOAP 1.2: `enc:ref="r1"`.
    Soap12Ref,
}

const REF_FORMS: [RefForm; 5] = [
    RefForm::Href,
    RefForm::HrefCharRef,
    RefForm::HrefAndNil,
    RefForm::HrefStartEnd,
    RefForm::Soap12Ref,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UrlField {
    Enterprise,
    Partner,
}

/// Where an extra outbound-namespace element is put (hole 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Directly in the Header, default namespace declared on it.
    Header,
    /// Directly in the Header, prefix declared on the Envelope.
    HeaderEnvelopePrefix,
    /// Inside a Header block.
    HeaderNested,
    /// Directly in the first sObject.
    SObject,
    /// Inside a field of the first sObject.
    SObjectNested,
}

const PLACES: [Place; 5] = [
    Place::Header,
    Place::HeaderEnvelopePrefix,
    Place::HeaderNested,
    Place::SObject,
    Place::SObjectNested,
];

/// Extra attributes put on every element (robustness: these must keep every invariant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttrSet {
    SoapEncRoot,
    XsiTypeString,
    EncodingStyle,
    UniqueIds,
    ForeignNamespaced,
    XsiNilFalse,
    XmlLang,
    DanglingHref,
}

const ATTR_SETS: [AttrSet; 8] = [
    AttrSet::SoapEncRoot,
    AttrSet::XsiTypeString,
    AttrSet::EncodingStyle,
    AttrSet::UniqueIds,
    AttrSet::ForeignNamespaced,
    AttrSet::XsiNilFalse,
    AttrSet::XmlLang,
    AttrSet::DanglingHref,
];

impl AttrSet {
    /// The attribute text (with `{n}` for a number unique in the body).
    fn text(self) -> &'static str {
        match self {
            AttrSet::SoapEncRoot => r#" soapenc:root="1""#,
            AttrSet::XsiTypeString => r#" XSI:type="xsd:string""#,
            AttrSet::EncodingStyle => {
                r#" SOAP:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/""#
            }
            AttrSet::UniqueIds => r#" id="e{n}""#,
            AttrSet::ForeignNamespaced => r#" foo:bar="{n}" xmlns:foo="urn:foo""#,
            AttrSet::XsiNilFalse => r#" XSI:nil="false""#,
            AttrSet::XmlLang => r#" xml:lang="en""#,
            AttrSet::DanglingHref => r##" href="#nowhere{n}""##,
        }
    }
}

/// One change to a base message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mutation {
    /// Hole 1: the SessionId refers to an element holding [`SMUGGLED`].
    HrefSession(Target, RefForm),
    /// Hole 1: a URL refers to an element holding [`EVIL_URL`].
    HrefUrl(UrlField, Target, RefForm),
    /// Hole 2: a URL's content is replaced.
    CallbackUrl(UrlField, &'static str),
    /// Hole 5: an outbound-namespace SessionId holding [`SMUGGLED`] at this place.
    ExtraSession(Place),
    /// Hole 5: an outbound-namespace EnterpriseUrl holding [`EVIL_URL`] at this place.
    ExtraEnterpriseUrl(Place),
    /// Hole 5: a whole second `notifications` (valued SessionId, evil URLs) at this place.
    SecondNotifications(Place),
    /// Hole 5 (regex receivers): `<SessionId>` markup holding [`SMUGGLED`] inside a CDATA
    /// section of an sObject field; text to XML, a SessionId to a byte search.
    CDataSession,
    /// Extra attributes on every element.
    Attrs(AttrSet),
    /// Each canonical field declares its own prefix for the outbound namespace.
    LocalPrefixes,
    /// Each canonical field redeclares the default namespace.
    LocalDefaults,
}

impl Mutation {
    fn hole(&self) -> &'static str {
        match self {
            Mutation::HrefSession(..) | Mutation::HrefUrl(..) => "hole 1",
            Mutation::CallbackUrl(..) => "hole 2",
            Mutation::ExtraSession(_)
            | Mutation::ExtraEnterpriseUrl(_)
            | Mutation::SecondNotifications(_)
            | Mutation::CDataSession => "hole 5",
            Mutation::Attrs(_) | Mutation::LocalPrefixes | Mutation::LocalDefaults => "control",
        }
    }
}

/// A message to build: a valid Salesforce-like base and mutations of it.
#[derive(Debug, Clone)]
struct Doc {
    soap: String,
    /// `None`: `notifications` declares the outbound namespace as default.
    out: Option<String>,
    xsi: String,
    ws: String,
    header: bool,
    org: String,
    session: BaseSession,
    urls: bool,
    notifications: usize,
    mutations: Vec<Mutation>,
}

impl Default for Doc {
    fn default() -> Self {
        Doc {
            soap: "soapenv".into(),
            out: None,
            xsi: "xsi".into(),
            ws: "\n ".into(),
            header: false,
            org: "00D5e000000AbCdEAK".into(),
            session: BaseSession::Value,
            urls: true,
            notifications: 1,
            mutations: Vec::new(),
        }
    }
}

/// The referencing attribute(s) and whether the element must be empty-element.
fn reference(form: RefForm, xsi: &str) -> (String, bool) {
    match form {
        RefForm::Href => (r##" href="#r1""##.into(), true),
        RefForm::HrefCharRef => (r#" href="&#x23;r1""#.into(), true),
        RefForm::HrefAndNil => (format!(r##" href="#r1" {xsi}:nil="true""##), true),
        RefForm::HrefStartEnd => (r##" href="#r1""##.into(), false),
        RefForm::Soap12Ref => (
            format!(r#" xmlns:enc12="{SOAP12ENC_NS}" enc12:ref="r1""#),
            true,
        ),
    }
}

/// Builds the text of a [`Doc`].
struct Writer<'d> {
    d: &'d Doc,
    s: String,
    n: usize,
    /// Attributes for every element.
    every: String,
}

impl Writer<'_> {
    /// Extra attributes for one element, skipping any whose name the tag already has.
    fn extra(&mut self, tag_attrs: &str) -> String {
        let mut out = String::new();
        for part in self
            .every
            .split_inclusive('"')
            .collect::<Vec<_>>()
            .chunks(2)
        {
            let attr = part.concat();
            let name = attr.trim_start().split('=').next().unwrap_or("").to_owned();
            if name.is_empty() || tag_attrs.contains(&format!(" {name}=")) {
                continue;
            }
            self.n += 1;
            out.push_str(&attr.replace("{n}", &self.n.to_string()));
        }
        out
    }

    /// `<name attrs extra>` (or `<name attrs extra/>` when `empty`).
    fn open(&mut self, name: &str, attrs: &str, empty: bool) {
        let extra = self.extra(attrs);
        let _ = write!(
            self.s,
            "<{name}{attrs}{extra}{}>",
            if empty { "/" } else { "" }
        );
    }

    fn leaf(&mut self, name: &str, attrs: &str, content: &str) {
        self.open(name, attrs, false);
        let _ = write!(self.s, "{content}</{name}>{}", self.d.ws);
    }
}

impl Doc {
    fn has(&self, f: impl Fn(&Mutation) -> bool) -> bool {
        self.mutations.iter().any(f)
    }

    /// Content for the referenced element of a reference to `target`, if any.
    fn ref_target(&self, target: Target) -> Option<&'static str> {
        self.mutations.iter().find_map(|m| match m {
            Mutation::HrefSession(t, _) if *t == target => Some(SMUGGLED),
            Mutation::HrefUrl(_, t, _) if *t == target => Some(EVIL_URL),
            _ => None,
        })
    }

    fn multi_ref(&self, content: &str) -> String {
        let x = &self.xsi;
        format!(
            r#"<multiRef id="r1" soapenc:root="0" {x}:type="xsd:string" xmlns:soapenc="{SOAPENC_NS}">{content}</multiRef>"#
        )
    }

    /// Elements put at `place` by the mutations.
    fn extras(&self, place: Place) -> String {
        let mut s = String::new();
        let decl = match place {
            Place::HeaderEnvelopePrefix => "",
            _ => " xmlns:o5=\"http://soap.sforce.com/2005/09/outbound\"",
        };
        for m in &self.mutations {
            match m {
                Mutation::ExtraSession(p) if *p == place => {
                    let _ = write!(s, "<o5:SessionId{decl}>{SMUGGLED}</o5:SessionId>");
                }
                Mutation::ExtraEnterpriseUrl(p) if *p == place => {
                    let _ = write!(s, "<o5:EnterpriseUrl{decl}>{EVIL_URL}</o5:EnterpriseUrl>");
                }
                Mutation::SecondNotifications(p) if *p == place => {
                    let _ = write!(
                        s,
                        "<o5:notifications{decl}><o5:OrganizationId>{org}</o5:OrganizationId><o5:ActionId>04k5e000000XyZaAAK</o5:ActionId><o5:SessionId>{SMUGGLED}</o5:SessionId><o5:EnterpriseUrl>{EVIL_URL}</o5:EnterpriseUrl><o5:PartnerUrl>{EVIL_URL}</o5:PartnerUrl><o5:Notification><o5:Id>04l5e00000AbC999AAV</o5:Id><o5:sObject {x}:type=\"sf:Account\" xmlns:sf=\"{SF_NS}\"><sf:Id>0015e00000QwE999AAV</sf:Id></o5:sObject></o5:Notification></o5:notifications>",
                        org = self.org,
                        x = self.xsi,
                    );
                }
                _ => {}
            }
        }
        s
    }

    fn text(&self) -> String {
        let every: String = self
            .mutations
            .iter()
            .filter_map(|m| match m {
                Mutation::Attrs(a) => Some(a.text()),
                _ => None,
            })
            .collect::<String>()
            .replace("SOAP:", &format!("{}:", self.soap))
            .replace("XSI:", &format!("{}:", self.xsi));
        let mut w = Writer {
            d: self,
            s: String::new(),
            n: 0,
            every,
        };
        let (sp, xp, ws) = (&self.soap, &self.xsi, &self.ws);
        let envelope_prefix_decl = if PLACES
            .iter()
            .any(|p| *p == Place::HeaderEnvelopePrefix && !self.extras(*p).is_empty())
        {
            format!(r#" xmlns:o5="{OUTBOUND_NS}""#)
        } else {
            String::new()
        };
        w.open(
            &format!("{sp}:Envelope"),
            &format!(
                r#" xmlns:{sp}="{SOAP_NS}" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:{xp}="{XSI_NS}" xmlns:soapenc="{SOAPENC_NS}"{envelope_prefix_decl}"#
            ),
            false,
        );
        w.s.push_str(ws);

        // Header.
        let mut header = String::new();
        if self.header {
            header.push_str(r#"<x:Trace xmlns:x="urn:x">1</x:Trace>"#);
        }
        if let Some(c) = self.ref_target(Target::HeaderMultiRef) {
            header.push_str(&self.multi_ref(c));
        }
        if let Some(c) = self.ref_target(Target::HeaderNested) {
            let _ = write!(
                header,
                r#"<x:Block xmlns:x="urn:x"><x:Item><x:Value id="r1">{c}</x:Value></x:Item></x:Block>"#
            );
        }
        header.push_str(&self.extras(Place::Header));
        header.push_str(&self.extras(Place::HeaderEnvelopePrefix));
        let nested = self.extras(Place::HeaderNested);
        if !nested.is_empty() {
            let _ = write!(header, r#"<x:Block xmlns:x="urn:x">{nested}</x:Block>"#);
        }
        if !header.is_empty() {
            w.open(&format!("{sp}:Header"), "", false);
            let _ = write!(w.s, "{header}</{sp}:Header>{ws}");
        }

        w.open(&format!("{sp}:Body"), "", false);
        w.s.push_str(ws);
        if let Some(c) = self.ref_target(Target::BodyBefore) {
            w.s.push_str(&self.multi_ref(c));
        }
        let (op, out_decl) = match &self.out {
            None => (String::new(), format!(r#" xmlns="{OUTBOUND_NS}""#)),
            Some(p) => (format!("{p}:"), format!(r#" xmlns:{p}="{OUTBOUND_NS}""#)),
        };
        w.open(&format!("{op}notifications"), &out_decl, false);
        w.s.push_str(ws);

        // Canonical fields: the name and any local declaration.
        let field = |local: &str| -> (String, String) {
            if self.has(|m| *m == Mutation::LocalPrefixes) {
                (
                    format!("l{local}:{local}"),
                    format!(r#" xmlns:l{local}="{OUTBOUND_NS}""#),
                )
            } else if self.has(|m| *m == Mutation::LocalDefaults) {
                (local.to_owned(), format!(r#" xmlns="{OUTBOUND_NS}""#))
            } else {
                (format!("{op}{local}"), String::new())
            }
        };
        let (n, d) = field("OrganizationId");
        w.leaf(&n, &d, &self.org);
        let (n, d) = field("ActionId");
        w.leaf(&n, &d, "04k5e000000XyZaAAK");

        let (n, d) = field("SessionId");
        let href_session = self.mutations.iter().find_map(|m| match m {
            Mutation::HrefSession(_, form) => Some(*form),
            _ => None,
        });
        match (href_session, self.session) {
            (Some(form), _) => {
                let (attrs, empty) = reference(form, xp);
                w.open(&n, &format!("{d}{attrs}"), empty);
                if !empty {
                    let _ = write!(w.s, "</{n}>");
                }
                w.s.push_str(ws);
            }
            (None, BaseSession::Absent) => {}
            (None, BaseSession::Nil) => {
                w.open(&n, &format!(r#"{d} {xp}:nil="true""#), true);
                w.s.push_str(ws);
            }
            (None, BaseSession::Empty) => w.leaf(&n, &d, ""),
            (None, BaseSession::Value) => w.leaf(&n, &d, SESSION),
            (None, BaseSession::CData) => w.leaf(&n, &d, &format!("<![CDATA[{SESSION}]]>")),
            (None, BaseSession::CharRefs) => {
                let refs: String = SESSION
                    .chars()
                    .map(|c| format!("&#{};", c as u32))
                    .collect();
                w.leaf(&n, &d, &refs)
            }
        }

        for (which, local, legit) in [
            (UrlField::Enterprise, "EnterpriseUrl", ENTERPRISE_URL),
            (UrlField::Partner, "PartnerUrl", PARTNER_URL),
        ] {
            let href = self.mutations.iter().find_map(|m| match m {
                Mutation::HrefUrl(f, _, form) if *f == which => Some(*form),
                _ => None,
            });
            let content = self.mutations.iter().find_map(|m| match m {
                Mutation::CallbackUrl(f, url) if *f == which => Some(*url),
                _ => None,
            });
            let sibling =
                which == UrlField::Partner && self.ref_target(Target::SiblingField).is_some();
            if !self.urls && href.is_none() && content.is_none() && !sibling {
                continue;
            }
            let (n, d) = field(local);
            match href {
                Some(form) => {
                    let (attrs, empty) = reference(form, xp);
                    w.open(&n, &format!("{d}{attrs}"), empty);
                    if !empty {
                        let _ = write!(w.s, "</{n}>");
                    }
                    w.s.push_str(ws);
                }
                None if sibling => {
                    let c = self.ref_target(Target::SiblingField).unwrap_or_default();
                    w.leaf(&n, &format!(r#"{d} id="r1""#), c);
                }
                None => w.leaf(&n, &d, content.unwrap_or(legit)),
            }
        }

        for i in 0..self.notifications {
            w.open(&format!("{op}Notification"), "", false);
            w.s.push_str(ws);
            w.leaf(&format!("{op}Id"), "", &format!("04l5e00000AbC{i:03}AAV"));
            w.open(
                &format!("{op}sObject"),
                &format!(r#" {xp}:type="sf:Account" xmlns:sf="{SF_NS}""#),
                false,
            );
            w.s.push_str(ws);
            w.leaf("sf:Id", "", &format!("0015e00000QwE{i:03}AAV"));
            w.leaf("sf:Name", "", "Acme &amp; Sons");
            if i == 0 {
                if let Some(c) = self.ref_target(Target::SObjectField) {
                    w.leaf("sf:Description", r#" id="r1""#, c);
                }
                if self.has(|m| *m == Mutation::CDataSession) {
                    w.leaf(
                        "sf:Description",
                        "",
                        &format!("<![CDATA[<SessionId>{SMUGGLED}</SessionId>]]>"),
                    );
                }
                w.s.push_str(&self.extras(Place::SObject));
                let nested = self.extras(Place::SObjectNested);
                if !nested.is_empty() {
                    w.leaf("sf:Owner", "", &nested);
                }
            }
            let _ = write!(w.s, "</{op}sObject>{ws}</{op}Notification>{ws}");
        }
        if let Some(c) = self.ref_target(Target::NotificationsChild) {
            w.s.push_str(&self.multi_ref(c));
        }
        let _ = write!(w.s, "</{op}notifications>{ws}");
        if let Some(c) = self.ref_target(Target::BodyAfter) {
            w.s.push_str(&self.multi_ref(c));
        }
        let _ = writeln!(w.s, "</{sp}:Body>{ws}</{sp}:Envelope>");
        w.s
    }
}

/// The body shortened for a failure message: namespace names, the legitimate URLs and ids
/// abbreviated, whitespace runs collapsed, cut to 1200 characters.
fn shortened(body: &str) -> String {
    let mut s = body.to_owned();
    for (long, short) in [
        (OUTBOUND_NS, "OUT"),
        (SOAP_NS, "SOAP"),
        (XSI_NS, "XSI"),
        (SOAPENC_NS, "ENC"),
        (SOAP12ENC_NS, "ENC12"),
        (SF_NS, "SF"),
        (ENTERPRISE_URL, "ENTERPRISE_URL"),
        (PARTNER_URL, "PARTNER_URL"),
        (EVIL_URL, "https://evil.example/services/..."),
        (" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\"", ""),
        ("04k5e000000XyZaAAK", "ACTION"),
        ("00D5e000000AbCdEAK", "ORG"),
    ] {
        s = s.replace(long, short);
    }
    let mut out = String::with_capacity(s.len());
    let mut last_ws = false;
    for c in s.chars() {
        if c.is_whitespace() {
            if !last_ws {
                out.push(' ');
            }
            last_ws = true;
        } else {
            out.push(c);
            last_ws = false;
        }
    }
    lenient::short(&out, 1200)
}

fn describe(doc: &Doc) -> String {
    let muts: Vec<String> = doc.mutations.iter().map(|m| format!("{m:?}")).collect();
    format!(
        "[{}] base session {:?}, mutations [{}]",
        doc.mutations.first().map_or("valid", Mutation::hole),
        doc.session,
        muts.join(", ")
    )
}

fn report(doc: &Doc, body: &str, v: &[Violation]) -> String {
    let lines: Vec<String> = v.iter().map(|v| format!("  - {v}")).collect();
    format!(
        "{}:\n{}\n  body: {}",
        describe(doc),
        lines.join("\n"),
        shortened(body)
    )
}

/// Check every document of a table; fail with the first failures in full (hole class,
/// mutation, mode, what the receiver reads, shortened body) and one line for each other one.
fn table(docs: Vec<Doc>) {
    let total = docs.len();
    let mut full = Vec::new();
    let mut lines = Vec::new();
    let mut refused = 0;
    for doc in &docs {
        let body = doc.text();
        if super::parse(body.as_bytes(), &super::Limits::default()).is_err() {
            refused += 1;
            continue;
        }
        let v = lenient::check(body.as_bytes());
        if v.is_empty() {
            continue;
        }
        if full.len() < 6 {
            full.push(report(doc, &body, &v));
        } else {
            let mut modes: Vec<String> = v.iter().map(|v| format!("{:?}", v.mode)).collect();
            modes.dedup();
            lines.push(format!(
                "  {} -> {} ({})",
                describe(doc),
                v[0].hole,
                modes.join("/")
            ));
        }
    }
    let failed = full.len() + lines.len();
    assert!(
        failed == 0,
        "{failed} of {total} messages ({refused} refused by parse) let a lenient receiver read what obmguard did not mean it to:\n\n{}\n\nand:\n{}",
        full.join("\n\n"),
        lines.join("\n")
    );
}

fn with(session: BaseSession, mutations: Vec<Mutation>) -> Doc {
    Doc {
        session,
        mutations,
        ..Doc::default()
    }
}

const SESSIONS: [BaseSession; 6] = [
    BaseSession::Absent,
    BaseSession::Nil,
    BaseSession::Empty,
    BaseSession::Value,
    BaseSession::CData,
    BaseSession::CharRefs,
];

#[test]
fn valid_messages_give_a_lenient_receiver_nothing_to_misread() {
    let mut docs = Vec::new();
    for session in SESSIONS {
        for header in [false, true] {
            for out in [None, Some("ns1".to_owned())] {
                docs.push(Doc {
                    session,
                    header,
                    out,
                    ..Doc::default()
                });
            }
        }
        for m in ATTR_SETS
            .iter()
            .map(|a| Mutation::Attrs(*a))
            .chain([Mutation::LocalPrefixes, Mutation::LocalDefaults])
        {
            docs.push(with(session, vec![m]));
        }
        for (_, url) in REWRITTEN_URLS {
            docs.push(with(
                session,
                vec![Mutation::CallbackUrl(UrlField::Enterprise, url)],
            ));
        }
    }
    table(docs);
}

#[test]
fn hole1_href_references_never_carry_a_session_id_or_callback_url() {
    let mut docs = Vec::new();
    for target in TARGETS {
        for form in REF_FORMS {
            // The SessionId element is the reference: the base session form does not matter.
            docs.push(with(
                BaseSession::Nil,
                vec![Mutation::HrefSession(target, form)],
            ));
            if target != Target::SiblingField {
                for which in [UrlField::Enterprise, UrlField::Partner] {
                    docs.push(with(
                        BaseSession::Nil,
                        vec![Mutation::HrefUrl(which, target, form)],
                    ));
                }
            } else {
                docs.push(with(
                    BaseSession::Nil,
                    vec![Mutation::HrefUrl(UrlField::Enterprise, target, form)],
                ));
            }
        }
    }
    table(docs);
}

#[test]
fn hole2_inject_never_sends_the_token_beside_a_foreign_callback_url() {
    let mut docs = Vec::new();
    for (_, url) in HOSTILE_URLS {
        docs.push(with(
            BaseSession::Nil,
            vec![Mutation::CallbackUrl(UrlField::Enterprise, url)],
        ));
    }
    docs.push(with(
        BaseSession::Nil,
        vec![Mutation::CallbackUrl(UrlField::Partner, HOSTILE_URLS[0].1)],
    ));
    table(docs);
}

#[test]
fn hole5_no_second_session_id_url_or_notifications_reaches_the_receiver() {
    let mut docs = Vec::new();
    for place in PLACES {
        for session in [BaseSession::Absent, BaseSession::Nil, BaseSession::Value] {
            docs.push(with(session, vec![Mutation::ExtraSession(place)]));
        }
        docs.push(with(
            BaseSession::Nil,
            vec![Mutation::ExtraEnterpriseUrl(place)],
        ));
        docs.push(with(
            BaseSession::Nil,
            vec![Mutation::SecondNotifications(place)],
        ));
    }
    for session in [BaseSession::Absent, BaseSession::Nil, BaseSession::Value] {
        docs.push(with(session, vec![Mutation::CDataSession]));
    }
    table(docs);
}

// Property tests: random bases (prefixes, whitespace, session forms, URLs, notifications) with
// random mutations of one class.

fn prefix() -> impl Strategy<Value = String> {
    "[a-wyz][a-z0-9]{0,4}".prop_filter("reserved", |p| {
        !matches!(
            p.as_str(),
            "sf" | "o5" | "foo" | "enc12" | "soapenc" | "xsd"
        ) && !p.starts_with('l')
            && !p.starts_with("xml")
    })
}

fn org() -> impl Strategy<Value = String> {
    ("[0-9A-Za-z]{15}", any::<bool>()).prop_map(|(id, long)| {
        let id = format!("00D{}", &id[3..]);
        match (long, crate::sfid::SfId::parse(&id)) {
            (true, Ok(sf)) => sf.to_18(),
            _ => id,
        }
    })
}

prop_compose! {
    fn base()(
        prefixes in (prefix(), prop::option::of(prefix()), prefix())
            .prop_filter("distinct prefixes", |(s, o, x)| {
                s != x && o.as_ref().is_none_or(|o| o != s && o != x)
            }),
        ws in prop::sample::select(vec!["", " ", "\n", "\n  ", "\r\n\t"]),
        header in any::<bool>(),
        org in org(),
        session in prop::sample::select(SESSIONS.to_vec()),
        urls in any::<bool>(),
        notifications in 1usize..=3,
    ) -> Doc {
        let (soap, out, xsi) = prefixes;
        Doc { soap, out, xsi, ws: ws.to_owned(), header, org, session, urls, notifications, mutations: Vec::new() }
    }
}

fn control() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        prop::sample::select(ATTR_SETS.to_vec()).prop_map(Mutation::Attrs),
        Just(Mutation::LocalPrefixes),
        Just(Mutation::LocalDefaults),
        (
            prop::sample::select(vec![UrlField::Enterprise, UrlField::Partner]),
            prop::sample::select(REWRITTEN_URLS.iter().map(|u| u.1).collect::<Vec<_>>())
        )
            .prop_map(|(f, u)| Mutation::CallbackUrl(f, u)),
    ]
}

fn hole1() -> impl Strategy<Value = Mutation> {
    let target = prop::sample::select(TARGETS.to_vec());
    let form = prop::sample::select(REF_FORMS.to_vec());
    let field = prop::sample::select(vec![UrlField::Enterprise, UrlField::Partner]);
    prop_oneof![
        (target.clone(), form.clone()).prop_map(|(t, f)| Mutation::HrefSession(t, f)),
        (field, target, form)
            .prop_filter("the sibling target is the PartnerUrl", |(w, t, _)| {
                !(*t == Target::SiblingField && *w == UrlField::Partner)
            })
            .prop_map(|(w, t, f)| Mutation::HrefUrl(w, t, f)),
    ]
}

fn hole2() -> impl Strategy<Value = Mutation> {
    (
        prop::sample::select(vec![UrlField::Enterprise, UrlField::Partner]),
        prop::sample::select(HOSTILE_URLS.iter().map(|u| u.1).collect::<Vec<_>>()),
    )
        .prop_map(|(f, u)| Mutation::CallbackUrl(f, u))
}

fn hole5() -> impl Strategy<Value = Mutation> {
    let place = prop::sample::select(PLACES.to_vec());
    prop_oneof![
        place.clone().prop_map(Mutation::ExtraSession),
        place.clone().prop_map(Mutation::ExtraEnterpriseUrl),
        place.prop_map(Mutation::SecondNotifications),
        Just(Mutation::CDataSession),
    ]
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        max_shrink_iters: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn prop_check(mut doc: Doc, mutations: Vec<Mutation>) -> Result<(), TestCaseError> {
    doc.mutations = mutations;
    let body = doc.text();
    let v = lenient::check(body.as_bytes());
    if v.is_empty() {
        Ok(())
    } else {
        Err(TestCaseError::fail(report(&doc, &body, &v)))
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn generated_valid_messages_keep_every_invariant(
        doc in base(),
        controls in prop::collection::vec(control(), 0..3),
    ) {
        prop_check(doc, controls)?;
    }

    #[test]
    fn hole1_generated_href_references(doc in base(), m in hole1(), c in prop::option::of(control())) {
        prop_check(doc, [Some(m), c].into_iter().flatten().collect())?;
    }

    #[test]
    fn hole2_generated_callback_urls(doc in base(), m in hole2(), c in prop::option::of(control())) {
        prop_check(doc, [Some(m), c].into_iter().flatten().collect())?;
    }

    #[test]
    fn hole5_generated_second_session_ids(doc in base(), m in hole5(), c in prop::option::of(control())) {
        prop_check(doc, [Some(m), c].into_iter().flatten().collect())?;
    }
}

/// The fuzz target's differential check on every committed seed (fuzz/corpus/soap), so the
/// hostile seeds (`lenient_*`, and older ones such as `header.xml`) run under `cargo test`.
#[test]
fn every_soap_corpus_file_keeps_the_lenient_invariants() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/soap");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("fuzz/corpus/soap")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    paths.sort();
    let mut failures = Vec::new();
    for path in &paths {
        let data = std::fs::read(path).expect("a corpus file");
        let v = lenient::check(&data);
        if let Some(first) = v.first() {
            failures.push(format!(
                "  {}: {first}{}",
                path.file_name().unwrap_or_default().to_string_lossy(),
                if v.len() > 1 {
                    format!(" (+{} more)", v.len() - 1)
                } else {
                    String::new()
                }
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus files let a lenient receiver read what obmguard did not mean it to:\n{}",
        failures.len(),
        paths.len(),
        failures.join("\n")
    );
}
