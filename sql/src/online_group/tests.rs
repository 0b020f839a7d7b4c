use std::sync::Arc;

use datafusion::arrow::array::{AsArray, Int64Array, RecordBatch, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::prelude::{col, lit};
use openraft::storage::RaftStateMachine;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder, StorageError};
use quiver_catalog::raft::{LogStore, RaftDb};
use quiver_catalog::{Column, ColumnType};
use quiver_storage::{
    OfflineStore, OnlineStore, SEQUENCE_COLUMN, StorageError as StoreError, StoreLocation,
};

use super::*;
use crate::types::arrow_schema;

const TABLE: u32 = 16390;

/// A node's stores for one test: the offline store may be shared with other nodes.
struct Stores {
    _dir: tempfile::TempDir,
    db: RaftDb,
    offline: Arc<OfflineStore>,
    online: Arc<OnlineStore>,
}

async fn stores(offline: Option<Arc<OfflineStore>>) -> Stores {
    let dir = tempfile::tempdir().unwrap();
    let offline = match offline {
        Some(shared) => shared,
        None => Arc::new(
            OfflineStore::open(&StoreLocation::local(&dir.path().join("offline")))
                .await
                .unwrap(),
        ),
    };
    let online = OnlineStore::open(&dir.path().join("online"), 8 << 20)
        .await
        .unwrap()
        .without_synced_writes();
    std::fs::create_dir_all(dir.path().join("raft")).unwrap();
    let db = RaftDb::open(&dir.path().join("raft")).unwrap();
    Stores {
        _dir: dir,
        db,
        offline,
        online: Arc::new(online),
    }
}

impl Stores {
    fn machine(&self) -> OnlineStateMachine {
        OnlineStateMachine::open(self.db.clone(), self.offline.clone(), self.online.clone())
            .unwrap()
    }
}

struct OnlineMachineBuilder;

impl StoreBuilder<OnlineRaft, LogStore<OnlineRaft>, OnlineStateMachine, Stores>
    for OnlineMachineBuilder
{
    async fn build(
        &self,
    ) -> Result<(Stores, LogStore<OnlineRaft>, OnlineStateMachine), StorageError<u64>> {
        let stores = stores(None).await;
        let machine = stores.machine();
        let log = LogStore::new(stores.db.clone());
        Ok((stores, log, machine))
    }
}

/// openraft's own storage test suite, over the data group's state machine and log.
#[test]
fn openraft_storage_suite() {
    Suite::test_all(OnlineMachineBuilder).unwrap();
}

fn spec() -> OnlineTableSpec {
    let column = |name: &str, data_type, nullable| Column {
        name: name.into(),
        data_type,
        nullable,
        description: None,
    };
    OnlineTableSpec {
        columns: vec![
            column("id", ColumnType::BigInt, false),
            column("n", ColumnType::BigInt, true),
            column("ts", ColumnType::Timestamp, false),
        ],
        primary_key: vec!["id".into()],
        event_time: Some("ts".into()),
    }
}

/// Rows (id, n, ts in seconds) as the group's columns.
fn rows(rows: &[(i64, i64, i64)]) -> RecordBatch {
    let schema = arrow_schema(&spec().columns);
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(TimestampMicrosecondArray::from_iter_values(
                rows.iter().map(|r| r.2 * 1_000_000),
            )),
        ],
    )
    .unwrap()
}

async fn create_offline_table(offline: &OfflineStore) {
    let mut fields: Vec<Field> = arrow_schema(&spec().columns)
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(SEQUENCE_COLUMN, DataType::Int64, true));
    offline
        .create_table(TABLE, Arc::new(Schema::new(fields)), &[])
        .await
        .unwrap();
}

/// Commits rows offline; the entry its writer would propose, with the rows in it or not.
async fn write(offline: &OfflineStore, batch: RecordBatch, with_rows: bool) -> OnlineCommand {
    let commit = offline.append(TABLE, vec![batch.clone()]).await.unwrap();
    let change = match with_rows {
        true => Change::Rows(to_ipc(&[batch]).unwrap().unwrap()),
        false => Change::Unknown,
    };
    OnlineCommand::Commit {
        table: TABLE,
        version: commit.version,
        spec: spec(),
        change,
    }
}

/// Deletes keys offline; the entry its writer would propose.
async fn delete(offline: &OfflineStore, id: i64) -> OnlineCommand {
    let commit = offline
        .delete_then(
            TABLE,
            col("id").eq(lit(id)),
            &["id".to_string()],
            None,
            |_, _| async { Ok::<(), StoreError>(()) },
        )
        .await
        .unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let keys = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![id]))]).unwrap();
    OnlineCommand::Commit {
        table: TABLE,
        version: commit.version,
        spec: spec(),
        change: Change::Deleted(to_ipc(&[keys]).unwrap().unwrap()),
    }
}

fn entries(commands: Vec<OnlineCommand>, first_index: u64) -> Vec<Entry<OnlineRaft>> {
    commands
        .into_iter()
        .zip(first_index..)
        .map(|(command, index)| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(command),
        })
        .collect()
}

/// (id, n) of every key the online table serves, by id.
async fn served(online: &OnlineStore) -> Vec<(i64, i64)> {
    let layout = spec().layout().unwrap();
    let mut served: Vec<(i64, i64)> = online
        .scan(TABLE, &layout, None)
        .await
        .unwrap()
        .iter()
        .flat_map(|batch| {
            let ids = batch.column(0).as_primitive::<Int64Type>().clone();
            let ns = batch.column(1).as_primitive::<Int64Type>().clone();
            (0..batch.num_rows())
                .map(move |i| (ids.value(i), ns.value(i)))
                .collect::<Vec<_>>()
        })
        .collect();
    served.sort_unstable();
    served
}

/// Entries out of version order, entries without their rows, a delete and a commit whose entry
/// never comes: the machine serves the latest row per key of the offline table at the newest
/// version it was told of, and a second node that installs its snapshot serves the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_apply_in_version_order_and_gaps_fill_from_the_offline_table() {
    let node = stores(None).await;
    let offline = node.offline.clone();
    create_offline_table(&offline).await;
    let mut machine = node.machine();
    let enable = OnlineCommand::Enable {
        table: TABLE,
        spec: spec(),
        version: offline.version(TABLE).await.unwrap(),
    };
    let first = write(&offline, rows(&[(1, 10, 100), (2, 20, 100)]), true).await;
    // Late data: an older event time does not replace the newer row.
    let late = write(&offline, rows(&[(1, 11, 50)]), true).await;
    // Its writer proposes it after the next commit's writer does.
    let raced = write(&offline, rows(&[(3, 30, 100)]), true).await;
    let after_race = write(&offline, rows(&[(2, 21, 200)]), true).await;
    // Too big to travel in the log: read from the offline store.
    let big = write(&offline, rows(&[(4, 40, 100)]), false).await;
    let deleted = delete(&offline, 3).await;
    // Its writer died before proposing it: the next entry fills it in.
    write(&offline, rows(&[(5, 50, 100)]), true).await;
    let last = write(&offline, rows(&[(1, 12, 300)]), true).await;
    let outcomes = machine
        .apply(entries(
            vec![enable, first, late, after_race, raced, big, deleted, last],
            1,
        ))
        .await
        .unwrap();
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let expected = vec![(1, 12), (2, 21), (4, 40), (5, 50)];
    assert_eq!(served(&node.online).await, expected);

    // A node that was away installs the snapshot: its table is built from the offline store at
    // the version the snapshot names.
    let snapshot = machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let other = stores(Some(offline.clone())).await;
    let mut other_machine = other.machine();
    other_machine
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    assert_eq!(served(&other.online).await, expected);
    let (applied, _) = other_machine.applied_state().await.unwrap();
    assert_eq!(applied.map(|id| id.index), Some(8));

    // Turned off and on again: built at the newest version a commit named, even if the enable
    // names an older one (a commit that raced with turning the group online).
    let stale = offline.version(TABLE).await.unwrap();
    let newer = write(&offline, rows(&[(6, 60, 100)]), false).await;
    let outcomes = machine
        .apply(entries(
            vec![
                OnlineCommand::Disable { table: TABLE },
                newer,
                OnlineCommand::Enable {
                    table: TABLE,
                    spec: spec(),
                    version: stale,
                },
            ],
            9,
        ))
        .await
        .unwrap();
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert_eq!(
        served(&node.online).await,
        vec![(1, 12), (2, 21), (4, 40), (5, 50), (6, 60)]
    );
}

/// The machine restarts where it persisted its state: entries it applies again change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_applied_entries_after_a_restart_changes_nothing() {
    let node = stores(None).await;
    let offline = node.offline.clone();
    create_offline_table(&offline).await;
    let commands = vec![
        OnlineCommand::Enable {
            table: TABLE,
            spec: spec(),
            version: 0,
        },
        write(&offline, rows(&[(1, 10, 100)]), true).await,
        delete(&offline, 1).await,
        write(&offline, rows(&[(1, 13, 90), (2, 20, 100)]), true).await,
    ];
    let mut machine = node.machine();
    machine.apply(entries(commands.clone(), 1)).await.unwrap();
    let before = served(&node.online).await;
    assert_eq!(before, vec![(1, 13), (2, 20)]);
    drop(machine);
    let mut restarted = node.machine();
    let (applied, _) = restarted.applied_state().await.unwrap();
    assert_eq!(applied.map(|id| id.index), Some(4));
    restarted.apply(entries(commands, 1)).await.unwrap();
    assert_eq!(served(&node.online).await, before);
    assert_eq!(node.online.row_count(TABLE).await.unwrap(), 2);
}
