//! The test kit: real parts that play Salesforce and the legacy receiver around the proxy, used
//! by obmguard's unit tests, its end-to-end tests (`tests/e2e`) and `obmguard-demo`. It is a
//! crate of its own so that none of it (rcgen, a hyper server, ...) is compiled into the
//! `obmguard` binary, and it does not depend on `obmguard`: the product's unit tests link it,
//! and a dependency back would give them a second copy of every obmguard type.
//!
//! - [`pki`]: a throw-away PKI written to a directory (every certificate to accept or refuse);
//! - [`messages`]: Salesforce-shaped notification bodies with valid ids;
//! - [`client`]: a TLS client speaking raw HTTP/1.1, optionally with a client certificate and a
//!   chosen source address;
//! - [`receiver`]: a recording SOAP receiver whose answer can be switched at run time;
//! - [`file_server`]: an HTTPS server answering one settable document (Salesforce's ranges);
//! - [`token_server`]: a Salesforce-like OAuth token endpoint;
//! - [`ports`]: loopback ports that no other test's socket can take meanwhile;
//! - [`postgres`]: a throw-away PostgreSQL cluster (or an existing server) for the store's tests.
//!
//! Nothing here is used on the proxy's request path, and none of it is hardened for production
//! use: keys are test keys and the string scans in [`messages::find_element`] are not parsers.
#![forbid(unsafe_code)]

pub mod client;
pub mod file_server;
pub mod messages;
pub mod pki;
pub mod ports;
pub mod postgres;
pub mod receiver;
pub mod token_server;
