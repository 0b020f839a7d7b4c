//! One node of the catalog group: openraft over the RocksDB storage and the gRPC transport.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{Config, Raft, ServerState};

use super::network::{self, Network, RaftServer};
use super::{CatalogRaft, ClusterNode, StateMachineStore};
use crate::error::{CatalogError, CatalogResult};
use crate::state::{Applied, CatalogCommand, CatalogState};

/// How long a write waits for a leader to be elected before it fails.
const LEADERLESS_WAIT: Duration = Duration::from_secs(10);

/// How a node joins the catalog group.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: u64,
    /// Where this node serves its peers.
    pub raft_listen: SocketAddr,
    /// Every initial member (this node included), by id.
    pub peers: BTreeMap<u64, ClusterNode>,
}

/// A running member of the catalog group.
pub struct CatalogNode {
    raft: Raft<CatalogRaft>,
    state_machine: StateMachineStore,
    node_id: u64,
    server: tokio::task::JoinHandle<()>,
}

/// The errors of a replicated command that are not the command's own.
fn unavailable(message: String) -> CatalogError {
    CatalogError::Unavailable(message)
}

impl CatalogNode {
    /// Opens the node's Raft storage under `dir`, serves its peers on `raft_listen`, and, on the
    /// member with the lowest id, initialises the group with every peer the first time: nodes
    /// started with the same peers form the cluster by themselves.
    pub async fn start(dir: &Path, config: NodeConfig) -> CatalogResult<CatalogNode> {
        let (log_store, state_machine) = super::open(dir)?;
        let raft_config = Config {
            cluster_name: "quiver-catalog".into(),
            heartbeat_interval: 150,
            election_timeout_min: 600,
            election_timeout_max: 1200,
            ..Default::default()
        }
        .validate()
        .map_err(|e| unavailable(format!("Raft configuration: {e}")))?;
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            Network,
            log_store,
            state_machine.clone(),
        )
        .await
        .map_err(|e| unavailable(format!("cannot start Raft: {e}")))?;
        let listener = tokio::net::TcpListener::bind(config.raft_listen)
            .await
            .map_err(|e| CatalogError::Io {
                path: config.raft_listen.to_string(),
                source: e,
            })?;
        let service = RaftServer { raft: raft.clone() }.into_service();
        let server = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
            {
                tracing::error!(error = %e, "the Raft service stopped");
            }
        });
        let lowest = config.peers.keys().next().copied();
        if lowest == Some(config.node_id) {
            match raft.initialize(config.peers.clone()).await {
                Ok(()) => {
                    tracing::info!(members = ?config.peers.keys().collect::<Vec<_>>(), "initialised the catalog group")
                }
                // Already initialised (a restart): the log says who the members are.
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => {
                    return Err(unavailable(format!(
                        "cannot initialise the catalog group: {e}"
                    )));
                }
            }
        }
        Ok(CatalogNode {
            raft,
            state_machine,
            node_id: config.node_id,
            server,
        })
    }

    /// Proposes a command and waits until it is committed and applied; a follower forwards it
    /// to the leader. While no leader is known (an election), it retries for up to
    /// [`LEADERLESS_WAIT`]. The command's own refusal comes back as the catalog error it was.
    pub async fn execute(&self, command: CatalogCommand) -> CatalogResult<Applied> {
        let deadline = tokio::time::Instant::now() + LEADERLESS_WAIT;
        let outcome = loop {
            match self.raft.client_write(command.clone()).await {
                Ok(response) => break response.data,
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                    if let Some(leader) = forward.leader_node {
                        match network::forward(&leader.raft_addr, &command).await {
                            Ok(Ok(outcome)) => break outcome,
                            // The leader changed (or is unreachable) meanwhile: ask again.
                            Ok(Err(_)) | Err(_) if tokio::time::Instant::now() < deadline => {}
                            Ok(Err(e)) => return Err(unavailable(e)),
                            Err(status) => {
                                return Err(unavailable(format!(
                                    "forwarding to the leader: {status}"
                                )));
                            }
                        }
                    } else if tokio::time::Instant::now() >= deadline {
                        return Err(unavailable(format!(
                            "the catalog group has had no leader for {} s (no quorum?)",
                            LEADERLESS_WAIT.as_secs()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(unavailable(e.to_string())),
            }
        };
        outcome.map_err(CatalogError::Rejected)
    }

    /// The catalog after every command committed before this call (read-index: the leader
    /// confirms it still leads and names its commit index; this node, leader or follower, waits
    /// until it has applied that far).
    pub async fn linearizable_state(&self) -> CatalogResult<Arc<CatalogState>> {
        let deadline = tokio::time::Instant::now() + LEADERLESS_WAIT;
        let read_index = loop {
            match self.raft.ensure_linearizable().await {
                Ok(_) => return Ok(self.state_machine.catalog()),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                    if let Some(leader) = forward.leader_node
                        && let Ok(Ok(index)) = network::read_index(&leader.raft_addr).await
                    {
                        break index;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(unavailable(
                            "no leader answered a linearizable read (no quorum?)".into(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(unavailable(format!("linearizable read: {e}"))),
            }
        };
        self.raft
            .wait(Some(LEADERLESS_WAIT))
            .applied_index_at_least(read_index, "applied up to the leader's read index")
            .await
            .map_err(|e| unavailable(format!("catching up with the leader: {e}")))?;
        Ok(self.state_machine.catalog())
    }

    /// The catalog as this node has applied it (possibly behind the leader).
    pub fn local_state(&self) -> Arc<CatalogState> {
        self.state_machine.catalog()
    }

    /// The current leader, if one is known.
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// Whether this node leads the group now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The group's voting members.
    pub fn members(&self) -> BTreeSet<u64> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Waits until a leader is known, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> CatalogResult<u64> {
        self.raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await
            .map_err(|e| unavailable(format!("no leader: {e}")))?;
        self.leader().ok_or_else(|| unavailable("no leader".into()))
    }

    /// Stops Raft and the service, and waits until both have let go of the storage (so that it
    /// can be opened again in this process).
    pub async fn shutdown(self) {
        let _ = self.raft.shutdown().await;
        self.server.abort();
        let _ = self.server.await;
    }
}
