//! Checks docker-compose.yml and the Dockerfiles against the contract
//! without a Docker engine: three nodes with the right ids and ports, peers
//! that point at each other, named volumes that hold the data dirs, health
//! checks, and only RAFTKV_* variables that `raftkv start` really reads,
//! with values it accepts. tests/docker/run.sh (run by .ci/run) starts the
//! cluster for real in a private dockerd; these checks stay because they
//! need no root, no Docker and no network, and they name the broken field.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use clap::{CommandFactory, Parser};
use raftkv::cli::{Cli, Command};
use serde_yaml::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("docker-compose.yml"))
        .expect("docker-compose.yml at the repository root");
    let mut doc: Value = serde_yaml::from_str(&text).expect("docker-compose.yml is valid YAML");
    // Resolve `<<: *anchor` merges the way Compose does.
    doc.apply_merge().expect("merge keys resolve");
    doc
}

fn services(doc: &Value) -> BTreeMap<String, Value> {
    doc["services"]
        .as_mapping()
        .expect("a services mapping")
        .iter()
        .map(|(k, v)| (k.as_str().expect("service name").to_string(), v.clone()))
        .collect()
}

/// Resolves Compose's variable substitution the way Compose does when none
/// of the variables is set: `${NAME:-default}` and `${NAME-default}` become
/// the default, `${NAME}` and `$NAME` become empty, `$$` is a literal `$`.
/// Also returns the names of the variables used.
fn with_defaults(s: &str) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut names = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .unwrap_or_else(|| panic!("unclosed ${{ in {s:?}"));
            let inner = &body[..end];
            let (name, default) = match inner.find(['-', ':']) {
                Some(j) => {
                    let d = &inner[j..];
                    let d = d.strip_prefix(":-").or_else(|| d.strip_prefix('-'));
                    (
                        &inner[..j],
                        d.unwrap_or_else(|| panic!("unsupported ${{{inner}}}")),
                    )
                }
                None => (inner, ""),
            };
            names.push(name.to_string());
            out.push_str(default);
            rest = &body[end + 1..];
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            names.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    out.push_str(rest);
    (out, names)
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// A service's environment, in either of Compose's two forms.
fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Mapping(m) => m.iter().map(|(k, v)| (scalar(k), scalar(v))).collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|i| {
                let s = scalar(i);
                let (k, v) = s.split_once('=').expect("KEY=VALUE");
                (k.to_string(), v.to_string())
            })
            .collect(),
        other => panic!("environment missing or odd: {other:?}"),
    }
}

/// The environment variables of `raftkv start`'s flags, with the flag names.
fn start_env_vars() -> BTreeMap<String, String> {
    let cli = Cli::command();
    let start = cli
        .get_subcommands()
        .find(|c| c.get_name() == "start")
        .expect("a start subcommand");
    start
        .get_arguments()
        .filter_map(|a| {
            let env = a.get_env()?.to_str()?.to_string();
            Some((env, a.get_long()?.to_string()))
        })
        .collect()
}

const NODES: [(&str, u16); 3] = [("node-1", 8001), ("node-2", 8002), ("node-3", 8003)];

#[test]
fn three_nodes_with_contract_ids_and_ports() {
    let doc = compose();
    let svcs = services(&doc);
    let names: Vec<&str> = svcs.keys().map(String::as_str).collect();
    assert_eq!(names, vec!["node-1", "node-2", "node-3"]);
    for (name, port) in NODES {
        let svc = &svcs[name];
        let env = environment(svc);
        assert_eq!(env["RAFTKV_NODE_ID"], name);
        assert_eq!(env["RAFTKV_PORT"], port.to_string());
        assert_eq!(
            env["RAFTKV_HOST"], "0.0.0.0",
            "{name} must listen beyond loopback"
        );
        assert_eq!(env["RAFTKV_ADVERTISE"], format!("{name}:{port}"));
        let ports: Vec<String> = svc["ports"]
            .as_sequence()
            .expect("published ports")
            .iter()
            .map(scalar)
            .collect();
        assert_eq!(ports.len(), 1, "{name} publishes one port: {ports:?}");
        // By default the host's 127.0.0.1:PORT, where the CLI's defaults
        // look; tests/docker/run.sh moves it with RAFTKV_PORT_N.
        let (published, vars) = with_defaults(&ports[0]);
        assert_eq!(
            published,
            format!("127.0.0.1:{port}:{port}"),
            "{name} publishes {:?}",
            ports[0]
        );
        let n = &name["node-".len()..];
        assert_eq!(
            vars,
            vec![
                "RAFTKV_PUBLISH_HOST".to_string(),
                format!("RAFTKV_PORT_{n}")
            ],
            "{name}: the variables tests/docker/run.sh and the README use"
        );
        let image = scalar(&svc["image"]);
        assert_eq!(
            with_defaults(&image),
            ("raftkv:local".to_string(), vec!["RAFTKV_IMAGE".to_string()]),
            "{name}: image {image:?}"
        );
        assert_eq!(
            svc["build"]["context"].as_str(),
            Some("."),
            "{name} builds the repo"
        );
        assert!(
            svc["restart"].as_str().is_some(),
            "{name} has a restart policy"
        );
    }
}

#[test]
fn peers_name_the_other_nodes_at_their_ports() {
    let svcs = services(&compose());
    for (name, _) in NODES {
        let env = environment(&svcs[name]);
        let peers = raftkv::cli::parse_peer_list(&env["RAFTKV_PEERS"]).expect("peers parse");
        let got: BTreeSet<(String, String)> = peers
            .0
            .into_iter()
            .map(|p| (p.name.expect("named peers"), p.addr))
            .collect();
        let want: BTreeSet<(String, String)> = NODES
            .iter()
            .filter(|(n, _)| *n != name)
            .map(|(n, p)| (n.to_string(), format!("{n}:{p}")))
            .collect();
        assert_eq!(got, want, "peers of {name}");
        // The peers' addresses are the other services' advertise addresses.
        for (peer, addr) in &got {
            assert_eq!(&environment(&svcs[peer])["RAFTKV_ADVERTISE"], addr);
        }
    }
    let ids: BTreeSet<String> = svcs
        .values()
        .map(|s| environment(s)["RAFTKV_CLUSTER_ID"].clone())
        .collect();
    assert_eq!(ids.len(), 1, "one cluster id for all nodes: {ids:?}");
}

#[test]
fn every_variable_is_a_real_flag_and_parses() {
    let known = start_env_vars();
    for flag in [
        "node-id",
        "port",
        "peers",
        "host",
        "advertise",
        "data-dir",
        "heartbeat-ms",
        "election-timeout-ms",
        "snapshot-threshold",
        "cluster-id",
    ] {
        let env = format!("RAFTKV_{}", flag.to_uppercase().replace('-', "_"));
        assert_eq!(
            known.get(&env).map(String::as_str),
            Some(flag),
            "start --{flag} reads {env}"
        );
    }
    let svcs = services(&compose());
    for (name, svc) in &svcs {
        let env = environment(svc);
        // Turn the variables into the flags they stand for and let the real
        // parser and checks judge them (the environment itself is left
        // alone: tests run in parallel threads).
        let mut argv = vec!["raftkv".to_string(), "start".to_string()];
        for (k, v) in &env {
            if !k.starts_with("RAFTKV_") {
                continue;
            }
            let flag = known
                .get(k)
                .unwrap_or_else(|| panic!("{name}: {k} is not a variable of `raftkv start`"));
            argv.push(format!("--{flag}"));
            argv.push(v.clone());
        }
        let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{name}: {e}"));
        let Command::Start(args) = cli.command else {
            panic!("{name}: parsed as {:?}", cli.command)
        };
        let cfg = args
            .to_node_config()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(cfg.node_id, *name);
        assert_eq!(cfg.peers.len(), 2);
    }
}

#[test]
fn each_node_keeps_its_data_in_its_own_named_volume() {
    let doc = compose();
    let declared: BTreeSet<String> = doc["volumes"]
        .as_mapping()
        .expect("top-level named volumes")
        .keys()
        .map(scalar)
        .collect();
    let mut used = BTreeSet::new();
    for (name, svc) in services(&doc) {
        let data_dir = environment(&svc)["RAFTKV_DATA_DIR"].clone();
        let mounts: Vec<(String, String)> = svc["volumes"]
            .as_sequence()
            .expect("volumes")
            .iter()
            .map(|v| {
                let s = scalar(v);
                let mut parts = s.split(':');
                (
                    parts.next().unwrap().to_string(),
                    parts.next().expect("source:target").to_string(),
                )
            })
            .collect();
        let holding: Vec<&(String, String)> = mounts
            .iter()
            .filter(|(_, target)| Path::new(&data_dir).starts_with(target))
            .collect();
        assert_eq!(
            holding.len(),
            1,
            "{name}: one mount holds {data_dir}: {mounts:?}"
        );
        let volume = &holding[0].0;
        assert!(
            declared.contains(volume),
            "{name}: {volume} is a declared named volume"
        );
        assert!(used.insert(volume.clone()), "{name} shares volume {volume}");
    }
    assert_eq!(used.len(), 3);
}

#[test]
fn health_checks_probe_the_nodes_health_endpoint() {
    let known = start_env_vars();
    for (name, svc) in services(&compose()) {
        let hc = &svc["healthcheck"];
        let test: Vec<String> = hc["test"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name}: healthcheck.test"))
            .iter()
            .map(scalar)
            .collect();
        assert_eq!(test[0], "CMD", "{name}: exec form, no shell needed");
        let via_cli = test[1..] == ["raftkv", "health"];
        let via_curl = test.iter().any(|t| t.contains("/health"));
        assert!(
            via_cli || via_curl,
            "{name}: {test:?} does not check /health"
        );
        if via_cli {
            // `raftkv health` finds the port through RAFTKV_PORT.
            assert!(known.contains_key("RAFTKV_PORT"));
            let cli = Cli::try_parse_from(["raftkv", "health"]).expect("health parses");
            assert!(matches!(cli.command, Command::Health(_)));
        }
        for key in ["interval", "timeout", "retries"] {
            assert!(!hc[key].is_null(), "{name}: healthcheck.{key}");
        }
    }
}

#[test]
fn substitution_defaults_resolve_like_compose() {
    assert_eq!(
        with_defaults("${A:-127.0.0.1}:${B-8001}:8001"),
        ("127.0.0.1:8001:8001".into(), vec!["A".into(), "B".into()])
    );
    assert_eq!(
        with_defaults("$$x ${C} $D-e"),
        ("$x  -e".into(), vec!["C".into(), "D".into()])
    );
}

/// The `FROM` lines of a Dockerfile: (image, stage name).
fn stages(text: &str) -> Vec<(String, Option<String>)> {
    text.lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("FROM "))
        .map(|rest| {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, n] if as_.eq_ignore_ascii_case("as") => Some(n.to_string()),
                [_] => None,
                other => panic!("odd FROM line: {other:?}"),
            };
            (words[0].to_string(), name)
        })
        .collect()
}

#[test]
fn runtime_stage_is_shared_with_the_prebuilt_binary_image() {
    let main = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let st = stages(&main);
    // The classic builder builds every stage up to --target, so the runtime
    // base must come first for `--target runtime-base` to need no Rust image.
    assert_eq!(
        st[0],
        (
            "${RUNTIME_IMAGE}".to_string(),
            Some("runtime-base".to_string())
        )
    );
    assert_eq!(
        st.last().unwrap(),
        &("runtime-base".to_string(), Some("runtime".to_string())),
        "the default target is runtime-base plus the built binary"
    );
    assert!(st.iter().any(|(_, n)| n.as_deref() == Some("builder")));
    let prebuilt = std::fs::read_to_string(root().join("docker/Dockerfile.prebuilt"))
        .expect("docker/Dockerfile.prebuilt");
    assert_eq!(stages(&prebuilt), vec![("${BASE_IMAGE}".to_string(), None)]);
    let body: Vec<&str> = prebuilt
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        body,
        vec![
            "ARG BASE_IMAGE=raftkv-runtime-base",
            "FROM ${BASE_IMAGE}",
            "COPY raftkv /usr/local/bin/raftkv",
        ],
        "the prebuilt image only adds the binary to runtime-base"
    );
    // Both put the binary where the runtime stage's HEALTHCHECK and
    // ENTRYPOINT find it.
    assert!(main.contains("COPY --from=builder /usr/local/bin/raftkv /usr/local/bin/raftkv"));
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_healthcheck() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let froms = lines.iter().filter(|l| l.starts_with("FROM ")).count();
    assert!(froms >= 2, "a builder and a runtime stage");
    assert!(lines.iter().any(|l| l.starts_with("COPY --from=builder")));
    let user = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(!user.ends_with("root") && !user.ends_with(" 0"), "{user}");
    assert!(lines.iter().any(|l| l.starts_with("HEALTHCHECK ")));
    assert!(
        text.contains("\"raftkv\", \"health\""),
        "HEALTHCHECK runs raftkv health"
    );
    assert!(lines
        .iter()
        .any(|l| l.starts_with("ENTRYPOINT [\"raftkv\"]")));
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    for must in ["target/", "data/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == must),
            ".dockerignore has {must}"
        );
    }
}
