//! End-to-end tests: the real obmguard binary, real TLS with certificates generated at test
//! time, a real HTTP receiver and token endpoint, all on loopback. One binary, a module per
//! stage or concern, sharing one harness. (The demo's test runs the `obmguard-demo` binary, so
//! it lives in that crate: crates/demo/tests/demo.rs.)

mod axis;
mod harness;

mod check;
mod compose;
mod core;
mod faults;
mod fleet;
mod monitoring;
mod oauth;
mod ops;
mod proxy_protocol;
mod queue;
mod ranges;
mod redteam;
mod report_page;
mod soap;
mod systemd;
