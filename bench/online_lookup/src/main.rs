//! Loads the same feature rows into Quiver (an online feature group), PostgreSQL (a table with a
//! primary key) and Redis (one hash per key), then measures single-key lookups by prepared
//! statement at several concurrencies and 100-key batch lookups, all from this one client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::SinkExt;
use redis::AsyncCommands;
use tokio_postgres::{Client, NoTls};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    quiver_port: u16,
    #[arg(long)]
    postgres_port: u16,
    #[arg(long)]
    redis_port: u16,
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    #[arg(long, default_value_t = 50)]
    features: usize,
    /// Seconds each measurement runs (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Load and measure Quiver alone (for profiling it); no comparison is printed.
    #[arg(long)]
    quiver_only: bool,
    /// The systems already hold the data (from an earlier run on the same servers): measure
    /// without loading, for trying one build after another (Redis, which keeps nothing across
    /// a restart, is loaded again if it is empty).
    #[arg(long)]
    no_load: bool,
}

/// Latencies of one measurement, in microseconds.
struct Measured {
    queries: usize,
    elapsed: Duration,
    latencies: Vec<u32>,
}

impl Measured {
    fn qps(&self) -> f64 {
        self.queries as f64 / self.elapsed.as_secs_f64()
    }

    /// Two runs of the same measurement as one.
    fn merge(mut self, other: Measured) -> Measured {
        self.queries += other.queries;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.latencies.sort_unstable();
        self
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let at = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[at] as f64 / 1000.0
    }
}

fn feature_value(key: u64, feature: usize) -> f64 {
    ((key * 31 + feature as u64 * 17) % 1000) as f64 / 7.0
}

/// A small deterministic pseudo-random sequence (xorshift).
fn next_key(state: &mut u64, keys: u64) -> i64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state % keys) as i64 + 1
}

/// A connection (user and database both `user`) with `sql` prepared on it.
async fn prepared(port: u16, user: &str, sql: String) -> (Client, tokio_postgres::Statement) {
    let client = connect(port, user, user).await;
    let statement = client.prepare(&sql).await.expect("prepare");
    (client, statement)
}

async fn connect(port: u16, user: &str, dbname: &str) -> Client {
    let config = format!("host=127.0.0.1 port={port} user={user} dbname={dbname}");
    let (client, connection) = tokio_postgres::connect(&config, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to port {port}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

async fn load_sql(client: &Client, create: &str, args: &Args) -> Duration {
    client.batch_execute(create).await.expect("create");
    let started = Instant::now();
    let sink = client
        .copy_in::<_, bytes::Bytes>("COPY fv FROM STDIN WITH (FORMAT csv)")
        .await
        .expect("copy");
    let mut sink = Box::pin(sink);
    let mut chunk = String::new();
    for key in 1..=args.keys {
        chunk.push_str(&key.to_string());
        for feature in 0..args.features {
            chunk.push(',');
            chunk.push_str(&feature_value(key, feature).to_string());
        }
        chunk.push('\n');
        if chunk.len() > 1 << 20 {
            sink.send(bytes::Bytes::from(std::mem::take(&mut chunk)))
                .await
                .expect("copy data");
        }
    }
    sink.send(bytes::Bytes::from(chunk))
        .await
        .expect("copy data");
    sink.as_mut().finish().await.expect("copy finish");
    started.elapsed()
}

async fn load_redis(redis: &redis::Client, args: &Args) -> Duration {
    let mut connection = redis
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let started = Instant::now();
    let mut pipe = redis::pipe();
    for key in 1..=args.keys {
        let fields: Vec<(String, f64)> = (0..args.features)
            .map(|f| (format!("f{f}"), feature_value(key, f)))
            .collect();
        pipe.hset_multiple(format!("fv:{key}"), &fields).ignore();
        if key % 1000 == 0 {
            let _: () = pipe.query_async(&mut connection).await.expect("hset");
            pipe = redis::pipe();
        }
    }
    if args.keys % 1000 != 0 {
        let _: () = pipe.query_async(&mut connection).await.expect("hset");
    }
    started.elapsed()
}

/// Reads every key once through `batch_sql` (`= ANY($1)`) in batches of 1000 keys.
async fn warm(port: u16, user: &str, batch_sql: &str, keys: u64) -> Duration {
    let client = connect(port, user, user).await;
    let statement = client.prepare(batch_sql).await.expect("prepare warm-up");
    let started = Instant::now();
    let mut first = 1i64;
    while first <= keys as i64 {
        let last = (first + 999).min(keys as i64);
        let batch: Vec<i64> = (first..=last).collect();
        let rows = client.query(&statement, &[&batch]).await.expect("warm-up");
        assert_eq!(rows.len(), batch.len(), "warm-up from {first}");
        first = last + 1;
    }
    started.elapsed()
}

/// Runs `clients` concurrent loops of `lookup` for the configured time; each loop has its own
/// connection, made by `open`.
async fn measure<C, O, OF, L, LF>(args: &Args, clients: usize, open: O, lookup: L) -> Measured
where
    C: Send + Sync + 'static,
    O: Fn() -> OF,
    OF: std::future::Future<Output = C>,
    L: Fn(Arc<C>, u64) -> LF + Send + Sync + Copy + 'static,
    LF: std::future::Future<Output = ()> + Send + 'static,
{
    let warm_up = Duration::from_secs(1);
    let run = Duration::from_secs(args.seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let connection = Arc::new(open().await);
        tasks.push(tokio::spawn(async move {
            let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ ((client as u64 + 1) << 20);
            let mut latencies = Vec::new();
            let mut queries = 0usize;
            loop {
                let now = Instant::now();
                if now > start + warm_up + run {
                    break;
                }
                let before = Instant::now();
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                lookup(connection.clone(), state).await;
                if before > start + warm_up {
                    latencies.push(before.elapsed().as_micros() as u32);
                    queries += 1;
                }
            }
            (queries, latencies)
        }));
    }
    let mut measured = Measured {
        queries: 0,
        elapsed: run,
        latencies: Vec::new(),
    };
    for task in tasks {
        let (queries, latencies) = task.await.expect("lookup task");
        measured.queries += queries;
        measured.latencies.extend(latencies);
    }
    measured.latencies.sort_unstable();
    measured
}

/// Measures each of `count` systems twice, in the order given and then in reverse (A B B A), and
/// merges each system's two runs: a change of the machine's speed during a phase (other tenants,
/// a peer's background writes after its load) then weighs on every system alike instead of on
/// whichever ran first.
/// Every SQL system measured in both orders (see [`in_both_orders`]), each connection running
/// its statement `sql(system name)` prepared, `lookup` per request.
async fn measure_prepared<L, LF>(
    args: &Args,
    systems: &[SqlSystem],
    clients: usize,
    sql: impl Fn(&str) -> String,
    lookup: L,
) -> Vec<(&'static str, Measured)>
where
    L: Fn(Arc<(Client, tokio_postgres::Statement)>, u64) -> LF + Send + Sync + Copy + 'static,
    LF: std::future::Future<Output = ()> + Send + 'static,
{
    in_both_orders(systems, |(name, port, user)| {
        let sql = sql(name);
        async move { measure(args, clients, || prepared(port, user, sql.clone()), lookup).await }
    })
    .await
}

async fn in_both_orders<F, Fut>(
    systems: &[SqlSystem],
    measure_system: F,
) -> Vec<(&'static str, Measured)>
where
    F: Fn(SqlSystem) -> Fut,
    Fut: std::future::Future<Output = Measured>,
{
    let count = systems.len();
    let mut runs: Vec<Option<Measured>> = (0..count).map(|_| None).collect();
    for system in (0..count).chain((0..count).rev()) {
        let measured = measure_system(systems[system]).await;
        runs[system] = Some(match runs[system].take() {
            Some(first) => first.merge(measured),
            None => measured,
        });
    }
    systems
        .iter()
        .map(|(name, _, _)| *name)
        .zip(runs.into_iter().flatten())
        .collect()
}

/// A PostgreSQL-protocol system: name, port, user (and database).
type SqlSystem = (&'static str, u16, &'static str);

fn report(what: &str, results: &[(&str, Measured)]) {
    println!("\n{what}");
    println!(
        "{:<12}{:>12}{:>10}{:>10}",
        "system", "QPS", "p50 ms", "p99 ms"
    );
    for (name, m) in results {
        println!(
            "{:<12}{:>12.0}{:>10.3}{:>10.3}",
            name,
            m.qps(),
            m.percentile(0.5),
            m.percentile(0.99)
        );
    }
    let quiver = &results[0].1;
    for (name, m) in &results[1..] {
        println!(
            "QPS quiver / {name}: {:.2}x; p99 quiver / {name}: {:.2}x",
            quiver.qps() / m.qps(),
            quiver.percentile(0.99) / m.percentile(0.99)
        );
    }
}

#[tokio::main]
async fn main() {
    let args = Arc::new(Args::parse());
    let columns: Vec<String> = (0..args.features).map(|f| format!("f{f}")).collect();
    let doubles: Vec<String> = columns
        .iter()
        .map(|c| format!("{c} DOUBLE PRECISION"))
        .collect();
    let doubles = doubles.join(", ");

    let quiver = connect(args.quiver_port, "quiver", "quiver").await;

    let redis =
        redis::Client::open(format!("redis://127.0.0.1:{}/", args.redis_port)).expect("redis url");

    println!(
        "data: {} keys x {} double features",
        args.keys, args.features
    );
    let q = if args.no_load {
        Duration::ZERO
    } else {
        load_sql(
            &quiver,
            &format!("CREATE FEATURE GROUP fv (id BIGINT, {doubles}, PRIMARY KEY (id)) WITH (online = true)"),
            &args,
        )
        .await
    };
    let (p, r) = if args.quiver_only {
        (Duration::ZERO, Duration::ZERO)
    } else if args.no_load {
        // Redis keeps nothing across a restart (no persistence): load it again when it is empty.
        let mut connection = redis
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        let stored: u64 = redis::cmd("DBSIZE")
            .query_async(&mut connection)
            .await
            .expect("dbsize");
        let r = if stored == 0 {
            load_redis(&redis, &args).await
        } else {
            Duration::ZERO
        };
        (Duration::ZERO, r)
    } else {
        let postgres = connect(args.postgres_port, "postgres", "postgres").await;
        let p = load_sql(
            &postgres,
            &format!("CREATE TABLE fv (id BIGINT PRIMARY KEY, {doubles})"),
            &args,
        )
        .await;
        postgres
            .batch_execute("VACUUM ANALYZE fv")
            .await
            .expect("vacuum");
        (p, load_redis(&redis, &args).await)
    };
    println!(
        "load seconds: quiver {:.1} (offline and online), postgresql {:.1}, redis {:.1}",
        q.as_secs_f64(),
        p.as_secs_f64(),
        r.as_secs_f64()
    );

    let select = columns.join(", ");
    let quiver_single = format!("SELECT {select} FROM online.fv WHERE id = $1");
    let postgres_single = format!("SELECT {select} FROM fv WHERE id = $1");
    let quiver_batch = format!("SELECT id, {select} FROM online.fv WHERE id = ANY($1)");
    let postgres_batch = format!("SELECT id, {select} FROM fv WHERE id = ANY($1)");
    let keys = args.keys;

    // Steady state, as a serving store sees it: every key is read once before measuring, so
    // each system starts with whatever it keeps in memory warm (PostgreSQL its shared buffers
    // and the OS page cache, Quiver its block cache; Redis holds everything anyway).
    let warm_quiver = warm(args.quiver_port, "quiver", &quiver_batch, keys).await;
    let warm_postgres = if args.quiver_only {
        Duration::ZERO
    } else {
        warm(args.postgres_port, "postgres", &postgres_batch, keys).await
    };
    // PostgreSQL writes the loaded rows out at its next checkpoint, minutes later, in the
    // middle of some measurement: it checkpoints now instead.
    if !args.quiver_only {
        let postgres = connect(args.postgres_port, "postgres", "postgres").await;
        postgres
            .batch_execute("CHECKPOINT")
            .await
            .expect("checkpoint");
    }
    println!(
        "warm-up (every key read once, 1000-key batches): quiver {:.1} s, postgresql {:.1} s",
        warm_quiver.as_secs_f64(),
        warm_postgres.as_secs_f64()
    );

    let mut sql_systems: Vec<SqlSystem> = vec![("quiver", args.quiver_port, "quiver")];
    if !args.quiver_only {
        sql_systems.push(("postgresql", args.postgres_port, "postgres"));
    }
    let statement = |name: &str, single: bool| match (name, single) {
        ("quiver", true) => quiver_single.clone(),
        ("quiver", false) => quiver_batch.clone(),
        (_, true) => postgres_single.clone(),
        (_, false) => postgres_batch.clone(),
    };

    for clients in [1usize, 8, 32] {
        let mut results = measure_prepared(
            &args,
            &sql_systems,
            clients,
            |name| statement(name, true),
            move |c: Arc<(Client, tokio_postgres::Statement)>, state| async move {
                let mut state = state | 1;
                let key = next_key(&mut state, keys);
                let rows = c.0.query(&c.1, &[&key]).await.expect("lookup");
                assert_eq!(rows.len(), 1, "key {key} not found");
            },
        )
        .await;
        if args.quiver_only {
            report(
                &format!("single-key lookups, {clients} connection(s)"),
                &results,
            );
            continue;
        }
        let redis = redis.clone();
        let m = measure(
            &args,
            clients,
            || {
                let redis = redis.clone();
                async move {
                    redis
                        .get_multiplexed_async_connection()
                        .await
                        .expect("redis")
                }
            },
            move |c: Arc<redis::aio::MultiplexedConnection>, state| async move {
                let mut state = state | 1;
                let key = next_key(&mut state, keys);
                let mut connection = (*c).clone();
                let values: Vec<(String, f64)> = connection
                    .hgetall(format!("fv:{key}"))
                    .await
                    .expect("hgetall");
                assert!(!values.is_empty(), "key {key} not found");
            },
        )
        .await;
        results.push(("redis", m));
        report(
            &format!("single-key lookups, {clients} connection(s)"),
            &results,
        );
    }

    let mut results = measure_prepared(
        &args,
        &sql_systems,
        1,
        |name| statement(name, false),
        move |c: Arc<(Client, tokio_postgres::Statement)>, state| async move {
            let mut state = state | 1;
            let batch: Vec<i64> = (0..100).map(|_| next_key(&mut state, keys)).collect();
            let rows = c.0.query(&c.1, &[&batch]).await.expect("batch lookup");
            assert!(!rows.is_empty());
        },
    )
    .await;
    if args.quiver_only {
        report("100-key batch lookups, 1 connection", &results);
        return;
    }
    let redis_batch = redis.clone();
    let m = measure(
        &args,
        1,
        || {
            let redis = redis_batch.clone();
            async move {
                redis
                    .get_multiplexed_async_connection()
                    .await
                    .expect("redis")
            }
        },
        move |c: Arc<redis::aio::MultiplexedConnection>, state| async move {
            let mut state = state | 1;
            let mut pipe = redis::pipe();
            for _ in 0..100 {
                pipe.hgetall(format!("fv:{}", next_key(&mut state, keys)));
            }
            let mut connection = (*c).clone();
            let values: Vec<Vec<(String, f64)>> =
                pipe.query_async(&mut connection).await.expect("pipeline");
            assert_eq!(values.len(), 100);
        },
    )
    .await;
    results.push(("redis", m));
    report("100-key batch lookups, 1 connection", &results);
}
