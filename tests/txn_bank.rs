//! Transaction atomicity under concurrent clients, on real `raftkv start`
//! processes through the JSON API only (see `common::v3`): the bank.
//!
//! Eight accounts hold a constant total. Concurrent clients on every node
//! move money between two accounts with `POST /txn` (compare both
//! accounts' mod revisions, put both; on the failure branch read both and
//! retry). Meanwhile a reader checks that every linearizable range read of
//! all accounts (one request, one revision) sums to the total and that its
//! revision never goes back. At the end every node's own state sums to the
//! total, and the history read revision by revision shows exactly one
//! revision per successful transfer, each changing exactly its two
//! accounts with the values the client wrote.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::v3::*;
use common::*;
use serde_json::json;

const FORM: Duration = Duration::from_secs(20);
const SEL: &str = "prefix=bank/";
const ACCOUNTS: usize = 8;
const START_BALANCE: i64 = 1000;
const TOTAL: i64 = ACCOUNTS as i64 * START_BALANCE;
const CLIENTS: usize = 6;
/// Bounds on the run: successful transfers per client, and time.
const TRANSFERS_PER_CLIENT: usize = 40;
const RUN_FOR: Duration = Duration::from_secs(25);

fn acct(i: usize) -> String {
    format!("bank/{i}")
}

/// A value is `balance:transfer-id`.
fn balance(r: &Rec) -> i64 {
    r.value
        .split(':')
        .next()
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("bad account value: {r:?}"))
}

fn transfer_id(r: &Rec) -> String {
    r.value
        .split_once(':')
        .map(|x| x.1.to_string())
        .unwrap_or_default()
}

fn sum(accounts: &BTreeMap<String, Rec>) -> i64 {
    accounts.values().map(balance).sum()
}

/// What the clients did.
#[derive(Default)]
struct Ledger {
    /// Acknowledged successful transfers: id → revision.
    committed: BTreeMap<String, i64>,
    /// Transfers whose outcome is unknown (no answer, or 503).
    unknown: BTreeSet<String>,
    /// Transactions whose compares failed.
    failed_compares: u64,
}

/// One client: transfers between random pairs through node `home` until
/// it has done its share or time is up.
async fn client(
    me: usize,
    bases: Vec<String>,
    mut home: usize,
    ledger: Arc<Mutex<Ledger>>,
    until: Instant,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut view: BTreeMap<String, Rec> = range_all(&http, &bases[home], SEL, 0, false)
        .await
        .expect("initial read")
        .1;
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15 ^ (me as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut done = 0;
    let mut seq = 0;
    while done < TRANSFERS_PER_CLIENT && Instant::now() < until {
        let a = (next() % ACCOUNTS as u64) as usize;
        let b = (a + 1 + (next() % (ACCOUNTS as u64 - 1)) as usize) % ACCOUNTS;
        let (ka, kb) = (acct(a), acct(b));
        let (ra, rb) = (view[&ka].clone(), view[&kb].clone());
        let (ba, bb) = (balance(&ra), balance(&rb));
        if ba == 0 {
            continue;
        }
        let amount = 1 + (next() as i64).rem_euclid(ba.min(50));
        seq += 1;
        let id = format!("c{me}-{seq}");
        let body = json!({
            "compare": [
                {"key": ka, "target": "mod", "result": "=", "mod_revision": ra.mod_revision},
                {"key": kb, "target": "mod", "result": "=", "mod_revision": rb.mod_revision}],
            "success": [
                {"put": {"key": ka, "value": format!("{}:{id}", ba - amount)}},
                {"put": {"key": kb, "value": format!("{}:{id}", bb + amount)}}],
            "failure": [
                {"range": {"key": ka}},
                {"range": {"key": kb}}]
        });
        let r = send(http.post(format!("{}/txn", bases[home])).json(&body)).await;
        match r {
            Ok((200, v)) if v["succeeded"] == true => {
                let rev = header_revision(&v).expect("txn header");
                assert_eq!(v["index"], rev, "txn index vs header: {v}");
                ledger.lock().unwrap().committed.insert(id, rev);
                done += 1;
                // Our own write is the accounts' new record.
                for (k, bal, old) in [(&ka, ba - amount, &ra), (&kb, bb + amount, &rb)] {
                    view.insert(
                        k.clone(),
                        Rec {
                            key: k.clone(),
                            value: format!("{bal}:c{me}-{seq}"),
                            create_revision: old.create_revision,
                            mod_revision: rev,
                            version: old.version + 1,
                        },
                    );
                }
            }
            Ok((200, v)) if v["succeeded"] == false => {
                ledger.lock().unwrap().failed_compares += 1;
                let resp = v["responses"].as_array().expect("failure responses");
                assert_eq!(resp.len(), 2, "{v}");
                for r in resp {
                    let items = r["range"]["items"].as_array().expect("range items");
                    assert_eq!(items.len(), 1, "an account vanished: {v}");
                    let rec = Rec::from_json(&items[0]).expect("account record");
                    view.insert(rec.key.clone(), rec);
                }
            }
            Ok((s, v)) if !matches!(s, 502..=504) => panic!("transfer {id}: {s} {v}"),
            _ => {
                // Maybe applied, maybe not: the history check decides;
                // re-read before going on.
                ledger.lock().unwrap().unknown.insert(id);
                // Its node may be down: go on through another one.
                home = (home + 1) % bases.len();
                let (_, _, v) = send_retry(&bases, home, FORM, "re-read accounts", |b| {
                    http.get(format!("{b}/kv?{SEL}"))
                })
                .await;
                for it in v["items"].as_array().expect("items") {
                    let rec = Rec::from_json(it).expect("account record");
                    view.insert(rec.key.clone(), rec);
                }
            }
        }
    }
}

/// Reads all accounts linearizably, round robin over the nodes, until
/// `stop`; checks the total and that the revision never goes back.
async fn reader(bases: Vec<String>, stop: Arc<AtomicBool>, reads: Arc<AtomicU64>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut last_rev = 0;
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        let n = i % bases.len();
        i += 1;
        // One request (no paging: 8 keys), so one revision.
        let r = send(http.get(format!("{}/kv?{SEL}", bases[n]))).await;
        let v = match r {
            Ok((200, v)) => v,
            // No leader for a moment (a spurious election on a busy
            // machine): nothing was read, nothing to check.
            ref r if retryable(r) => continue,
            _ => panic!("linearizable read on node {n}: {r:?}"),
        };
        let rev = header_revision(&v).unwrap();
        let items = v["items"].as_array().expect("items");
        assert_eq!(items.len(), ACCOUNTS, "accounts at revision {rev}: {v}");
        let total: i64 = items
            .iter()
            .map(|it| balance(&Rec::from_json(it).expect("record")))
            .sum();
        assert_eq!(total, TOTAL, "the total at revision {rev} on node {n}: {v}");
        assert!(
            rev >= last_rev,
            "a linearizable read on node {n} saw revision {rev} after one saw {last_rev}"
        );
        last_rev = rev;
        reads.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transfers_keep_the_total_and_make_one_revision_each() {
    bank(false).await;
}

/// The same with the leader killed (SIGKILL) in the middle of the
/// transfers and restarted: transfers in flight may or may not commit,
/// but each one commits whole or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transfers_stay_atomic_across_a_leader_kill9() {
    bank(true).await;
}

/// Waits until at least `n` transfers were acknowledged.
async fn committed_at_least(ledger: &Mutex<Ledger>, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while ledger.lock().unwrap().committed.len() < n {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn bank(kill_leader: bool) {
    let mut c = Cluster::start(3, &Opts::default());
    let leader = c.wait_for_leader(FORM).await;
    let bases: Vec<String> = (0..3).map(|i| c.url(i)).collect();

    // Open every account in one transaction (one revision).
    let body = json!({
        "compare": [],
        "success": (0..ACCOUNTS)
            .map(|i| json!({"put": {"key": acct(i), "value": format!("{START_BALANCE}:open")}}))
            .collect::<Vec<_>>(),
        "failure": []
    });
    let (s, v) = send(c.client.post(format!("{}/txn", bases[leader])).json(&body))
        .await
        .expect("open accounts");
    assert_eq!((s, &v["succeeded"]), (200, &json!(true)), "{v}");
    let r0 = header_revision(&v).unwrap();
    let (rev, opened) = range_all(&c.client, &bases[leader], SEL, 0, false)
        .await
        .unwrap();
    assert_eq!(rev, r0);
    assert_eq!(opened.len(), ACCOUNTS);
    assert!(opened
        .values()
        .all(|r| r.mod_revision == r0 && r.create_revision == r0));

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader_task = tokio::spawn(reader(bases.clone(), stop.clone(), reads.clone()));
    let until = Instant::now() + RUN_FOR;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|me| tokio::spawn(client(me, bases.clone(), me % 3, ledger.clone(), until)))
        .collect();
    if kill_leader {
        committed_at_least(&ledger, 40, "transfers before the kill").await;
        c.nodes[leader].kill9();
        let n = ledger.lock().unwrap().committed.len();
        committed_at_least(&ledger, n + 40, "transfers after the kill").await;
        c.nodes[leader].start();
    }
    for t in clients {
        t.await.expect("client");
    }
    stop.store(true, Ordering::SeqCst);
    reader_task.await.expect("reader");
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());

    let leader = c.wait_for_leader(FORM).await;
    let (fin, state) = range_all(&c.client, &bases[leader], SEL, 0, false)
        .await
        .unwrap();
    assert_eq!(sum(&state), TOTAL, "final state {state:?}");
    eprintln!(
        "{} transfers committed, {} compares failed, {} unknown, {} checked reads, revisions {r0}..={fin}",
        ledger.committed.len(),
        ledger.failed_compares,
        ledger.unknown.len(),
        reads.load(Ordering::Relaxed)
    );
    assert!(
        ledger.committed.len() >= CLIENTS * 5,
        "too few transfers to mean anything: {}",
        ledger.committed.len()
    );
    assert!(reads.load(Ordering::Relaxed) > 0);

    // Every node's own copy (stale reads, once caught up) is the leader's.
    for (i, base) in bases.iter().enumerate() {
        let (client, base) = (c.client.clone(), base.clone());
        let want = state.clone();
        eventually(FORM, "every node reaching the final state", || {
            let (client, base, want) = (client.clone(), base.clone(), want.clone());
            async move {
                let (rev, got) = range_all(&client, &base, SEL, 0, true).await.ok()?;
                (rev >= fin && got == want).then_some(())
            }
        })
        .await;
        let (_, got) = range_all(&c.client, &bases[i], SEL, 0, true).await.unwrap();
        assert_eq!(sum(&got), TOTAL, "node {i}");
    }

    // The history: every revision after the opening is one transfer that
    // changed exactly its two accounts, keeping the total.
    let mut prev = opened;
    let mut seen: BTreeMap<String, i64> = BTreeMap::new();
    for rev in r0 + 1..=fin {
        let (_, cur) = range_all(&c.client, &bases[leader], SEL, rev, false)
            .await
            .unwrap_or_else(|e| panic!("range at {rev}: {e}"));
        assert_eq!(sum(&cur), TOTAL, "the total at revision {rev}: {cur:?}");
        let changes = derive_changes(&prev, &cur, rev);
        assert_eq!(changes.len(), 2, "revision {rev} changed {changes:?}");
        assert!(changes.iter().all(|e| e.kind == Kind::Put), "{changes:?}");
        let id = transfer_id(&changes[0].kv);
        assert_eq!(
            id,
            transfer_id(&changes[1].kv),
            "revision {rev}: {changes:?}"
        );
        for e in &changes {
            assert_eq!(e.kv.version, prev[&e.kv.key].version + 1, "{e:?}");
            assert_eq!(e.kv.create_revision, r0, "{e:?}");
        }
        assert!(
            seen.insert(id.clone(), rev).is_none(),
            "transfer {id} applied twice"
        );
        prev = cur;
    }
    // Exactly the acknowledged transfers (at the revisions they were
    // acknowledged with), plus maybe some whose answer was lost.
    for (id, rev) in &ledger.committed {
        assert_eq!(seen.get(id), Some(rev), "acknowledged transfer {id}");
    }
    for id in seen.keys() {
        assert!(
            ledger.committed.contains_key(id) || ledger.unknown.contains(id),
            "transfer {id} is in the history but its client was told it failed"
        );
    }
    if ledger.unknown.is_empty() {
        assert_eq!(
            (fin - r0) as usize,
            ledger.committed.len(),
            "revisions created vs successful transactions"
        );
    }
}
