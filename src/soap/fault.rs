//! SOAP 1.1 faults that obmguard sends to Salesforce itself (a refused request, an unreachable
//! receiver). Salesforce treats any fault as a failure and retries; the faultstring is what an
//! admin sees in the Outbound Message delivery status, so it must say what to fix and never
//! carry a secret. This module only builds the bytes; choosing the code, text and HTTP status
//! belongs to the rejection mapping.

use super::scan::{escape_text_into, is_xml_char, SOAP_NS};

/// Who is at fault, in SOAP 1.1 terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultCode {
    /// The request was refused (`soapenv:Client`).
    Client,
    /// obmguard or the receiver failed (`soapenv:Server`).
    Server,
}

/// A SOAP 1.1 fault envelope. `faultstring` is escaped; characters XML cannot carry become
/// U+FFFD.
pub fn fault(code: FaultCode, faultstring: &str) -> Vec<u8> {
    let code = match code {
        FaultCode::Client => "soapenv:Client",
        FaultCode::Server => "soapenv:Server",
    };
    let mut out = Vec::with_capacity(320 + faultstring.len());
    out.extend_from_slice(
        b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope xmlns:soapenv=\"",
    );
    out.extend_from_slice(SOAP_NS.as_bytes());
    out.extend_from_slice(b"\"><soapenv:Body><soapenv:Fault><faultcode>");
    out.extend_from_slice(code.as_bytes());
    out.extend_from_slice(b"</faultcode><faultstring>");
    if faultstring.chars().all(is_xml_char) {
        escape_text_into(&mut out, faultstring);
    } else {
        let clean: String = faultstring
            .chars()
            .map(|c| if is_xml_char(c) { c } else { '\u{FFFD}' })
            .collect();
        escape_text_into(&mut out, &clean);
    }
    out.extend_from_slice(b"</faultstring></soapenv:Fault></soapenv:Body></soapenv:Envelope>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soap::{parse_answer, Answer, Limits};

    #[test]
    fn builds_a_fault_that_reads_back_with_its_code_and_text() {
        let body = fault(FaultCode::Client, "org 00D <x> & \"y\" is not allowed");
        assert_eq!(
            parse_answer(&body, &Limits::default()),
            Answer::Fault {
                faultcode: Some("soapenv:Client".into()),
                faultstring: Some("org 00D <x> & \"y\" is not allowed".into()),
            }
        );
        let text = String::from_utf8(body).unwrap();
        assert!(text.contains("&lt;x&gt; &amp;"));
    }

    #[test]
    fn uses_the_server_code_and_replaces_control_characters() {
        let body = fault(FaultCode::Server, "bad\u{1}byte");
        assert_eq!(
            parse_answer(&body, &Limits::default()),
            Answer::Fault {
                faultcode: Some("soapenv:Server".into()),
                faultstring: Some("bad\u{FFFD}byte".into()),
            }
        );
    }
}
