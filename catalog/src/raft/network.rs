//! The transport of the cluster's Raft groups: tonic gRPC between nodes, one service per node
//! for every group (each message names its group), openraft's messages as JSON.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

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
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};
use tonic::{Request, Response, Status};

use super::{ClusterNode, GroupId, GroupTypes};

/// The generated gRPC service and client.
pub mod proto {
    tonic::include_proto!("quiver.raft");
}

use proto::Payload;

/// The largest message a node sends or accepts: an AppendEntries of the data group carries up to
/// a hundred entries of rows, and a snapshot is one message.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

fn client(channel: Channel) -> RaftServiceClient<Channel> {
    RaftServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}
use proto::raft_service_client::RaftServiceClient;
use proto::raft_service_server::{RaftService, RaftServiceServer};

fn encode<T: Serialize>(group: GroupId, value: &T) -> Result<Payload, Status> {
    Ok(Payload {
        json: to_json(value)?,
        group,
    })
}

fn decode<T: DeserializeOwned>(payload: &Payload) -> Result<T, Status> {
    from_json(&payload.json)
}

/// The PEM files of mutual TLS between nodes: this node's certificate chain and key (presented
/// as a server and as a client), and the CA that signs every node's certificate.
#[derive(Debug, Clone)]
pub struct TransportTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub ca_pem: Vec<u8>,
}

/// How this node reaches its peers: plaintext HTTP/2, or mutual TLS. Clones share one channel
/// per peer address (a channel multiplexes calls over one connection and reconnects by itself;
/// a connection per call would cost a handshake per forwarded read).
#[derive(Debug, Clone, Default)]
pub struct Transport {
    tls: Option<TransportTls>,
    channels: Arc<std::sync::Mutex<HashMap<String, Channel>>>,
}

impl Transport {
    pub fn new(tls: Option<TransportTls>) -> Transport {
        Transport {
            tls,
            channels: Arc::default(),
        }
    }

    /// The channel to a peer's Raft service, connected lazily; `None` when the address is
    /// unusable (every call then reports the peer unreachable).
    pub(crate) fn channel(&self, raft_addr: &str) -> Option<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(raft_addr) {
            return Some(channel.clone());
        }
        let channel = self.connect(raft_addr)?;
        channels.insert(raft_addr.to_string(), channel.clone());
        Some(channel)
    }

    fn connect(&self, raft_addr: &str) -> Option<Channel> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{raft_addr}"))
            .ok()?
            .connect_timeout(std::time::Duration::from_secs(2));
        if let Some(tls) = &self.tls {
            // The peer's certificate must name the host of its Raft address and be signed by
            // the cluster's CA; this node proves itself with its own certificate.
            let config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
            endpoint = endpoint.tls_config(config).ok()?;
        }
        Some(endpoint.connect_lazy())
    }

    /// The server side: only peers whose certificate the cluster's CA signed get in.
    pub(crate) fn server_tls(&self) -> Option<ServerTlsConfig> {
        self.tls.as_ref().map(|tls| {
            ServerTlsConfig::new()
                .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
                .client_ca_root(Certificate::from_pem(&tls.ca_pem))
        })
    }
}

/// When each peer last accepted this node's leadership: for every peer, the term of the leader
/// vote it accepted in an AppendEntries (a heartbeat or a replication) and when that request was
/// sent. A peer that accepts a leader's AppendEntries refuses every other candidate's vote for
/// openraft's leader lease (the maximum election timeout) after it processed it, so a leader
/// that a quorum acknowledged at `t` is the only leader until `t` plus that lease.
#[derive(Debug, Clone, Default)]
pub struct LeaderAcks {
    acks: Arc<std::sync::Mutex<HashMap<u64, (u64, std::time::Instant)>>>,
}

impl LeaderAcks {
    fn record(&self, peer: u64, term: u64, sent: std::time::Instant) {
        let mut acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        let entry = acks.entry(peer).or_insert((term, sent));
        if (term, sent) > *entry {
            *entry = (term, sent);
        }
    }

    /// How many of `peers` accepted a leader of `term` in a request sent after `since`.
    pub(crate) fn count_since(
        &self,
        peers: impl Iterator<Item = u64>,
        term: u64,
        since: std::time::Instant,
    ) -> usize {
        let acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .filter(|peer| {
                acks.get(peer)
                    .is_some_and(|(acked_term, sent)| *acked_term == term && *sent >= since)
            })
            .count()
    }
}

/// Makes a client per peer for one group; connections are opened lazily and re-opened by tonic.
#[derive(Debug)]
pub struct Network<C> {
    group: GroupId,
    transport: Transport,
    acks: LeaderAcks,
    types: PhantomData<C>,
}

impl<C> Network<C> {
    pub fn new(group: GroupId, transport: Transport, acks: LeaderAcks) -> Self {
        Network {
            group,
            transport,
            acks,
            types: PhantomData,
        }
    }
}

impl<C: GroupTypes> RaftNetworkFactory<C> for Network<C> {
    type Network = PeerClient<C>;

    async fn new_client(&mut self, target: u64, node: &ClusterNode) -> PeerClient<C> {
        PeerClient {
            target,
            group: self.group,
            channel: self.transport.channel(&node.raft_addr),
            acks: self.acks.clone(),
            types: PhantomData,
        }
    }
}

/// One peer, as the leader (or a candidate) of one group talks to it.
pub struct PeerClient<C> {
    target: u64,
    group: GroupId,
    channel: Option<Channel>,
    acks: LeaderAcks,
    types: PhantomData<C>,
}

impl<C: GroupTypes> PeerClient<C> {
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
        let payload = encode(self.group, request)
            .map_err(|status| RPCError::Network(NetworkError::new(&status)))?;
        let mut request = Request::new(payload);
        request.set_timeout(option.hard_ttl());
        let reply = call(client(channel), method, request)
            .await
            .map_err(|status| RPCError::Unreachable(Unreachable::new(&status)))?;
        let result: Result<Resp, E> = decode(reply.get_ref())
            .map_err(|status| RPCError::Network(NetworkError::new(&status)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// The service's methods.
#[derive(Clone, Copy, Debug)]
pub enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
    /// A proposal sent to a follower, forwarded to the leader to propose.
    Forward,
    /// The leader's read index, for a follower's linearizable read.
    ReadIndex,
    /// A membership change sent to a follower, forwarded to the leader.
    ChangeMembership,
}

async fn call(
    mut client: RaftServiceClient<Channel>,
    method: Method,
    request: Request<Payload>,
) -> Result<Response<Payload>, Status> {
    match method {
        Method::AppendEntries => client.append_entries(request).await,
        Method::Vote => client.vote(request).await,
        Method::InstallSnapshot => client.install_snapshot(request).await,
        Method::Forward => client.forward(request).await,
        Method::ReadIndex => client.read_index(request).await,
        Method::ChangeMembership => client.change_membership(request).await,
    }
}

impl<C: GroupTypes> RaftNetwork<C> for PeerClient<C> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, ClusterNode, RaftError<u64>>> {
        let sent = std::time::Instant::now();
        let term = rpc.vote.leader_id().get_term();
        let response = self.call(Method::AppendEntries, &rpc, &option).await?;
        // Every answer but a higher vote means the peer took this node as its leader.
        if rpc.vote.is_committed() && !matches!(response, AppendEntriesResponse::HigherVote(_)) {
            self.acks.record(self.target, term, sent);
        }
        Ok(response)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
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

/// Sends `request` to group `group`'s service on the node at `raft_addr` (the leader, for
/// forwarded proposals, read indexes and membership changes) and decodes its reply.
pub(crate) async fn ask<Req: Serialize, Resp: DeserializeOwned>(
    transport: &Transport,
    raft_addr: &str,
    group: GroupId,
    method: Method,
    request: &Req,
) -> Result<Resp, Status> {
    let channel = transport
        .channel(raft_addr)
        .ok_or_else(|| Status::invalid_argument(format!("bad Raft address {raft_addr}")))?;
    let reply = call(
        client(channel),
        method,
        Request::new(encode(group, request)?),
    )
    .await?;
    decode(reply.get_ref())
}

/// A boxed reply future of a [`GroupService`].
pub type Reply<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, Status>> + Send + 'a>>;

/// One group as the node's service serves it: a request's JSON in, the reply's JSON out.
pub trait GroupService: Send + Sync {
    fn handle<'a>(&'a self, method: Method, json: &'a [u8]) -> Reply<'a>;
}

/// The groups a node serves, by id; a group is added once it has started.
#[derive(Clone, Default)]
pub struct GroupRegistry {
    groups: Arc<RwLock<HashMap<GroupId, Arc<dyn GroupService>>>>,
}

impl GroupRegistry {
    /// Serves `group` from now on (replacing a group of the same id).
    pub fn register(&self, group: GroupId, service: Arc<dyn GroupService>) {
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group, service);
    }

    /// Stops serving `group`.
    pub fn unregister(&self, group: GroupId) {
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group);
    }

    fn get(&self, group: GroupId) -> Option<Arc<dyn GroupService>> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group)
            .cloned()
    }
}

/// The Raft service a node serves to its peers, for every registered group.
pub struct RaftServer {
    pub(crate) groups: GroupRegistry,
}

impl RaftServer {
    pub fn into_service(self) -> RaftServiceServer<RaftServer> {
        RaftServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    async fn dispatch(
        &self,
        method: Method,
        request: Request<Payload>,
    ) -> Result<Response<Payload>, Status> {
        let payload = request.into_inner();
        // A group that has not started here yet is, to its peers, a node that is down.
        let service = self.groups.get(payload.group).ok_or_else(|| {
            Status::unavailable(format!("Raft group {} is not running here", payload.group))
        })?;
        let json = service.handle(method, &payload.json).await?;
        Ok(Response::new(Payload {
            json,
            group: payload.group,
        }))
    }
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.dispatch(Method::AppendEntries, request).await
    }

    async fn vote(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.dispatch(Method::Vote, request).await
    }

    async fn install_snapshot(
        &self,
        request: Request<Payload>,
    ) -> Result<Response<Payload>, Status> {
        self.dispatch(Method::InstallSnapshot, request).await
    }

    async fn forward(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.dispatch(Method::Forward, request).await
    }

    async fn read_index(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.dispatch(Method::ReadIndex, request).await
    }

    async fn change_membership(
        &self,
        request: Request<Payload>,
    ) -> Result<Response<Payload>, Status> {
        self.dispatch(Method::ChangeMembership, request).await
    }
}

/// Decodes a request's JSON.
pub(crate) fn from_json<T: DeserializeOwned>(json: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(json)
        .map_err(|e| Status::invalid_argument(format!("cannot decode a Raft message: {e}")))
}

/// Encodes a reply as JSON.
pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(value)
        .map_err(|e| Status::internal(format!("cannot encode a Raft message: {e}")))
}
