//! obmguard: a verifying reverse proxy for Salesforce Outbound Messages.
//!
//! The modules follow a message through the proxy; `proxy` holds the phase chart. `cli` and
//! `commands` are the command line; `obmguard-demo` reuses them to run the proxy it shows.
#![forbid(unsafe_code)]

pub mod accept;
pub mod admin;
pub mod audit;
pub mod certs;
pub mod cli;
pub mod commands;
pub mod config;
pub mod delivery;
pub mod head;
pub mod identity;
pub mod inject;
pub mod intake;
pub mod lifecycle;
pub mod logfmt;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod proxy_protocol;
pub mod queue;
pub mod queue_ops;
pub mod ranges_update;
pub mod record;
pub mod reject;
pub mod reload;
pub mod report;
pub mod runtime;
pub mod secret;
pub mod sfid;
pub mod sink;
pub mod soap;
pub mod store;
pub mod tls;
pub mod token;
pub mod upstream;

/// A hash map for lookups on the request path: ahash's hasher, seeded at random per map as
/// std's SipHash is (so still proof against collision flooding), at a fraction of its cost
/// for the short keys looked up there (a path, an id, a label, a pool key).
pub type FastMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
/// The set form of [`FastMap`].
pub type FastSet<T> = std::collections::HashSet<T, ahash::RandomState>;
