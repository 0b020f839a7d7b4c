//! One Raft group of the cluster on this node, whatever its state machine: proposals (forwarded
//! to the leader by a follower), linearizable reads, membership changes and status.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    ChangeMembershipError, CheckIsLeaderError, ClientWriteError, InitializeError, RaftError,
};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{ChangeMembers, Config, Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};

use super::network::{
    self, GroupService, LeaderAcks, Method, Network, Reply, Transport, from_json, to_json,
};
use super::{ClusterNode, GroupId, GroupTypes};
use crate::error::{CatalogError, CatalogResult};

/// How long a proposal waits for a leader to be elected before it fails.
const LEADERLESS_WAIT: Duration = Duration::from_secs(10);

/// The longest a proposal or a linearizable read waits in all (well within the default
/// statement_timeout of 30 s): a leader that lost its quorum would otherwise wait forever.
const STATEMENT_WAIT: Duration = Duration::from_secs(12);

/// A leader serves reads without a heartbeat round while a quorum accepted its leadership in
/// requests sent this recently: well within openraft's leader lease (the maximum election
/// timeout, 1.2 s here), during which a peer that accepted a leader votes for no one else.
/// Heartbeats every 150 ms keep it fresh.
const LEASE_READ_WINDOW: Duration = Duration::from_millis(500);

/// How long adding a node waits for it to catch up with the log before it gives up.
const LEARNER_CATCH_UP: Duration = Duration::from_secs(60);

/// How a group runs.
#[derive(Debug, Clone, Copy)]
pub struct GroupSettings {
    /// A snapshot is built after this many entries since the last one, and the log before it
    /// is purged (all but a few hundred entries, so that a follower slightly behind still gets
    /// entries rather than a snapshot).
    pub snapshot_every: u64,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            snapshot_every: 5000,
        }
    }
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

/// A running member of one group; clones share it.
pub struct RaftGroup<C: GroupTypes> {
    raft: Raft<C>,
    group: GroupId,
    node_id: u64,
    transport: Transport,
    rounds: Arc<std::sync::Mutex<ReadIndexRounds>>,
    acks: LeaderAcks,
}

/// The callers waiting for the next read-index round, and whether rounds are running.
#[derive(Default)]
struct ReadIndexRounds {
    running: bool,
    waiting: Vec<tokio::sync::oneshot::Sender<Result<Option<u64>, String>>>,
}

impl<C: GroupTypes> Clone for RaftGroup<C> {
    fn clone(&self) -> Self {
        RaftGroup {
            raft: self.raft.clone(),
            group: self.group,
            node_id: self.node_id,
            transport: self.transport.clone(),
            rounds: self.rounds.clone(),
            acks: self.acks.clone(),
        }
    }
}

fn unavailable<C: GroupTypes>(message: impl std::fmt::Display) -> CatalogError {
    CatalogError::Unavailable(format!("the {} is unavailable: {message}", C::NAME))
}

impl<C: GroupTypes> RaftGroup<C> {
    /// Starts this node's member of group `group` over its storage. Messages reach it once it
    /// is registered with the node's service ([`super::network::GroupRegistry`]).
    pub async fn start<L, S>(
        group: GroupId,
        node_id: u64,
        settings: GroupSettings,
        transport: Transport,
        log_store: L,
        state_machine: S,
    ) -> CatalogResult<Self>
    where
        L: RaftLogStorage<C>,
        S: RaftStateMachine<C>,
    {
        let config = Config {
            cluster_name: format!("quiver-{group}"),
            heartbeat_interval: 150,
            election_timeout_min: 600,
            election_timeout_max: 1200,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_every),
            max_in_snapshot_log_to_keep: settings.snapshot_every.min(500),
            // An entry of the data group may carry a few hundred KiB of rows.
            max_payload_entries: 100,
            ..Default::default()
        }
        .validate()
        .map_err(|e| unavailable::<C>(format!("Raft configuration: {e}")))?;
        let acks = LeaderAcks::default();
        let raft = Raft::new(
            node_id,
            Arc::new(config),
            Network::new(group, transport.clone(), acks.clone()),
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| unavailable::<C>(format!("cannot start Raft: {e}")))?;
        Ok(RaftGroup {
            raft,
            group,
            node_id,
            transport,
            rounds: Arc::default(),
            acks,
        })
    }

    /// Initialises the group with `members` the first time; a group that is already
    /// initialised (by an earlier start) is left as it is.
    pub async fn initialize(&self, members: BTreeMap<u64, ClusterNode>) -> CatalogResult<()> {
        let ids: Vec<u64> = members.keys().copied().collect();
        match self.raft.initialize(members).await {
            Ok(()) => {
                tracing::info!(group = C::NAME, members = ?ids, "initialised the group");
                Ok(())
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(unavailable::<C>(format!("cannot initialise: {e}"))),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The openraft handle.
    pub fn raft(&self) -> &Raft<C> {
        &self.raft
    }

    /// Proposes a command and waits until it is committed and applied on this node; a follower
    /// forwards it to the leader. While no leader is known (an election), it retries for up to
    /// [`LEADERLESS_WAIT`], and it gives up after [`STATEMENT_WAIT`] in all.
    pub async fn propose(&self, command: C::D) -> CatalogResult<C::R> {
        // A leader cut off from its quorum does not know it yet: its proposal would wait.
        tokio::time::timeout(STATEMENT_WAIT, self.propose_once_led(command))
            .await
            .unwrap_or_else(|_| {
                Err(unavailable::<C>(format!(
                    "the change was not committed within {} s (no quorum?); it takes effect \
                     only if the node that received it regains a quorum",
                    STATEMENT_WAIT.as_secs()
                )))
            })
    }

    async fn propose_once_led(&self, command: C::D) -> CatalogResult<C::R> {
        let deadline = tokio::time::Instant::now() + LEADERLESS_WAIT;
        loop {
            let leader = match self.raft.client_write(command.clone()).await {
                Ok(response) => return Ok(response.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                    forward.leader_node
                }
                Err(e) => return Err(unavailable::<C>(e)),
            };
            if let Some(leader) = leader {
                let reply: Result<Result<(C::R, u64), String>, _> = network::ask(
                    &self.transport,
                    &leader.raft_addr,
                    self.group,
                    Method::Forward,
                    &command,
                )
                .await;
                match reply {
                    Ok(Ok((outcome, index))) => {
                        // The caller reads this node's state next: wait until it has applied
                        // what the leader committed.
                        self.wait_applied(index).await?;
                        return Ok(outcome);
                    }
                    // The leader changed (or is unreachable) meanwhile: ask again.
                    Ok(Err(_)) | Err(_) if tokio::time::Instant::now() < deadline => {}
                    Ok(Err(e)) => return Err(unavailable::<C>(e)),
                    Err(status) => {
                        return Err(unavailable::<C>(format!(
                            "forwarding to the leader: {status}"
                        )));
                    }
                }
            } else if tokio::time::Instant::now() >= deadline {
                return Err(unavailable::<C>(format!(
                    "no leader for {} s (no quorum?)",
                    LEADERLESS_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until this node has applied every entry committed before this call (read-index:
    /// the leader confirms it still leads and names its commit index; this node, leader or
    /// follower, waits until it has applied that far).
    pub async fn catch_up(&self) -> CatalogResult<()> {
        tokio::time::timeout(STATEMENT_WAIT, self.catch_up_once_led())
            .await
            .unwrap_or_else(|_| {
                Err(unavailable::<C>(format!(
                    "no leader confirmed a linearizable read within {} s (no quorum?)",
                    STATEMENT_WAIT.as_secs()
                )))
            })
    }

    async fn catch_up_once_led(&self) -> CatalogResult<()> {
        match self.read_index().await? {
            Some(index) => self.wait_applied(index).await,
            None => Ok(()),
        }
    }

    /// The leader's read index, from a round that started after this call: concurrent callers
    /// share rounds (one leadership confirmation answers every caller that was waiting when it
    /// began), so a busy node confirms leadership once per round trip, not once per statement.
    async fn read_index(&self) -> CatalogResult<Option<u64>> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let starts_rounds = {
            let mut rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
            rounds.waiting.push(sender);
            !std::mem::replace(&mut rounds.running, true)
        };
        if starts_rounds {
            tokio::spawn(self.clone().run_read_index_rounds());
        }
        receiver
            .await
            .map_err(|_| unavailable::<C>("the linearizable read was abandoned"))?
            .map_err(unavailable::<C>)
    }

    /// Runs read-index rounds while callers wait, each for the callers that were waiting when
    /// it began.
    async fn run_read_index_rounds(self) {
        loop {
            let callers = {
                let mut rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
                if rounds.waiting.is_empty() {
                    rounds.running = false;
                    return;
                }
                std::mem::take(&mut rounds.waiting)
            };
            let result = tokio::time::timeout(STATEMENT_WAIT, self.read_index_round())
                .await
                .unwrap_or_else(|_| {
                    Err(unavailable::<C>(
                        "no leader confirmed a linearizable read (no quorum?)",
                    ))
                })
                .map_err(|e| e.to_string());
            for caller in callers {
                let _ = caller.send(result.clone());
            }
        }
    }

    /// One read-index round: the leader confirms it still leads (by its lease, or a heartbeat to
    /// a quorum) and names its commit index; a follower asks the leader.
    async fn read_index_round(&self) -> CatalogResult<Option<u64>> {
        if let Some(index) = self.leased_read_index() {
            return Ok(index);
        }
        let deadline = tokio::time::Instant::now() + LEADERLESS_WAIT;
        loop {
            match self.raft.ensure_linearizable().await {
                Ok(log_id) => return Ok(log_id.map(|id| id.index)),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                    if let Some(leader) = forward.leader_node {
                        let reply: Result<Result<Option<u64>, String>, _> = network::ask(
                            &self.transport,
                            &leader.raft_addr,
                            self.group,
                            Method::ReadIndex,
                            &(),
                        )
                        .await;
                        if let Ok(Ok(index)) = reply {
                            return Ok(index);
                        }
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(unavailable::<C>(
                            "no leader answered a linearizable read (no quorum?)",
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(unavailable::<C>(format!("linearizable read: {e}"))),
            }
        }
    }

    /// On a leader whose lease holds, the read index without a round trip: a quorum accepted
    /// its leadership in requests sent within [`LEASE_READ_WINDOW`], so no other leader can have
    /// been elected since (peers refuse votes for the maximum election timeout after accepting
    /// a leader), and it has applied an entry of its own term, so every entry committed before
    /// this call, and acknowledged to its writer, is applied here. `None` when that cannot be
    /// shown: the caller confirms leadership with a heartbeat round.
    fn leased_read_index(&self) -> Option<Option<u64>> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            return None;
        }
        let applied = metrics.last_applied?;
        if applied.leader_id.term != metrics.current_term {
            return None;
        }
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let since = std::time::Instant::now().checked_sub(LEASE_READ_WINDOW)?;
        let acked = self.acks.count_since(
            voters.iter().copied().filter(|id| *id != self.node_id),
            metrics.current_term,
            since,
        );
        let with_self = acked + usize::from(voters.contains(&self.node_id));
        (with_self * 2 > voters.len()).then_some(Some(applied.index))
    }

    async fn wait_applied(&self, index: u64) -> CatalogResult<()> {
        self.raft
            .wait(Some(LEADERLESS_WAIT))
            .applied_index_at_least(Some(index), "applied up to the leader's index")
            .await
            .map(|_| ())
            .map_err(|e| unavailable::<C>(format!("catching up with the leader: {e}")))
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

    /// Whether node `id` is a member (a voter or a learner).
    pub fn has_member(&self, id: u64) -> bool {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .is_some()
    }

    /// Waits until a leader is known, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> CatalogResult<u64> {
        self.raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await
            .map_err(|e| unavailable::<C>(format!("no leader: {e}")))?;
        self.leader()
            .ok_or_else(|| unavailable::<C>("no leader is known"))
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
                let reply: Result<Result<(), Redirect>, _> = network::ask(
                    &self.transport,
                    &leader.raft_addr,
                    self.group,
                    Method::ChangeMembership,
                    &change,
                )
                .await;
                match reply {
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
                return Err(unavailable::<C>(format!(
                    "no leader could change the membership for {} s (no quorum?)",
                    LEADERLESS_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Applies a membership change if this node leads; else names the leader.
    async fn change_membership_here(&self, change: &MembershipChange) -> Result<(), Redirect> {
        let result = match change {
            MembershipChange::AddNode { node_id, raft_addr } => {
                let node = ClusterNode {
                    raft_addr: raft_addr.clone(),
                    sql_addr: String::new(),
                };
                // Waits until the learner has caught up; a node that never answers (down, or
                // refusing this cluster's TLS certificates) would make it wait forever.
                let added = tokio::time::timeout(
                    LEARNER_CATCH_UP,
                    self.raft.add_learner(*node_id, node, true),
                )
                .await
                .map_err(|_| {
                    Redirect::Refused(format!(
                        "node {node_id} at {raft_addr} did not catch up within {} s: is it \
                                 running and reachable (with the cluster's TLS certificates)? It \
                                 was added as a learner; ALTER CLUSTER REMOVE NODE {node_id} \
                                 takes it out",
                        LEARNER_CATCH_UP.as_secs()
                    ))
                })?;
                match added {
                    Ok(_) => {
                        self.raft
                            .change_membership(ChangeMembers::AddVoterIds([*node_id].into()), false)
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
            MembershipChange::RemoveNode { node_id } => {
                let change = if self.members().contains(node_id) {
                    ChangeMembers::RemoveVoters([*node_id].into())
                } else if self.learners().contains(node_id) {
                    ChangeMembers::RemoveNodes([*node_id].into())
                } else {
                    return Err(Redirect::Refused(format!(
                        "node {node_id} is not a member of the cluster"
                    )));
                };
                self.raft.change_membership(change, false).await
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

    /// Every member (voters and learners) as this node sees it.
    pub fn member_status(&self) -> Vec<MemberStatus> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| {
                let is_this_node = *id == self.node_id;
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

    /// Stops this member.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(group = C::NAME, error = %e, "Raft did not stop cleanly");
        }
    }
}

impl<C: GroupTypes> GroupService for RaftGroup<C> {
    fn handle<'a>(&'a self, method: Method, json: &'a [u8]) -> Reply<'a> {
        Box::pin(async move {
            match method {
                Method::AppendEntries => to_json(&self.raft.append_entries(from_json(json)?).await),
                Method::Vote => to_json(&self.raft.vote(from_json(json)?).await),
                Method::InstallSnapshot => {
                    to_json(&self.raft.install_snapshot(from_json(json)?).await)
                }
                Method::Forward => {
                    let command: C::D = from_json(json)?;
                    let result: Result<(C::R, u64), String> = self
                        .raft
                        .client_write(command)
                        .await
                        .map(|response| (response.data, response.log_id.index))
                        .map_err(|e| e.to_string());
                    to_json(&result)
                }
                Method::ReadIndex => {
                    let result: Result<Option<u64>, String> =
                        self.read_index().await.map_err(|e| e.to_string());
                    to_json(&result)
                }
                Method::ChangeMembership => {
                    let change: MembershipChange = from_json(json)?;
                    to_json(&self.change_membership_here(&change).await)
                }
            }
        })
    }
}
