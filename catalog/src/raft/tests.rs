use openraft::storage::RaftStateMachine;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder, StorageError};

use super::*;
use std::collections::BTreeSet;

struct RocksDbBuilder;

impl StoreBuilder<CatalogRaft, LogStore<CatalogRaft>, StateMachineStore, tempfile::TempDir>
    for RocksDbBuilder
{
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore<CatalogRaft>, StateMachineStore), StorageError<u64>>
    {
        let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::write(&e))?;
        let (log, state_machine) =
            open(dir.path()).map_err(|e| openraft::StorageIOError::write(&e))?;
        Ok((dir, log, state_machine))
    }
}

/// openraft's own storage test suite: log state, votes, truncation, purge, membership,
/// snapshots.
#[test]
fn openraft_storage_suite() {
    Suite::test_all(RocksDbBuilder).unwrap();
}

fn entry(index: u64, command: CatalogCommand) -> Entry<CatalogRaft> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(command),
    }
}

/// Catalog commands applied through Raft build the same catalog as the local log, a snapshot
/// restores it after a restart, and a refused command is reported without changing anything.
#[tokio::test]
async fn commands_apply_to_the_catalog_and_survive_a_restart_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_log, mut state_machine) = open(dir.path()).unwrap();
        let create = CatalogCommand::CreateUser {
            name: "alice".into(),
            superuser: false,
            password: None,
            connection_limit: None,
        };
        let outcomes = state_machine
            .apply([entry(1, create.clone()), entry(2, create)])
            .await
            .unwrap();
        assert_eq!(outcomes[0], Ok(Applied::Nothing));
        assert_eq!(
            outcomes[1],
            Err("role \"alice\" already exists".to_string())
        );
        let snapshot = state_machine.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id.map(|id| id.index), Some(2));
    }
    let (_log, mut state_machine) = open(dir.path()).unwrap();
    assert!(state_machine.catalog().user("alice").is_some());
    let (applied, _) = state_machine.applied_state().await.unwrap();
    assert_eq!(applied.map(|id| id.index), Some(2));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn user(name: &str) -> CatalogCommand {
    CatalogCommand::CreateUser {
        name: name.into(),
        superuser: false,
        password: None,
        connection_limit: None,
    }
}

/// Three nodes on loopback form the group by themselves; a command sent to a follower is
/// forwarded to the leader and read back linearizably on every node; after the leader stops,
/// the other two elect a new one and keep accepting commands, and nothing committed is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_replicate_forward_and_survive_the_leader() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let peers: std::collections::BTreeMap<u64, ClusterNode> = (1..=3)
        .map(|id| {
            (
                id,
                ClusterNode {
                    raft_addr: format!("127.0.0.1:{}", free_port()),
                    sql_addr: String::new(),
                },
            )
        })
        .collect();
    let mut nodes = Vec::new();
    for (index, (id, node)) in peers.iter().enumerate() {
        let config = NodeConfig {
            node_id: *id,
            raft_listen: node.raft_addr.parse().unwrap(),
            peers: peers.clone(),
            settings: GroupSettings::default(),
            tls: None,
        };
        nodes.push(Some(
            CatalogNode::start(dirs[index].path(), config)
                .await
                .unwrap(),
        ));
    }
    let timeout = std::time::Duration::from_secs(20);
    let leader = nodes[0]
        .as_ref()
        .unwrap()
        .wait_for_leader(timeout)
        .await
        .unwrap();
    let follower = (1..=3u64).find(|id| *id != leader).unwrap();
    fn on(nodes: &[Option<CatalogNode>], id: u64) -> &CatalogNode {
        nodes[(id - 1) as usize].as_ref().unwrap()
    }
    on(&nodes, follower).execute(user("alice")).await.unwrap();
    for id in 1..=3 {
        let state = on(&nodes, id).linearizable_state().await.unwrap();
        assert!(
            state.user("alice").is_some(),
            "node {id} does not see alice"
        );
        assert_eq!(on(&nodes, id).members(), [1, 2, 3].into());
    }
    // The state machine's refusal comes back as such.
    assert!(matches!(
        on(&nodes, follower).execute(user("alice")).await,
        Err(CatalogError::Rejected(message)) if message.contains("already exists")
    ));

    nodes[(leader - 1) as usize]
        .take()
        .unwrap()
        .shutdown()
        .await;
    let survivor = (1..=3u64).find(|id| *id != leader).unwrap();
    let new_leader = loop {
        let known = on(&nodes, survivor).wait_for_leader(timeout).await.unwrap();
        if known != leader {
            break known;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_ne!(new_leader, leader);
    on(&nodes, survivor).execute(user("bob")).await.unwrap();
    for id in (1..=3u64).filter(|id| *id != leader) {
        let state = on(&nodes, id).linearizable_state().await.unwrap();
        assert!(state.user("alice").is_some() && state.user("bob").is_some());
    }

    // A fourth node joins at runtime (asked of a follower, which forwards to the leader) and the
    // dead one leaves.
    let fourth_dir = tempfile::tempdir().unwrap();
    let fourth_addr = format!("127.0.0.1:{}", free_port());
    let mut fourth_peers = peers.clone();
    fourth_peers.insert(
        4,
        ClusterNode {
            raft_addr: fourth_addr.clone(),
            sql_addr: String::new(),
        },
    );
    let fourth = CatalogNode::start(
        fourth_dir.path(),
        NodeConfig {
            node_id: 4,
            raft_listen: fourth_addr.parse().unwrap(),
            peers: fourth_peers,
            settings: GroupSettings::default(),
            tls: None,
        },
    )
    .await
    .unwrap();
    let asked = (1..=3u64)
        .find(|id| *id != leader && *id != new_leader)
        .unwrap();
    on(&nodes, asked)
        .change_membership(MembershipChange::AddNode {
            node_id: 4,
            raft_addr: fourth_addr,
        })
        .await
        .unwrap();
    on(&nodes, asked)
        .change_membership(MembershipChange::RemoveNode { node_id: leader })
        .await
        .unwrap();
    let expected: BTreeSet<u64> = [asked, new_leader, 4].into();
    assert_eq!(on(&nodes, new_leader).members(), expected);
    let state = fourth.linearizable_state().await.unwrap();
    assert!(state.user("alice").is_some() && state.user("bob").is_some());
    let status = fourth.member_status();
    assert_eq!(status.len(), 3);
    assert!(
        status
            .iter()
            .any(|m| m.node_id == new_leader && m.role == "leader")
    );
    assert!(matches!(
        on(&nodes, asked)
            .change_membership(MembershipChange::RemoveNode { node_id: leader })
            .await,
        Err(CatalogError::Rejected(message)) if message.contains("not a member")
    ));
    fourth.shutdown().await;
    for node in nodes.into_iter().flatten() {
        node.shutdown().await;
    }
}

/// A one-member group bootstraps the catalog like a fresh data directory, takes commands, and
/// after a restart has everything it committed (and bootstraps nothing twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_catalog_bootstraps_once_and_keeps_its_commands() {
    let dir = tempfile::tempdir().unwrap();
    let raft_addr = format!("127.0.0.1:{}", free_port());
    let config = || NodeConfig {
        node_id: 1,
        raft_listen: raft_addr.parse().unwrap(),
        peers: [(
            1,
            ClusterNode {
                raft_addr: raft_addr.clone(),
                sql_addr: String::new(),
            },
        )]
        .into(),
        settings: GroupSettings::default(),
        tls: None,
    };
    {
        let catalog = crate::Catalog::open_replicated(dir.path(), config())
            .await
            .unwrap();
        // The lowest member bootstraps in the background once the group has a leader.
        let mut state = catalog.linearizable_snapshot().await.unwrap();
        for _ in 0..100 {
            if state.project(crate::BOOTSTRAP_NAME).is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            state = catalog.linearizable_snapshot().await.unwrap();
        }
        assert!(state.user(crate::BOOTSTRAP_NAME).unwrap().superuser);
        assert_eq!(
            state.project(crate::BOOTSTRAP_NAME).unwrap().oid,
            crate::FIRST_USER_OID + 1
        );
        catalog.execute_async(user("alice")).await.unwrap();
        assert!(catalog.snapshot().user("alice").is_some());
        assert!(catalog.node().unwrap().is_leader());
        if let Some(node) = catalog.into_node() {
            node.shutdown().await;
        }
    }
    // openraft's state-machine worker lets go of RocksDB a moment after shutdown returns; a
    // process restart never sees this, an in-process reopen retries until the lock is free.
    let mut attempts = 0;
    let catalog = loop {
        match crate::Catalog::open_replicated(dir.path(), config()).await {
            Ok(catalog) => break catalog,
            Err(error) if attempts < 50 => {
                attempts += 1;
                eprintln!("reopen attempt {attempts}: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(error) => panic!("the catalog did not reopen: {error}"),
        }
    };
    let state = catalog.linearizable_snapshot().await.unwrap();
    assert!(state.user("alice").is_some());
    assert_eq!(state.users().count(), 2);
}

#[test]
fn raft_addresses_are_host_and_port() {
    assert!(check_raft_addr("127.0.0.1:7100").is_ok());
    assert!(check_raft_addr("node-2.internal:7100").is_ok());
    assert!(check_raft_addr("[::1]:7100").is_ok());
    for bad in ["nowhere", ":7100", "host:", "host:99999", "host:port"] {
        let error = check_raft_addr(bad).unwrap_err();
        assert!(error.contains("not a Raft address"), "{bad}: {error}");
    }
}
