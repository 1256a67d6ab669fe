//! etcd's own command-line tool against RaftKV and against a real etcd 3.4,
//! in the same test: every test runs one scenario of `etcdctl` commands on a
//! fresh three-node etcd cluster (the oracle), then on a fresh three-node
//! RaftKV cluster, and asserts that both printed the same thing step by step.
//!
//! What legitimately differs is normalized away before comparing: member
//! and cluster ids, raft terms, timings, paths. Revisions are compared
//! relative to a baseline read at the start of each scenario, since both
//! systems count one revision per mutation. Each scenario also checks a few
//! absolute facts; if etcd itself fails them the test is wrong and says so.
//!
//! Without `etcd`/`etcdctl` on PATH every test prints `SKIPPED: ...` and
//! passes, unless `RAFTKV_REQUIRE_ETCD=1`. Every process is killed by PID on
//! drop; every wait is bounded.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
#[path = "common/etcd.rs"]
mod etcd;

use etcd::{say, take_lines, Ctl, EtcdCluster, Out};

/// One system under test, as a scenario sees it.
struct Sys<'a> {
    name: &'static str,
    ctl: Ctl,
    dir: &'a Path,
    /// The store's revision before the scenario's first command.
    base: i64,
}

impl Sys<'_> {
    /// The absolute revision `d` mutations after the baseline.
    fn rev(&self, d: i64) -> String {
        (self.base + d).to_string()
    }
}

/// What a scenario recorded: comparable steps and failed absolute checks.
#[derive(Default)]
struct Tx {
    steps: Vec<(String, String)>,
    problems: Vec<String>,
}

impl Tx {
    fn step(&mut self, label: impl Into<String>, text: impl Into<String>) {
        self.steps.push((label.into(), text.into()));
    }

    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.problems.push(what.into());
        }
    }
}

/// Reads the current revision (header of an empty range).
fn revision(ctl: &Ctl) -> Option<i64> {
    let out = ctl.run(&["get", "compat-baseline-probe", "-w", "json"]);
    let v: Value = serde_json::from_str(&out.stdout).ok()?;
    v["header"]["revision"].as_i64()
}

const REV_FIELDS: [&str; 4] = [
    "revision",
    "create_revision",
    "mod_revision",
    "compact_revision",
];
const ID_FIELDS: [&str; 3] = ["cluster_id", "member_id", "raft_term"];

/// Drops ids and terms, makes revisions relative to `base`.
fn norm_value(v: &mut Value, base: i64) {
    match v {
        Value::Object(map) => {
            for f in ID_FIELDS {
                map.remove(f);
            }
            for (k, x) in map.iter_mut() {
                if REV_FIELDS.contains(&k.as_str()) {
                    if let Some(n) = x.as_i64() {
                        if n > 0 {
                            *x = Value::String(format!("base{:+}", n - base));
                        }
                    }
                } else {
                    norm_value(x, base);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|x| norm_value(x, base)),
        _ => {}
    }
}

/// A `-w json` output, normalized (or the raw text if it is not JSON).
fn norm_json(out: &Out, base: i64) -> String {
    match serde_json::from_str::<Value>(out.stdout.trim()) {
        Ok(mut v) => {
            norm_value(&mut v, base);
            format!("exit={:?}\n{v}\n{}", out.code, out.errors())
        }
        Err(_) => format!("not JSON: {}", out.text()),
    }
}

/// With `RAFTKV_COMPAT_SHOW=1`, prints a system's whole transcript.
fn show(system: &str, test: &str, tx: &Tx) {
    if std::env::var("RAFTKV_COMPAT_SHOW").as_deref() != Ok("1") {
        return;
    }
    for (label, text) in &tx.steps {
        say(&format!(
            "[{system}] {test} :: {label}\n    {}",
            text.replace('\n', "\n    ")
        ));
    }
}

/// Runs `scenario` on etcd, then on RaftKV, and asserts both answered alike.
fn compat(test: &str, scenario: fn(&Sys, &mut Tx)) {
    if !etcd::tools_or_skip(test) {
        return;
    }
    let _serial = etcd::serial();
    let etcd_tx = {
        let cluster = EtcdCluster::start(3);
        let ctl = cluster.ctl();
        let base = revision(&ctl).expect("etcd answers a range");
        let sys = Sys {
            name: "etcd",
            ctl,
            dir: cluster.dir(),
            base,
        };
        let mut tx = Tx::default();
        scenario(&sys, &mut tx);
        show("etcd", test, &tx);
        assert!(
            tx.problems.is_empty(),
            "{test}: etcd 3.4 itself fails this scenario's checks, so the test is wrong:\n{}",
            tx.problems.join("\n")
        );
        tx
    };
    if std::env::var("RAFTKV_COMPAT_ETCD_ONLY").as_deref() == Ok("1") {
        say(&format!(
            "{test}: etcd half only (RAFTKV_COMPAT_ETCD_ONLY=1): {} steps, RaftKV not run",
            etcd_tx.steps.len()
        ));
        return;
    }
    let (cluster, ctl) = etcd::start_raftkv();
    let health = ctl.run_limit(&["endpoint", "health"], "", Duration::from_secs(20));
    assert_eq!(
        health.code,
        Some(0),
        "{test}: RaftKV does not answer etcdctl (is etcd's gRPC API served on the client port yet?): {}\n{}",
        health.text(),
        health.stderr.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
    let Some(base) = revision(&ctl) else {
        panic!("{test}: RaftKV answers no `get -w json` with a header revision");
    };
    let sys = Sys {
        name: "raftkv",
        ctl,
        dir: cluster.dir(),
        base,
    };
    let mut tx = Tx::default();
    scenario(&sys, &mut tx);
    show("raftkv", test, &tx);
    let known = |what: &str| {
        KNOWN
            .iter()
            .find(|k| k.test == test && what.starts_with(k.step))
    };
    let strict = std::env::var("RAFTKV_COMPAT_STRICT").as_deref() == Ok("1");
    let mut diffs: Vec<String> = Vec::new();
    let mut tolerated: Vec<String> = Vec::new();
    let mut seen_known: Vec<&str> = Vec::new();
    let mut steps_differ = 0;
    for p in &tx.problems {
        let d = format!("RaftKV fails a check etcd passes: {p}");
        match known(p) {
            Some(k) if !strict => {
                seen_known.push(k.step);
                tolerated.push(format!(
                    "{d}
  known: {}",
                    k.why
                ));
            }
            _ => diffs.push(d),
        }
    }
    for (i, (label, want)) in etcd_tx.steps.iter().enumerate() {
        let d = match tx.steps.get(i) {
            Some((l, got)) if l == label && got == want => continue,
            Some((l, got)) => format!(
                "step {label:?} (raftkv step {l:?}):\n  etcd:   {}\n  raftkv: {}",
                want.replace('\n', "\n          "),
                got.replace('\n', "\n          ")
            ),
            None => format!("step {label:?}: RaftKV's run has no such step"),
        };
        match known(label) {
            Some(k) if !strict => {
                seen_known.push(k.step);
                tolerated.push(format!("{d}\n  known: {}", k.why));
                steps_differ += 1;
            }
            _ => diffs.push(d),
        }
    }
    // A known difference that no longer shows must leave the list, so the
    // list stays the truth about what still differs.
    let fixed: Vec<&str> = KNOWN
        .iter()
        .filter(|k| k.test == test && k.always && !seen_known.contains(&k.step))
        .map(|k| k.step)
        .collect();
    for t in &tolerated {
        say(&format!(
            "{test}: KNOWN DIFFERENCE (tolerated; RAFTKV_COMPAT_STRICT=1 fails on it): {t}"
        ));
    }
    assert!(
        diffs.is_empty(),
        "{test}: {} difference(s) between etcd 3.4 and RaftKV (of {} steps):\n{}",
        diffs.len(),
        etcd_tx.steps.len(),
        diffs.join("\n")
    );
    assert!(
        fixed.is_empty(),
        "{test}: these known differences are gone; remove them from KNOWN in tests/etcdctl_compat.rs: {fixed:?}"
    );
    say(&format!(
        "{test}: {} of {} steps alike on etcd 3.4 and RaftKV; {} known difference(s)",
        etcd_tx.steps.len() - steps_differ,
        etcd_tx.steps.len(),
        tolerated.len()
    ));
}

/// A difference between etcd and RaftKV that is understood and tracked:
/// reported on every run, not failed on (unless `RAFTKV_COMPAT_STRICT=1`),
/// and a failure once it is gone so the entry gets removed.
struct Known {
    test: &'static str,
    /// Prefix of the step label (or of the failed check's message).
    step: &'static str,
    why: &'static str,
    /// Shows on every run (false: depends on the machine's load, so its
    /// absence is not taken as a fix).
    always: bool,
}

const KNOWN: &[Known] = &[
    Known {
        test: "snapshot_save",
        step: "snapshot status",
        why: "`etcdctl snapshot save` works, but the file is RaftKV's own snapshot format, not \
              etcd's bbolt database, so `etcdctl snapshot status` says `invalid database` \
              (`raftkv snapshot status` reads it)",
        always: true,
    },
    Known {
        test: "check_perf_small_load",
        step: "check perf",
        why: "after its 60 s load check perf deletes its prefix (about 9000 keys) in one request; \
              a debug-build RaftKV takes longer than its 5 s --request-timeout-ms to apply that \
              delete, answers `etcdserver: request timed out`, and applies it later; etcd takes \
              milliseconds",
        always: false,
    },
];

/// A step's label: the command, with the `--rev` argument relative to the
/// baseline so labels are the same on both systems.
fn label(s: &Sys, args: &[&str]) -> String {
    let mut words = Vec::new();
    for (i, a) in args.iter().enumerate() {
        match a.parse::<i64>() {
            Ok(n) if i > 0 && args[i - 1] == "--rev" => words.push(format!("base{:+}", n - s.base)),
            _ => words.push(a.to_string()),
        }
    }
    words.join(" ")
}

/// Runs `etcdctl ARGS` and records its exit code, stdout and errors.
fn rec(s: &Sys, t: &mut Tx, args: &[&str]) -> Out {
    let out = s.ctl.run(args);
    t.step(label(s, args), out.text());
    out
}

/// Runs `etcdctl ARGS -w json` and records the normalized JSON.
fn rec_json(s: &Sys, t: &mut Tx, args: &[&str]) -> Option<Value> {
    let mut a = args.to_vec();
    a.extend(["-w", "json"]);
    let out = s.ctl.run(&a);
    t.step(label(s, &a), norm_json(&out, s.base));
    serde_json::from_str(out.stdout.trim()).ok()
}

fn put_all(s: &Sys, t: &mut Tx, kvs: &[(&str, &str)]) {
    for &(k, v) in kvs {
        rec(s, t, &["put", k, v]);
    }
}

#[test]
fn kv_put_get_ranges() {
    compat("kv_put_get_ranges", |s, t| {
        // Revisions base+1 ..= base+9; values unique so VALUE sorts are total.
        put_all(
            s,
            t,
            &[
                ("a", "1"),
                ("ab", "2"),
                ("abc", "3"),
                ("b", "4"),
                ("c/1", "5"),
                ("c/2", "6"),
                ("z", "7"),
                ("a", "1a"),
                ("c/1", "5b"),
            ],
        );
        rec(s, t, &["put", "ab", "2b", "--prev-kv"]); // base+10
        let a = rec(s, t, &["get", "a"]);
        t.check(a.stdout == "a\n1a\n", format!("get a: {a:?}"));
        rec(s, t, &["get", "a", "--prefix"]);
        rec(s, t, &["get", "b", "--from-key"]);
        rec(s, t, &["get", "a", "c"]);
        rec(s, t, &["get", "ab", "c/2"]);
        rec(s, t, &["get", "", "--prefix", "--limit", "2"]);
        rec(s, t, &["get", "missing"]);
        rec(s, t, &["get", "c/", "--prefix", "--consistency=s"]);
        for (by, order) in [
            ("KEY", "DESCEND"),
            ("CREATE", "DESCEND"),
            ("CREATE", "ASCEND"),
            ("MODIFY", "DESCEND"),
            ("MODIFY", "ASCEND"),
            ("VALUE", "ASCEND"),
            ("VALUE", "DESCEND"),
        ] {
            rec(
                s,
                t,
                &[
                    "get",
                    "",
                    "--prefix",
                    &format!("--sort-by={by}"),
                    &format!("--order={order}"),
                ],
            );
        }
        rec(
            s,
            t,
            &[
                "get",
                "",
                "--prefix",
                "--sort-by=MODIFY",
                "--order=DESCEND",
                "--limit",
                "3",
            ],
        );
        rec(s, t, &["get", "a", "--prefix", "--keys-only"]);
        rec(s, t, &["get", "a", "--prefix", "--print-value-only"]);
        let old = rec(s, t, &["get", "a", "--rev", &s.rev(1)]);
        t.check(
            old.stdout == "a\n1\n",
            format!("get a --rev base+1: {old:?}"),
        );
        rec(s, t, &["get", "", "--prefix", "--rev", &s.rev(5)]);
        rec_json(s, t, &["get", "", "--prefix", "--rev", &s.rev(5)]);
        let all = rec_json(s, t, &["get", "a", "--prefix"]);
        t.check(
            all.as_ref().and_then(|v| v["count"].as_i64()) == Some(3),
            format!("get a --prefix -w json count: {all:?}"),
        );
        let lim = rec_json(s, t, &["get", "", "--prefix", "--limit", "2"]);
        t.check(
            lim.as_ref()
                .map(|v| (v["more"].as_bool(), v["count"].as_i64()))
                == Some((Some(true), Some(7))),
            format!("get --limit 2 -w json more/count: {lim:?}"),
        );
        rec_json(s, t, &["get", "b", "--from-key", "--limit", "3"]);
        rec_json(s, t, &["get", "", "--prefix", "--keys-only"]);
        rec_json(s, t, &["get", "missing"]);
        rec_json(s, t, &["put", "c/2", "6b", "--prev-kv"]);
    });
}

#[test]
fn delete_ranges_and_prev_kv() {
    compat("delete_ranges_and_prev_kv", |s, t| {
        put_all(
            s,
            t,
            &[
                ("a", "1"),
                ("ab", "2"),
                ("abc", "3"),
                ("b", "4"),
                ("c", "5"),
                ("d", "6"),
                ("e", "7"),
                ("f", "8"),
            ],
        );
        let d = rec(s, t, &["del", "a", "--prefix", "--prev-kv"]);
        t.check(
            d.stdout == "3\na\n1\nab\n2\nabc\n3\n",
            format!("del a --prefix --prev-kv: {d:?}"),
        );
        rec(s, t, &["del", "c", "e", "--prev-kv"]);
        rec(s, t, &["del", "missing"]);
        rec(s, t, &["del", "e"]);
        rec_json(s, t, &["del", "f", "--prev-kv"]);
        rec(s, t, &["put", "g", "9"]);
        rec(s, t, &["del", "b", "--from-key", "--prev-kv"]);
        rec_json(s, t, &["get", "", "--prefix"]);
        // History survives deletes: the prefix as it was before them.
        rec(s, t, &["get", "a", "--prefix", "--rev", &s.rev(8)]);
    });
}

/// The three sections of `etcdctl txn`'s stdin form.
fn txn_input(compares: &[String], success: &[&str], failure: &[&str]) -> String {
    format!(
        "{}\n\n{}\n\n{}\n\n",
        compares.join("\n"),
        success.join("\n"),
        failure.join("\n")
    )
}

#[test]
fn txn_from_stdin() {
    compat("txn_from_stdin", |s, t| {
        put_all(s, t, &[("k1", "v1"), ("k2", "v2")]); // base+1, base+2
        let ok = txn_input(
            &[
                r#"value("k1") = "v1""#.into(),
                r#"version("k2") = "1""#.into(),
            ],
            &["put k1 v1b", "get k2", "del k3"],
            &["put k3 nope"],
        );
        let out = s.ctl.run_stdin(&["txn"], &ok); // base+3
        t.step("txn success", out.text());
        t.check(
            out.stdout.starts_with("SUCCESS"),
            format!("txn success: {out:?}"),
        );
        let fail = txn_input(
            &[r#"value("k1") = "zzz""#.into()],
            &["put k3 never"],
            &["put k3 v3", "get k1", "get k --prefix"],
        );
        let out = s.ctl.run_stdin(&["txn"], &fail); // base+4
        t.step("txn failure", out.text());
        t.check(
            out.stdout.starts_with("FAILURE"),
            format!("txn failure: {out:?}"),
        );
        let revs = txn_input(
            &[
                format!(r#"mod("k1") = "{}""#, s.rev(3)),
                format!(r#"create("k2") < "{}""#, s.rev(3)),
                r#"version("k3") != "0""#.into(),
            ],
            &["del k3", "get k1 k3"],
            &["put k4 wrong"],
        );
        let out = s.ctl.run_stdin(&["txn", "-w", "json"], &revs); // base+5
        t.step("txn revisions -w json", norm_json(&out, s.base));
        let none = txn_input(
            &[r#"create("k9") > "0""#.into()],
            &["put k9 exists"],
            &["get k --prefix"],
        );
        let out = s.ctl.run_stdin(&["txn", "-w", "json"], &none);
        t.step("txn read-only failure -w json", norm_json(&out, s.base));
        let inter = txn_input(
            &[r#"value("k1") != "v1""#.into()],
            &["put k5 v5", "get k5"],
            &[],
        );
        let out = s.ctl.run_stdin(&["txn", "--interactive"], &inter); // base+6
        t.step("txn --interactive", out.text());
        t.check(
            out.stdout.contains("compares:") && out.stdout.contains("SUCCESS"),
            format!("txn --interactive: {out:?}"),
        );
        rec_json(s, t, &["get", "k", "--prefix"]);
    });
}

/// Reads watch output until the last two lines are `key`, `value` (the
/// sentinel event), or `within` passes.
fn watch_until(
    rx: &std::sync::mpsc::Receiver<String>,
    key: &str,
    value: &str,
    within: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut lines = Vec::new();
    loop {
        let n = lines.len();
        if n >= 2 && lines[n - 2] == key && lines[n - 1] == value {
            return lines;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let got = take_lines(rx, 1, left);
        if got.is_empty() {
            lines.push(format!("<no more lines within {within:?}>"));
            return lines;
        }
        lines.extend(got);
    }
}

#[test]
fn watch_rev_prev_kv_prefix() {
    compat("watch_rev_prev_kv_prefix", |s, t| {
        // History: base+1 ..= base+5.
        put_all(
            s,
            t,
            &[("w/a", "1"), ("w/b", "2"), ("x", "0"), ("w/a", "3")],
        );
        rec(s, t, &["del", "w/b"]);
        let dir = s.dir;
        let (mut a, rx_a) = s.ctl.spawn_lines(
            &["watch", "--prefix", "w/", "--rev", &s.rev(1), "--prev-kv"],
            &dir.join("watch-a.err"),
        );
        let (mut b, rx_b) = s.ctl.spawn_lines(
            &["watch", "w/a", "--rev", &s.rev(6)],
            &dir.join("watch-b.err"),
        );
        let (mut c, rx_c) = s.ctl.spawn_lines(
            &["watch", "w/a", "w/c", "--rev", &s.rev(2)],
            &dir.join("watch-c.err"),
        );
        // Live changes: base+6 ..= base+9 (the revisions do not depend on
        // when the watchers got established: each starts at a fixed one).
        put_all(s, t, &[("w/c", "5"), ("w/b", "6")]);
        rec(s, t, &["del", "w/", "--prefix"]);
        rec(s, t, &["put", "w/a", "end"]);
        let within = Duration::from_secs(20);
        let la = watch_until(&rx_a, "w/a", "end", within);
        let lb = watch_until(&rx_b, "w/a", "end", within);
        let lc = watch_until(&rx_c, "w/a", "end", within);
        for p in [&mut a, &mut b, &mut c] {
            let _ = p.0.kill();
        }
        t.check(
            la.len() > 2 && la[..3] == ["PUT", "w/a", "1"],
            format!("watch --prefix w/ --rev base+1 starts with the first put: {la:?}"),
        );
        t.step("watch --prefix w/ --rev base+1 --prev-kv", la.join("\n"));
        t.step("watch w/a --rev base+6", lb.join("\n"));
        t.step("watch w/a w/c --rev base+2", lc.join("\n"));
    });
}

#[test]
fn compaction_then_old_revisions() {
    compat("compaction_then_old_revisions", |s, t| {
        for v in ["1", "2", "3", "4", "5"] {
            rec(s, t, &["put", "c", v]); // base+1 ..= base+5
        }
        let out = s.ctl.run(&["compaction", &s.rev(3)]);
        t.step(
            "compaction base+3",
            out.text().replace(&s.rev(3), "<base+3>"),
        );
        let old = s.ctl.run(&["get", "c", "--rev", &s.rev(2)]);
        t.step("get c --rev base+2", old.text());
        t.check(
            old.errors() == "Error: etcdserver: mvcc: required revision has been compacted",
            format!("get below the compaction: {old:?}"),
        );
        rec(s, t, &["get", "c", "--rev", &s.rev(3)]);
        rec(s, t, &["get", "c", "--rev", &s.rev(4)]);
        let future = s.ctl.run(&["get", "c", "--rev", &s.rev(99)]);
        t.step("get c --rev base+99", future.text());
        let again = s.ctl.run(&["compaction", &s.rev(2)]);
        t.step("compaction base+2 (below the last one)", again.text());
        let w = s.ctl.run_limit(
            &["watch", "c", "--rev", &s.rev(1)],
            "",
            Duration::from_secs(15),
        );
        t.step("watch c --rev base+1 (compacted)", w.text());
        let h = hashkv_equal(s, false, &[]);
        t.step("endpoint hashkv after compaction", h);
    });
}

/// Polls `endpoint hashkv [--cluster] -w json` (bounded) until every
/// member reports the same hash; returns a normalized summary. Without
/// `--cluster` etcdctl asks the endpoints it was given; with it, the client
/// URLs that `member list` reports.
fn hashkv_equal(s: &Sys, cluster: bool, extra: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut args = vec!["endpoint", "hashkv", "-w", "json"];
    if cluster {
        args.push("--cluster");
    }
    args.extend_from_slice(extra);
    loop {
        let out = s.ctl.run(&args);
        let v: Value = serde_json::from_str(out.stdout.trim()).unwrap_or(Value::Null);
        let entries = v.as_array().cloned().unwrap_or_default();
        let hashes: Vec<Option<u64>> = entries
            .iter()
            .map(|e| e["HashKV"]["hash"].as_u64())
            .collect();
        let compacts: Vec<String> = entries
            .iter()
            .map(|e| {
                let mut c = e["HashKV"]["compact_revision"].clone();
                let mut wrap = serde_json::json!({ "compact_revision": c.take() });
                norm_value(&mut wrap, s.base);
                wrap["compact_revision"].to_string()
            })
            .collect();
        let equal = hashes.len() == 3
            && hashes.iter().all(|h| h.is_some())
            && hashes.windows(2).all(|w| w[0] == w[1]);
        if equal || Instant::now() > deadline {
            return format!(
                "exit={:?} entries={} hashes_equal={} compact_revisions={:?} {}",
                out.code,
                entries.len(),
                equal,
                compacts,
                failures(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn member_list() {
    compat("member_list", |s, t| {
        let out = s.ctl.run(&["member", "list"]);
        let clients: Vec<String> = s
            .ctl
            .endpoints
            .iter()
            .map(|e| format!("http://{e}"))
            .collect();
        let mut lines: Vec<String> = out
            .stdout
            .lines()
            .map(|l| {
                let cols: Vec<&str> = l.split(", ").collect();
                if cols.len() != 6 {
                    return format!("unexpected line: {l}");
                }
                format!(
                    "<id>, {}, <name:{}>, <peer:{}>, <client known:{}>, {}",
                    cols[1],
                    !cols[2].is_empty(),
                    cols[3].starts_with("http"),
                    clients.iter().any(|c| c == cols[4]),
                    cols[5]
                )
            })
            .collect();
        lines.sort();
        t.check(
            lines.len() == 3 && lines.iter().all(|l| l.contains(", started, ")),
            format!("member list: 3 started members: {out:?}"),
        );
        t.step(
            "member list",
            format!("exit={:?}\n{}", out.code, lines.join("\n")),
        );
        let out = s.ctl.run(&["member", "list", "-w", "json"]);
        let v: Value = serde_json::from_str(out.stdout.trim()).unwrap_or(Value::Null);
        let members = v["members"].as_array().cloned().unwrap_or_default();
        let mut ids: Vec<u64> = members.iter().filter_map(|m| m["ID"].as_u64()).collect();
        ids.sort();
        ids.dedup();
        let mut urls: Vec<String> = members
            .iter()
            .flat_map(|m| m["clientURLs"].as_array().cloned().unwrap_or_default())
            .filter_map(|u| u.as_str().map(str::to_string))
            .collect();
        urls.sort();
        let mut want = clients.clone();
        want.sort();
        t.step(
            "member list -w json",
            format!(
                "exit={:?} members={} distinct_nonzero_ids={} names={} client_urls_are_endpoints={} header_has_member={}",
                out.code,
                members.len(),
                ids.iter().filter(|&&i| i != 0).count(),
                members.iter().filter(|m| m["name"].as_str().is_some_and(|n| !n.is_empty())).count(),
                urls == want,
                v["header"]["member_id"].as_u64().is_some_and(|i| ids.contains(&i)),
            ),
        );
    });
}

/// What etcdctl said went wrong: its `Error:` lines and the per-endpoint
/// "Failed to get ..." lines of the multi-endpoint commands.
fn failures(out: &Out) -> String {
    let mut lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("Error:") || l.starts_with("Failed to "))
        .collect();
    lines.sort();
    lines.dedup();
    lines.join(" | ")
}

/// `endpoint status [--cluster] -w json` as (endpoint, member id, leader id).
fn statuses(ctl: &Ctl, cluster: bool) -> (Out, Vec<(String, u64, u64)>) {
    let mut args = vec!["endpoint", "status", "-w", "json"];
    if cluster {
        args.push("--cluster");
    }
    let out = ctl.run(&args);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap_or(Value::Null);
    let list = v
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                e["Endpoint"].as_str().unwrap_or_default().to_string(),
                e["Status"]["header"]["member_id"].as_u64().unwrap_or(0),
                e["Status"]["leader"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    (out, list)
}

#[test]
fn endpoint_status_health_hashkv() {
    compat("endpoint_status_health_hashkv", |s, t| {
        put_all(s, t, &[("h/1", "a"), ("h/2", "b"), ("h/1", "c")]);
        for cluster in [false, true] {
            let mut args = vec!["endpoint", "health"];
            if cluster {
                args.push("--cluster");
            }
            let out = s.ctl.run(&args);
            let mut lines: Vec<String> = out
                .stdout
                .lines()
                .chain(out.stderr.lines())
                .filter(|l| l.contains(" is healthy") || l.contains(" is unhealthy"))
                .map(|l| {
                    let (ep, rest) = l.split_once(' ').unwrap_or((l, ""));
                    let rest = rest.split(": took").next().unwrap_or(rest);
                    let known = s.ctl.endpoints.iter().any(|e| ep.ends_with(e.as_str()));
                    format!("<endpoint known:{known}> {rest}")
                })
                .collect();
            lines.sort();
            t.step(
                args.join(" "),
                format!("exit={:?}\n{}", out.code, lines.join("\n")),
            );
        }
        for cluster in [false, true] {
            let flag = if cluster { " --cluster" } else { "" };
            let (out, list) = statuses(&s.ctl, cluster);
            let leaders: Vec<u64> = list.iter().map(|e| e.2).collect();
            let one_leader = list.iter().filter(|e| e.1 == e.2).count();
            let v: Value = serde_json::from_str(out.stdout.trim()).unwrap_or(Value::Null);
            let entries = v.as_array().cloned().unwrap_or_default();
            let versions: Vec<String> = entries
                .iter()
                .map(|e| {
                    e["Status"]["version"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                })
                .collect();
            let summary = format!(
                "exit={:?} entries={} same_leader={} leader_is_a_member={} versions_nonempty={} db_size_positive={} {}",
                out.code,
                list.len(),
                leaders.windows(2).all(|w| w[0] == w[1]),
                one_leader == 1,
                versions.iter().all(|v| !v.is_empty()),
                entries
                    .iter()
                    .all(|e| e["Status"]["dbSize"].as_i64().unwrap_or(0) > 0),
                failures(&out),
            );
            t.check(
                list.len() == 3 && one_leader == 1,
                format!("endpoint status{flag} -w json: {summary}"),
            );
            t.step(format!("endpoint status{flag} -w json"), summary);
            if !cluster {
                say(&format!(
                    "{}: endpoint status versions {versions:?}",
                    s.name
                ));
            }
            let mut args = vec!["endpoint", "status"];
            if cluster {
                args.push("--cluster");
            }
            let out = s.ctl.run(&args);
            let rows: Vec<Vec<&str>> = out
                .stdout
                .lines()
                .map(|l| l.split(", ").collect())
                .collect();
            t.step(
                format!("endpoint status{flag} (table)"),
                format!(
                    "exit={:?} rows={} columns={:?} leaders={} {}",
                    out.code,
                    rows.len(),
                    rows.iter().map(Vec::len).collect::<Vec<_>>(),
                    rows.iter().filter(|r| r.get(4) == Some(&"true")).count(),
                    failures(&out),
                ),
            );
            let h = hashkv_equal(s, cluster, &[]);
            t.check(
                h.contains("hashes_equal=true"),
                format!("endpoint hashkv{flag}: {h}"),
            );
            t.step(format!("endpoint hashkv{flag}"), h);
            let h = hashkv_equal(s, cluster, &["--rev", &s.rev(2)]);
            t.step(format!("endpoint hashkv{flag} --rev base+2"), h);
        }
    });
}

#[test]
fn snapshot_save() {
    compat("snapshot_save", |s, t| {
        put_all(s, t, &[("s/1", "a"), ("s/2", "b"), ("s/3", "c")]);
        let path = s.dir.join("compat.snapshot.db");
        let path_s = path.display().to_string();
        // `snapshot save` takes exactly one endpoint.
        let one = vec![s.ctl.endpoints[0].clone()];
        let out = s.ctl.run_on(
            &one,
            &["snapshot", "save", &path_s],
            "",
            Duration::from_secs(60),
        );
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        t.step(
            "snapshot save",
            format!(
                "{}file_nonempty={}",
                out.text().replace(&path_s, "<path>"),
                size > 0
            ),
        );
        if out.code != Some(0) {
            say(&format!(
                "{}: snapshot save is not supported: {}",
                s.name,
                out.errors()
            ));
        }
        let st = s.ctl.run_on(
            &one,
            &["snapshot", "status", &path_s, "-w", "json"],
            "",
            Duration::from_secs(30),
        );
        let v: Value = serde_json::from_str(st.stdout.trim()).unwrap_or(Value::Null);
        let mut rev = serde_json::json!({ "revision": v["revision"].clone() });
        norm_value(&mut rev, s.base);
        t.step(
            "snapshot status -w json (of the saved file)",
            format!(
                "exit={:?} revision={} has_keys={} {}",
                st.code,
                rev["revision"],
                v["totalKey"].as_i64().unwrap_or(0) > 0,
                st.errors()
            ),
        );
    });
}

#[test]
fn move_leader() {
    compat("move_leader", |s, t| {
        let (_, list) = statuses(&s.ctl, false);
        let Some(leader) = list.iter().find(|e| e.1 == e.2).cloned() else {
            t.check(false, format!("no leader in endpoint status: {list:?}"));
            return;
        };
        let Some(target) = list.iter().find(|e| e.1 != leader.1).cloned() else {
            t.check(false, format!("no follower in endpoint status: {list:?}"));
            return;
        };
        let hex = |id: u64| format!("{id:x}");
        let norm = |o: &Out| {
            let mut x = o
                .text()
                .replace(&hex(leader.1), "<leader>")
                .replace(&hex(target.1), "<target>");
            for e in &s.ctl.endpoints {
                x = x.replace(e.as_str(), "<endpoint>");
            }
            x
        };
        // Only a follower given: etcdctl finds no leader to ask.
        let follower_ep = target.0.trim_start_matches("http://").to_string();
        let out = s.ctl.run_on(
            &[follower_ep],
            &["move-leader", &hex(target.1)],
            "",
            Duration::from_secs(30),
        );
        t.step("move-leader via a follower only", norm(&out));
        let out = s.ctl.run(&["move-leader", &hex(target.1)]);
        t.step("move-leader", norm(&out));
        t.check(
            out.stdout.contains("Leadership transferred"),
            format!("move-leader: {out:?}"),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let moved = loop {
            let (_, now) = statuses(&s.ctl, false);
            if now.len() == 3 && now.iter().all(|e| e.2 == target.1) {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        t.step(
            "every member reports the target as leader",
            moved.to_string(),
        );
        // The cluster still takes writes under its new leader.
        rec(s, t, &["put", "after-move", "1"]);
        rec(s, t, &["get", "after-move"]);
        let out = s.ctl.run(&["move-leader", "ffffffff"]);
        t.step("move-leader to an unknown member", norm(&out));
    });
}

/// `etcdctl check perf` costs a minute per system, so a plain `cargo test`
/// skips it; CI (`RAFTKV_REQUIRE_ETCD=1`) and `RAFTKV_CHECK_PERF=1` run it.
#[test]
fn check_perf_small_load() {
    let on = |k: &str| std::env::var(k).as_deref() == Ok("1");
    if !on(etcd::REQUIRE_ENV) && !on("RAFTKV_CHECK_PERF") {
        say("SKIPPED: check_perf_small_load (about 2 minutes; set RAFTKV_CHECK_PERF=1 or RAFTKV_REQUIRE_ETCD=1)");
        return;
    }
    compat("check_perf_small_load", |s, t| {
        let started = Instant::now();
        let out = s
            .ctl
            .run_limit(&["check", "perf", "--load=s"], "", Duration::from_secs(180));
        let secs = started.elapsed().as_secs_f64();
        // etcdctl 3.4 prints "PASS: Throughput is N writes/s", "PASS: Slowest
        // request took Ns" (or "Slowest request took too long: Ns", without
        // a prefix), "PASS: Stddev is Ns" and a last "PASS" or "FAIL".
        let lines: Vec<String> = out
            .stdout
            .lines()
            .map(|l| l.rsplit('\r').next().unwrap_or(l).trim().to_string())
            .filter(|l| {
                l.starts_with("PASS")
                    || l.starts_with("FAIL")
                    || l.contains("Throughput is")
                    || l.contains("Slowest request")
                    || l.contains("Stddev is")
            })
            .collect();
        say(&format!(
            "{}: check perf --load=s finished in {secs:.0} s, exit {:?}: {}",
            s.name,
            out.code,
            lines.join(" | ")
        ));
        // Verdicts and numbers depend on the machine's load; what must agree
        // is that it completes and reports the same checks.
        let has = |what: &str| lines.iter().any(|l| l.contains(what));
        let verdict = lines.iter().any(|l| l == "PASS" || l == "FAIL");
        let shape = format!(
            "throughput={} slowest={} stddev={} verdict={verdict}",
            has("Throughput is"),
            has("Slowest request"),
            has("Stddev is"),
        );
        t.check(
            out.code.is_some() && !shape.contains("false"),
            format!(
                "check perf completes with its checks: {shape}: {}",
                failures(&out)
            ),
        );
        t.step(
            "check perf --load=s",
            format!(
                "completed={} {shape} {}",
                out.code.is_some(),
                failures(&out)
            ),
        );
    });
}
