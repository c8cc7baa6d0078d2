//! `obmguard check`: valid sets pass; every invalid shape is refused with file, line, key and
//! what to change, all listed at once; `serve` binds nothing on a bad configuration.

use crate::harness::*;
use std::process::Command;

fn check(config: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_obmguard"))
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn write_config(w: &World, client_cert: &str, source: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(w.path("policies")).unwrap();
    let cfg = w.path("obmguard.toml");
    write(
        &cfg,
        &format!(
            "[server]\nlisten = [\"127.0.0.1:8443\"]\ntls_cert = {:?}\ntls_key = {:?}\nadmin_listen = \"127.0.0.1:9090\"\n\n[client_cert]\n{client_cert}\n[source]\n{source}\n",
            w.pki.server.cert.display().to_string(),
            w.pki.server.key.display().to_string()
        ),
    );
    cfg
}

#[test]
fn valid_configuration_passes() {
    let w = World::new();
    let cfg = write_config(
        &w,
        &format!("ca_bundle = {:?}", w.pki.client_ca.display().to_string()),
        "allow = [\"@salesforce\"]",
    );
    write(
        &w.path("policies/erp.toml"),
        &(route("erp", "/obm/accounts", "http://10.0.0.5:8080/soap", "strip")
            + "\n[identity]\nsubject_cn = [\"proxy.salesforce.com\"]\n"),
    );
    let (code, out) = check(&cfg);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK: 1 route(s)"), "{out}");
}

#[test]
fn invalid_configuration_lists_every_problem_with_file_line_and_key() {
    let w = World::new();
    let empty_ca = w.path("empty-ca.pem");
    write(&empty_ca, "");
    let cfg = write_config(
        &w,
        &format!(
            "ca_bundle = {:?}\npin_sha256 = [\"abc\"]",
            empty_ca.display().to_string()
        ),
        "allow = [\"0.0.0.0/0\", \"10.0.0.1/8\"]",
    );
    write(
        &w.path("policies/a.toml"),
        &route("a", "/obm/x", "http://10.0.0.5/soap", "strip").replace(ORG, "00D5e000000AbCdEAF"),
    );
    write(
        &w.path("policies/b.toml"),
        &route("b", "/obm/x", "http://10.0.0.5/soap", "inject"),
    );
    write(
        &w.path("policies/c.toml"),
        &(route("c", "/obm/c", "http://10.0.0.5/soap", "strip") + "colour = \"blue\"\n"),
    );
    write(
        &w.path("policies/d.toml"),
        &route("d", "/obm/d", "http://10.0.0.5/soap", "strip").replace(
            "upstream_timeout_ms = 5000",
            "upstream_timeout_ms = \"soon\"",
        ),
    );
    write(&w.path("policies/e.toml"), "name = \"e\"\npath = \"/obm/e\"\nupstream = \"http://10.0.0.5/\"\n[message]\norganization_ids = []\n");
    let own_source = "\n[source]\nallow = [\"127.0.0.1/32\"]\n";
    write(
        &w.path("policies/g.toml"),
        &(route("g", "/obm/g", "http://10.0.0.5/soap", "strip") + own_source),
    );
    write(
        &w.path("policies/h.toml"),
        &(route("h", "/obm/g", "http://10.0.0.5/soap", "strip") + own_source),
    );
    let (code, out) = check(&cfg);
    assert_ne!(code, 0, "{out}");
    let cfgname = cfg.display().to_string();
    for (needle, what) in [
        (
            format!("{cfgname}:8: client_cert.ca_bundle"),
            "empty CA bundle",
        ),
        ("would trust nobody".to_string(), "empty CA bundle advice"),
        (
            format!("{cfgname}:9: client_cert.pin_sha256[0]"),
            "malformed pin",
        ),
        (format!("{cfgname}:11: source.allow[0]"), "0.0.0.0/0"),
        ("admits every address".to_string(), "0.0.0.0/0 advice"),
        (format!("{cfgname}:11: source.allow[1]"), "host bits"),
        ("write 10.0.0.0/8".to_string(), "host bits advice"),
        (
            "a.toml:7: message.organization_ids[0]".to_string(),
            "bad checksum",
        ),
        ("ends EAK".to_string(), "checksum advice"),
        ("already routed by".to_string(), "two routes on one path"),
        (
            "h.toml:2: path: path /obm/g is already routed by ".to_string(),
            "the second path's line",
        ),
        ("g.toml:2: one path".to_string(), "the first path's line"),
        ("c.toml".to_string(), "unknown key"),
        ("unknown field `colour`".to_string(), "unknown key message"),
        ("d.toml:4".to_string(), "wrong type line"),
        (
            "e.toml:5: message.organization_ids".to_string(),
            "empty org list",
        ),
    ] {
        assert!(
            out.contains(&needle),
            "missing {what} ({needle}) in:\n{out}"
        );
    }
}

#[test]
fn missing_certificate_files_are_reported_not_panicked_on() {
    let w = World::new();
    let cfg = w.path("obmguard.toml");
    std::fs::create_dir_all(w.path("policies")).unwrap();
    write(
        &w.path("policies/a.toml"),
        &route("a", "/a", "http://10.0.0.5/", "strip"),
    );
    write(
        &cfg,
        "[server]\nlisten = [\"127.0.0.1:8443\"]\ntls_cert = \"nope.pem\"\ntls_key = \"nope.key\"\n[client_cert]\nca_bundle = \"missing-ca.pem\"\n[source]\nallow = [\"127.0.0.1\"]\n",
    );
    let (code, out) = check(&cfg);
    assert_ne!(code, 0);
    assert!(
        out.contains("nope.pem") && out.contains("cannot read"),
        "{out}"
    );
    assert!(out.contains("missing-ca.pem"), "{out}");
    assert!(!out.contains("panicked"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_binds_nothing_on_a_bad_configuration() {
    let w = World::new();
    let s = Setup::new(&w).route("a.toml", route("a", "/a", "http://10.0.0.5/", "banana"));
    let err = Proxy::try_start(&w, &s, &[])
        .await
        .err()
        .expect("serve must refuse");
    assert!(err.contains("\"banana\" is not a mode"), "{err}");
    let cfg = std::fs::read_to_string(w.path("obmguard.toml")).unwrap();
    let port: u16 = cfg
        .split("127.0.0.1:")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "the listen port stayed free"
    );
}

#[test]
fn import_ranges_validates_salesforce_json_and_check_uses_it() {
    let w = World::new();
    let src = w.path("ip-ranges.json");
    write(
        &src,
        r#"{"syncToken":"1700000000","createDate":"2026-11-01-00-00-00","note":"future field",
            "prefixes":[{"region":"us-east-1","provider":"aws","ip_prefix":["13.108.0.0/14","101.53.160.0/19"]}],
            "ipv6_prefixes":[{"region":"us-east-1","provider":"aws","ipv6_prefix":["2001:db8:1::/48"]}]}"#,
    );
    let out_file = w.path("salesforce-ranges.json");
    let run = |from: &std::path::Path| {
        // --force: three prefixes are fewer than half of the built-in copy's.
        Command::new(env!("CARGO_BIN_EXE_obmguard"))
            .args(["import-ranges", "--force", "--from"])
            .arg(from)
            .arg("--to")
            .arg(&out_file)
            .output()
            .unwrap()
    };
    let out = run(&src);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 IPv4 and 1 IPv6 prefixes"));
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    assert!(written["_comment"]
        .as_str()
        .unwrap()
        .contains("ip-ranges.salesforce.com"));

    // The imported file is what @salesforce means once salesforce_ranges points at it.
    let cfg = write_config(
        &w,
        &format!("ca_bundle = {:?}", w.pki.client_ca.display().to_string()),
        &format!(
            "allow = [\"@salesforce\"]\nsalesforce_ranges = {:?}",
            out_file.display().to_string()
        ),
    );
    write(
        &w.path("policies/erp.toml"),
        &route("erp", "/obm", "http://10.0.0.5/", "strip"),
    );
    let (code, text) = check(&cfg);
    assert_eq!(code, 0, "{text}");

    // A document with one bad prefix is refused whole and nothing is written.
    let bad = w.path("bad.json");
    write(
        &bad,
        r#"{"prefixes":[{"ip_prefix":["13.108.0.0/14","0.0.0.0/0"]}]}"#,
    );
    std::fs::remove_file(&out_file).unwrap();
    let out = run(&bad);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("admits every address"));
    assert!(!out_file.exists());
}

#[test]
fn check_on_the_example_before_the_dev_pki_says_to_run_the_script() {
    // A fresh clone: the example configuration and policies, the script, no certificates.
    let dir = tempfile::tempdir().unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(dir.path().join("certs")).unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::copy(repo.join("obmguard.toml"), dir.path().join("obmguard.toml")).unwrap();
    std::fs::copy(
        repo.join("certs/make-dev-pki.sh"),
        dir.path().join("certs/make-dev-pki.sh"),
    )
    .unwrap();
    for f in std::fs::read_dir(repo.join("policies")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.path().join("policies").join(f.file_name().unwrap())).unwrap();
    }
    let (code, out) = check(&dir.path().join("obmguard.toml"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("server.tls_cert / server.tls_key: cannot read")
            && out.contains("certs/server.pem")
            && out.contains("certs/make-dev-pki.sh first"),
        "{out}"
    );
    assert!(out.contains("client_cert.ca_bundle"), "{out}");
    // A missing file elsewhere gets no such hint.
    let w = World::new();
    let cfg = write_config(
        &w,
        "ca_bundle = \"/nonexistent/ca.pem\"",
        "allow = [\"@salesforce\"]",
    );
    let (_, out) = check(&cfg);
    assert!(
        out.contains("/nonexistent/ca.pem") && !out.contains("make-dev-pki"),
        "{out}"
    );
}
