//! Process-level tests of `quiver serve`: crashes, hostile input, vanishing clients, cancellation.

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::SinkExt;
use tokio_postgres::{Client, NoTls};

/// A `quiver serve` child process; killed with SIGKILL on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(data_dir: &Path) -> Server {
        Self::start_with(data_dir, &[])
    }

    /// Starts the server with these extra environment variables.
    fn start_with(data_dir: &Path, environment: &[(&str, &str)]) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_quiver"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data_dir)
            .env(
                "QUIVER_LOG",
                "warn,buoyant_kernel=error,deltalake_core=error",
            )
            .envs(environment.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "quiver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Server { child, port }
    }

    async fn connect(&self) -> Client {
        let config = format!(
            "host=127.0.0.1 port={} user=quiver dbname=quiver",
            self.port
        );
        let (client, connection) = tokio_postgres::connect(&config, NoTls).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Four crash rounds on `dir`: start the server and hand a client to `round` (with the round's
/// number and a random seed), which sets up or checks and returns the writer task it started;
/// then kill the server with SIGKILL at a random moment and wait for the writer to notice.
async fn kill_9_rounds<F, Fut>(dir: &Path, mut round: F)
where
    F: FnMut(i64, Client, u64) -> Fut,
    Fut: std::future::Future<Output = tokio::task::JoinHandle<()>>,
{
    let mut seed = clock_seed();
    for number in 0..4i64 {
        let mut server = Server::start(dir);
        let client = server.connect().await;
        let writer = round(number, client, pseudo_random(&mut seed)).await;
        let run_for = 300 + pseudo_random(&mut seed) % 1200;
        tokio::time::sleep(Duration::from_millis(run_for)).await;
        server.kill();
        let _ = writer.await;
    }
}

/// A nonzero seed for [`pseudo_random`] from the clock, so each run kills at other moments.
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1
}

/// A small deterministic pseudo-random sequence (xorshift).
fn pseudo_random(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Each round's setup is awaited, then yields the writer task it spawned, for the killer to await.
#[allow(clippy::async_yields_async)]
async fn acknowledged_writes_survive_kill_9_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let acknowledged: Arc<Mutex<Vec<i64>>> = Arc::default();
    kill_9_rounds(dir.path(), |round, client, _| {
        let acknowledged = acknowledged.clone();
        async move {
        if round == 0 {
            client
                .batch_execute(
                    "CREATE FEATURE GROUP events (id BIGINT, round INTEGER, batch BIGINT, ts TIMESTAMP, \
                     PRIMARY KEY (id), EVENT TIME ts)",
                )
                .await
                .unwrap();
        }
        {
            let acknowledged = acknowledged.clone();
            tokio::spawn(async move {
                let insert = client
                    .prepare("INSERT INTO events VALUES ($1, $2, NULL, '2026-01-01 00:00:00')")
                    .await
                    .unwrap();
                for i in 0.. {
                    let id = round * 1_000_000 + i;
                    // Every tenth statement writes five rows at once (negative ids, sharing a
                    // batch number): they must land together or not at all.
                    let result = if i % 10 == 0 {
                        let ids: Vec<i64> = (0..5).map(|k| -(id * 10 + k) - 1).collect();
                        let values = ids
                            .iter()
                            .map(|row| format!("({row}, {round}, {id}, '2026-01-01 00:00:00')"))
                            .collect::<Vec<_>>()
                            .join(", ");
                        client
                            .execute(&format!("INSERT INTO events VALUES {values}"), &[])
                            .await
                            .map(|_| ids)
                    } else {
                        client
                            .execute(&insert, &[&id, &(round as i32)])
                            .await
                            .map(|_| vec![id])
                    };
                    match result {
                        Ok(ids) => acknowledged.lock().unwrap().extend(ids),
                        Err(_) => return,
                    }
                }
            })
        }
        }
    })
    .await;
    let server = Server::start(dir.path());
    let client = server.connect().await;
    let rows = client
        .query("SELECT id, count(*) FROM events GROUP BY id", &[])
        .await
        .unwrap();
    let counts: HashMap<i64, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        !acknowledged.is_empty(),
        "the writer never got an acknowledgement"
    );
    for id in acknowledged.iter() {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "acknowledged row {id} is not there exactly once"
        );
    }
    assert!(counts.values().all(|&n| n == 1), "a row was written twice");
    // A multi-row statement is all or nothing, acknowledged or not.
    let batches = client
        .query(
            "SELECT batch, count(*) FROM events WHERE batch IS NOT NULL GROUP BY batch",
            &[],
        )
        .await
        .unwrap();
    for batch in &batches {
        assert_eq!(
            batch.get::<_, i64>(1),
            5,
            "multi-row INSERT {} was partly written",
            batch.get::<_, i64>(0)
        );
    }
}

/// The online store must equal the latest row per key of the offline store after every crash.
async fn assert_online_matches_offline(client: &Client) {
    // Event times are unique, so the latest row per key is the one with the greatest time.
    let latest = client
        .query(
            "SELECT key, value FROM (SELECT key, value, row_number() OVER (PARTITION BY key ORDER BY ts DESC) AS n \
             FROM metrics) WHERE n = 1",
            &[],
        )
        .await
        .unwrap();
    let online = client
        .query("SELECT key, value FROM online.metrics", &[])
        .await
        .unwrap();
    let as_map = |rows: &[tokio_postgres::Row]| -> HashMap<i32, i64> {
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    assert_eq!(
        as_map(&online),
        as_map(&latest),
        "the online store is not the latest row per key of the offline store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::async_yields_async)] // as above
async fn online_store_is_latest_per_key_of_offline_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    // Values acknowledged for keys that are never deleted (keys below 100).
    let acknowledged: Arc<Mutex<Vec<i64>>> = Arc::default();
    kill_9_rounds(dir.path(), |round, client, round_seed| {
        let acknowledged = acknowledged.clone();
        async move {
            if round == 0 {
                client
                    .batch_execute(
                        "CREATE FEATURE GROUP metrics (key INTEGER, value BIGINT, ts TIMESTAMP, \
                     PRIMARY KEY (key), EVENT TIME ts) WITH (online = true)",
                    )
                    .await
                    .unwrap();
            } else {
                assert_online_matches_offline(&client).await;
            }
            let mut writer_seed = round_seed;
            {
                let acknowledged = acknowledged.clone();
                tokio::spawn(async move {
                    let insert = client
                        .prepare("INSERT INTO metrics VALUES ($1, $2, $3)")
                        .await
                        .unwrap();
                    for i in 0i64.. {
                        let value = round * 1_000_000 + i * 100;
                        // Random keys and event times: late rows, rows that win, rows that lose.
                        let mut row = |n: i64| {
                            let key = (pseudo_random(&mut writer_seed) % 40) as i32;
                            // Unique across rounds (the low bits are the round), so the latest is clear.
                            let micros =
                                (pseudo_random(&mut writer_seed) % 1_000_000_000_000) as i64 * 4
                                    + round;
                            let ts = chrono::DateTime::from_timestamp_micros(
                                1_767_225_600_000_000 + micros,
                            )
                            .unwrap()
                            .naive_utc();
                            (key, value + n, ts)
                        };
                        let result = match i % 10 {
                            // A COPY of several rows, in one commit.
                            0 => {
                                let rows: Vec<_> = (0..8).map(&mut row).collect();
                                let text: String = rows
                                    .iter()
                                    .map(|(k, v, ts)| format!("{k},{v},{ts}\n"))
                                    .collect();
                                let copied = async {
                                    let sink = client
                                        .copy_in::<_, bytes::Bytes>(
                                            "COPY metrics FROM STDIN WITH (FORMAT csv)",
                                        )
                                        .await?;
                                    let mut sink = Box::pin(sink);
                                    sink.send(bytes::Bytes::from(text)).await?;
                                    sink.as_mut().finish().await
                                };
                                copied
                                    .await
                                    .map(|_| rows.iter().map(|r| (r.0, r.1)).collect())
                            }
                            // A DELETE of a key of its own range.
                            5 => client
                                .execute(
                                    "DELETE FROM metrics WHERE key = $1",
                                    &[&(100 + (i % 7) as i32)],
                                )
                                .await
                                .map(|_| Vec::new()),
                            // Rows in the deleted range, to have something to delete.
                            3 | 7 => {
                                let (_, v, m) = row(0);
                                client
                                    .execute(&insert, &[&(100 + (i % 7) as i32), &v, &m])
                                    .await
                                    .map(|_| Vec::new())
                            }
                            _ => {
                                let (k, v, m) = row(0);
                                client
                                    .execute(&insert, &[&k, &v, &m])
                                    .await
                                    .map(|_| vec![(k, v)])
                            }
                        };
                        match result {
                            Ok(rows) => acknowledged
                                .lock()
                                .unwrap()
                                .extend(rows.into_iter().map(|(_, v)| v)),
                            Err(_) => return,
                        }
                    }
                })
            }
        }
    })
    .await;
    let server = Server::start(dir.path());
    let client = server.connect().await;
    assert_online_matches_offline(&client).await;
    let rows = client
        .query(
            "SELECT value, count(*) FROM metrics WHERE key < 100 GROUP BY value",
            &[],
        )
        .await
        .unwrap();
    let counts: HashMap<i64, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        !acknowledged.is_empty(),
        "the writer never got an acknowledgement"
    );
    for value in &acknowledged {
        assert_eq!(
            counts.get(value),
            Some(&1),
            "acknowledged row {value} is not in the offline store exactly once"
        );
    }
}

/// The ids of a table of the block tests, each with how often it is there.
async fn id_counts(client: &Client, table: &str) -> HashMap<i64, i64> {
    client
        .query(
            &format!("SELECT id, count(*) FROM {table} GROUP BY id"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::async_yields_async)] // as above
async fn transaction_blocks_are_all_or_nothing_across_tables_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    // Per block: the id it inserted into both tables, the id it deleted from both (if any), and
    // whether its COMMIT was acknowledged (the last one of a round may have been cut off).
    type Block = (i64, Option<i64>, bool);
    let blocks: Arc<Mutex<Vec<Block>>> = Arc::default();
    kill_9_rounds(dir.path(), |round, client, _| {
        let blocks = blocks.clone();
        async move {
            if round == 0 {
                client
                    .batch_execute(
                        "CREATE FEATURE GROUP left_side (id BIGINT, ts TIMESTAMP, PRIMARY KEY (id), \
                         EVENT TIME ts) WITH (online = true); \
                         CREATE TABLE right_side (id BIGINT)",
                    )
                    .await
                    .unwrap();
            }
            tokio::spawn(async move {
                for i in 0i64.. {
                    let id = round * 1_000_000 + i;
                    // Every third block also deletes the id of the block two before it.
                    let deleted = (i % 3 == 2).then_some(id - 2);
                    let mut sql = format!(
                        "BEGIN; INSERT INTO left_side VALUES ({id}, '2026-01-01'); \
                         INSERT INTO right_side VALUES ({id}); "
                    );
                    if let Some(gone) = deleted {
                        sql.push_str(&format!(
                            "DELETE FROM left_side WHERE id = {gone}; \
                             DELETE FROM right_side WHERE id = {gone}; "
                        ));
                    }
                    sql.push_str("COMMIT");
                    blocks.lock().unwrap().push((id, deleted, false));
                    if client.batch_execute(&sql).await.is_err() {
                        return;
                    }
                    if let Some(block) = blocks.lock().unwrap().last_mut() {
                        block.2 = true;
                    }
                }
            })
        }
    })
    .await;
    let server = Server::start(dir.path());
    let client = server.connect().await;
    let left = id_counts(&client, "left_side").await;
    let right = id_counts(&client, "right_side").await;
    let online = id_counts(&client, "online.left_side").await;
    assert_eq!(left, right, "a block's writes landed in one table only");
    assert_eq!(
        online, left,
        "the online store differs from the offline store"
    );
    assert!(left.values().all(|&n| n == 1), "a row was written twice");
    let blocks = blocks.lock().unwrap().clone();
    assert!(
        blocks.iter().any(|b| b.2),
        "the writer never got an acknowledgement"
    );
    for &(id, deleted, acknowledged) in &blocks {
        let deleted_later = blocks.iter().any(|b| b.1 == Some(id));
        if acknowledged && !deleted_later {
            assert!(left.contains_key(&id), "acknowledged block {id} is missing");
        }
        if let (true, Some(gone)) = (acknowledged, deleted) {
            assert!(
                !left.contains_key(&gone),
                "block {id}'s delete of {gone} is missing"
            );
        }
    }
}

#[tokio::test]
async fn a_commit_cut_off_after_its_first_table_is_finished_at_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let server =
            Server::start_with(dir.path(), &[("QUIVER_TEST_CRASH_AFTER_FIRST_TABLE", "1")]);
        let client = server.connect().await;
        client
            .batch_execute(
                "CREATE FEATURE GROUP left_side (id BIGINT, ts TIMESTAMP, PRIMARY KEY (id), \
                 EVENT TIME ts) WITH (online = true); \
                 CREATE TABLE right_side (id BIGINT); \
                 INSERT INTO left_side VALUES (1, '2026-01-01'), (2, '2026-01-01'); \
                 INSERT INTO right_side VALUES (1), (2)",
            )
            .await
            .unwrap();
        let cut_off = client
            .batch_execute(
                "BEGIN; INSERT INTO left_side VALUES (3, '2026-01-01'); \
                 DELETE FROM left_side WHERE id = 1; \
                 DELETE FROM right_side WHERE id = 2; INSERT INTO right_side VALUES (3); COMMIT",
            )
            .await;
        assert!(cut_off.is_err(), "the server was to abort inside COMMIT");
    }
    let server = Server::start(dir.path());
    let client = server.connect().await;
    let ids = |counts: HashMap<i64, i64>| {
        let mut ids: Vec<i64> = counts.into_keys().collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(id_counts(&client, "left_side").await), vec![2, 3]);
    assert_eq!(
        ids(id_counts(&client, "online.left_side").await),
        vec![2, 3]
    );
    assert_eq!(ids(id_counts(&client, "right_side").await), vec![1, 3]);
    // Recovered once: a restart does not apply it again.
    drop(client);
    drop(server);
    let server = Server::start(dir.path());
    let client = server.connect().await;
    assert_eq!(ids(id_counts(&client, "right_side").await), vec![1, 3]);
    assert!(
        std::fs::read_dir(dir.path().join("transactions"))
            .unwrap()
            .next()
            .is_none(),
        "the commit record was not removed"
    );
}

#[tokio::test]
async fn garbage_on_the_port_does_not_hurt_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..20 {
        let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        let garbage: Vec<u8> = (0..4096).map(|_| pseudo_random(&mut seed) as u8).collect();
        let _ = stream.write_all(&garbage);
    }
    // A startup packet that claims a huge length.
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let _ = stream.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]);
    drop(stream);
    let client = server.connect().await;
    let row = client.query_one("SELECT 1 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), 2);
}

#[tokio::test]
async fn a_client_vanishing_mid_copy_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let setup = server.connect().await;
    setup
        .batch_execute("CREATE TABLE spine (id BIGINT, label TEXT)")
        .await
        .unwrap();
    {
        let client = server.connect().await;
        let sink = client
            .copy_in::<_, bytes::Bytes>("COPY spine FROM STDIN WITH (FORMAT csv)")
            .await
            .unwrap();
        let mut sink = Box::pin(sink);
        for i in 0..1000 {
            sink.send(bytes::Bytes::from(format!("{i},row {i}\n")))
                .await
                .unwrap();
        }
        // Dropping the client closes the connection without CopyDone.
        drop(sink);
        drop(client);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let row = setup
        .query_one("SELECT count(*) FROM spine", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0);
    // The server goes on serving, COPY included.
    let sink = setup
        .copy_in::<_, bytes::Bytes>("COPY spine FROM STDIN WITH (FORMAT csv)")
        .await
        .unwrap();
    let mut sink = Box::pin(sink);
    sink.send(bytes::Bytes::from_static(b"1,one\n2,two\n"))
        .await
        .unwrap();
    assert_eq!(sink.as_mut().finish().await.unwrap(), 2);
}

#[tokio::test]
async fn cancel_request_stops_a_running_query() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(NoTls).await.unwrap();
    });
    let started = Instant::now();
    let error = client
        .query(
            "SELECT count(*) FROM generate_series(1, 100000000000) AS t(x) WHERE x % 7 = 3",
            &[],
        )
        .await
        .unwrap_err();
    canceller.await.unwrap();
    assert_eq!(error.code().map(|c| c.code()), Some("57014"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(30));
    // The connection is still usable.
    let row = client.query_one("SELECT 42", &[]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), 42);
}

#[tokio::test]
async fn explain_shows_event_time_filters_skipping_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE FEATURE GROUP clicks (user_id BIGINT, ts TIMESTAMP, PRIMARY KEY (user_id), EVENT TIME ts) \
             WITH (partition_by = 'day(ts)'); \
             INSERT INTO clicks VALUES (1, '2026-06-01 10:00:00'), (2, '2026-06-02 10:00:00'), (3, '2026-06-03 10:00:00')",
        )
        .await
        .unwrap();
    let plan = |sql: &'static str| {
        let client = &client;
        async move {
            let rows = client.query(sql, &[]).await.unwrap();
            rows.iter()
                .map(|r| r.get::<_, String>(1))
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    let everything = plan("EXPLAIN SELECT * FROM clicks").await;
    assert_eq!(everything.matches(".parquet").count(), 3, "{everything}");
    let one_day = plan("EXPLAIN SELECT * FROM clicks WHERE ts >= '2026-06-03 00:00:00'").await;
    assert_eq!(one_day.matches(".parquet").count(), 1, "{one_day}");
    assert!(
        one_day.contains("__quiver_partition=2026-06-03"),
        "{one_day}"
    );
    // The predicate is also pushed into the Parquet reader (row-group pruning).
    assert!(one_day.contains("pruning_predicate="), "{one_day}");
}

#[tokio::test]
async fn prepared_online_lookups_infer_parameter_types_and_see_catalog_changes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE FEATURE GROUP fv (id BIGINT, x DOUBLE PRECISION, ts TIMESTAMP, PRIMARY KEY (id), EVENT TIME ts) \
             WITH (online = true); \
             INSERT INTO fv VALUES (1, 1.5, '2020-01-01 00:00:00'), (2, 2.5, '2020-01-01 00:00:00'), (3, 3.5, '2020-01-02 00:00:00')",
        )
        .await
        .unwrap();
    // The server infers int8 and int8[] for the parameters, as PostgreSQL does.
    let single = client
        .prepare("SELECT x FROM online.fv WHERE id = $1")
        .await
        .unwrap();
    assert_eq!(single.params(), &[tokio_postgres::types::Type::INT8]);
    let batch = client
        .prepare("SELECT id, x AS value FROM online.fv WHERE id = ANY($1)")
        .await
        .unwrap();
    assert_eq!(batch.params(), &[tokio_postgres::types::Type::INT8_ARRAY]);
    assert_eq!(batch.columns()[1].name(), "value");
    for _ in 0..3 {
        let row = client.query_one(&single, &[&2i64]).await.unwrap();
        assert_eq!(row.get::<_, f64>(0), 2.5);
    }
    assert!(client.query(&single, &[&9i64]).await.unwrap().is_empty());
    let rows = client.query(&batch, &[&vec![3i64, 1, 9]]).await.unwrap();
    let mut found: Vec<(i64, f64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    found.sort_by_key(|r| r.0);
    assert_eq!(found, vec![(1, 1.5), (3, 3.5)]);
    // A ttl set after the statements were prepared applies to them.
    client
        .batch_execute("ALTER FEATURE GROUP fv SET (ttl = '1 day')")
        .await
        .unwrap();
    assert!(client.query(&single, &[&2i64]).await.unwrap().is_empty());
    assert!(
        client
            .query(&batch, &[&vec![1i64, 3]])
            .await
            .unwrap()
            .is_empty()
    );
    // Turned off: the prepared lookup says so.
    client
        .batch_execute("ALTER FEATURE GROUP fv SET (online = false)")
        .await
        .unwrap();
    let error = client.query(&single, &[&2i64]).await.unwrap_err();
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED)
    );
}

/// A value's bytes as the server sent them, whatever its type.
struct RawValue(Vec<u8>);

impl<'a> tokio_postgres::types::FromSql<'a> for RawValue {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(raw.to_vec()))
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

/// Every row's values as sent (None for NULL), with the columns' types.
async fn raw_rows(
    client: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> (Vec<tokio_postgres::types::Type>, Vec<Vec<Option<Vec<u8>>>>) {
    let statement = client.prepare(sql).await.unwrap();
    let rows = client.query(&statement, params).await.unwrap();
    let types = statement
        .columns()
        .iter()
        .map(|c| c.type_().clone())
        .collect();
    let values = rows
        .iter()
        .map(|row| {
            (0..row.len())
                .map(|i| row.get::<_, Option<RawValue>>(i).map(|v| v.0))
                .collect()
        })
        .collect();
    (types, values)
}

/// Every row's values in text, as the simple query protocol sends them.
async fn text_rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Key lookups (encoded from the stored values) answer byte for byte as the general path does
/// (through Arrow arrays and arrow-pg), in binary and in text, for every plain type, NULLs, a
/// column added after some rows were written, and columns that take arrow-pg's path.
#[tokio::test]
async fn key_lookups_answer_byte_for_byte_as_the_general_path() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE FEATURE GROUP kinds (id BIGINT, b BOOLEAN, s SMALLINT, i INT, r REAL, \
             d DOUBLE PRECISION, t TEXT, ts TIMESTAMP, PRIMARY KEY (id), EVENT TIME ts) \
             WITH (online = true); \
             INSERT INTO kinds VALUES \
             (1, true, -2, 3, 1.5, 0.1, 'ünï', '2020-01-01 00:00:00'), \
             (2, NULL, NULL, NULL, NULL, NULL, NULL, '2020-01-01 00:00:00'), \
             (3, false, 32767, -2147483648, -0.0, 1e300, '', '2020-01-01 00:00:00'); \
             ALTER FEATURE GROUP kinds ADD COLUMN late DOUBLE PRECISION; \
             INSERT INTO kinds VALUES (4, true, 0, 0, 3.25, -2.5e-7, 'x''y', '2020-01-02 00:00:00', 2.5)",
        )
        .await
        .unwrap();
    let projections = ["d, id, t AS text, b, s, i, r, late", "d, ts", "*"];
    // The statement as a key lookup, and the same with a conjunct the fast path does not
    // recognise, so that it takes the general path.
    let both = |columns: &str, predicate: String| {
        let lookup = format!("SELECT {columns} FROM online.kinds WHERE {predicate}");
        let general = format!("{lookup} AND 1 = 1");
        (lookup, general)
    };
    for columns in projections {
        for key in [1i64, 2, 3, 4, 9] {
            let (lookup, general) = both(columns, "id = $1".into());
            let lookup = raw_rows(&client, &lookup, &[&key]).await;
            let general = raw_rows(&client, &general, &[&key]).await;
            assert_eq!(lookup.0, general.0, "{columns}");
            assert_eq!(lookup.1, general.1, "{columns}, key {key}");
            assert_eq!(lookup.1.len(), usize::from(key != 9));

            let (lookup, general) = both(columns, format!("id = {key}"));
            assert_eq!(
                text_rows(&client, &lookup).await,
                text_rows(&client, &general).await,
                "{columns}, key {key}"
            );
        }
        let keys = vec![4i64, 1, 2, 3, 9];
        let (lookup, general) = both(columns, "id = ANY($1)".into());
        let lookup = raw_rows(&client, &lookup, &[&keys]).await;
        let general = raw_rows(&client, &general, &[&keys]).await;
        let sorted = |mut rows: Vec<Vec<Option<Vec<u8>>>>| {
            rows.sort();
            rows
        };
        assert_eq!(lookup.1.len(), 4);
        assert_eq!(sorted(lookup.1), sorted(general.1), "{columns}");
    }
}
