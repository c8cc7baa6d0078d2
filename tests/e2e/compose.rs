//! The shipped deployment files: docker-compose.yml, the Dockerfile, deploy/, the example
//! configurations and certs/make-dev-pki.sh, checked against each other.
//!
//! The machines that run the tests have no Docker engine, so nothing here starts a container.
//! Instead the compose file is read the way Compose would read it, each container path it sets
//! up is mapped back to the repository file behind it, and the tests check that those files
//! exist (or are made by the dev PKI script), that configuration is mounted read-only, that the
//! secret lands where the inject policy reads it, and that Prometheus scrapes the admin listener.
//! One test runs the dev PKI script in a scratch copy of the repository and `obmguard check` on
//! both shipped configurations, as `.ci/run` does (it needs the `openssl` command).

use std::path::{Component, Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

/// Files that are not committed (certs/.gitignore, /secrets/) but made by
/// certs/make-dev-pki.sh.
const MADE_BY_DEV_PKI: &[&str] = &[
    "certs/dev-server-ca.pem",
    "certs/server.pem",
    "certs/server.key",
    "certs/salesforce-client-ca.pem",
    "certs/dev-client.pem",
    "certs/dev-client.key",
    "secrets/erp_client_secret",
];

const SCRIPT: &str = "certs/make-dev-pki.sh";
/// The configuration docker-compose.yml runs; the one at the root is for running on a host.
const COMPOSE_CONFIG: &str = "deploy/obmguard.toml";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: impl AsRef<Path>) -> String {
    let p = repo().join(rel.as_ref());
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

fn compose() -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read("docker-compose.yml")).unwrap();
    assert_eq!(docs.len(), 1, "docker-compose.yml must hold one document");
    docs.remove(0)
}

fn service<'a>(c: &'a Yaml, name: &str) -> &'a Yaml {
    let s = &c["services"][name];
    assert!(
        s.as_hash().is_some(),
        "docker-compose.yml has no service {name}"
    );
    s
}

fn services(c: &Yaml) -> Vec<(String, &Yaml)> {
    c["services"]
        .as_hash()
        .expect("docker-compose.yml has no services")
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_string(), v))
        .collect()
}

/// A sequence, or nothing when the key is absent.
fn list(v: &Yaml) -> &[Yaml] {
    v.as_vec().map(Vec::as_slice).unwrap_or_default()
}

/// A command as a list of words (compose accepts a list or a string).
fn words(v: &Yaml) -> Vec<String> {
    match v {
        Yaml::Array(a) => a.iter().map(|w| w.as_str().unwrap().to_string()).collect(),
        Yaml::String(s) => s.split_whitespace().map(String::from).collect(),
        _ => Vec::new(),
    }
}

/// `a/./b/../c` -> `a/c`, without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                assert!(out.pop(), "{} leaves its root", p.display());
            }
            other => out.push(other),
        }
    }
    out
}

/// A file or directory a container sees, and the repository path behind it.
#[derive(Debug)]
struct Mount {
    /// Relative to the repository root.
    host: PathBuf,
    /// Absolute, in the container.
    target: PathBuf,
    read_only: bool,
}

/// Bind mounts (short and long syntax) and file secrets of one service. Named volumes are
/// not repository files and are left out.
fn mounts(c: &Yaml, svc: &Yaml) -> Vec<Mount> {
    let mut out = Vec::new();
    for v in list(&svc["volumes"]) {
        let (source, target, read_only) = match v {
            Yaml::String(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                let ro = parts
                    .get(2)
                    .is_some_and(|m| m.split(',').any(|o| o == "ro"));
                (parts[0].to_string(), parts[1].to_string(), ro)
            }
            long => {
                if long["type"].as_str() != Some("bind") {
                    continue;
                }
                (
                    long["source"].as_str().unwrap().to_string(),
                    long["target"].as_str().unwrap().to_string(),
                    long["read_only"].as_bool().unwrap_or(false),
                )
            }
        };
        if !(source.starts_with('.') || source.starts_with('/')) {
            continue; // a named volume
        }
        out.push(Mount {
            host: normalize(Path::new(&source)),
            target: PathBuf::from(target),
            read_only,
        });
    }
    for s in list(&svc["secrets"]) {
        let (name, target) = match s {
            Yaml::String(n) => (n.clone(), format!("/run/secrets/{n}")),
            long => {
                let n = long["source"].as_str().unwrap().to_string();
                let t = long["target"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| format!("/run/secrets/{n}"));
                (n, t)
            }
        };
        let file = c["secrets"][name.as_str()]["file"]
            .as_str()
            .unwrap_or_else(|| panic!("secret {name} has no top-level `file`"));
        out.push(Mount {
            host: normalize(Path::new(file)),
            target: PathBuf::from(target),
            // Compose mounts file secrets read-only.
            read_only: true,
        });
    }
    out
}

/// The repository path a container path comes from (the deepest mount containing it).
fn host_path(mounts: &[Mount], container: &Path) -> Option<PathBuf> {
    mounts
        .iter()
        .filter_map(|m| {
            container
                .strip_prefix(&m.target)
                .ok()
                .map(|rest| (m.target.components().count(), m.host.join(rest)))
        })
        .max_by_key(|(depth, _)| *depth)
        .map(|(_, p)| normalize(&p))
}

fn exists_or_made(rel: &Path) -> bool {
    repo().join(rel).exists() || MADE_BY_DEV_PKI.iter().any(|m| Path::new(m) == rel)
}

fn toml_file(rel: &Path) -> toml::Table {
    toml::from_str(&read(rel)).unwrap()
}

/// The container path of the configuration `obmguard serve` is started with.
fn proxy_config_target(svc: &Yaml) -> PathBuf {
    let cmd = words(&svc["command"]);
    assert_eq!(cmd.first().map(String::as_str), Some("serve"), "{cmd:?}");
    let i = cmd
        .iter()
        .position(|w| w == "--config")
        .expect("serve --config");
    PathBuf::from(&cmd[i + 1])
}

#[test]
fn compose_defines_the_proxy_the_receiver_and_prometheus() {
    let c = compose();
    let names: Vec<String> = services(&c).into_iter().map(|(n, _)| n).collect();
    for want in ["obmguard", "receiver", "prometheus"] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let receiver = words(&service(&c, "receiver")["command"]);
    assert_eq!(
        receiver.first().map(String::as_str),
        Some("sample-receiver")
    );
    assert!(
        receiver.iter().any(|w| w.starts_with("0.0.0.0:")),
        "{receiver:?}"
    );
    assert!(service(&c, "prometheus")["image"]
        .as_str()
        .unwrap()
        .starts_with("prom/prometheus"));
}

/// The Dockerfile stage each service is built from, the image it is tagged as, and the binary
/// that stage runs.
const IMAGES: &[(&str, &str, &str, &str)] = &[
    ("obmguard", "obmguard", "obmguard:local", "obmguard"),
    ("receiver", "demo", "obmguard-demo:local", "obmguard-demo"),
];

#[test]
fn the_commands_compose_runs_exist_in_the_cli() {
    use clap::Parser;
    let c = compose();
    let proxy = words(&service(&c, "obmguard")["command"]);
    let parsed = obmguard::cli::Cli::try_parse_from(
        std::iter::once("obmguard").chain(proxy.iter().map(String::as_str)),
    );
    assert!(
        matches!(
            parsed,
            Ok(obmguard::cli::Cli {
                command: obmguard::cli::Command::Serve(_),
                ..
            })
        ),
        "`obmguard {}` is not a serve command: {parsed:?}",
        proxy.join(" ")
    );
    // The real binary agrees with its library's parser.
    let out = Command::new(env!("CARGO_BIN_EXE_obmguard"))
        .arg(&proxy[0])
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "obmguard has no subcommand {:?}",
        proxy[0]
    );
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in proxy.iter().filter(|w| w.starts_with("--")) {
        assert!(
            help.contains(flag.as_str()),
            "`obmguard {}` has no {flag}",
            proxy[0]
        );
    }

    // The receiver runs obmguard-demo (its own image), parsed with that binary's command line.
    let receiver = words(&service(&c, "receiver")["command"]);
    let parsed = obmguard_demo::cli::Cli::try_parse_from(
        std::iter::once("obmguard-demo").chain(receiver.iter().map(String::as_str)),
    )
    .map(obmguard_demo::cli::Cli::into_command);
    assert!(
        matches!(
            parsed,
            Ok(obmguard_demo::cli::Command::SampleReceiver { listen }) if listen.ip().is_unspecified()
        ),
        "`obmguard-demo {}` is not a sample receiver listening on all addresses: {parsed:?}",
        receiver.join(" ")
    );
}

#[test]
fn the_product_has_no_demo_or_sample_receiver_command() {
    for gone in ["demo", "sample-receiver"] {
        let out = Command::new(env!("CARGO_BIN_EXE_obmguard"))
            .args([gone, "--help"])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "obmguard still has `{gone}`: it is obmguard-demo's"
        );
    }
}

/// One `FROM <base> [AS <name>]` stage of the Dockerfile, its instructions with continuation
/// lines joined.
struct Stage {
    name: String,
    base: String,
    instructions: Vec<String>,
}

fn dockerfile_stages() -> Vec<Stage> {
    let text = read("Dockerfile");
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for ins in joined {
        if let Some(from) = ins.strip_prefix("FROM ") {
            let w: Vec<&str> = from.split_whitespace().collect();
            let name = match w.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_string(),
                _ => String::new(),
            };
            stages.push(Stage {
                name,
                base: w[0].to_string(),
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push(ins);
        }
    }
    stages
}

/// The stages `docker build --target <target>` runs, the target first: its base chain and the
/// stages it copies from, transitively (BuildKit skips all others).
fn stages_built_for<'a>(stages: &'a [Stage], target: &str) -> Vec<&'a Stage> {
    let by_name = |n: &str| stages.iter().find(|s| s.name == n);
    let first = by_name(target).unwrap_or_else(|| panic!("no Dockerfile stage {target}"));
    let mut todo = vec![first];
    let mut out: Vec<&Stage> = Vec::new();
    while let Some(s) = todo.pop() {
        if out.iter().any(|o| std::ptr::eq(*o, s)) {
            continue;
        }
        out.push(s);
        todo.extend(by_name(&s.base));
        for ins in s.instructions.iter().filter(|i| i.starts_with("COPY ")) {
            if let Some(from) = ins
                .split_whitespace()
                .find_map(|w| w.strip_prefix("--from="))
            {
                todo.push(
                    by_name(from).unwrap_or_else(|| panic!("COPY --from={from}: no such stage")),
                );
            }
        }
    }
    out
}

#[test]
fn each_image_builds_only_the_binary_it_runs() {
    let c = compose();
    let stages = dockerfile_stages();
    assert_eq!(
        stages.last().map(|s| s.name.as_str()),
        Some("obmguard"),
        "a plain `docker build .` must make the proxy image: its stage comes last"
    );
    for (service_name, target, image, binary) in IMAGES {
        let svc = service(&c, service_name);
        assert_eq!(
            svc["build"]["context"].as_str(),
            Some("."),
            "{service_name} must build from the repository root"
        );
        assert_eq!(
            svc["build"]["target"].as_str(),
            Some(*target),
            "{service_name}: Dockerfile stage"
        );
        assert_eq!(
            svc["image"].as_str(),
            Some(*image),
            "{service_name}: image tag"
        );

        let built = stages_built_for(&stages, target);
        let builds: Vec<&str> = built
            .iter()
            .flat_map(|s| &s.instructions)
            .filter(|i| i.contains("cargo build"))
            .map(String::as_str)
            .collect();
        let want = format!("cargo build --release --locked -p {binary} --bin {binary} ");
        assert!(
            builds.len() == 1 && builds[0].contains(&want),
            "stage {target} must build exactly `{}`, not {builds:?}",
            want.trim_end()
        );
        let image_stage = built[0];
        let entrypoint = format!("ENTRYPOINT [\"{binary}\"]");
        assert!(
            image_stage.instructions.contains(&entrypoint),
            "stage {target} must run {binary}"
        );
        assert!(
            image_stage
                .instructions
                .iter()
                .any(|i| i.starts_with("USER ") && !i.contains("root")),
            "stage {target} must not run as root"
        );
    }

    let ignore = read(".dockerignore");
    for never in ["target", "secrets", "certs/*.key"] {
        assert!(
            ignore.lines().any(|l| l.trim() == never),
            ".dockerignore must list {never}"
        );
    }
}

#[test]
fn every_mounted_file_exists_or_is_made_by_the_dev_pki_script() {
    let c = compose();
    for (name, svc) in services(&c) {
        for m in mounts(&c, svc) {
            assert!(
                !m.host.is_absolute() && !m.host.starts_with(".."),
                "{name}: {} is outside the repository",
                m.host.display()
            );
            assert!(
                exists_or_made(&m.host),
                "{name}: {} is neither in the repository nor made by {SCRIPT}",
                m.host.display()
            );
        }
    }
}

#[test]
fn dev_pki_script_names_every_file_it_is_relied_on_for() {
    let script = read(SCRIPT);
    assert!(script.contains("set -euo pipefail"));
    for f in MADE_BY_DEV_PKI {
        assert!(script.contains(f), "{SCRIPT} does not mention {f}");
        assert!(
            is_ignored(f),
            "{f} is not git-ignored: it must never be committed"
        );
    }
}

/// Whether a generated file is kept out of git by the ignore files we ship.
fn is_ignored(rel: &str) -> bool {
    let root = read(".gitignore");
    let certs = read("certs/.gitignore");
    let ext = Path::new(rel)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("");
    (rel.starts_with("secrets/") && root.lines().any(|l| l.trim() == "/secrets/"))
        || (rel.starts_with("certs/") && certs.lines().any(|l| l.trim() == format!("*.{ext}")))
}

#[test]
fn configuration_is_mounted_read_only() {
    let c = compose();
    for (name, svc) in services(&c) {
        for m in mounts(&c, svc) {
            assert!(
                m.read_only,
                "{name}: {} is mounted writable",
                m.target.display()
            );
        }
    }
    // The configuration the proxy runs is one of those mounts.
    let svc = service(&c, "obmguard");
    let config = host_path(&mounts(&c, svc), &proxy_config_target(svc));
    assert_eq!(config.as_deref(), Some(Path::new(COMPOSE_CONFIG)));
}

#[test]
fn compose_config_names_the_same_files_in_the_container_as_in_the_repository() {
    let c = compose();
    let svc = service(&c, "obmguard");
    let mounts = mounts(&c, svc);
    let target = proxy_config_target(svc);
    let cfg = toml_file(Path::new(COMPOSE_CONFIG));
    let server = &cfg["server"];
    let mut files = vec![
        server["tls_cert"].as_str().unwrap(),
        server["tls_key"].as_str().unwrap(),
        cfg["client_cert"]["ca_bundle"].as_str().unwrap(),
    ];
    files.push(
        server
            .get("policies")
            .and_then(|p| p.as_str())
            .unwrap_or("policies"),
    );
    for f in files {
        let on_host = normalize(&Path::new(COMPOSE_CONFIG).parent().unwrap().join(f));
        let in_container = normalize(&target.parent().unwrap().join(f));
        assert_eq!(
            host_path(&mounts, &in_container).as_deref(),
            Some(on_host.as_path()),
            "{f}: the container reads {} but `check` on the repository reads {}",
            in_container.display(),
            on_host.display()
        );
        assert!(exists_or_made(&on_host), "{}", on_host.display());
    }
}

#[test]
fn oauth_secrets_are_mounted_where_the_policies_read_them() {
    let c = compose();
    let svc = service(&c, "obmguard");
    let mounts = mounts(&c, svc);
    let policies_in_container = mounts
        .iter()
        .find(|m| m.host == Path::new("policies"))
        .expect("the policies directory is not mounted")
        .target
        .clone();
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("policies")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let rel = Path::new("policies").join(path.file_name().unwrap());
        let policy = toml_file(&rel);
        let Some(oauth) = policy.get("oauth") else {
            continue;
        };
        for key in ["client_secret", "private_key"] {
            let Some(file) = oauth
                .get(key)
                .and_then(|s| s.get("file"))
                .and_then(|f| f.as_str())
            else {
                continue;
            };
            let in_container = normalize(&policies_in_container.join(file));
            let on_host = normalize(&Path::new("policies").join(file));
            assert_eq!(
                host_path(&mounts, &in_container).as_deref(),
                Some(on_host.as_path()),
                "{}: oauth.{key} is read from {} in the container, which is not {}",
                rel.display(),
                in_container.display(),
                on_host.display()
            );
            assert!(exists_or_made(&on_host), "{}", on_host.display());
            checked += 1;
        }
    }
    assert!(
        checked > 0,
        "no policy reads a secret from a file: the inject example is missing"
    );
}

#[test]
fn prometheus_scrapes_the_proxy_admin_listener() {
    let c = compose();
    let prom = service(&c, "prometheus");
    let mounts = mounts(&c, prom);
    let config = host_path(&mounts, Path::new("/etc/prometheus/prometheus.yml"))
        .expect("prometheus.yml is not mounted at /etc/prometheus/prometheus.yml");
    let doc = YamlLoader::load_from_str(&read(&config)).unwrap().remove(0);
    let scrapes = doc["scrape_configs"].as_vec().expect("no scrape_configs");
    let job = scrapes
        .iter()
        .find(|j| {
            list(&j["static_configs"])
                .iter()
                .flat_map(|s| list(&s["targets"]))
                .any(|t| t.as_str() == Some("obmguard:9090"))
        })
        .expect("no scrape job targets obmguard:9090");
    assert_eq!(
        job["metrics_path"].as_str().unwrap_or("/metrics"),
        "/metrics"
    );
    for rules in list(&doc["rule_files"]) {
        let file = host_path(&mounts, Path::new(rules.as_str().unwrap()))
            .expect("a rule file is not mounted");
        assert!(repo().join(file).is_file());
    }
    let admin = toml_file(Path::new(COMPOSE_CONFIG))["server"]["admin_listen"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        admin, "0.0.0.0:9090",
        "Prometheus reaches the admin listener over the network"
    );
}

#[test]
fn grafana_starts_with_the_prometheus_data_source_and_the_dashboard_provisioned() {
    let c = compose();
    let grafana = service(&c, "grafana");
    let mounts = mounts(&c, grafana);
    assert!(
        mounts.iter().all(|m| m.read_only),
        "provisioning is mounted read-only"
    );
    let ds = host_path(
        &mounts,
        Path::new("/etc/grafana/provisioning/datasources/prometheus.yml"),
    )
    .expect("no data source provisioned");
    let ds = YamlLoader::load_from_str(&read(&ds)).unwrap().remove(0);
    let prom = &ds["datasources"][0];
    assert_eq!(prom["type"].as_str(), Some("prometheus"));
    assert_eq!(prom["url"].as_str(), Some("http://prometheus:9090"));
    assert_eq!(prom["isDefault"].as_bool(), Some(true));
    let providers = host_path(
        &mounts,
        Path::new("/etc/grafana/provisioning/dashboards/obmguard.yml"),
    )
    .expect("no dashboard provider");
    let providers = YamlLoader::load_from_str(&read(&providers))
        .unwrap()
        .remove(0);
    let dir = providers["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let dashboard = host_path(&mounts, &Path::new(dir).join("obmguard.json"))
        .expect("the dashboard is not mounted where the provider reads");
    assert_eq!(dashboard, Path::new("deploy/grafana/obmguard.json"));
    let json: serde_json::Value = serde_json::from_str(&read(&dashboard)).unwrap();
    assert_eq!(json["uid"], "obmguard");
    assert!(words(&grafana["depends_on"]).contains(&"prometheus".to_string()));
}

#[test]
fn shipped_configurations_pass_check_with_the_dev_pki() {
    let has_openssl = Command::new("openssl").arg("version").output().is_ok();
    assert!(
        has_openssl,
        "the openssl command is needed to run {SCRIPT}: apt-get install openssl"
    );
    let dir = tempfile::tempdir().unwrap();
    let copy = |rel: &str| {
        let to = dir.path().join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(repo().join(rel), &to).unwrap();
    };
    copy(SCRIPT);
    copy("obmguard.toml");
    copy(COMPOSE_CONFIG);
    for entry in std::fs::read_dir(repo().join("policies")).unwrap() {
        let name = entry.unwrap().file_name();
        copy(&format!("policies/{}", name.to_str().unwrap()));
    }
    let out = Command::new("bash")
        .arg(dir.path().join(SCRIPT))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in MADE_BY_DEV_PKI {
        assert!(dir.path().join(f).is_file(), "{SCRIPT} did not make {f}");
    }
    for config in ["obmguard.toml", COMPOSE_CONFIG] {
        let out = Command::new(env!("CARGO_BIN_EXE_obmguard"))
            .args(["check", "--config"])
            .arg(dir.path().join(config))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "check {config}:\n{text}");
        assert!(text.contains(": OK: "), "{text}");
    }
}
