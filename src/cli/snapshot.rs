//! `raftkv snapshot save|status|restore`: disaster recovery as etcd users
//! know it (`etcdctl snapshot save/status`, `etcdutl snapshot restore`).
//!
//! * `save FILE --endpoint URL` downloads `GET /snapshot` from one node
//!   into `FILE.part`, verifying the file as it arrives
//!   ([`SnapshotFileDecoder`]), fsyncs it, and only then renames it to
//!   `FILE`: a `FILE` that exists is complete and intact.
//! * `status FILE` verifies a file and prints what it holds.
//! * `restore FILE --data-dir DIR --name NAME --initial-cluster LIST`
//!   builds one member's data dir of a *new* cluster from a file: the state
//!   machine is the snapshot's (revision, compact revision and history
//!   kept), the Raft log is empty and starts after the snapshot's index,
//!   and the dir is recorded for the new cluster's id, computed from
//!   `--initial-cluster` (and `--cluster-id`) exactly as `raftkv start`
//!   computes it from `--node-id`/`--peers`/`--cluster-id`. Run it once per
//!   member. A file written by `etcdctl snapshot save` against RaftKV is the
//!   same bytes and is accepted as well.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;

use super::{parse_node_id, parse_peer_list, PeerList, EXIT_UNAVAILABLE, EXIT_USAGE};
use crate::node::{Membership, NodeConfig, NodeError};
use crate::raft::{HardState, SnapshotMeta, NO_NODE};
use crate::storage::image::ImageTrailer;
use crate::storage::snapshot_file::{
    hex, FileSummary, MvccSummary, SnapshotFileDecoder, SnapshotFileError,
};
use crate::storage::{LogStore, SledStore, StateMachine, StorageError};

/// Pieces read from a snapshot file at a time.
const READ_PIECE: usize = 1 << 20;

/// How long `save` waits for the next bytes of the download.
const DOWNLOAD_IDLE: Duration = Duration::from_secs(60);

const SNAPSHOT_EXAMPLES: &str = "\
Examples:
  raftkv snapshot save backup.snap --endpoint http://127.0.0.1:8001
  raftkv snapshot status backup.snap
  raftkv snapshot status backup.snap -w json

  # a new three-node cluster from the backup: once per member, then start
  # each member with the matching --node-id, --peers and --cluster-id
  raftkv snapshot restore backup.snap --data-dir ./restored/node-1 --name node-1 \\
      --initial-cluster node-1=127.0.0.1:9001,node-2=127.0.0.1:9002,node-3=127.0.0.1:9003 \\
      --cluster-id restored-1

Exit codes: 0 success, 2 a damaged or foreign file or a refused restore,
3 the endpoint could not be reached or refused the snapshot.";

/// `raftkv snapshot`.
#[derive(Args, Debug)]
#[command(after_help = SNAPSHOT_EXAMPLES)]
pub struct SnapshotArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

/// The `snapshot` subcommands.
#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Download a consistent snapshot of one node's state into FILE.
    Save(SaveArgs),
    /// Verify a snapshot file and print its revision, keys and size.
    Status(StatusArgs),
    /// Build one member's data dir of a new cluster from a snapshot file.
    Restore(RestoreArgs),
}

/// `raftkv snapshot save`.
#[derive(Args, Debug)]
pub struct SaveArgs {
    /// Where to write the snapshot (written as FILE.part, renamed when
    /// complete and verified).
    pub file: PathBuf,
    /// The node to take the snapshot from (its own applied state: ask the
    /// leader for the latest data).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8001")]
    pub endpoint: String,
}

/// `raftkv snapshot status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The snapshot file.
    pub file: PathBuf,
    /// Output format.
    #[arg(short = 'w', long, default_value = "table", value_parser = ["table", "json"])]
    pub write_out: String,
}

/// `raftkv snapshot restore`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The snapshot file.
    pub file: PathBuf,
    /// The member's new data dir (must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// The member's name: its `--node-id` in the new cluster.
    #[arg(long, value_parser = parse_node_id)]
    pub name: String,
    /// Every member of the new cluster, this one included:
    /// "node-1=host:port,node-2=host:port,...", as the new cluster's
    /// `--peers` will list them.
    #[arg(long, value_name = "NAME=HOST:PORT,...", value_parser = parse_peer_list)]
    pub initial_cluster: PeerList,
    /// The new cluster's id (give the same `--cluster-id` to `raftkv
    /// start`) [default: derived from the member list, as `start` derives
    /// it]. It must differ from the snapshot's source cluster, so that a
    /// surviving member of the old cluster can never talk to the new one.
    #[arg(long, value_parser = parse_cluster_id)]
    pub cluster_id: Option<String>,
}

fn parse_cluster_id(s: &str) -> Result<String, String> {
    parse_node_id(s).map_err(|e| e.replacen("node id", "cluster id", 1))
}

/// Why a snapshot command failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotCmdError {
    /// The file is damaged, truncated or not a snapshot.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        #[source]
        source: SnapshotFileError,
    },
    /// The node could not be reached or refused.
    #[error("{0}")]
    Endpoint(String),
    /// The command line or the target is not acceptable.
    #[error("{0}")]
    Refused(String),
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The new data dir could not be written.
    #[error("{0}")]
    Storage(#[from] StorageError),
}

impl SnapshotCmdError {
    fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        SnapshotCmdError::Io {
            what: what.into(),
            source,
        }
    }

    fn file(path: &Path, source: SnapshotFileError) -> Self {
        SnapshotCmdError::File {
            path: path.display().to_string(),
            source,
        }
    }

    /// The exit status this error ends the command with.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            SnapshotCmdError::File { .. } | SnapshotCmdError::Refused(_) => {
                ExitCode::from(EXIT_USAGE)
            }
            SnapshotCmdError::Endpoint(_) => ExitCode::from(EXIT_UNAVAILABLE),
            SnapshotCmdError::Io { .. } | SnapshotCmdError::Storage(_) => ExitCode::FAILURE,
        }
    }
}

/// Runs `raftkv snapshot ...` and returns the exit code.
pub async fn run(args: SnapshotArgs) -> ExitCode {
    let result = match args.command {
        SnapshotCommand::Save(a) => save(&a).await.map(|r| save_line(&a.file, &r)),
        SnapshotCommand::Status(a) => {
            let path = a.file.clone();
            blocking(move || inspect(&path))
                .await
                .map(|r| status_output(&r, a.write_out == "json"))
        }
        SnapshotCommand::Restore(a) => blocking(move || restore(&a)).await.map(|r| r.message()),
    };
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SnapshotCmdError> + Send + 'static,
) -> Result<T, SnapshotCmdError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(SnapshotCmdError::io(
            "snapshot worker",
            std::io::Error::other(e.to_string()),
        ))
    })
}

/// A verified snapshot file: what its header and image say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspected {
    /// The file's header, hash and sizes.
    pub file: FileSummary,
    /// The MVCC state its records hold.
    pub mvcc: MvccSummary,
}

fn status_output(r: &Inspected, json: bool) -> String {
    let (f, m) = (&r.file, &r.mvcc);
    if json {
        return json!({
            "index": f.meta.index,
            "term": f.meta.term,
            "revision": m.revision,
            "compact_revision": m.compact_revision,
            "total_keys": m.keys,
            "records": m.records,
            "total_size": f.file_bytes,
            "sha256": hex(&f.sha256),
            "hash_ok": true,
            "cluster_id": f.cluster_id,
        })
        .to_string();
    }
    format!(
        "revision:          {}\ncompact revision:  {}\ntotal keys:        {}\n\
         records:           {}\ntotal size:        {} bytes\nraft index:        {}\n\
         raft term:         {}\nsource cluster:    {}\nsha256:            {} (verified)",
        m.revision,
        m.compact_revision,
        m.keys,
        m.records,
        f.file_bytes,
        f.meta.index,
        f.meta.term,
        f.cluster_id,
        hex(&f.sha256)
    )
}

/// Reads `path` piece by piece through a decoder, giving every piece's
/// released image bytes to `on_image`.
fn read_file(
    path: &Path,
    mut on_item: impl FnMut(crate::storage::image::ImageItem) -> Result<(), StorageError>,
    mut on_image: impl FnMut(&[u8]) -> Result<(), SnapshotCmdError>,
) -> Result<FileSummary, SnapshotCmdError> {
    let shown = path.display().to_string();
    let mut file =
        File::open(path).map_err(|e| SnapshotCmdError::io(format!("open {shown}"), e))?;
    let mut decoder = SnapshotFileDecoder::new();
    let mut buf = vec![0u8; READ_PIECE];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(SnapshotCmdError::io(format!("read {shown}"), e)),
        };
        let image = decoder
            .push(&buf[..n], &mut on_item)
            .map_err(|e| SnapshotCmdError::file(path, e))?;
        on_image(&image)?;
    }
    decoder
        .finish()
        .map_err(|e| SnapshotCmdError::file(path, e))
}

/// Verifies the snapshot file at `path` (header, every image frame, the
/// SHA-256) and summarises it.
pub fn inspect(path: &Path) -> Result<Inspected, SnapshotCmdError> {
    let mut mvcc = MvccSummary::default();
    let file = read_file(path, |item| mvcc.observe(&item), |_| Ok(()))?;
    Ok(Inspected { file, mvcc })
}

// ---------------------------------------------------------------- save --

/// What `save` wrote.
#[derive(Clone, Debug)]
pub struct Saved {
    /// The verified file.
    pub file: FileSummary,
    /// Its MVCC state.
    pub mvcc: MvccSummary,
}

fn save_line(path: &Path, r: &Saved) -> String {
    format!(
        "Snapshot saved at {} (revision {}, {} keys, index {}, term {}, {} bytes, sha256 {})",
        path.display(),
        r.mvcc.revision,
        r.mvcc.keys,
        r.file.meta.index,
        r.file.meta.term,
        r.file.file_bytes,
        hex(&r.file.sha256)
    )
}

fn part_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_os_string();
    s.push(".part");
    PathBuf::from(s)
}

fn endpoint_url(endpoint: &str) -> Result<String, SnapshotCmdError> {
    let e = endpoint.trim().trim_end_matches('/');
    if e.is_empty() {
        return Err(SnapshotCmdError::Refused(
            "--endpoint must not be empty".into(),
        ));
    }
    if e.starts_with("https://") {
        return Err(SnapshotCmdError::Refused(
            "--endpoint: RaftKV nodes serve plain http://".into(),
        ));
    }
    Ok(if e.starts_with("http://") {
        e.to_string()
    } else {
        format!("http://{e}")
    })
}

/// Downloads a snapshot from `args.endpoint` into `args.file` (see the
/// module docs); nothing is left at `FILE` or `FILE.part` on failure.
pub async fn save(args: &SaveArgs) -> Result<Saved, SnapshotCmdError> {
    let part = part_path(&args.file);
    let result = download(args, &part).await;
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

async fn download(args: &SaveArgs, part: &Path) -> Result<Saved, SnapshotCmdError> {
    use tokio::io::AsyncWriteExt;
    let url = format!("{}/snapshot", endpoint_url(&args.endpoint)?);
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| SnapshotCmdError::Endpoint(format!("cannot build an HTTP client: {e}")))?;
    let unreachable = |e: reqwest::Error| {
        SnapshotCmdError::Endpoint(format!("GET {url}: {}", crate::node::error_chain(&e)))
    };
    let mut resp = tokio::time::timeout(DOWNLOAD_IDLE, client.get(&url).send())
        .await
        .map_err(|_| SnapshotCmdError::Endpoint(format!("GET {url}: no answer within 60 s")))?
        .map_err(unreachable)?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(SnapshotCmdError::Endpoint(format!(
            "GET {url}: {status}: {}",
            body.trim()
        )));
    }
    let shown = part.display().to_string();
    let mut out = tokio::fs::File::create(part)
        .await
        .map_err(|e| SnapshotCmdError::io(format!("create {shown}"), e))?;
    let mut decoder = SnapshotFileDecoder::new();
    let mut mvcc = MvccSummary::default();
    loop {
        let piece = tokio::time::timeout(DOWNLOAD_IDLE, resp.chunk())
            .await
            .map_err(|_| {
                SnapshotCmdError::Endpoint(format!("GET {url}: no data for 60 s; giving up"))
            })?
            .map_err(unreachable)?;
        let Some(piece) = piece else { break };
        decoder
            .push(&piece, |item| mvcc.observe(&item))
            .map_err(|e| SnapshotCmdError::file(part, e))?;
        out.write_all(&piece)
            .await
            .map_err(|e| SnapshotCmdError::io(format!("write {shown}"), e))?;
    }
    // A body cut short by the node (an export failing part way) ends
    // here as a truncated file.
    let file = decoder
        .finish()
        .map_err(|e| SnapshotCmdError::file(part, e))?;
    out.flush()
        .await
        .map_err(|e| SnapshotCmdError::io(format!("write {shown}"), e))?;
    out.sync_all()
        .await
        .map_err(|e| SnapshotCmdError::io(format!("fsync {shown}"), e))?;
    drop(out);
    tokio::fs::rename(part, &args.file).await.map_err(|e| {
        SnapshotCmdError::io(format!("rename {shown} to {}", args.file.display()), e)
    })?;
    sync_parent(&args.file)?;
    Ok(Saved { file, mvcc })
}

/// fsyncs the directory holding `path`, so a rename into it is durable.
fn sync_parent(path: &Path) -> Result<(), SnapshotCmdError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| SnapshotCmdError::io(format!("fsync directory {}", parent.display()), e))
}

// ------------------------------------------------------------- restore --

/// What `restore` built.
#[derive(Clone, Debug)]
pub struct Restored {
    /// The data dir.
    pub data_dir: PathBuf,
    /// The member.
    pub name: String,
    /// The new cluster's id.
    pub cluster_id: String,
    /// The snapshot restored.
    pub snapshot: Inspected,
    /// How to start the member.
    pub start_command: String,
}

impl Restored {
    fn message(&self) -> String {
        let s = &self.snapshot;
        format!(
            "Restored snapshot (revision {}, {} keys, index {}) into {} as member {} of cluster {}.\n\
             Start it with: {}",
            s.mvcc.revision,
            s.mvcc.keys,
            s.file.meta.index,
            self.data_dir.display(),
            self.name,
            self.cluster_id,
            self.start_command
        )
    }
}

/// The `raftkv start` command line that runs the restored member: the same
/// name, address, members and cluster id.
fn start_command(membership: &Membership, data_dir: &Path) -> String {
    let addr = membership.self_addr();
    let port = addr.rsplit_once(':').map(|(_, p)| p).unwrap_or_default();
    let mut cmd = format!(
        "raftkv start --node-id {} --port {port} --data-dir {} --cluster-id {}",
        membership.self_name,
        data_dir.display(),
        membership.cluster_id
    );
    if !addr.starts_with("127.0.0.1:") {
        cmd.push_str(&format!(" --host 0.0.0.0 --advertise {addr}"));
    }
    let peers: Vec<String> = membership
        .peers()
        .map(|m| format!("{}={}", m.name.as_deref().unwrap_or_default(), m.addr))
        .collect();
    if !peers.is_empty() {
        cmd.push_str(&format!(" --peers {}", peers.join(",")));
    }
    cmd
}

/// The new cluster's membership as `raftkv start` will resolve it on this
/// member.
fn new_membership(args: &RestoreArgs) -> Result<Membership, SnapshotCmdError> {
    let refused = SnapshotCmdError::Refused;
    let members = &args.initial_cluster.0;
    if members.iter().any(|p| p.name.is_none()) {
        return Err(refused(
            "--initial-cluster: name every member (name=host:port,...)".into(),
        ));
    }
    let me = members
        .iter()
        .find(|p| p.name.as_deref() == Some(args.name.as_str()))
        .ok_or_else(|| {
            refused(format!(
                "--initial-cluster does not list --name {}",
                args.name
            ))
        })?;
    let mut config = NodeConfig::new(args.name.clone());
    config.advertise = Some(me.addr.clone());
    config.peers = members
        .iter()
        .filter(|p| p.name.as_deref() != Some(args.name.as_str()))
        .cloned()
        .collect();
    config.cluster_id = args.cluster_id.clone();
    config.data_dir = args.data_dir.clone();
    Membership::resolve(&config).map_err(|e| match e {
        NodeError::Config(m) => refused(format!("--initial-cluster: {m}")),
        other => refused(other.to_string()),
    })
}

/// Whether `dir` is absent or an empty directory.
fn check_empty_dir(dir: &Path) -> Result<bool, SnapshotCmdError> {
    let shown = dir.display().to_string();
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(SnapshotCmdError::Refused(format!(
                    "--data-dir {shown} is not empty; restore only into a new or empty directory"
                )));
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Err(SnapshotCmdError::Refused(
            format!("--data-dir {shown} is not a directory"),
        )),
        Err(e) => Err(SnapshotCmdError::io(format!("read {shown}"), e)),
    }
}

/// Builds `args.data_dir` from the snapshot file (see the module docs).
/// The file is verified whole before anything is written; a failure
/// after that removes what was written.
pub fn restore(args: &RestoreArgs) -> Result<Restored, SnapshotCmdError> {
    let membership = new_membership(args)?;
    let existed = check_empty_dir(&args.data_dir)?;
    let snapshot = inspect(&args.file)?;
    if snapshot.file.cluster_id == membership.cluster_id {
        return Err(SnapshotCmdError::Refused(format!(
            "the restored cluster would keep the source cluster's id `{}`, so members of the \
             old cluster could still talk to it; give a new --cluster-id (and the same \
             --cluster-id to `raftkv start`)",
            membership.cluster_id
        )));
    }
    let written = write_data_dir(args, &membership, &snapshot);
    if written.is_err() {
        // Leave the dir as it was: absent, or empty.
        let _ = std::fs::remove_dir_all(&args.data_dir);
        if existed {
            let _ = std::fs::create_dir_all(&args.data_dir);
        }
    }
    written?;
    Ok(Restored {
        start_command: start_command(&membership, &args.data_dir),
        data_dir: args.data_dir.clone(),
        name: membership.self_name,
        cluster_id: membership.cluster_id,
        snapshot,
    })
}

fn write_data_dir(
    args: &RestoreArgs,
    membership: &Membership,
    snapshot: &Inspected,
) -> Result<(), SnapshotCmdError> {
    let mut store = SledStore::open(
        &args.data_dir,
        &membership.self_name,
        &membership.cluster_id,
    )?;
    let mut writer = store.stage_snapshot()?;
    let mut crc = crc32fast::Hasher::new();
    let mut image_len = 0u64;
    // Second pass: the file may have changed since it was verified, so it
    // is verified again as it is staged.
    let file = read_file(
        &args.file,
        |_| Ok(()),
        |image| {
            crc.update(image);
            image_len += image.len() as u64;
            writer.write(image).map_err(SnapshotCmdError::from)
        },
    )?;
    if file != snapshot.file {
        return Err(SnapshotCmdError::Refused(format!(
            "{} changed while it was being restored",
            args.file.display()
        )));
    }
    let staged = writer.finish(&ImageTrailer {
        total_len: image_len,
        crc32: crc.finalize(),
    })?;
    store.install_staged(staged)?;
    let SnapshotMeta { index, term } = file.meta;
    // The core refuses a snapshot from a term beyond the persisted one.
    store.save(
        Some(&HardState {
            term,
            vote: NO_NODE,
            commit: index,
        }),
        &[],
    )?;
    store.flush()?;
    let revision = store.revision()?;
    if revision != snapshot.mvcc.revision || store.applied_index() != index {
        return Err(SnapshotCmdError::Storage(StorageError::Inconsistent(
            format!(
                "the restored store is at revision {revision}, index {}; the snapshot holds \
             revision {}, index {index}",
                store.applied_index(),
                snapshot.mvcc.revision
            ),
        )));
    }
    drop(store);
    sync_parent(&args.data_dir)?;
    Ok(())
}

#[cfg(test)]
mod tests;
