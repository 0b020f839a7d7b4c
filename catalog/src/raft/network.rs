//! The catalog group's transport: tonic gRPC between nodes, openraft's messages as JSON.

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::node::{MembershipChange, Redirect, Replica};
use super::{CatalogRaft, ClusterNode, CommandOutcome};
use crate::state::CatalogCommand;

/// The generated gRPC service and client.
pub mod proto {
    tonic::include_proto!("quiver.raft");
}

use proto::Payload;
use proto::raft_service_client::RaftServiceClient;
use proto::raft_service_server::{RaftService, RaftServiceServer};

fn encode<T: Serialize>(value: &T) -> Result<Payload, Status> {
    serde_json::to_vec(value)
        .map(|json| Payload { json })
        .map_err(|e| Status::internal(format!("cannot encode a Raft message: {e}")))
}

fn decode<T: DeserializeOwned>(payload: &Payload) -> Result<T, Status> {
    serde_json::from_slice(&payload.json)
        .map_err(|e| Status::invalid_argument(format!("cannot decode a Raft message: {e}")))
}

/// Makes a client per peer; connections are opened lazily and re-opened by tonic.
#[derive(Debug, Clone, Default)]
pub struct Network;

impl RaftNetworkFactory<CatalogRaft> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &ClusterNode) -> PeerClient {
        PeerClient {
            target,
            channel: peer_channel(&node.raft_addr),
        }
    }
}

/// A lazily connected channel to a peer's Raft service; `None` when the address is unusable
/// (every call then reports the peer unreachable).
pub(crate) fn peer_channel(raft_addr: &str) -> Option<Channel> {
    Endpoint::from_shared(format!("http://{raft_addr}"))
        .ok()
        .map(|endpoint| {
            endpoint
                .connect_timeout(std::time::Duration::from_secs(2))
                .connect_lazy()
        })
}

/// One peer, as the leader (or a candidate) talks to it.
pub struct PeerClient {
    target: u64,
    channel: Option<Channel>,
}

impl PeerClient {
    /// Sends one request and decodes the peer's `Result<reply, error>`.
    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, ClusterNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let channel = self.channel.clone().ok_or_else(|| {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
                "the peer's Raft address is not a valid address",
            )))
        })?;
        let mut client = RaftServiceClient::new(channel);
        let payload =
            encode(request).map_err(|status| RPCError::Network(NetworkError::new(&status)))?;
        let mut request = Request::new(payload);
        request.set_timeout(option.hard_ttl());
        let reply = match method {
            Method::AppendEntries => client.append_entries(request).await,
            Method::Vote => client.vote(request).await,
            Method::InstallSnapshot => client.install_snapshot(request).await,
        }
        .map_err(|status| RPCError::Unreachable(Unreachable::new(&status)))?;
        let result: Result<Resp, E> = decode(reply.get_ref())
            .map_err(|status| RPCError::Network(NetworkError::new(&status)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy)]
enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl RaftNetwork<CatalogRaft> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<CatalogRaft>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, ClusterNode, RaftError<u64>>> {
        self.call(Method::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<CatalogRaft>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, ClusterNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.call(Method::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, ClusterNode, RaftError<u64>>> {
        self.call(Method::Vote, &rpc, &option).await
    }
}

/// Sends a catalog command to the leader at `raft_addr` to propose.
pub(crate) async fn forward(
    raft_addr: &str,
    command: &CatalogCommand,
) -> Result<Result<CommandOutcome, String>, Status> {
    let channel = peer_channel(raft_addr)
        .ok_or_else(|| Status::invalid_argument(format!("bad Raft address {raft_addr}")))?;
    let reply = RaftServiceClient::new(channel)
        .forward(Request::new(encode(command)?))
        .await?;
    decode(reply.get_ref())
}

/// Asks the leader at `raft_addr` for its read index: the log index every committed command is
/// at or below when the leader has confirmed it still leads.
pub(crate) async fn read_index(raft_addr: &str) -> Result<Result<Option<u64>, String>, Status> {
    let channel = peer_channel(raft_addr)
        .ok_or_else(|| Status::invalid_argument(format!("bad Raft address {raft_addr}")))?;
    let reply = RaftServiceClient::new(channel)
        .read_index(Request::new(encode(&())?))
        .await?;
    decode(reply.get_ref())
}

/// Sends a membership change to the leader at `raft_addr`.
pub(crate) async fn change_membership(
    raft_addr: &str,
    change: &MembershipChange,
) -> Result<Result<(), Redirect>, Status> {
    let channel = peer_channel(raft_addr)
        .ok_or_else(|| Status::invalid_argument(format!("bad Raft address {raft_addr}")))?;
    let reply = RaftServiceClient::new(channel)
        .change_membership(Request::new(encode(change)?))
        .await?;
    decode(reply.get_ref())
}

/// The Raft service a node serves to its peers.
pub struct RaftServer {
    pub(crate) replica: Replica,
}

impl RaftServer {
    pub fn into_service(self) -> RaftServiceServer<RaftServer> {
        RaftServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        let rpc: AppendEntriesRequest<CatalogRaft> = decode(request.get_ref())?;
        Ok(Response::new(encode(
            &self.replica.raft.append_entries(rpc).await,
        )?))
    }

    async fn vote(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        let rpc: VoteRequest<u64> = decode(request.get_ref())?;
        Ok(Response::new(encode(&self.replica.raft.vote(rpc).await)?))
    }

    async fn install_snapshot(
        &self,
        request: Request<Payload>,
    ) -> Result<Response<Payload>, Status> {
        let rpc: InstallSnapshotRequest<CatalogRaft> = decode(request.get_ref())?;
        Ok(Response::new(encode(
            &self.replica.raft.install_snapshot(rpc).await,
        )?))
    }

    /// Proposes a command a follower received; a node that is not the leader (any more) says so
    /// and the follower retries at the leader it names.
    async fn forward(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        let command: CatalogCommand = decode(request.get_ref())?;
        let result: Result<CommandOutcome, String> = self
            .replica
            .raft
            .client_write(command)
            .await
            .map(|response| response.data)
            .map_err(|e| e.to_string());
        Ok(Response::new(encode(&result)?))
    }

    /// Applies a membership change a follower received, if this node leads.
    async fn change_membership(
        &self,
        request: Request<Payload>,
    ) -> Result<Response<Payload>, Status> {
        let change: MembershipChange = decode(request.get_ref())?;
        let result = self.replica.change_membership_here(&change).await;
        Ok(Response::new(encode(&result)?))
    }

    async fn read_index(&self, _request: Request<Payload>) -> Result<Response<Payload>, Status> {
        let result: Result<Option<u64>, String> = self
            .replica
            .raft
            .ensure_linearizable()
            .await
            .map(|log_id| log_id.map(|id| id.index))
            .map_err(|e| e.to_string());
        Ok(Response::new(encode(&result)?))
    }
}
