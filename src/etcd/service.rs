//! [`EtcdService`]: the six etcd v3 gRPC services over an [`EtcdBackend`].
//!
//! - **KV**: every call, through [`super::validate`] and the backend.
//! - **Watch**: the bidirectional stream ([`super::watch`]).
//! - **Cluster**: MemberList; the membership changes answer
//!   `Unimplemented` until issue 18.
//! - **Maintenance**: Status, HashKV, MoveLeader, Alarm (RaftKV raises
//!   none: the list is empty), Defragment (nothing to do: sled reclaims
//!   space itself, so it answers success); Hash, Snapshot and Downgrade
//!   answer `Unimplemented`.
//! - **Lease** (issue 17) and **Auth** (issue 19) answer `Unimplemented`.
//!
//! Every `Unimplemented` answer names the issue that brings the call, and
//! comes at once: nothing hangs.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};

use super::backend::{EtcdBackend, MemberInfo};
use super::convert;
use super::error::{issue, EtcdError};
use super::pb::etcdserverpb as rpc;
use super::pb::etcdserverpb::{
    auth_server, cluster_server, kv_server, lease_server, maintenance_server, watch_server,
};
use super::validate;
use super::watch::WatchSession;
use super::ETCD_VERSION;

/// Largest gRPC request accepted, in bytes: a 1 MiB value plus a
/// transaction's worth of keys and framing (etcd: 1.5 MiB requests plus
/// 512 KiB of gRPC overhead).
pub const MAX_REQUEST_BYTES: usize = 2 << 20;

/// Tunables of the etcd API.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// How often a watch with `progress_notify` that saw no event gets a
    /// progress notification (etcd: 10 minutes).
    pub progress_notify_interval: Duration,
    /// Responses queued per watch stream before the stream stops pulling
    /// events from its feeds (the feeds then buffer or catch up).
    pub watch_send_buffer: usize,
    /// A watch created with `fragment` gets event responses larger than
    /// this split into fragments (etcd: its request size limit, 1.5 MiB).
    pub watch_fragment_bytes: usize,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            progress_notify_interval: Duration::from_secs(600),
            watch_send_buffer: 128,
            watch_fragment_bytes: 3 << 19,
        }
    }
}

/// The etcd v3 gRPC services over a backend. Cheap to clone.
pub struct EtcdService<B> {
    backend: Arc<B>,
    config: EtcdConfig,
}

impl<B> Clone for EtcdService<B> {
    fn clone(&self) -> Self {
        EtcdService {
            backend: self.backend.clone(),
            config: self.config.clone(),
        }
    }
}

impl<B: EtcdBackend> EtcdService<B> {
    /// The services over `backend`, with etcd's default tunables.
    pub fn new(backend: Arc<B>) -> Self {
        Self::with_config(backend, EtcdConfig::default())
    }

    /// The services over `backend` with `config`.
    pub fn with_config(backend: Arc<B>, config: EtcdConfig) -> Self {
        EtcdService { backend, config }
    }

    /// The six services as tonic routes. The routes have no fallback, so
    /// they merge into an axum router that has its own (the JSON API's).
    pub fn routes(&self) -> Routes {
        Routes::from(axum::Router::new())
            .add_service(
                kv_server::KvServer::new(self.clone()).max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .add_service(watch_server::WatchServer::new(self.clone()))
            .add_service(lease_server::LeaseServer::new(self.clone()))
            .add_service(cluster_server::ClusterServer::new(self.clone()))
            .add_service(maintenance_server::MaintenanceServer::new(self.clone()))
            .add_service(auth_server::AuthServer::new(self.clone()))
    }

    /// The six services as an axum router, to merge with the JSON API on
    /// one listener (HTTP/2 with prior knowledge for gRPC, HTTP/1.1 for
    /// JSON: axum's `http2` feature serves both).
    pub fn router(&self) -> axum::Router {
        self.routes().into_axum_router()
    }

    /// Serves one Watch stream over `requests` (the JSON gateway's
    /// `/v3/watch`, which reads its requests from an HTTP body): the same
    /// session as the gRPC stream's.
    pub fn watch_stream<S>(&self, requests: S) -> BoxStream<rpc::WatchResponse>
    where
        S: Stream<Item = Result<rpc::WatchRequest, Status>> + Send + Unpin + 'static,
    {
        Box::pin(WatchSession::spawn(
            self.backend.clone(),
            self.config.clone(),
            requests,
        ))
    }

    fn header(&self, revision: i64) -> rpc::ResponseHeader {
        self.backend.header_info().header(revision)
    }

    fn current_header(&self) -> Option<rpc::ResponseHeader> {
        Some(self.header(self.backend.revision()))
    }
}

/// A boxed response stream.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

type Answer<T> = Result<Response<T>, Status>;

// ------------------------------------------------------------ KV

#[tonic::async_trait]
impl<B: EtcdBackend> kv_server::Kv for EtcdService<B> {
    async fn range(&self, req: Request<rpc::RangeRequest>) -> Answer<rpc::RangeResponse> {
        let r = validate::checked_range(req.into_inner())?;
        let answer = self.backend.range(r).await?;
        let h = self.backend.header_info();
        Ok(Response::new(convert::range_response(h, answer)))
    }

    async fn put(&self, req: Request<rpc::PutRequest>) -> Answer<rpc::PutResponse> {
        let cmd = validate::checked_put(req.into_inner())?;
        let answer = convert::expect_put(self.backend.propose(cmd).await?)?;
        let h = self.backend.header_info();
        Ok(Response::new(convert::put_response(h, answer)))
    }

    async fn delete_range(
        &self,
        req: Request<rpc::DeleteRangeRequest>,
    ) -> Answer<rpc::DeleteRangeResponse> {
        let cmd = validate::checked_delete_range(req.into_inner())?;
        let answer = convert::expect_delete_range(self.backend.propose(cmd).await?)?;
        let h = self.backend.header_info();
        Ok(Response::new(convert::delete_range_response(h, answer)))
    }

    async fn txn(&self, req: Request<rpc::TxnRequest>) -> Answer<rpc::TxnResponse> {
        let cmd = validate::checked_txn(req.into_inner())?;
        let answer = convert::expect_txn(self.backend.propose(cmd).await?)?;
        let h = self.backend.header_info();
        Ok(Response::new(convert::txn_response(h, answer)))
    }

    async fn compact(
        &self,
        req: Request<rpc::CompactionRequest>,
    ) -> Answer<rpc::CompactionResponse> {
        let cmd = validate::checked_compaction(req.into_inner())?;
        let answer = convert::expect_compact(self.backend.propose(cmd).await?)?;
        let h = self.backend.header_info();
        Ok(Response::new(convert::compaction_response(h, answer)))
    }
}

// ------------------------------------------------------------ Watch

#[tonic::async_trait]
impl<B: EtcdBackend> watch_server::Watch for EtcdService<B> {
    type WatchStream = BoxStream<rpc::WatchResponse>;

    async fn watch(&self, req: Request<Streaming<rpc::WatchRequest>>) -> Answer<Self::WatchStream> {
        let responses =
            WatchSession::spawn(self.backend.clone(), self.config.clone(), req.into_inner());
        Ok(Response::new(Box::pin(responses)))
    }
}

// ------------------------------------------------------------ Cluster

fn member(m: MemberInfo) -> rpc::Member {
    rpc::Member {
        id: m.id,
        name: m.name,
        peer_ur_ls: m.peer_urls,
        client_ur_ls: m.client_urls,
        is_learner: m.is_learner,
    }
}

fn membership_change<T>(what: &str) -> Answer<T> {
    Err(EtcdError::unimplemented(what, issue::MEMBERSHIP).into())
}

#[tonic::async_trait]
impl<B: EtcdBackend> cluster_server::Cluster for EtcdService<B> {
    async fn member_add(
        &self,
        _: Request<rpc::MemberAddRequest>,
    ) -> Answer<rpc::MemberAddResponse> {
        membership_change("MemberAdd")
    }

    async fn member_remove(
        &self,
        _: Request<rpc::MemberRemoveRequest>,
    ) -> Answer<rpc::MemberRemoveResponse> {
        membership_change("MemberRemove")
    }

    async fn member_update(
        &self,
        _: Request<rpc::MemberUpdateRequest>,
    ) -> Answer<rpc::MemberUpdateResponse> {
        membership_change("MemberUpdate")
    }

    async fn member_list(
        &self,
        req: Request<rpc::MemberListRequest>,
    ) -> Answer<rpc::MemberListResponse> {
        let members = self.backend.members(req.into_inner().linearizable).await?;
        Ok(Response::new(rpc::MemberListResponse {
            header: self.current_header(),
            members: members.into_iter().map(member).collect(),
        }))
    }

    async fn member_promote(
        &self,
        _: Request<rpc::MemberPromoteRequest>,
    ) -> Answer<rpc::MemberPromoteResponse> {
        membership_change("MemberPromote")
    }
}

// ------------------------------------------------------------ Maintenance

#[tonic::async_trait]
impl<B: EtcdBackend> maintenance_server::Maintenance for EtcdService<B> {
    async fn alarm(&self, req: Request<rpc::AlarmRequest>) -> Answer<rpc::AlarmResponse> {
        use rpc::alarm_request::AlarmAction;
        let action = req.into_inner().action;
        match AlarmAction::try_from(action) {
            // RaftKV raises no alarms: nothing to list or to clear.
            Ok(AlarmAction::Get | AlarmAction::Deactivate) => {
                Ok(Response::new(rpc::AlarmResponse {
                    header: self.current_header(),
                    alarms: Vec::new(),
                }))
            }
            Ok(AlarmAction::Activate) => {
                Err(EtcdError::unimplemented("raising an alarm", issue::ETCD_API).into())
            }
            Err(_) => Err(EtcdError::InvalidEnum {
                field: "AlarmRequest.action",
                value: action,
            }
            .into()),
        }
    }

    async fn status(&self, _: Request<rpc::StatusRequest>) -> Answer<rpc::StatusResponse> {
        let s = self.backend.status().await?;
        Ok(Response::new(rpc::StatusResponse {
            header: self.current_header(),
            version: ETCD_VERSION.to_string(),
            db_size: s.db_size,
            leader: s.leader,
            raft_index: s.raft_index,
            raft_term: s.raft_term,
            raft_applied_index: s.raft_applied_index,
            errors: s.errors,
            db_size_in_use: s.db_size_in_use,
            is_learner: s.is_learner,
        }))
    }

    async fn defragment(
        &self,
        _: Request<rpc::DefragmentRequest>,
    ) -> Answer<rpc::DefragmentResponse> {
        Ok(Response::new(rpc::DefragmentResponse {
            header: self.current_header(),
        }))
    }

    async fn hash(&self, _: Request<rpc::HashRequest>) -> Answer<rpc::HashResponse> {
        Err(EtcdError::unimplemented("Hash (use HashKV)", issue::ETCD_API).into())
    }

    async fn hash_kv(&self, req: Request<rpc::HashKvRequest>) -> Answer<rpc::HashKvResponse> {
        let revision = req.into_inner().revision;
        if revision < 0 {
            return Err(EtcdError::from(crate::kv::KvError::negative("revision", revision)).into());
        }
        let h = self.backend.hash_kv(revision).await?;
        Ok(Response::new(rpc::HashKvResponse {
            header: Some(self.header(h.revision)),
            hash: h.hash,
            // etcd's store starts with no compaction as -1, and HashKV
            // shows it so (`etcdctl endpoint hashkv -w json`).
            compact_revision: if h.compact_revision == 0 {
                -1
            } else {
                h.compact_revision
            },
        }))
    }

    type SnapshotStream = BoxStream<rpc::SnapshotResponse>;

    async fn snapshot(&self, _: Request<rpc::SnapshotRequest>) -> Answer<Self::SnapshotStream> {
        let pieces = self.backend.snapshot().await?;
        let header = self.current_header();
        Ok(Response::new(snapshot_responses(pieces, header)))
    }

    async fn move_leader(
        &self,
        req: Request<rpc::MoveLeaderRequest>,
    ) -> Answer<rpc::MoveLeaderResponse> {
        self.backend.move_leader(req.into_inner().target_id).await?;
        Ok(Response::new(rpc::MoveLeaderResponse {
            header: self.current_header(),
        }))
    }

    async fn downgrade(&self, _: Request<rpc::DowngradeRequest>) -> Answer<rpc::DowngradeResponse> {
        Err(EtcdError::unimplemented("Downgrade", issue::ETCD_API).into())
    }
}

// ------------------------------------------------------------ Lease, Auth

fn lease<T>(what: &str) -> Answer<T> {
    Err(EtcdError::unimplemented(&format!("the Lease service ({what})"), issue::LEASES).into())
}

#[tonic::async_trait]
impl<B: EtcdBackend> lease_server::Lease for EtcdService<B> {
    async fn lease_grant(
        &self,
        _: Request<rpc::LeaseGrantRequest>,
    ) -> Answer<rpc::LeaseGrantResponse> {
        lease("LeaseGrant")
    }

    async fn lease_revoke(
        &self,
        _: Request<rpc::LeaseRevokeRequest>,
    ) -> Answer<rpc::LeaseRevokeResponse> {
        lease("LeaseRevoke")
    }

    type LeaseKeepAliveStream = BoxStream<rpc::LeaseKeepAliveResponse>;

    async fn lease_keep_alive(
        &self,
        _: Request<Streaming<rpc::LeaseKeepAliveRequest>>,
    ) -> Answer<Self::LeaseKeepAliveStream> {
        lease("LeaseKeepAlive")
    }

    async fn lease_time_to_live(
        &self,
        _: Request<rpc::LeaseTimeToLiveRequest>,
    ) -> Answer<rpc::LeaseTimeToLiveResponse> {
        lease("LeaseTimeToLive")
    }

    async fn lease_leases(
        &self,
        _: Request<rpc::LeaseLeasesRequest>,
    ) -> Answer<rpc::LeaseLeasesResponse> {
        lease("LeaseLeases")
    }
}

/// Implements every Auth call as `Unimplemented` naming the call.
macro_rules! auth_unimplemented {
    ($($method:ident($req:ident) -> $resp:ident: $name:literal;)*) => {
        #[tonic::async_trait]
        impl<B: EtcdBackend> auth_server::Auth for EtcdService<B> {
            $(
                async fn $method(&self, _: Request<rpc::$req>) -> Answer<rpc::$resp> {
                    Err(EtcdError::unimplemented(
                        concat!("the Auth service (", $name, ")"),
                        issue::AUTH,
                    )
                    .into())
                }
            )*
        }
    };
}

auth_unimplemented! {
    auth_enable(AuthEnableRequest) -> AuthEnableResponse: "AuthEnable";
    auth_disable(AuthDisableRequest) -> AuthDisableResponse: "AuthDisable";
    auth_status(AuthStatusRequest) -> AuthStatusResponse: "AuthStatus";
    authenticate(AuthenticateRequest) -> AuthenticateResponse: "Authenticate";
    user_add(AuthUserAddRequest) -> AuthUserAddResponse: "UserAdd";
    user_get(AuthUserGetRequest) -> AuthUserGetResponse: "UserGet";
    user_list(AuthUserListRequest) -> AuthUserListResponse: "UserList";
    user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse: "UserDelete";
    user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse: "UserChangePassword";
    user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse: "UserGrantRole";
    user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse: "UserRevokeRole";
    role_add(AuthRoleAddRequest) -> AuthRoleAddResponse: "RoleAdd";
    role_get(AuthRoleGetRequest) -> AuthRoleGetResponse: "RoleGet";
    role_list(AuthRoleListRequest) -> AuthRoleListResponse: "RoleList";
    role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse: "RoleDelete";
    role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse: "RoleGrantPermission";
    role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse: "RoleRevokePermission";
}

/// Maintenance.Snapshot's messages: each piece of the file with a header.
/// A piece is held back until the next one (or the end) is known, so that
/// `remaining_bytes` is 0 only on the last message, as etcd's clients
/// expect (the total is not known ahead: non-final messages say 1 more
/// byte at least).
fn snapshot_responses(
    pieces: super::backend::SnapshotBytes,
    header: Option<rpc::ResponseHeader>,
) -> BoxStream<rpc::SnapshotResponse> {
    use futures::StreamExt;
    struct State {
        pieces: super::backend::SnapshotBytes,
        held: Option<bytes::Bytes>,
        done: bool,
    }
    let state = State {
        pieces,
        held: None,
        done: false,
    };
    Box::pin(futures::stream::unfold(state, move |mut st| {
        let header = header;
        async move {
            loop {
                if st.done {
                    return None;
                }
                match st.pieces.next().await {
                    Some(Ok(piece)) if piece.is_empty() => continue,
                    Some(Ok(piece)) => match st.held.replace(piece) {
                        None => continue,
                        Some(blob) => {
                            let msg = rpc::SnapshotResponse {
                                header,
                                remaining_bytes: st.held.as_ref().map_or(0, |b| b.len() as u64),
                                blob: blob.to_vec(),
                            };
                            return Some((Ok(msg), st));
                        }
                    },
                    Some(Err(e)) => {
                        st.done = true;
                        return Some((Err(Status::from(e)), st));
                    }
                    None => {
                        st.done = true;
                        let blob = st.held.take()?;
                        let msg = rpc::SnapshotResponse {
                            header,
                            remaining_bytes: 0,
                            blob: blob.to_vec(),
                        };
                        return Some((Ok(msg), st));
                    }
                }
            }
        }
    }))
}
