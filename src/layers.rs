//! The crate's layering, checked: every `crate::<module>` a top-level
//! module's code names must be one it is allowed to depend on, and the
//! dependencies must form no cycle.
//!
//! The allowed direction (a module may use the ones listed after it):
//!
//! ```text
//! raft       pure consensus core            —
//! kv         commands and their meaning     raft
//! storage    sled and in-memory stores      raft, kv
//! node       the Raft loop, NodeHandle      raft, kv, storage
//! server     client API routes (axum)       raft, kv, node, http_client (forwarding), etcd (served on the client port)
//! etcd       etcd v3 gRPC API               raft, kv, node (error mapping)
//! transport  peer transport over HTTP       raft, kv, storage, node, server (HTTP helpers)
//! daemon     one node process               raft, kv, storage, node, server, transport
//! sim        deterministic simulation       raft, kv, storage, node
//! http_client raw HTTP/1.1 client            —
//! client     HTTP client                    raft, kv, http_client, server (JSON wire types)
//! bench      load generator                 kv, client, etcd (its generated gRPC clients)
//! cli        the command line               everything above but sim
//! ```
//!
//! Test code (`tests.rs` files and `#[cfg(test)]` items) is not counted:
//! tests may reach across layers (the core's tests drive it with an
//! in-memory log store).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → the modules it may use.
const ALLOWED: &[(&str, &[&str])] = &[
    ("raft", &[]),
    ("kv", &["raft"]),
    ("storage", &["raft", "kv"]),
    ("node", &["raft", "kv", "storage"]),
    ("http_client", &[]),
    ("server", &["raft", "kv", "node", "http_client", "etcd"]),
    ("etcd", &["raft", "kv", "node"]),
    ("transport", &["raft", "kv", "storage", "node", "server"]),
    (
        "daemon",
        &["raft", "kv", "storage", "node", "server", "transport"],
    ),
    ("sim", &["raft", "kv", "storage", "node"]),
    // The client parses answers with the server's JSON wire types
    // (server::json), so both sides read the same shapes.
    ("client", &["raft", "kv", "http_client", "server"]),
    // The bench speaks etcd's gRPC to both systems through the clients
    // generated in etcd::pb.
    ("bench", &["kv", "client", "etcd"]),
    (
        "cli",
        &[
            "raft",
            "kv",
            "storage",
            "node",
            "server",
            "transport",
            "daemon",
            "client",
            "http_client",
            "bench",
        ],
    ),
];

fn rs_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .expect("readable source dir")
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for p in entries {
            rs_files(&p, out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("tests.rs") {
        out.push(path.to_path_buf());
    }
}

/// The code lines of a file: comments and `#[cfg(test)]` items left out.
fn code_lines(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("//") {
            continue;
        }
        if t == "#[cfg(test)]" {
            // Skip the item: up to its matching closing brace (or `;`).
            let mut depth = 0i32;
            for l in lines.by_ref() {
                depth += l.matches('{').count() as i32 - l.matches('}').count() as i32;
                if depth <= 0 && (l.contains('}') || l.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        out.push(line);
    }
    out
}

/// `crate::<name>` references in `line`.
fn crate_refs(line: &str) -> impl Iterator<Item = &str> {
    line.match_indices("crate::").filter_map(move |(i, _)| {
        if i > 0 && line[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '$') {
            return None;
        }
        let rest = &line[i + "crate::".len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        (end > 0).then(|| &rest[..end])
    })
}

/// Module → the other top-level modules its code names.
fn actual_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = ALLOWED.iter().map(|(m, _)| m.to_string()).collect();
    let mut graph = BTreeMap::new();
    for m in &modules {
        let dir = src.join(m);
        let root = if dir.is_dir() {
            dir
        } else {
            src.join(format!("{m}.rs"))
        };
        let mut files = Vec::new();
        rs_files(&root, &mut files);
        assert!(!files.is_empty(), "no source for module `{m}`");
        let mut deps = BTreeSet::new();
        for f in files {
            let text = std::fs::read_to_string(&f).expect("readable source");
            for line in code_lines(&text) {
                for r in crate_refs(line) {
                    if r != m && modules.contains(r) {
                        deps.insert(r.to_string());
                    }
                }
            }
        }
        graph.insert(m.clone(), deps);
    }
    graph
}

/// A cycle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(k) = path.iter().position(|p| p == n) {
            let mut cycle = path[k..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for d in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn every_top_level_module_is_listed() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let listed: BTreeSet<&str> = ALLOWED.iter().map(|(m, _)| *m).collect();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        if ["lib", "main", "layers"].contains(&name.as_str()) {
            continue;
        }
        assert!(
            listed.contains(name.as_str()),
            "top-level module `{name}` is missing from layers::ALLOWED"
        );
    }
}

#[test]
fn dependencies_follow_the_layers_and_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = actual_graph(&src);
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    for (m, deps) in &graph {
        for d in deps {
            if !allowed[m.as_str()].contains(&d.as_str()) {
                wrong.push(format!("{m} -> {d}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies against the layering: {wrong:?}"
    );
    if let Some(c) = find_cycle(&graph) {
        panic!("import cycle: {}", c.join(" -> "));
    }
    // The table itself is a direction, not a cycle.
    let table: BTreeMap<String, BTreeSet<String>> = ALLOWED
        .iter()
        .map(|(m, ds)| (m.to_string(), ds.iter().map(|d| d.to_string()).collect()))
        .collect();
    assert_eq!(find_cycle(&table), None);
    // The node runtime knows neither the HTTP server nor the transport.
    assert!(!graph["node"].contains("server") && !graph["node"].contains("transport"));
}

#[test]
fn the_checks_see_references_and_cycles() {
    let text =
        "use crate::node::X;\n// crate::server in a comment\nfn f() { crate::storage::g(); }\n\
                #[cfg(test)]\nmod tests {\n    use crate::sim;\n}\n";
    let refs: Vec<&str> = code_lines(text).into_iter().flat_map(crate_refs).collect();
    assert_eq!(refs, ["node", "storage"]);
    let g: BTreeMap<String, BTreeSet<String>> =
        [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"])]
            .into_iter()
            .map(|(m, ds)| (m.to_string(), ds.into_iter().map(String::from).collect()))
            .collect();
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
