//! The safe XML layer shared by the request and answer parsers: it turns bytes into a stream of
//! elements, character data and positions, and refuses everything an Outbound Message never
//! needs and a hostile body could use.
//!
//! On top of quick-xml's tokenizer it enforces what quick-xml leaves to its caller: UTF-8 only,
//! XML 1.0 characters only, no DTD, no entity other than the five predefined ones, no processing
//! instruction, an XML declaration only at the very start, one root with nothing but whitespace
//! around it, balanced tags, a depth limit, an attribute limit, no duplicate attributes, no
//! undeclared prefix and no reference inside a namespace declaration (namespaces are resolved
//! here from the raw attribute value, by a conforming parser from the unescaped one, so a
//! `&#x6f;` there could make us and the receiver disagree on which element is the SessionId).
//!
//! It does not know what a SOAP message is: the structure is the callers' business.
//! Work is linear in the input: one validation pass, one tokenizer pass, a bounded stack.

use std::borrow::Cow;

use quick_xml::events::attributes::AttrError;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{PrefixDeclaration, QName};
use quick_xml::reader::Reader;

use super::{Limits, XmlError};

/// SOAP 1.1 envelope namespace.
pub(crate) const SOAP_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// Salesforce outbound messaging namespace.
pub(crate) const OUTBOUND_NS: &str = "http://soap.sforce.com/2005/09/outbound";
/// XML Schema instance namespace (`xsi:nil`, `xsi:type`).
pub(crate) const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The namespaces the parsers care about; every other bound namespace is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ns {
    /// No namespace (unprefixed name, no default namespace in scope).
    None,
    Soap,
    Outbound,
    Xsi,
    Other,
}

impl Ns {
    fn of(name: &str) -> Ns {
        match name {
            "" => Ns::None,
            SOAP_NS => Ns::Soap,
            OUTBOUND_NS => Ns::Outbound,
            XSI_NS => Ns::Xsi,
            _ => Ns::Other,
        }
    }
}

/// Namespace declarations in scope at once, all elements together. Resolution scans them, so
/// this bounds its cost (quick-xml's own resolver uses the same figure).
const MAX_BINDINGS: usize = 128;

/// One `xmlns[:prefix]` declaration in scope.
struct Binding<'i> {
    /// Empty for the default namespace.
    prefix: &'i str,
    ns: Ns,
    /// Depth of the declaring element (1 = root).
    depth: usize,
}

/// One step of the document. Byte offsets are into the whole body (BOM included).
pub(crate) enum Item<'i> {
    /// A start tag or an empty-element tag (always followed, eventually, by its `Close`).
    Open {
        tag: BytesStart<'i>,
        ns: Ns,
        /// The local part of the name.
        local: &'i str,
        /// Its `xsi:type` and `xsi:nil` attributes.
        xsi: XsiAttrs<'i>,
        /// Offset of the `<`.
        at: usize,
        /// Offset just after the tag's `>`.
        after: usize,
    },
    /// The end of the innermost open element.
    Close {
        /// Offset of the end tag's `<` (equals `end` for an empty-element tag).
        at: usize,
        /// Offset just after the end tag's `>`.
        end: usize,
    },
    /// Character data at an offset: text without references, a CDATA section's content, or a
    /// resolved reference.
    Chars(usize, Chars<'i>),
    Eof,
}

/// The XML Schema instance attributes of an element (prefix resolved, any prefix).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct XsiAttrs<'i> {
    /// The raw `xsi:type` value, trimmed.
    pub(crate) type_: Option<&'i str>,
    /// `xsi:nil` is `true` or `1`.
    pub(crate) nil: bool,
    /// There is an `xsi:nil` attribute, whatever its value.
    pub(crate) nil_attr: bool,
    /// Some attribute other than a namespace declaration, `xsi:type` or `xsi:nil` (an
    /// `href`, an `id`, a `soapenc:` attribute...). Salesforce sends none; the parser refuses
    /// them in a request, because rpc/encoded stacks act on some of them.
    pub(crate) other: bool,
}

/// A piece of character data.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Chars<'i> {
    /// Text between markup (never contains `&` or `<`).
    Text(&'i str),
    /// The content of a CDATA section.
    CData(&'i str),
    /// A resolved character or predefined entity reference.
    Char(char),
}

impl Chars<'_> {
    /// Whether this piece holds anything but XML whitespace.
    pub(crate) fn is_blank(&self) -> bool {
        match self {
            Chars::Text(s) | Chars::CData(s) => is_xml_whitespace(s),
            Chars::Char(c) => matches!(c, ' ' | '\t' | '\r' | '\n'),
        }
    }

    /// Append the characters to `out`.
    pub(crate) fn push_to(&self, out: &mut String) {
        match self {
            Chars::Text(s) | Chars::CData(s) => out.push_str(s),
            Chars::Char(c) => out.push(*c),
        }
    }
}

/// The validating tokenizer. Create one per body with [`Scanner::new`].
///
/// It resolves namespaces itself rather than through quick-xml's `NsReader`: it needs only to
/// classify a handful of namespaces, and doing so while it checks the attributes it must check
/// anyway halves the cost of a parse.
pub(crate) struct Scanner<'i> {
    reader: Reader<&'i [u8]>,
    bindings: Vec<Binding<'i>>,
    body: &'i str,
    /// Bytes skipped before quick-xml's offset 0 (a UTF-8 BOM).
    base: usize,
    limits: Limits,
    allow_comments: bool,
    depth: usize,
    root_done: bool,
    first_event: bool,
    pending_close: Option<usize>,
    /// The prefixed attributes of the tag being checked (name, raw value), kept from one tag
    /// to the next so a body allocates them once.
    prefixed: Vec<(&'i str, &'i str)>,
}

impl<'i> Scanner<'i> {
    /// Validate the encoding and characters of the whole body, then prepare to tokenize it.
    pub(crate) fn new(
        body: &'i [u8],
        limits: &Limits,
        allow_comments: bool,
    ) -> Result<Self, XmlError> {
        if body.starts_with(b"\xFE\xFF")
            || body.starts_with(b"\xFF\xFE")
            || body.starts_with(b"\0\0\xFE\xFF")
        {
            return Err(XmlError::ForeignBom);
        }
        let text = std::str::from_utf8(body).map_err(|e| XmlError::InvalidUtf8 {
            at: e.valid_up_to(),
        })?;
        check_chars(body)?;
        let base = if body.starts_with(UTF8_BOM) {
            UTF8_BOM.len()
        } else {
            0
        };
        let mut reader = Reader::from_reader(body);
        let config = reader.config_mut();
        config.check_end_names = true;
        config.expand_empty_elements = false;
        config.trim_text(false);
        config.allow_dangling_amp = false;
        config.allow_unmatched_ends = false;
        Ok(Scanner {
            reader,
            bindings: Vec::with_capacity(8),
            body: text,
            base,
            limits: *limits,
            allow_comments,
            depth: 0,
            root_done: false,
            first_event: true,
            pending_close: None,
            prefixed: Vec::new(),
        })
    }

    fn pos(&self) -> usize {
        usize::try_from(self.reader.buffer_position())
            .unwrap_or(usize::MAX)
            .saturating_add(self.base)
    }

    fn error_pos(&self) -> usize {
        usize::try_from(self.reader.error_position())
            .unwrap_or(usize::MAX)
            .saturating_add(self.base)
    }

    /// Whether text that is only whitespace is skipped from now on (off at first); text that
    /// holds anything else is still an item, from its first character that is not whitespace.
    /// The caller turns it on where such text means nothing, off where it is part of a value,
    /// and leaves it off outside the root element (whitespace before an XML declaration must
    /// still be seen).
    pub(crate) fn skip_blank_text(&mut self, skip: bool) {
        self.reader.config_mut().trim_text_start = skip;
    }

    /// The whole body as text.
    pub(crate) fn body(&self) -> &'i str {
        self.body
    }

    /// The namespace of a qualified element name here, with the declarations of the element
    /// just opened in scope (also right for QName-valued attributes such as `xsi:type`).
    /// `None` means an undeclared prefix.
    pub(crate) fn element_ns(&self, name: &str) -> Option<Ns> {
        self.lookup(QName(name).prefix().map(|p| p.into_inner()), true)
    }

    /// The namespace of an attribute name (unprefixed attributes are in no namespace).
    pub(crate) fn attr_ns(&self, key: QName<'_>) -> Option<Ns> {
        self.lookup(key.prefix().map(|p| p.into_inner()), false)
    }

    fn lookup(&self, prefix: Option<&str>, use_default: bool) -> Option<Ns> {
        match prefix {
            None if !use_default => Some(Ns::None),
            None => Some(
                self.bindings
                    .iter()
                    .rev()
                    .find(|b| b.prefix.is_empty())
                    .map_or(Ns::None, |b| b.ns),
            ),
            Some("xml") => Some(Ns::Other),
            // `<:a>` or `:a="..."`: an empty prefix is not the default namespace (Namespaces
            // in XML 1.0 forbids it), so it is undeclared.
            Some("") => None,
            Some(p) => self
                .bindings
                .iter()
                .rev()
                .find(|b| b.prefix == p)
                .map(|b| b.ns),
        }
    }

    /// The next item, or the reason the body is refused.
    pub(crate) fn next(&mut self) -> Result<Item<'i>, XmlError> {
        if let Some(end) = self.pending_close.take() {
            return Ok(self.close(end, end));
        }
        loop {
            let mut at = self.pos();
            if self.reader.config().trim_text_start {
                // What the tokenizer is about to skip: the event starts after it.
                let rest = self.body.as_bytes().get(at..).unwrap_or_default();
                at += rest
                    .iter()
                    .take_while(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
                    .count();
            }
            let event = match self.reader.read_event() {
                Ok(e) => e,
                Err(e) => return Err(self.quick_xml_error(e)),
            };
            let first = std::mem::replace(&mut self.first_event, false);
            match event {
                Event::Start(tag) => return self.open(tag, at, false),
                Event::Empty(tag) => return self.open(tag, at, true),
                Event::End(_) => {
                    if self.depth == 0 {
                        return Err(malformed(at, "an end tag without a start tag"));
                    }
                    let end = self.pos();
                    return Ok(self.close(at, end));
                }
                Event::Text(t) => {
                    if self.depth > 0 {
                        return Ok(Item::Chars(at, Chars::Text(borrowed(t.into_inner(), at)?)));
                    }
                    if !is_xml_whitespace(&t) {
                        return Err(XmlError::ContentOutsideRoot { at });
                    }
                }
                Event::CData(c) => {
                    if self.depth == 0 {
                        return Err(XmlError::ContentOutsideRoot { at });
                    }
                    let text = borrowed(c.into_inner(), at)?;
                    // Markup inside CDATA is text to an XML parser but a tag to a receiver
                    // that searches the bytes: a `<SessionId>` there would be read by it.
                    // Salesforce escapes text and sends no CDATA, so refuse the ambiguity.
                    if !self.allow_comments && text.contains('<') {
                        return Err(XmlError::MarkupInCdata { at });
                    }
                    return Ok(Item::Chars(at, Chars::CData(text)));
                }
                Event::GeneralRef(r) => {
                    let c = resolve_reference(&r, at)?;
                    if self.depth == 0 {
                        return Err(XmlError::ContentOutsideRoot { at });
                    }
                    return Ok(Item::Chars(at, Chars::Char(c)));
                }
                Event::Comment(_) => {
                    if !self.allow_comments {
                        return Err(XmlError::Comment { at });
                    }
                }
                Event::Decl(decl) => {
                    if !first || at != self.base {
                        return Err(XmlError::MisplacedDeclaration { at });
                    }
                    let Some(declared) = declaration(&decl) else {
                        return Err(XmlError::Declaration { at });
                    };
                    if declared.version != "1.0" {
                        return Err(XmlError::Version);
                    }
                    if let Some(enc) = declared.encoding {
                        if !enc.eq_ignore_ascii_case("UTF-8") {
                            return Err(XmlError::Encoding {
                                declared: shorten(enc),
                            });
                        }
                    }
                }
                Event::PI(_) => return Err(XmlError::ProcessingInstruction { at }),
                Event::DocType(_) => return Err(XmlError::Doctype { at }),
                Event::Eof => {
                    if self.depth > 0 {
                        return Err(XmlError::Truncated {
                            open: self.depth,
                            at: self.body.len(),
                        });
                    }
                    if !self.root_done {
                        return Err(XmlError::NoRoot);
                    }
                    return Ok(Item::Eof);
                }
            }
        }
    }

    fn open(&mut self, tag: BytesStart<'i>, at: usize, empty: bool) -> Result<Item<'i>, XmlError> {
        if self.depth == 0 && self.root_done {
            return Err(XmlError::SecondRoot { at });
        }
        if self.depth >= self.limits.max_depth {
            return Err(XmlError::TooDeep {
                limit: self.limits.max_depth,
                at,
            });
        }
        self.depth += 1;
        let xsi = self.check_attributes(&tag, at)?;
        // The name, re-sliced from the body so it outlives the tag (it starts after the `<`).
        let name_len = tag.name().0.len();
        let name = self
            .body
            .get(at + 1..at + 1 + name_len)
            .ok_or_else(|| malformed(at, "a tag the tokenizer did not borrow"))?;
        // A byte loop: names are short, and `split_once` costs more than the lookup itself.
        let (prefix, local) = match name.bytes().position(|b| b == b':') {
            Some(i) => (name.get(..i), name.get(i + 1..).unwrap_or_default()),
            None => (None, name),
        };
        if local.is_empty() {
            return Err(malformed(at, "an element name with an empty local part"));
        }
        let ns = self
            .lookup(prefix, true)
            .ok_or_else(|| XmlError::UndeclaredPrefix {
                at,
                name: shorten(name),
            })?;
        let after = self.pos();
        if empty {
            self.pending_close = Some(after);
        }
        Ok(Item::Open {
            tag,
            ns,
            local,
            xsi,
            at,
            after,
        })
    }

    fn close(&mut self, at: usize, end: usize) -> Item<'i> {
        self.depth = self.depth.saturating_sub(1);
        while self.bindings.last().is_some_and(|b| b.depth > self.depth) {
            self.bindings.pop();
        }
        if self.depth == 0 {
            self.root_done = true;
        }
        Item::Close { at, end }
    }

    /// Check the attributes of the element just opened (at `self.depth`), bring its namespace
    /// declarations into scope and pick out its `xsi:` attributes, in one pass over them.
    fn check_attributes(
        &mut self,
        tag: &BytesStart<'_>,
        at: usize,
    ) -> Result<XsiAttrs<'i>, XmlError> {
        let mut xsi = XsiAttrs::default();
        if tag.name().0.is_empty() {
            return Err(malformed(at, "an element without a name"));
        }
        if tag.attributes_raw().is_empty() {
            return Ok(xsi);
        }
        let mut count = 0usize;
        // A prefix declared on this tag applies to all its attributes, also those written
        // before the declaration: prefixed attributes are resolved after the loop, with all
        // of the tag's declarations in scope.
        self.prefixed.clear();
        for attr in tag.attributes() {
            let attr = attr.map_err(|e| match e {
                AttrError::Duplicated(..) => XmlError::DuplicateAttribute { at },
                _ => malformed(at, "a malformed attribute"),
            })?;
            count += 1;
            if count > self.limits.max_attributes {
                return Err(XmlError::TooManyAttributes {
                    limit: self.limits.max_attributes,
                    at,
                });
            }
            if attr.key.0.is_empty() {
                return Err(malformed(at, "an attribute without a name"));
            }
            // One scan for both: values rarely hold either.
            let raw = attr.value.as_bytes();
            let special = memchr::memchr2(b'<', b'&', raw);
            if special.is_some_and(|i| memchr::memchr(b'<', &raw[i..]).is_some()) {
                return Err(malformed(at, "`<` in an attribute value"));
            }
            // `special` is now an `&`: a reference.
            if let Some(decl) = attr.key.as_namespace_binding() {
                if special.is_some() {
                    return Err(XmlError::ReferenceInNamespace { at });
                }
                self.bind(decl, &attr.value, at)?;
                continue;
            }
            if special.is_some() {
                check_references(&attr.value, at)?;
            }
            // A byte loop, as for element names.
            let key = attr.key.0;
            match key.bytes().position(|b| b == b':') {
                Some(colon) if colon + 1 == key.len() => {
                    return Err(malformed(at, "an attribute name with an empty local part"))
                }
                Some(_) => {
                    let key = self.in_body(attr.key.0, at)?;
                    let value = self.in_body(&attr.value, at)?;
                    self.prefixed.push((key, value));
                }
                None => xsi.other = true,
            }
        }
        for i in 0..self.prefixed.len() {
            let (key, value) = self.prefixed[i];
            let key = QName(key);
            match self.attr_ns(key) {
                Some(Ns::Xsi) => note_xsi(&mut xsi, key.local_name().into_inner(), value),
                Some(_) => xsi.other = true,
                None => {
                    return Err(XmlError::UndeclaredPrefix {
                        at,
                        name: shorten(key.0),
                    })
                }
            }
        }
        Ok(xsi)
    }

    /// `part` (a slice of a tag) as a slice of the body, which outlives the tag.
    fn in_body(&self, part: &str, at: usize) -> Result<&'i str, XmlError> {
        offset_in(self.body, part)
            .and_then(|o| self.body.get(o..o + part.len()))
            .ok_or_else(|| malformed(at, "a name or value the tokenizer did not borrow"))
    }

    /// Bring one namespace declaration into scope, refusing what Namespaces in XML 1.0 forbids
    /// (the caller has refused a reference in `value`).
    fn bind(
        &mut self,
        decl: PrefixDeclaration<'_>,
        value: &str,
        at: usize,
    ) -> Result<(), XmlError> {
        const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
        const XMLNS_NS: &str = "http://www.w3.org/2000/xmlns/";
        let bad = |detail: &str| Err(malformed(at, detail));
        let prefix = match decl {
            PrefixDeclaration::Default => "",
            PrefixDeclaration::Named("xml") if value == XML_NS => return Ok(()),
            PrefixDeclaration::Named("xml" | "xmlns") => {
                return bad("a declaration of the reserved prefix xml or xmlns")
            }
            PrefixDeclaration::Named("") => return bad("`xmlns:` declaring an empty prefix"),
            PrefixDeclaration::Named(_) if value.is_empty() => {
                return bad("a prefix declared with an empty namespace name")
            }
            PrefixDeclaration::Named(p) => p,
        };
        if value == XML_NS || value == XMLNS_NS {
            return bad("a declaration of a reserved namespace");
        }
        if self.bindings.len() >= MAX_BINDINGS {
            return Err(malformed(
                at,
                "more than 128 namespace declarations in scope",
            ));
        }
        // Keep the prefix as a slice of the body, which outlives the tag.
        let prefix = match prefix {
            "" => "",
            p => self.in_body(p, at)?,
        };
        self.bindings.push(Binding {
            prefix,
            ns: Ns::of(value),
            depth: self.depth,
        });
        Ok(())
    }

    fn quick_xml_error(&self, e: quick_xml::Error) -> XmlError {
        use quick_xml::errors::IllFormedError;
        let at = self.error_pos();
        match e {
            quick_xml::Error::IllFormed(IllFormedError::MismatchedEndTag { .. }) => {
                XmlError::MismatchedEndTag { at }
            }
            quick_xml::Error::IllFormed(IllFormedError::UnclosedReference) => {
                malformed(at, "a `&` that does not start a reference")
            }
            quick_xml::Error::Encoding(_) => XmlError::InvalidUtf8 { at },
            other => XmlError::Malformed {
                at,
                detail: shorten(&other.to_string()),
            },
        }
    }
}

/// Note one `xsi:` attribute (its local name and raw value).
fn note_xsi<'i>(xsi: &mut XsiAttrs<'i>, local: &str, value: &'i str) {
    let value = trim_xml(value);
    match local {
        "nil" => {
            xsi.nil_attr = true;
            xsi.nil = matches!(value, "true" | "1");
        }
        "type" => xsi.type_ = Some(value),
        _ => xsi.other = true,
    }
}

/// Events from a slice reader borrow the input; anything else would be a quick-xml change.
fn borrowed(content: Cow<'_, str>, at: usize) -> Result<&str, XmlError> {
    match content {
        Cow::Borrowed(s) => Ok(s),
        Cow::Owned(_) => Err(malformed(at, "unexpected owned text from the tokenizer")),
    }
}

/// The pseudo-attributes of an XML declaration, as written (no reference can be in them).
struct Declared<'a> {
    version: &'a str,
    encoding: Option<&'a str>,
}

/// An XML declaration's content (`xml version="1.0" ...`) read as XML 1.0 allows it: exactly
/// `version`, then optionally `encoding` and `standalone`, each with a quoted value free of `<`
/// and `&`; `None` for anything else. quick-xml reads the pseudo-attributes it knows and ignores
/// the rest, so an unknown one could carry markup (a `<SessionId>...`) that a receiver
/// searching the bytes would read.
fn declaration(raw: &str) -> Option<Declared<'_>> {
    const WS: [char; 4] = [' ', '\t', '\r', '\n'];
    let mut rest = raw.strip_prefix("xml")?;
    let mut pairs: [(&str, &str); 3] = [("", ""); 3];
    let mut n = 0;
    loop {
        let trimmed = rest.trim_start_matches(WS);
        if trimmed.is_empty() {
            break;
        }
        if trimmed.len() == rest.len() || n == pairs.len() {
            return None;
        }
        // Byte searches: every delimiter here is ASCII, so each index is a character boundary
        // (and `str`'s searchers cost more than these short strings).
        let eq = memchr::memchr(b'=', trimmed.as_bytes())?;
        let (name, after) = (&trimmed[..eq], trimmed[eq + 1..].trim_start_matches(WS));
        let quote = *after
            .as_bytes()
            .first()
            .filter(|q| matches!(q, b'"' | b'\''))?;
        let len = memchr::memchr(quote, &after.as_bytes()[1..])?;
        let value = &after[1..1 + len];
        if memchr::memchr2(b'<', b'&', value.as_bytes()).is_some() {
            return None;
        }
        pairs[n] = (name.trim_end_matches(WS), value);
        n += 1;
        rest = &after[len + 2..];
    }
    match pairs[..n] {
        [("version", version)] | [("version", version), ("standalone", _)] => Some(Declared {
            version,
            encoding: None,
        }),
        [("version", version), ("encoding", encoding)]
        | [("version", version), ("encoding", encoding), ("standalone", _)] => Some(Declared {
            version,
            encoding: Some(encoding),
        }),
        _ => None,
    }
}

/// A message fragment that quotes attacker-chosen names: cut to a length that fits in a log line.
pub(crate) fn shorten(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(MAX).collect();
        out.push('…');
        out
    }
}

fn malformed(at: usize, detail: &str) -> XmlError {
    XmlError::Malformed {
        at,
        detail: detail.to_owned(),
    }
}

/// XML's whitespace: space, tab, carriage return, line feed (not Unicode's).
pub(crate) fn is_xml_whitespace(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// Trim XML whitespace from both ends.
pub(crate) fn trim_xml(s: &str) -> &str {
    s.trim_matches([' ', '\t', '\r', '\n'])
}

/// Whether `c` is a `Char` of XML 1.0.
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Refuse bytes that cannot appear in an XML 1.0 document even when escaped: C0 controls other
/// than tab, LF and CR, and the non-characters U+FFFE and U+FFFF (`EF BF BE`, `EF BF BF`).
/// The input is already known to be valid UTF-8.
fn check_chars(body: &[u8]) -> Result<(), XmlError> {
    // Fold whole chunks without early exit so the hot loop vectorises; locate only on failure.
    // Bitwise, not short-circuit, so the hot loop vectorises.
    const fn suspicious(b: u8) -> bool {
        ((b < 0x20) & (b != b'\t') & (b != b'\n') & (b != b'\r')) | (b == 0xEF)
    }
    for (i, chunk) in body.chunks(64).enumerate() {
        if !chunk.iter().fold(false, |acc, &b| acc | suspicious(b)) {
            continue;
        }
        for (j, &b) in chunk.iter().enumerate() {
            let at = i * 64 + j;
            if b < 0x20 && suspicious(b) {
                return Err(XmlError::ControlCharacter {
                    at,
                    code: u32::from(b),
                });
            }
            if b == 0xEF {
                if let Some([0xBF, last @ (0xBE | 0xBF)]) = body.get(at + 1..at + 3) {
                    return Err(XmlError::ControlCharacter {
                        at,
                        code: 0xFF00 | u32::from(*last),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Resolve the name between `&` and `;`: one of the five predefined entities or a character
/// reference to an XML 1.0 character. Everything else is refused.
pub(crate) fn resolve_reference(name: &str, at: usize) -> Result<char, XmlError> {
    match name {
        "lt" => return Ok('<'),
        "gt" => return Ok('>'),
        "amp" => return Ok('&'),
        "apos" => return Ok('\''),
        "quot" => return Ok('"'),
        _ => {}
    }
    let Some(num) = name.strip_prefix('#') else {
        return Err(XmlError::Entity {
            at,
            name: shorten(name),
        });
    };
    let (digits, radix) = match num.strip_prefix('x') {
        Some(hex) => (hex, 16),
        None => (num, 10),
    };
    let bad = || XmlError::CharRef {
        at,
        reference: shorten(name),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(bad());
    }
    // Leading zeros are legal; ignore them so the length cap only bounds significant digits.
    let significant = digits.trim_start_matches('0');
    if significant.len() > 8 {
        return Err(bad());
    }
    let code = if significant.is_empty() {
        0
    } else {
        u32::from_str_radix(significant, radix).map_err(|_| bad())?
    };
    char::from_u32(code)
        .filter(|&c| is_xml_char(c))
        .ok_or_else(bad)
}

/// Check every reference in a raw attribute value.
fn check_references(value: &str, at: usize) -> Result<(), XmlError> {
    let mut rest = value;
    while let Some(amp) = rest.find('&') {
        let after = rest.get(amp + 1..).unwrap_or_default();
        let Some(semi) = after.find(';') else {
            return Err(malformed(at, "a `&` that does not start a reference"));
        };
        resolve_reference(after.get(..semi).unwrap_or_default(), at)?;
        rest = after.get(semi + 1..).unwrap_or_default();
    }
    Ok(())
}

/// Escape text content for an element: `&`, `<`, `>` (so `]]>` cannot form) and CR (so it
/// survives end-of-line normalisation).
pub(crate) fn escape_text_into(out: &mut Vec<u8>, s: &str) {
    let mut last = 0;
    for (i, b) in s.bytes().enumerate() {
        let rep: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'\r' => b"&#13;",
            _ => continue,
        };
        out.extend_from_slice(&s.as_bytes()[last..i]);
        out.extend_from_slice(rep);
        last = i + 1;
    }
    out.extend_from_slice(&s.as_bytes()[last..]);
}

/// The byte offset of `inner` inside `outer`, when `inner` is a sub-slice of it.
pub(crate) fn offset_in(outer: &str, inner: &str) -> Option<usize> {
    let off = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    (off + inner.len() <= outer.len()).then_some(off)
}
