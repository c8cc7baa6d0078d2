//! The floor under obmguard's CPU per new connection: rustls's own full TLS 1.3 mutual-TLS
//! handshake, in memory (no sockets, no syscalls), with obmguard's crypto provider (ring, the
//! same cipher-suite order: `obmguard::tls::provider`), ECDSA P-256 certificates for both
//! sides, a client certificate verified against its CA, no resumption. `bench/run.sh`'s
//! `newconn-full` figure divided by this one is how far obmguard is from the floor (both on
//! the same machine; the server side's share is what obmguard pays).
//!
//! Two figures: both sides together, and the server's side alone (the time spent in the
//! server connection's calls during the same handshakes, through `iter_custom`), which is
//! the floor for obmguard's CPU per full handshake.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

struct Pki {
    ca: CertificateDer<'static>,
    server: (CertificateDer<'static>, PrivateKeyDer<'static>),
    client: (CertificateDer<'static>, PrivateKeyDer<'static>),
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "floor CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |name: &str| {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
        (
            cert.der().clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    };
    Pki {
        ca: ca.der().clone(),
        server: leaf("localhost"),
        client: leaf("proxy.salesforce.com"),
    }
}

fn configs(p: &Pki) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let provider = obmguard::tls::provider();
    let mut roots = RootCertStore::empty();
    roots.add(p.ca.clone()).unwrap();
    let roots = Arc::new(roots);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .unwrap();
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![p.server.0.clone()], p.server.1.clone_key())
        .unwrap();
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![p.client.0.clone()], p.client.1.clone_key())
        .unwrap();
    client.resumption = Resumption::disabled();
    (Arc::new(server), Arc::new(client))
}

/// Move every pending TLS record from one side to the other; the time spent in the server's
/// calls is added to `server`.
fn pump(
    from: &mut rustls::Connection,
    to: &mut rustls::Connection,
    buf: &mut Vec<u8>,
    server: &mut Duration,
) {
    buf.clear();
    let t = Instant::now();
    while from.wants_write() {
        from.write_tls(buf).unwrap();
    }
    if matches!(from, rustls::Connection::Server(_)) {
        *server += t.elapsed();
    }
    if !buf.is_empty() {
        let t = Instant::now();
        let mut rd = &buf[..];
        while !rd.is_empty() {
            to.read_tls(&mut rd).unwrap();
            to.process_new_packets().unwrap();
        }
        if matches!(to, rustls::Connection::Server(_)) {
            *server += t.elapsed();
        }
    }
}

/// One full handshake, both sides in memory; returns the time the server's side took.
fn handshake(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
    buf: &mut Vec<u8>,
) -> Duration {
    let name = ServerName::try_from("localhost").unwrap();
    let mut c = rustls::Connection::Client(ClientConnection::new(client.clone(), name).unwrap());
    let t = Instant::now();
    let mut s = rustls::Connection::Server(ServerConnection::new(server.clone()).unwrap());
    let mut on_server = t.elapsed();
    while c.is_handshaking() || s.is_handshaking() {
        pump(&mut c, &mut s, buf, &mut on_server);
        pump(&mut s, &mut c, buf, &mut on_server);
    }
    // The client's certificate was verified: the server has it.
    assert!(s.peer_certificates().is_some());
    on_server
}

fn bench(c: &mut Criterion) {
    let p = pki();
    let (server, client) = configs(&p);
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut group = c.benchmark_group("tls_floor");
    group.bench_function("full_tls13_mtls_handshake_both_sides", |b| {
        b.iter(|| handshake(&server, &client, &mut buf))
    });
    group.bench_function("full_tls13_mtls_handshake_server_side", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| handshake(&server, &client, &mut buf))
                .sum()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
