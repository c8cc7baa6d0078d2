//! The oracle: a second, independent reading of a body with quick-xml's namespace-aware reader,
//! standing in for the receiver's XML parser. It resolves namespaces with quick-xml's own
//! resolver, unescapes references and CDATA in text, and records every element with its
//! resolved path, byte spans and attributes.
//!
//! The fuzz targets compare obmguard's parse with this reading: wherever the two disagree on a
//! body obmguard accepted, obmguard and the receiver could see different documents. It does not
//! normalise line ends in text, and it keeps attribute values raw: obmguard does both too, and
//! those differences are harmless (see the SessionId state in the soap target).

use std::ops::Range;

use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;
use quick_xml::XmlVersion;

pub const SOAP: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const OUT: &str = "http://soap.sforce.com/2005/09/outbound";
pub const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// One element as the reader saw it.
#[derive(Debug, Clone)]
pub struct Elem {
    /// (namespace name or "", local name) of each element from the root down to this one.
    pub path: Vec<(String, String)>,
    /// From the `<` of the start tag to just after the `>` of the end (or empty-element) tag.
    pub span: Range<usize>,
    /// Between the start tag's `>` and the end tag's `<` (empty for `<x/>`).
    pub content: Range<usize>,
    /// Direct character data: text, CDATA content and resolved references, in order.
    pub text: String,
    /// Each attribute but `xmlns` ones.
    pub attrs: Vec<Attr>,
}

/// One attribute, its name resolved.
#[derive(Debug, Clone)]
pub struct Attr {
    pub ns: String,
    pub local: String,
    /// The value as written (references not resolved), as obmguard reads `xsi:` attributes.
    pub raw: String,
}

impl Elem {
    /// Whether the element sits at exactly this path.
    pub fn is(&self, path: &[(&str, &str)]) -> bool {
        self.path.len() == path.len() && self.starts_with(path)
    }

    /// Whether the element is a child of the element at this path.
    pub fn child_of(&self, path: &[(&str, &str)]) -> bool {
        self.path.len() == path.len() + 1 && self.starts_with(path)
    }

    fn starts_with(&self, path: &[(&str, &str)]) -> bool {
        self.path
            .iter()
            .zip(path)
            .all(|((ns, l), (pns, pl))| ns == pns && l == pl)
    }

    /// An attribute, by resolved name.
    pub fn attr(&self, ns: &str, local: &str) -> Option<&Attr> {
        self.attrs.iter().find(|a| a.ns == ns && a.local == local)
    }
}

fn resolved(r: ResolveResult<'_>) -> Result<String, String> {
    match r {
        ResolveResult::Bound(ns) => Ok(ns.0.to_owned()),
        ResolveResult::Unbound => Ok(String::new()),
        ResolveResult::Unknown(p) => Err(format!("unknown prefix {p:?}")),
    }
}

/// Every element of the body, in document order, or why the reader refused the body.
pub fn read(data: &[u8]) -> Result<Vec<Elem>, String> {
    let base = if data.starts_with(b"\xEF\xBB\xBF") {
        3
    } else {
        0
    };
    let doc = data.get(base..).unwrap_or_default();
    let mut r = NsReader::from_reader(doc);
    r.config_mut().expand_empty_elements = true;
    let pos = |r: &NsReader<&[u8]>| base + r.buffer_position() as usize;
    let mut open: Vec<Elem> = Vec::new();
    let mut done: Vec<Elem> = Vec::new();
    loop {
        let at = pos(&r);
        let (res, event) = r.read_resolved_event().map_err(|e| e.to_string())?;
        let ns = resolved(res);
        match event {
            Event::Start(e) => {
                let mut path = open.last().map(|p| p.path.clone()).unwrap_or_default();
                path.push((ns?, e.local_name().into_inner().to_owned()));
                let mut attrs = Vec::new();
                for a in e.attributes() {
                    let a = a.map_err(|e| e.to_string())?;
                    if a.key.as_namespace_binding().is_some() {
                        continue;
                    }
                    let (res, local) = r.resolver().resolve_attribute(a.key);
                    let ans = resolved(res)?;
                    // Still refuse what a reader would: bad references in the value.
                    a.normalized_value(XmlVersion::Implicit1_0)
                        .map_err(|e| e.to_string())?;
                    attrs.push(Attr {
                        ns: ans,
                        local: local.into_inner().to_owned(),
                        raw: a.value.to_string(),
                    });
                }
                let after = pos(&r);
                open.push(Elem {
                    path,
                    span: at..at,
                    content: after..after,
                    text: String::new(),
                    attrs,
                });
            }
            Event::End(_) => {
                let mut el = open.pop().ok_or("an end tag without a start tag")?;
                el.content.end = at.max(el.content.start);
                el.span.end = pos(&r);
                done.push(el);
            }
            Event::Text(t) => {
                if let Some(el) = open.last_mut() {
                    el.text.push_str(&t.into_inner());
                }
            }
            Event::CData(c) => {
                if let Some(el) = open.last_mut() {
                    el.text.push_str(&c.into_inner());
                }
            }
            Event::GeneralRef(g) => {
                let c = match g.resolve_char_ref().map_err(|e| e.to_string())? {
                    Some(c) => c.to_string(),
                    None => resolve_predefined_entity(&g.into_inner())
                        .ok_or("an unknown entity")?
                        .to_owned(),
                };
                if let Some(el) = open.last_mut() {
                    el.text.push_str(&c);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !open.is_empty() {
        return Err("elements left open".to_owned());
    }
    done.sort_by_key(|e| e.span.start);
    Ok(done)
}

/// XML whitespace trim, as obmguard and xsd:string/xsd:boolean collapse do at the ends.
pub fn trim(s: &str) -> &str {
    s.trim_matches([' ', '\t', '\r', '\n'])
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}
