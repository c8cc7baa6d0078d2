//! The first-run experience: `obmguard demo` runs every scenario and exits 0.

#[test]
fn demo_runs_every_scenario_and_exits_zero() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_obmguard"))
        .arg("demo")
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
