//! Stage 4: read a Salesforce Outbound Message, apply the SessionId policy by rewriting it, read
//! the receiver's answer, and build the SOAP faults obmguard sends itself.
//!
//! Threat model. The body comes from the network before any decision on its content, so the
//! parsers assume it is hostile: it must never panic, loop, allocate or take time beyond linear
//! in its size, resolve an external or internal entity, or make obmguard see a different
//! document than the receiver will (then a session id could slip past the rewrite). To close that
//! last gap, obmguard accepts only what Salesforce sends and refuses everything else rather than
//! interpreting it:
//! - no DTD, no entity other than the five predefined ones, no processing instruction, UTF-8
//!   only, XML 1.0 characters only (see [`scan`] for the full list);
//! - no XML comment anywhere in a request. Salesforce never sends one, and a receiver's parser
//!   and ours might disagree on where a comment ends or what it hides, so a comment could hide a
//!   session id from the rewrite. Answers from the receiver may carry comments;
//! - elements are matched on resolved namespace and local name, never on prefixes.
//!
//! The rewrite never re-serialises the document: [`parse`] records byte spans and [`rewrite`]
//! copies the body around them, so every byte outside the SessionId element (and, when injecting,
//! the URL texts) is preserved. It replaces the whole SessionId element, so no part of an old
//! value (CDATA, character references, split text) can survive.
//!
//! Not here: deciding whether an org, action or session state is allowed (the policy stage, with
//! [`crate::sfid`]), fetching tokens, HTTP. Ids are not validated here, only trimmed.

mod answer;
mod fault;
mod notification;
mod rewrite;
pub(crate) mod scan;

#[cfg(test)]
mod corpus_replay;
#[cfg(test)]
mod differential;
#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(any(test, fuzzing))]
pub mod lenient;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod regressions;

pub use answer::{parse_answer, Answer};
pub use fault::{fault, FaultCode};
pub use notification::{parse, Message, SessionIdState};
pub use rewrite::{rewrite, CallbackUrls, RewriteError, SessionRewrite};

/// Bounds on a document: defined with the route's other settings (and their defaults) in
/// configuration, which holds them as plain data.
pub use crate::config::XmlLimits as Limits;

/// Why a body was refused. Messages give a byte offset so an operator can find the spot in a
/// captured body; they never quote character data (a session id could be in it), only names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// The bytes are not UTF-8.
    #[error("the body is not valid UTF-8 (byte {at}); Salesforce sends UTF-8 only")]
    InvalidUtf8 {
        /// Offset of the first invalid byte.
        at: usize,
    },
    /// A UTF-16 or UTF-32 byte order mark.
    #[error("the body starts with a UTF-16 or UTF-32 byte order mark; only UTF-8 is accepted")]
    ForeignBom,
    /// The XML declaration names another encoding.
    #[error("the XML declaration says encoding {declared:?}; only UTF-8 is accepted")]
    Encoding {
        /// The declared name.
        declared: String,
    },
    /// The XML declaration is not version 1.0 or cannot be read.
    #[error("the XML declaration does not say version=\"1.0\"; only XML 1.0 is accepted")]
    Version,
    /// A character XML 1.0 does not allow, even escaped.
    #[error("character U+{code:04X} at byte {at} is not allowed in XML 1.0")]
    ControlCharacter {
        /// Offset of the character.
        at: usize,
        /// Its code point.
        code: u32,
    },
    /// A document type declaration.
    #[error("a DOCTYPE at byte {at} is refused: a DTD can declare entities, and Salesforce never sends one")]
    Doctype {
        /// Offset of `<!DOCTYPE`.
        at: usize,
    },
    /// An entity reference other than `lt`, `gt`, `amp`, `apos`, `quot`.
    #[error("entity reference &{name}; at byte {at} is refused: only the five predefined entities and character references are allowed")]
    Entity {
        /// Offset of the reference.
        at: usize,
        /// The entity name (shortened).
        name: String,
    },
    /// A character reference to something that is not an XML 1.0 character.
    #[error("character reference &{reference}; at byte {at} does not name a character allowed in XML 1.0")]
    CharRef {
        /// Offset of the reference.
        at: usize,
        /// The reference text (shortened).
        reference: String,
    },
    /// A reference inside an `xmlns` attribute.
    #[error("a namespace declaration at byte {at} contains a reference; namespace names must be written literally")]
    ReferenceInNamespace {
        /// Offset of the element.
        at: usize,
    },
    /// A processing instruction.
    #[error("a processing instruction at byte {at} is refused (only the XML declaration, at the very start, is allowed)")]
    ProcessingInstruction {
        /// Offset of `<?`.
        at: usize,
    },
    /// An XML declaration with something besides version, encoding and standalone.
    #[error("the XML declaration at byte {at} holds something other than version, encoding and standalone (or markup in a value); write <?xml version=\"1.0\" encoding=\"UTF-8\"?>")]
    Declaration {
        /// Offset of `<?xml`.
        at: usize,
    },
    /// An XML declaration that is not at the very start.
    #[error("an XML declaration at byte {at} is refused: it is only allowed at the very start of the body")]
    MisplacedDeclaration {
        /// Offset of `<?xml`.
        at: usize,
    },
    /// A CDATA section holding `<` in a request.
    #[error("a CDATA section at byte {at} holds `<`: markup inside CDATA reads as a tag to receivers that search the bytes; Salesforce never sends one")]
    MarkupInCdata {
        /// Offset of the section.
        at: usize,
    },
    /// An XML comment in a request.
    #[error("an XML comment at byte {at} is refused: Salesforce never sends comments and one could hide content from the SessionId rewrite")]
    Comment {
        /// Offset of `<!--`.
        at: usize,
    },
    /// Nesting beyond [`Limits::max_depth`].
    #[error("elements nest deeper than {limit} levels (byte {at})")]
    TooDeep {
        /// The configured limit.
        limit: usize,
        /// Offset of the element that went too deep.
        at: usize,
    },
    /// More attributes than [`Limits::max_attributes`] on one element.
    #[error("the element at byte {at} has more than {limit} attributes")]
    TooManyAttributes {
        /// The configured limit.
        limit: usize,
        /// Offset of the element.
        at: usize,
    },
    /// The same attribute twice on one element.
    #[error("the element at byte {at} has the same attribute twice")]
    DuplicateAttribute {
        /// Offset of the element.
        at: usize,
    },
    /// An element or attribute prefix with no namespace declaration in scope.
    #[error("name {name} in the element at byte {at} uses an undeclared namespace prefix")]
    UndeclaredPrefix {
        /// Offset of the element.
        at: usize,
        /// Its qualified name (shortened).
        name: String,
    },
    /// An end tag that does not close the innermost open element.
    #[error("the end tag at byte {at} does not match the element it closes")]
    MismatchedEndTag {
        /// Offset of the end tag.
        at: usize,
    },
    /// A second root element.
    #[error("a second root element starts at byte {at}")]
    SecondRoot {
        /// Offset of the second root.
        at: usize,
    },
    /// Non-whitespace content before or after the root element.
    #[error("content outside the root element at byte {at}")]
    ContentOutsideRoot {
        /// Offset of the content.
        at: usize,
    },
    /// No root element at all.
    #[error("the body holds no XML element")]
    NoRoot,
    /// The input ended inside an element.
    #[error("the body ends at byte {at} with {open} elements still open (truncated?)")]
    Truncated {
        /// How many elements were open.
        open: usize,
        /// The body length.
        at: usize,
    },
    /// Anything else the tokenizer refused.
    #[error("malformed XML at byte {at}: {detail}")]
    Malformed {
        /// Offset of the problem.
        at: usize,
        /// What was wrong (never character data).
        detail: String,
    },
    /// The root is not a SOAP 1.1 `Envelope`.
    #[error("the root element is not a SOAP 1.1 Envelope (namespace {ns})", ns = scan::SOAP_NS)]
    NotSoapEnvelope,
    /// An element where the Outbound Message schema has none, or in the wrong order.
    #[error("element <{name}> at byte {at} is not expected inside {parent} (or is out of order)")]
    UnexpectedElement {
        /// Offset of the element.
        at: usize,
        /// Its qualified name (shortened).
        name: String,
        /// Where it was found.
        parent: &'static str,
    },
    /// An attribute Salesforce never sends (SOAP-encoding `href`/`id`, `soapenc:`, ...).
    #[error("element <{name}> at byte {at} carries an attribute Salesforce never sends: only namespace declarations, xsi:nil on SessionId and xsi:type on sObject are accepted (SOAP-encoding attributes such as href and id are refused)")]
    UnexpectedAttribute {
        /// Offset of the element.
        at: usize,
        /// Its qualified name (shortened).
        name: String,
    },
    /// A field holds more characters than any Salesforce value of its kind.
    #[error(
        "the {what} element holds more than {limit} bytes; Salesforce ids are 15 or 18 characters"
    )]
    FieldTooLong {
        /// Which field.
        what: &'static str,
        /// The bound.
        limit: usize,
    },
    /// Character data where the schema has only elements.
    #[error("text at byte {at} is not expected inside {parent}")]
    UnexpectedText {
        /// Offset of the text.
        at: usize,
        /// Where it was found.
        parent: &'static str,
    },
    /// A required element or attribute is missing.
    #[error("the message has no {what}")]
    Missing {
        /// What is missing.
        what: &'static str,
    },
    /// More `Notification` elements than [`Limits::max_notifications`].
    #[error("the message has more than {limit} notifications")]
    TooManyNotifications {
        /// The configured limit.
        limit: usize,
    },
}

impl XmlError {
    /// A short, fixed label for metrics and audit records.
    pub fn reason(&self) -> &'static str {
        match self {
            XmlError::InvalidUtf8 { .. } => "invalid_utf8",
            XmlError::ForeignBom | XmlError::Encoding { .. } => "encoding",
            XmlError::Version => "xml_version",
            XmlError::ControlCharacter { .. } => "control_character",
            XmlError::Doctype { .. } => "doctype",
            XmlError::Entity { .. } => "entity",
            XmlError::CharRef { .. } => "char_ref",
            XmlError::ReferenceInNamespace { .. } => "namespace_reference",
            XmlError::ProcessingInstruction { .. } | XmlError::MisplacedDeclaration { .. } => {
                "processing_instruction"
            }
            XmlError::Comment { .. } => "comment",
            XmlError::Declaration { .. } => "declaration",
            XmlError::MarkupInCdata { .. } => "markup_in_cdata",
            XmlError::TooDeep { .. } => "too_deep",
            XmlError::TooManyAttributes { .. } => "too_many_attributes",
            XmlError::DuplicateAttribute { .. } => "duplicate_attribute",
            XmlError::UndeclaredPrefix { .. } => "undeclared_prefix",
            XmlError::MismatchedEndTag { .. } => "mismatched_end_tag",
            XmlError::SecondRoot { .. } | XmlError::ContentOutsideRoot { .. } => {
                "content_outside_root"
            }
            XmlError::NoRoot => "no_root",
            XmlError::Truncated { .. } => "truncated",
            XmlError::Malformed { .. } => "malformed",
            XmlError::NotSoapEnvelope => "not_soap",
            XmlError::UnexpectedElement { .. } | XmlError::UnexpectedText { .. } => {
                "unexpected_content"
            }
            XmlError::UnexpectedAttribute { .. } => "unexpected_attribute",
            XmlError::FieldTooLong { .. } => "field_too_long",
            XmlError::Missing { .. } => "missing_element",
            XmlError::TooManyNotifications { .. } => "too_many_notifications",
        }
    }
}
