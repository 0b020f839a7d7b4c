//! One node of the cluster: its gRPC service for every Raft group, and its member of the catalog
//! group.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::StreamExt;

use super::group::{GroupSettings, RaftGroup};
use super::network::{GroupRegistry, RaftServer, Transport, TransportTls};
use super::{CATALOG_GROUP, CatalogRaft, ClusterNode, StateMachineStore};
use crate::error::{CatalogError, CatalogResult};
use crate::state::{Applied, CatalogCommand, CatalogState};

/// How a node joins the cluster.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: u64,
    /// Where this node serves its peers.
    pub raft_listen: SocketAddr,
    /// Every initial member (this node included), by id.
    pub peers: BTreeMap<u64, ClusterNode>,
    /// How the groups run (snapshot frequency).
    pub settings: GroupSettings,
    /// Mutual TLS between nodes; plaintext without.
    pub tls: Option<TransportTls>,
}

impl NodeConfig {
    /// Whether this node initialises the cluster's groups: the initial member with the lowest
    /// id (exactly one node does).
    pub fn initialises(&self) -> bool {
        self.peers.keys().next() == Some(&self.node_id)
    }

    /// How this node reaches its peers.
    pub fn transport(&self) -> Transport {
        Transport::new(self.tls.clone())
    }
}

/// A running cluster node: the Raft service and the catalog group's member.
pub struct CatalogNode {
    replica: Replica,
    groups: GroupRegistry,
    config: NodeConfig,
    server: tokio::task::JoinHandle<()>,
    /// Bootstraps the catalog (lowest member) and registers this node's SQL address, retrying
    /// until the group has a quorum.
    joining: tokio::task::JoinHandle<()>,
}

/// The catalog group's member: proposes catalog commands and reads the catalog; cheap to clone
/// into tasks.
#[derive(Clone)]
pub struct Replica {
    group: RaftGroup<CatalogRaft>,
    state_machine: StateMachineStore,
}

impl CatalogNode {
    /// Opens the catalog group's storage under `dir`, serves the node's peers on `raft_listen`,
    /// and, on the member with the lowest id, initialises the group with every peer the first
    /// time: nodes started with the same peers form the cluster by themselves.
    pub async fn start(dir: &Path, config: NodeConfig) -> CatalogResult<CatalogNode> {
        let (log_store, state_machine) = super::open(dir)?;
        let transport = config.transport();
        let group = RaftGroup::start(
            CATALOG_GROUP,
            config.node_id,
            config.settings,
            transport.clone(),
            log_store,
            state_machine.clone(),
        )
        .await?;
        let listener = tokio::net::TcpListener::bind(config.raft_listen)
            .await
            .map_err(|e| CatalogError::Io {
                path: config.raft_listen.to_string(),
                source: e,
            })?;
        let groups = GroupRegistry::default();
        groups.register(CATALOG_GROUP, Arc::new(group.clone()));
        let service = RaftServer {
            groups: groups.clone(),
        }
        .into_service();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = transport.server_tls() {
            builder = builder.tls_config(tls).map_err(|e| {
                CatalogError::Unavailable(format!("the Raft service's TLS configuration: {e}"))
            })?;
        }
        let router = builder.add_service(service);
        let server = tokio::spawn(async move {
            // Replies are small and awaited (heartbeats of read-index rounds): Nagle's algorithm
            // would hold them back until the peer's delayed ACK. tonic sets TCP_NODELAY only on
            // listeners it binds itself.
            let incoming =
                tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
                    accepted.inspect(|stream| {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::warn!(error = %e, "cannot set TCP_NODELAY on a Raft connection");
                    }
                })
                });
            if let Err(e) = router.serve_with_incoming(incoming).await {
                tracing::error!(error = %e, "the Raft service stopped");
            }
        });
        if config.initialises() {
            group.initialize(config.peers.clone()).await?;
        }
        let replica = Replica {
            group,
            state_machine,
        };
        let sql_addr = config
            .peers
            .get(&config.node_id)
            .map(|node| node.sql_addr.clone())
            .unwrap_or_default();
        let joining = tokio::spawn(join(
            replica.clone(),
            config.node_id,
            sql_addr,
            config.initialises(),
        ));
        Ok(CatalogNode {
            replica,
            groups,
            config,
            server,
            joining,
        })
    }

    pub fn node_id(&self) -> u64 {
        self.config.node_id
    }

    /// How this node was started.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The groups this node serves to its peers: register a group here once it has started.
    pub fn groups(&self) -> &GroupRegistry {
        &self.groups
    }

    /// Stops Raft and the service, and waits until both have let go of the storage (so that it
    /// can be opened again in this process).
    pub async fn shutdown(self) {
        self.joining.abort();
        self.replica.group.shutdown().await;
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
                if state.shards().is_empty() {
                    replica
                        .execute(CatalogCommand::DefineShards {
                            shards: vec![crate::Shard::whole(super::FIRST_DATA_GROUP)],
                        })
                        .await?;
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
    /// Proposes a catalog command and waits until it is committed and applied here. The
    /// command's own refusal comes back as the catalog error it was.
    pub async fn execute(&self, command: CatalogCommand) -> CatalogResult<Applied> {
        self.group
            .propose(command)
            .await?
            .map_err(CatalogError::Rejected)
    }

    /// The catalog after every command committed before this call.
    pub async fn linearizable_state(&self) -> CatalogResult<Arc<CatalogState>> {
        self.group.catch_up().await?;
        Ok(self.state_machine.catalog())
    }

    /// The catalog as this node has applied it (possibly behind the leader).
    pub fn local_state(&self) -> Arc<CatalogState> {
        self.state_machine.catalog()
    }
}

impl std::ops::Deref for Replica {
    type Target = RaftGroup<CatalogRaft>;

    fn deref(&self) -> &RaftGroup<CatalogRaft> {
        &self.group
    }
}
