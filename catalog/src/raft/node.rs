//! One node of the catalog group: openraft over the RocksDB storage and the gRPC transport.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    ChangeMembershipError, CheckIsLeaderError, ClientWriteError, InitializeError, RaftError,
};
use openraft::{ChangeMembers, Config, Raft, ServerState};
use serde::{Deserialize, Serialize};

use super::network::{self, Network, RaftServer};
use super::{CatalogRaft, ClusterNode, StateMachineStore};
use crate::error::{CatalogError, CatalogResult};
use crate::state::{Applied, CatalogCommand, CatalogState};

/// How long a write waits for a leader to be elected before it fails.
const LEADERLESS_WAIT: Duration = Duration::from_secs(10);

/// The longest a catalog change or a linearizable read waits in all (well within the default
/// statement_timeout of 30 s): a leader that lost its quorum would otherwise wait forever.
const STATEMENT_WAIT: Duration = Duration::from_secs(12);

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
    replica: Replica,
    node_id: u64,
    server: tokio::task::JoinHandle<()>,
    /// Bootstraps the catalog (lowest member) and registers this node's SQL address, retrying
    /// until the group has a quorum.
    joining: tokio::task::JoinHandle<()>,
}

/// What proposes commands to the group and reads its state; cheap to clone into tasks.
#[derive(Clone)]
pub struct Replica {
    pub(crate) raft: Raft<CatalogRaft>,
    state_machine: StateMachineStore,
}

/// A membership change, proposed by the leader (a follower forwards it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Adds a node as a learner, waits until it has caught up, then makes it a voter.
    AddNode { node_id: u64, raft_addr: String },
    /// Removes a node from the voters and from the group.
    RemoveNode { node_id: u64 },
}

/// One member as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub node_id: u64,
    pub raft_addr: String,
    /// `leader`, `follower` (a voter that is not the leader) or `learner`.
    pub role: &'static str,
    pub is_this_node: bool,
    /// The last log index known to be on that node: this node's own last index, or, on the
    /// leader, what each follower has acknowledged; `None` when this node cannot know.
    pub last_log_index: Option<u64>,
    /// The last index this node has applied (on this node's row only).
    pub last_applied_index: Option<u64>,
    pub current_term: u64,
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
        let replica = Replica {
            raft,
            state_machine,
        };
        let service = RaftServer {
            replica: replica.clone(),
        }
        .into_service();
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
        let lowest = config.peers.keys().next().copied() == Some(config.node_id);
        if lowest {
            match replica.raft.initialize(config.peers.clone()).await {
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
        let sql_addr = config
            .peers
            .get(&config.node_id)
            .map(|node| node.sql_addr.clone())
            .unwrap_or_default();
        let joining = tokio::spawn(join(replica.clone(), config.node_id, sql_addr, lowest));
        Ok(CatalogNode {
            replica,
            node_id: config.node_id,
            server,
            joining,
        })
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Stops Raft and the service, and waits until both have let go of the storage (so that it
    /// can be opened again in this process).
    pub async fn shutdown(self) {
        self.joining.abort();
        let _ = self.replica.raft.shutdown().await;
        self.server.abort();
        let _ = self.server.await;
    }
}

impl std::ops::Deref for CatalogNode {
    type Target = Replica;

    fn deref(&self) -> &Replica {
        &self.replica
    }
}

/// In the background, until done: the lowest member bootstraps the catalog if nobody has, and
/// every member records its SQL address. Both wait for a quorum, which may come minutes after
/// this node started (the other nodes may not be up yet): startup never waits for it.
async fn join(replica: Replica, node_id: u64, sql_addr: String, bootstraps: bool) {
    let mut bootstrapped = !bootstraps;
    let mut registered = sql_addr.is_empty();
    while !(bootstrapped && registered) {
        let result = async {
            let state = replica.linearizable_state().await?;
            if !bootstrapped {
                if state.user(crate::BOOTSTRAP_NAME).is_none() {
                    for command in crate::bootstrap_commands() {
                        replica.execute(command).await?;
                    }
                }
                bootstrapped = true;
            }
            if !registered {
                if state.sql_addr(node_id) != Some(sql_addr.as_str()) {
                    replica
                        .execute(CatalogCommand::RegisterNode {
                            node_id,
                            sql_addr: sql_addr.clone(),
                        })
                        .await?;
                }
                registered = true;
            }
            CatalogResult::Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::info!(error = %e, "waiting for the catalog group");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

impl Replica {
    /// Proposes a command and waits until it is committed and applied; a follower forwards it
    /// to the leader. While no leader is known (an election), it retries for up to
    /// [`LEADERLESS_WAIT`]. The command's own refusal comes back as the catalog error it was.
    pub async fn execute(&self, command: CatalogCommand) -> CatalogResult<Applied> {
        // A leader cut off from its quorum does not know it yet: its proposal would wait.
        tokio::time::timeout(STATEMENT_WAIT, self.propose(command))
            .await
            .unwrap_or_else(|_| {
                Err(unavailable(format!(
                    "the catalog group did not commit the change within {} s (no quorum?); \
                     it takes effect only if the node that received it regains a quorum",
                    STATEMENT_WAIT.as_secs()
                )))
            })
    }

    async fn propose(&self, command: CatalogCommand) -> CatalogResult<Applied> {
        let deadline = tokio::time::Instant::now() + LEADERLESS_WAIT;
        let outcome = loop {
            match self.raft.client_write(command.clone()).await {
                Ok(response) => break response.data,
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                    if let Some(leader) = forward.leader_node {
                        match network::forward(&leader.raft_addr, &command).await {
                            Ok(Ok(outcome)) => {
                                // The caller reads this node's state next: wait until it has
                                // applied what the leader committed.
                                self.read_linearizably().await?;
                                break outcome;
                            }
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
        tokio::time::timeout(STATEMENT_WAIT, self.read_linearizably())
            .await
            .unwrap_or_else(|_| {
                Err(unavailable(format!(
                    "no leader confirmed a linearizable read within {} s (no quorum?)",
                    STATEMENT_WAIT.as_secs()
                )))
            })
    }

    async fn read_linearizably(&self) -> CatalogResult<Arc<CatalogState>> {
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

    /// Waits until a leader is known, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> CatalogResult<u64> {
        self.raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await
            .map_err(|e| unavailable(format!("no leader: {e}")))?;
        self.leader().ok_or_else(|| unavailable("no leader".into()))
    }

    /// Changes the membership; a follower forwards the change to the leader. Adding a node waits
    /// until it has caught up with the log (it must be running).
    pub async fn change_membership(&self, change: MembershipChange) -> CatalogResult<()> {
        let deadline = tokio::time::Instant::now() + LEADERLESS_WAIT;
        loop {
            let leader = match self.change_membership_here(&change).await {
                Ok(()) => return Ok(()),
                Err(Redirect::Refused(message)) => return Err(CatalogError::Rejected(message)),
                Err(Redirect::ToLeader(leader)) => leader,
                Err(Redirect::Busy) => None,
            };
            if let Some(leader) = leader {
                match network::change_membership(&leader.raft_addr, &change).await {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(Redirect::Refused(message))) => {
                        return Err(CatalogError::Rejected(message));
                    }
                    // The leader changed (or is unreachable, or finishing the previous
                    // change) meanwhile: ask again.
                    Ok(Err(Redirect::ToLeader(_) | Redirect::Busy)) | Err(_) => {}
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(unavailable(format!(
                    "no leader could change the membership for {} s (no quorum?)",
                    LEADERLESS_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Applies a membership change if this node leads; else names the leader.
    pub(crate) async fn change_membership_here(
        &self,
        change: &MembershipChange,
    ) -> Result<(), Redirect> {
        let result = match change {
            MembershipChange::AddNode { node_id, raft_addr } => {
                let node = ClusterNode {
                    raft_addr: raft_addr.clone(),
                    sql_addr: String::new(),
                };
                match self.raft.add_learner(*node_id, node, true).await {
                    Ok(_) => {
                        self.raft
                            .change_membership(ChangeMembers::AddVoterIds([*node_id].into()), false)
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
            MembershipChange::RemoveNode { node_id } => {
                if !self.members().contains(node_id) && !self.learners().contains(node_id) {
                    return Err(Redirect::Refused(format!(
                        "node {node_id} is not a member of the cluster"
                    )));
                }
                self.raft
                    .change_membership(ChangeMembers::RemoveVoters([*node_id].into()), false)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(Redirect::ToLeader(forward.leader_node))
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            ))) => Err(Redirect::Busy),
            Err(e) => Err(Redirect::Refused(e.to_string())),
        }
    }

    /// The group's learners (members that replicate but do not vote).
    pub fn learners(&self) -> BTreeSet<u64> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .learner_ids()
            .collect()
    }

    /// Every member (voters and learners) as this node sees it.
    pub fn member_status(&self, this_node: u64) -> Vec<MemberStatus> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| {
                let is_this_node = *id == this_node;
                let role = if metrics.current_leader == Some(*id) {
                    "leader"
                } else if voters.contains(id) {
                    "follower"
                } else {
                    "learner"
                };
                let last_log_index = if is_this_node {
                    metrics.last_log_index
                } else {
                    metrics
                        .replication
                        .as_ref()
                        .and_then(|replication| replication.get(id))
                        .and_then(|matched| matched.map(|log_id| log_id.index))
                };
                MemberStatus {
                    node_id: *id,
                    raft_addr: node.raft_addr.clone(),
                    role,
                    is_this_node,
                    last_log_index,
                    last_applied_index: is_this_node
                        .then(|| metrics.last_applied.map(|log_id| log_id.index))
                        .flatten(),
                    current_term: metrics.current_term,
                }
            })
            .collect()
    }
}

/// Why a membership change was not applied on the node asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Redirect {
    /// This node does not lead; the leader, if known.
    ToLeader(Option<ClusterNode>),
    /// The previous membership change is still being committed.
    Busy,
    /// The change itself failed.
    Refused(String),
}
