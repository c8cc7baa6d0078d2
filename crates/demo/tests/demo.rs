//! The first-run experience: `obmguard-demo` (the binary the README runs, with no arguments)
//! runs every scenario against the proxy it starts and exits 0.
//!
//! This is the demo crate's own integration test, not a module of the workspace's one e2e test
//! binary (tests/e2e), because Cargo builds a binary and tells a test where it is
//! (`CARGO_BIN_EXE_<name>`) only for binaries of the test's own package. It stays this one test.

#[test]
fn demo_runs_every_scenario_and_exits_zero() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_obmguard-demo"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("scenarios behaved as expected"), "{text}");
    assert!(!text.contains('✘'), "{text}");
    assert!(
        !text.contains("AQ4AQFakeSessionValue"),
        "the demo never prints a session id"
    );
}
