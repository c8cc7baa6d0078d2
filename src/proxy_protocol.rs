//! Before stage 1: the PROXY protocol header (v1 text or v2 binary) that a TCP load balancer
//! puts in front of the TLS ClientHello, naming the client it forwards.
//!
//! Threat model: the header is a claim about who the client is, and anyone can write one. It
//! is read only from peers listed in `server.proxy_protocol_from`, and required from them.
//! From any other peer it is never believed: a connection that opens like a PROXY header is
//! refused before TLS and counted as `untrusted` (it would fail the handshake anyway). After a
//! load balancer's header, a second one is refused the same way (`repeated`); inside TLS it is
//! only request bytes that are not HTTP.
//!
//! The header is read byte-exact, so no byte of the ClientHello behind it is consumed: the
//! 15 bytes every header has (`PROXY UNKNOWN\r\n` is the shortest), then the rest of a v1 line
//! one byte at a time up to its 107-byte limit, or the 16th byte of a v2 header and exactly the
//! length it declares (at most [`V2_MAX_PAYLOAD`]). Bytes that cannot begin a header end the
//! read at once (`missing`). The caller bounds the whole read in time
//! (`timeouts.proxy_header_ms`). Parsing is the `ppp` crate's; this module only decides what a
//! parsed header means for us.
//!
//! Not defended here: a load balancer that lies (it is trusted by configuration), and the
//! CRC32C TLV (not checked: it guards against corruption, not forgery).

use std::net::SocketAddr;

use pingora_core::protocols::l4::stream::Stream as L4Stream;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The opening of a v1 header.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The 12-byte signature of a v2 header.
const V2_SIGNATURE: &[u8] = ppp::v2::PROTOCOL_PREFIX;
/// Every header is at least this long: `PROXY UNKNOWN\r\n` (a v2 header has 16 bytes).
const SHORTEST: usize = 15;
/// The longest v1 header, `\r\n` included (the protocol's limit).
const V1_MAX: usize = 107;
/// The longest v2 payload (addresses and TLVs) read; a longer one is `unsupported`. A load
/// balancer's is tens of bytes (an IPv6 pair is 36, AWS's VPC endpoint TLV about 25).
pub const V2_MAX_PAYLOAD: usize = 1024;
/// The type of AWS's TLV (`PP2_TYPE_AWS`), and its subtype naming the VPC endpoint.
const TLV_AWS: u8 = 0xEA;
const AWS_VPCE_ID: u8 = 0x01;
/// The longest VPC endpoint id recorded (AWS's are `vpce-` and 17 hex digits).
const VPCE_ID_MAX: usize = 64;

/// What a load balancer's header said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxied {
    /// The client it forwards; `None` for a connection of the load balancer's own (v2 `LOCAL`,
    /// v1 `UNKNOWN`, v2 `PROXY` with no address family), whose client is the TCP peer.
    pub client: Option<SocketAddr>,
    /// The AWS VPC endpoint the client came through (TLV 0xEA, subtype 1), sanitised.
    pub vpce_id: Option<String>,
}

/// Why a connection's header was refused, as a bounded metric label ([`HeaderError::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// A peer outside `proxy_protocol_from` sent one.
    Untrusted,
    /// A second header after the load balancer's.
    Repeated,
    /// A load balancer's connection did not open with a header.
    Missing,
    /// Not a valid header (ppp refused it, or bytes were left over or invalid).
    Malformed,
    /// The connection ended in the middle of the header.
    Truncated,
    /// The header was not complete within `timeouts.proxy_header_ms`.
    Timeout,
    /// A valid header we do not serve: another version, UDP, a Unix socket, a long payload.
    Unsupported,
    /// The connection closed before its first byte (a load balancer's plain TCP health
    /// check): not an error, and not counted.
    Closed,
}

impl HeaderError {
    /// The `kind` label of `obmguard_proxy_protocol_errors_total`.
    pub fn kind(self) -> &'static str {
        match self {
            HeaderError::Untrusted => "untrusted",
            HeaderError::Repeated => "repeated",
            HeaderError::Missing => "missing",
            HeaderError::Malformed => "malformed",
            HeaderError::Truncated => "truncated",
            HeaderError::Timeout => "timeout",
            HeaderError::Unsupported => "unsupported",
            HeaderError::Closed => "closed",
        }
    }

    /// Every kind that is counted (all but [`HeaderError::Closed`]).
    pub const COUNTED: [HeaderError; 7] = [
        HeaderError::Untrusted,
        HeaderError::Repeated,
        HeaderError::Missing,
        HeaderError::Malformed,
        HeaderError::Truncated,
        HeaderError::Timeout,
        HeaderError::Unsupported,
    ];
}

/// Whether `b` (the first bytes of a connection) can still be the start of a header.
fn may_open_header(b: &[u8]) -> bool {
    let v1 = b.len().min(V1_PREFIX.len());
    let v2 = b.len().min(V2_SIGNATURE.len());
    b[..v1] == V1_PREFIX[..v1] || b[..v2] == V2_SIGNATURE[..v2]
}

/// Fill `buf[from..]` exactly. While the first [`SHORTEST`] bytes arrive, bytes that cannot
/// open a header end the read (`Missing`) without waiting for more.
async fn fill<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut [u8],
    mut from: usize,
) -> Result<(), HeaderError> {
    while from < buf.len() {
        let n = match s.read(&mut buf[from..]).await {
            Ok(0) if from == 0 => return Err(HeaderError::Closed),
            Ok(0) | Err(_) => return Err(HeaderError::Truncated),
            Ok(n) => n,
        };
        from += n;
        if from <= SHORTEST && !may_open_header(&buf[..from]) {
            return Err(HeaderError::Missing);
        }
    }
    Ok(())
}

/// Read one header off `s`, consuming exactly its bytes, and say what it means. The caller
/// puts a deadline on it.
pub async fn read<S: AsyncRead + Unpin>(s: &mut S) -> Result<Proxied, HeaderError> {
    let mut buf = vec![0u8; SHORTEST];
    fill(s, &mut buf, 0).await?;
    if buf.starts_with(V1_PREFIX) {
        while !buf.ends_with(b"\n") {
            if buf.len() >= V1_MAX {
                return Err(HeaderError::Malformed);
            }
            buf.push(0);
            let at = buf.len() - 1;
            fill(s, &mut buf, at).await?;
        }
        return parse_v1(&buf);
    }
    if !buf.starts_with(V2_SIGNATURE) {
        return Err(HeaderError::Missing);
    }
    buf.resize(16, 0);
    fill(s, &mut buf, SHORTEST).await?;
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX_PAYLOAD {
        return Err(HeaderError::Unsupported);
    }
    buf.resize(16 + len, 0);
    fill(s, &mut buf, 16).await?;
    parse_v2(&buf)
}

/// One whole v1 line, `\r\n` included.
fn parse_v1(line: &[u8]) -> Result<Proxied, HeaderError> {
    use ppp::v1::{Addresses, Header};
    let h = Header::try_from(line).map_err(|_| HeaderError::Malformed)?;
    if h.header.len() != line.len() {
        return Err(HeaderError::Malformed);
    }
    let client = match h.addresses {
        Addresses::Tcp4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        Addresses::Tcp6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        Addresses::Unknown => None,
    };
    Ok(Proxied {
        client,
        vpce_id: None,
    })
}

/// One whole v2 header: signature, 4 bytes, and the payload they declare.
fn parse_v2(bytes: &[u8]) -> Result<Proxied, HeaderError> {
    use ppp::v2::{Addresses, Command, Header, ParseError, Protocol};
    let h = Header::try_from(bytes).map_err(|e| match e {
        ParseError::Version(_) => HeaderError::Unsupported,
        _ => HeaderError::Malformed,
    })?;
    if h.as_bytes().len() != bytes.len() {
        return Err(HeaderError::Malformed);
    }
    let mut vpce_id = None;
    for tlv in h.tlvs() {
        let tlv = tlv.map_err(|_| HeaderError::Malformed)?;
        if tlv.kind == TLV_AWS {
            if let Some((&AWS_VPCE_ID, id)) = tlv.value.split_first() {
                let id = String::from_utf8_lossy(id);
                vpce_id = Some(crate::record::sanitize(&id, VPCE_ID_MAX).into_owned());
            }
        }
    }
    // LOCAL: the load balancer's own connection; its addresses, if any, mean nothing.
    let client = match (h.command, h.addresses, h.protocol) {
        (Command::Local, _, _) | (Command::Proxy, Addresses::Unspecified, _) => None,
        (Command::Proxy, Addresses::IPv4(a), Protocol::Stream) => {
            Some(SocketAddr::new(a.source_address.into(), a.source_port))
        }
        (Command::Proxy, Addresses::IPv6(a), Protocol::Stream) => {
            Some(SocketAddr::new(a.source_address.into(), a.source_port))
        }
        (Command::Proxy, _, _) => return Err(HeaderError::Unsupported),
    };
    Ok(Proxied { client, vpce_id })
}

/// Whether the connection opens like a PROXY header. What was read is put back, so the TLS
/// handshake that follows sees every byte; a TLS ClientHello is told apart by its first byte.
pub async fn opens_with_header(s: &mut L4Stream) -> bool {
    let mut buf = [0u8; 6];
    let mut got = 0;
    while got < buf.len() && may_open_header(&buf[..got]) {
        match s.read(&mut buf[got..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    s.rewind(&buf[..got]);
    got == buf.len() && may_open_header(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Builder, Command, Protocol, Version};
    use tokio::io::AsyncWriteExt;

    /// What `read` makes of `bytes`, and the bytes it left unread.
    async fn read_all(bytes: &[u8]) -> (Result<Proxied, HeaderError>, Vec<u8>) {
        let (mut a, mut b) = tokio::io::duplex(4096);
        a.write_all(bytes).await.unwrap();
        drop(a);
        let r = read(&mut b).await;
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await.unwrap();
        (r, rest)
    }

    const HELLO: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";

    fn v2(command: Command, addrs: ppp::v2::Addresses, tlvs: &[(u8, &[u8])]) -> Vec<u8> {
        let proto = match addrs {
            ppp::v2::Addresses::Unspecified => Protocol::Unspecified,
            _ => Protocol::Stream,
        };
        let mut b = Builder::with_addresses(Version::Two | command, proto, addrs);
        for (k, v) in tlvs {
            b = b.write_tlv(*k, v).unwrap();
        }
        b.build().unwrap()
    }

    fn tcp4(src: &str, dst: &str) -> ppp::v2::Addresses {
        let s: SocketAddr = src.parse().unwrap();
        let d: SocketAddr = dst.parse().unwrap();
        (s, d).into()
    }

    #[tokio::test]
    async fn a_v1_line_names_the_client_and_leaves_the_client_hello_unread() {
        for (line, client) in [
            (
                &b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n"[..],
                "203.0.113.7:51234",
            ),
            (
                b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n",
                "[2001:db8::7]:51234",
            ),
        ] {
            let (r, rest) = read_all(&[line, HELLO].concat()).await;
            assert_eq!(r.unwrap().client, Some(client.parse().unwrap()));
            assert_eq!(rest, HELLO);
        }
        let (r, rest) = read_all(&[&b"PROXY UNKNOWN\r\n"[..], HELLO].concat()).await;
        assert_eq!(r.unwrap().client, None, "UNKNOWN: the peer is the client");
        assert_eq!(rest, HELLO);
    }

    #[tokio::test]
    async fn a_v2_header_names_the_client_and_the_aws_endpoint_and_leaves_the_rest() {
        let h = v2(
            Command::Proxy,
            tcp4("198.51.100.9:40000", "10.0.0.1:443"),
            &[(0x04, b""), (TLV_AWS, b"\x01vpce-0123456789abcdef0")],
        );
        let (r, rest) = read_all(&[&h[..], HELLO].concat()).await;
        let p = r.unwrap();
        assert_eq!(p.client, Some("198.51.100.9:40000".parse().unwrap()));
        assert_eq!(p.vpce_id.as_deref(), Some("vpce-0123456789abcdef0"));
        assert_eq!(rest, HELLO);
        // IPv6, and a TLV of AWS's with another subtype is not an endpoint id.
        let s: SocketAddr = "[2001:db8::9]:1".parse().unwrap();
        let d: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let h = v2(Command::Proxy, (s, d).into(), &[(TLV_AWS, b"\x02x")]);
        let (r, rest) = read_all(&[&h[..], HELLO].concat()).await;
        assert_eq!(
            r.unwrap(),
            Proxied {
                client: Some(s),
                vpce_id: None
            }
        );
        assert_eq!(rest, HELLO);
    }

    #[tokio::test]
    async fn a_local_command_names_no_client_whatever_addresses_it_carries() {
        for addrs in [
            ppp::v2::Addresses::Unspecified,
            tcp4("203.0.113.7:1", "10.0.0.1:443"),
        ] {
            let h = v2(Command::Local, addrs, &[]);
            let (r, rest) = read_all(&[&h[..], HELLO].concat()).await;
            assert_eq!(r.unwrap().client, None);
            assert_eq!(rest, HELLO);
        }
        // A health check that sends LOCAL and closes is a clean header too.
        let (r, rest) = read_all(&v2(Command::Local, ppp::v2::Addresses::Unspecified, &[])).await;
        assert_eq!(r.unwrap().client, None);
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn broken_headers_are_refused_by_kind() {
        let good = v2(Command::Proxy, tcp4("203.0.113.7:1", "10.0.0.1:443"), &[]);
        let mut bad_version = good.clone();
        bad_version[12] = 0x11;
        let mut udp = good.clone();
        udp[13] = 0x12;
        let mut unix = v2(Command::Proxy, ppp::v2::Addresses::Unspecified, &[]);
        unix[13] = 0x31;
        unix[15] = 216;
        unix.extend([0u8; 216]);
        let mut bad_command = good.clone();
        bad_command[12] = 0x2f;
        let mut bad_tlv = good.clone();
        bad_tlv[15] += 2;
        bad_tlv.extend([0x04, 0x00]);
        let mut too_long = good[..14].to_vec();
        too_long.extend(((V2_MAX_PAYLOAD + 1) as u16).to_be_bytes());
        let cases: Vec<(Vec<u8>, HeaderError)> = vec![
            (HELLO.to_vec(), HeaderError::Missing),
            (b"GET / HTTP/1.1\r\n\r\n".to_vec(), HeaderError::Missing),
            (
                b"PROXY TCP4 banana 10.0.0.1 1 443\r\n".to_vec(),
                HeaderError::Malformed,
            ),
            (
                b"PROXY TCP4 203.0.113.7 10.0.0.1 1 443\n".to_vec(),
                HeaderError::Malformed,
            ),
            (
                b"PROXY TCP4 203.0.113.7 10.0.0.1 1 443\rX\n".to_vec(),
                HeaderError::Malformed,
            ),
            (
                b"PROXY UDP4 203.0.113.7 10.0.0.1 1 443\r\n".to_vec(),
                HeaderError::Malformed,
            ),
            (
                [&b"PROXY "[..], &[b'1'; 120]].concat(),
                HeaderError::Malformed,
            ),
            (b"PROXY TCP4 203.0.113.7".to_vec(), HeaderError::Truncated),
            (b"PROXY UNKN".to_vec(), HeaderError::Truncated),
            (good[..20].to_vec(), HeaderError::Truncated),
            (good[..10].to_vec(), HeaderError::Truncated),
            (Vec::new(), HeaderError::Closed),
            (bad_version, HeaderError::Unsupported),
            (udp, HeaderError::Unsupported),
            (unix, HeaderError::Unsupported),
            (too_long, HeaderError::Unsupported),
            (bad_command, HeaderError::Malformed),
            (bad_tlv, HeaderError::Malformed),
        ];
        for (bytes, want) in cases {
            let (r, _) = read_all(&bytes).await;
            assert_eq!(r, Err(want), "{:?}", String::from_utf8_lossy(&bytes));
        }
    }

    #[tokio::test]
    async fn bytes_that_cannot_open_a_header_end_the_read_without_waiting_for_more() {
        // Two bytes of a ClientHello, and the sender waits: refused at once, not at a deadline.
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(b"\x16\x03").await.unwrap();
        assert_eq!(read(&mut b).await, Err(HeaderError::Missing));
        drop(a);
    }

    #[tokio::test]
    async fn a_connection_opening_like_a_header_is_told_apart_and_every_byte_is_put_back() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for (sent, header) in [
            (&b"PROXY TCP4 203.0.113.7 127.0.0.1 1 2\r\n"[..], true),
            (&[V2_SIGNATURE, &[0x21, 0x11, 0, 12]].concat()[..], true),
            (HELLO, false),
            (b"PROX", false),
            (b"GET / HTTP/1.1\r\n", false),
        ] {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (s, _) = listener.accept().await.unwrap();
            c.write_all(sent).await.unwrap();
            c.shutdown().await.unwrap();
            let mut l4 = L4Stream::from(s);
            assert_eq!(opens_with_header(&mut l4).await, header, "{sent:?}");
            let mut again = Vec::new();
            l4.read_to_end(&mut again).await.unwrap();
            assert_eq!(again, sent);
        }
    }
}
