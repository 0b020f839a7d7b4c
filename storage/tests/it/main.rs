//! The offline store against a real directory: commits, compaction, orphans.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use quiver_storage::{OfflineStore, StoreLocation};

fn batch(schema: &Arc<Schema>, ids: &[i64]) -> RecordBatch {
    RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(Int64Array::from(ids.to_vec()))],
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_commits_are_compacted_without_losing_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = OfflineStore::open(&StoreLocation::local(dir.path()))
        .await
        .unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    store.create_table(7, schema.clone(), &[]).await.unwrap();
    for id in 0..40 {
        let commit = store.append(7, vec![batch(&schema, &[id])]).await.unwrap();
        assert_eq!(commit.rows, 1);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.file_count(7).await.unwrap() > 32 {
        assert!(
            Instant::now() < deadline,
            "no compaction after 40 single-row commits"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.row_count(7).await.unwrap(), 40);
}

#[tokio::test]
async fn empty_appends_commit_nothing_and_orphans_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = OfflineStore::open(&StoreLocation::local(dir.path()))
        .await
        .unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    store.create_table(1, schema.clone(), &[]).await.unwrap();
    store.create_table(2, schema.clone(), &[]).await.unwrap();
    let before = store
        .append(1, vec![batch(&schema, &[1, 2])])
        .await
        .unwrap();
    let empty = store.append(1, vec![]).await.unwrap();
    assert_eq!(empty.version, before.version);
    assert!(
        store.create_table(1, schema.clone(), &[]).await.is_err(),
        "a table was created twice"
    );
    let removed = store.remove_orphans(|id| id == 1).await.unwrap();
    assert_eq!(removed, vec![2]);
    assert!(store.has_table(1).await.unwrap());
    assert!(!store.has_table(2).await.unwrap());
    assert_eq!(store.row_count(1).await.unwrap(), 2);
}

#[tokio::test]
async fn numeric_columns_are_written_for_scan_speed() {
    use datafusion::arrow::array::{Float64Array, StringArray};
    use deltalake::parquet::basic::{Compression, Encoding};
    use deltalake::parquet::file::reader::{FileReader, SerializedFileReader};

    let dir = tempfile::tempdir().unwrap();
    let store = OfflineStore::open(&StoreLocation::local(dir.path()))
        .await
        .unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("score", DataType::Float64, true),
        Field::new("label", DataType::Utf8, true),
    ]));
    // Enough unique ids to overflow the default 1 MiB dictionary page.
    let rows = 300_000;
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(0..rows)),
            Arc::new(Float64Array::from_iter_values(
                (0..rows).map(|i| (i as f64).sin()),
            )),
            Arc::new(StringArray::from_iter_values(
                (0..rows).map(|i| format!("label-{}", i % 7)),
            )),
        ],
    )
    .unwrap();
    store.create_table(3, schema, &[]).await.unwrap();
    store.append(3, vec![batch]).await.unwrap();

    let file = std::fs::read_dir(dir.path().join("3"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .expect("a data file");
    let reader = SerializedFileReader::new(std::fs::File::open(file).unwrap()).unwrap();
    let row_group = reader.metadata().row_group(0);
    let column = |name: &str| {
        row_group
            .columns()
            .iter()
            .find(|c| c.column_path().string() == name)
            .unwrap()
    };
    // Unique ids overflow the dictionary and fall back to delta encoding, uncompressed.
    assert_eq!(column("id").compression(), Compression::UNCOMPRESSED);
    assert!(
        column("id")
            .encodings()
            .any(|e| e == Encoding::DELTA_BINARY_PACKED),
        "id encodings: {:?}",
        column("id").encodings().collect::<Vec<_>>()
    );
    assert_eq!(column("score").compression(), Compression::UNCOMPRESSED);
    assert_eq!(column("label").compression(), Compression::LZ4_RAW);
    assert!(
        column("label")
            .encodings()
            .any(|e| e == Encoding::RLE_DICTIONARY)
    );
}

/// Two stores over one directory (two cluster nodes) appending at once: every row lands once,
/// each commit's rows carry its own version in their sequence, and each store reads the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_sharing_a_store_commit_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let location = StoreLocation::local(dir.path());
    let open = |compacts| {
        let location = location.clone();
        async move {
            Arc::new(
                OfflineStore::open(&location)
                    .await
                    .unwrap()
                    .shared_with_other_writers(compacts),
            )
        }
    };
    let (first, second) = (open(true).await, open(false).await);
    let stored = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new(quiver_storage::SEQUENCE_COLUMN, DataType::Int64, false),
    ]));
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    first.create_table(3, stored, &[]).await.unwrap();
    let writer = |store: Arc<OfflineStore>, start: i64| {
        let schema = schema.clone();
        tokio::spawn(async move {
            for id in (start..start + 40).step_by(2) {
                store
                    .append(3, vec![batch(&schema, &[id, id + 1])])
                    .await
                    .unwrap();
            }
        })
    };
    let (a, b) = (writer(first.clone(), 0), writer(second.clone(), 1000));
    a.await.unwrap();
    b.await.unwrap();
    for store in [&first, &second] {
        assert_eq!(store.row_count(3).await.unwrap(), 80);
        // 40 appends, and the compactions of the one store that compacts.
        assert!(store.version(3).await.unwrap() >= 40);
    }
    let context = datafusion::prelude::SessionContext::new();
    let provider = second
        .table_provider(3, None, &context.state())
        .await
        .unwrap();
    context.register_table("t", provider).unwrap();
    let counts = context
        .sql(
            "SELECT count(*), count(DISTINCT id), count(DISTINCT __quiver_seq), \
             count(DISTINCT __quiver_seq >> 32) FROM t",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let row: Vec<i64> = (0..4)
        .map(|i| {
            counts[0]
                .column(i)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(0)
        })
        .collect();
    // Compaction keeps the rows' sequences: 40 commits wrote them.
    assert_eq!(row, vec![80, 80, 80, 40]);
}
