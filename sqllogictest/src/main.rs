//! Runs Quiver's `.slt` files against a live `quiver serve`, through tokio-postgres, once over the
//! simple query protocol and once over the extended protocol (binary results).
//!
//! Usage: `quiver-sqllogictest [--quiver PATH] [FILE_OR_DIR ...]` (default: this crate's `slt/`).
//! Each file runs against a fresh server on a fresh data directory. Errors are reported to the
//! files as `SQLSTATE: message`, so `statement error 23502: null value` pins both.
//!
//! Values are compared in a canonical text form per column type (floats as the shortest
//! round-trip decimal, timestamps without trailing fractional zeros), so one expected result holds
//! for both protocols.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Simple,
    Extended,
}

/// A test database connection.
struct Quiver {
    client: Client,
    /// For the simple protocol, a second connection that describes each statement for its
    /// column types: a Describe on `client` would be a statement of its own there, and a failing
    /// one would abort an open transaction block.
    describer: Option<Client>,
    protocol: Protocol,
}

/// An error as the `.slt` files see it.
#[derive(Debug)]
struct QuiverError {
    sqlstate: Option<String>,
    message: String,
}

impl std::fmt::Display for QuiverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.sqlstate {
            Some(code) => write!(f, "{code}: {}", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

impl std::error::Error for QuiverError {}

impl From<tokio_postgres::Error> for QuiverError {
    fn from(error: tokio_postgres::Error) -> Self {
        match error.as_db_error() {
            Some(db) => QuiverError {
                sqlstate: Some(db.code().code().to_string()),
                message: db.message().to_string(),
            },
            None => QuiverError {
                sqlstate: None,
                message: error.to_string(),
            },
        }
    }
}

#[async_trait]
impl AsyncDB for Quiver {
    type Error = QuiverError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, QuiverError> {
        match self.protocol {
            Protocol::Simple => self.run_simple(sql).await,
            Protocol::Extended => self.run_extended(sql).await,
        }
    }

    async fn shutdown(&mut self) {}

    /// `onlyif simple` / `skipif extended` select records by protocol.
    fn engine_name(&self) -> &str {
        match self.protocol {
            Protocol::Simple => "simple",
            Protocol::Extended => "extended",
        }
    }

    fn error_sql_state(error: &QuiverError) -> Option<String> {
        error.sqlstate.clone()
    }
}

impl Quiver {
    async fn run_simple(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, QuiverError> {
        // The simple protocol carries no column types; a Describe of the same statement gives them
        // so the values can be canonicalised. Statements that cannot be described have none.
        let described = match &self.describer {
            Some(describer) => describer.prepare(sql).await.ok(),
            None => None,
        };
        let types: Vec<Type> = described
            .map(|statement| {
                statement
                    .columns()
                    .iter()
                    .map(|c| c.type_().clone())
                    .collect()
            })
            .unwrap_or_default();
        let messages = self.client.simple_query(sql).await?;
        let mut rows = Vec::new();
        let mut width = None;
        let mut affected = 0;
        for message in messages {
            match message {
                SimpleQueryMessage::RowDescription(columns) => width = Some(columns.len()),
                SimpleQueryMessage::Row(row) => {
                    width = Some(row.len());
                    rows.push(
                        (0..row.len())
                            .map(|i| canonical_text(row.get(i), types.get(i)))
                            .collect::<Vec<_>>(),
                    );
                }
                SimpleQueryMessage::CommandComplete(n) => affected = n,
                _ => {}
            }
        }
        match width {
            Some(width) => Ok(DBOutput::Rows {
                types: vec![DefaultColumnType::Any; width],
                rows: split_multiline(rows),
            }),
            None => Ok(DBOutput::StatementComplete(affected)),
        }
    }

    async fn run_extended(
        &mut self,
        sql: &str,
    ) -> Result<DBOutput<DefaultColumnType>, QuiverError> {
        let statement = self.client.prepare(sql).await?;
        if statement.columns().is_empty() {
            let affected = self.client.execute(&statement, &[]).await?;
            return Ok(DBOutput::StatementComplete(affected));
        }
        let rows = self.client.query(&statement, &[]).await?;
        let mut output = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut values = Vec::with_capacity(row.len());
            for (i, column) in row.columns().iter().enumerate() {
                values.push(binary_value(row, i, column.type_())?);
            }
            output.push(values);
        }
        Ok(DBOutput::Rows {
            types: vec![DefaultColumnType::Any; statement.columns().len()],
            rows: split_multiline(output),
        })
    }
}

/// A row whose values span lines (EXPLAIN's plans) becomes one row per line, so that an .slt file
/// can spell it out: the first line with the other values, then each further line on its own.
fn split_multiline(rows: Vec<Vec<String>>) -> Vec<Vec<String>> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        if !row.iter().any(|v| v.contains('\n')) {
            out.push(row);
            continue;
        }
        let mut continuation = Vec::new();
        let first = row
            .into_iter()
            .map(|value| {
                let mut lines = value.trim_end_matches('\n').lines();
                let head = lines.next().unwrap_or_default().to_string();
                continuation.extend(lines.map(|l| vec![l.to_string()]));
                head
            })
            .collect();
        out.push(first);
        out.extend(continuation);
    }
    out
}

/// Canonical text of a value received in text form.
fn canonical_text(value: Option<&str>, data_type: Option<&Type>) -> String {
    let Some(text) = value else {
        return "NULL".into();
    };
    match data_type {
        Some(t) if *t == Type::FLOAT4 || *t == Type::FLOAT8 => text
            .parse::<f64>()
            .map(|v| v.to_string())
            .unwrap_or_else(|_| text.to_string()),
        Some(t) if *t == Type::TIMESTAMP || *t == Type::TIMESTAMPTZ => trim_fraction(text),
        Some(t) if *t == Type::FLOAT4_ARRAY || *t == Type::FLOAT8_ARRAY => {
            let items = text.trim_start_matches('{').trim_end_matches('}');
            let items: Vec<String> = items
                .split(',')
                .filter(|item| !item.is_empty())
                .map(|item| {
                    item.parse::<f64>()
                        .map(|v| v.to_string())
                        .unwrap_or_else(|_| item.to_string())
                })
                .collect();
            format!("{{{}}}", items.join(","))
        }
        _ if text.is_empty() => "(empty)".into(),
        _ => text.to_string(),
    }
}

/// `10:00:00.500000` becomes `10:00:00.5`, `10:00:00.000000` becomes `10:00:00`.
fn trim_fraction(text: &str) -> String {
    let (body, zone) = match text.rfind(['+', '-']).filter(|&i| i > 10) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let body = match body.split_once('.') {
        Some((whole, fraction)) => {
            let fraction = fraction.trim_end_matches('0');
            if fraction.is_empty() {
                whole.to_string()
            } else {
                format!("{whole}.{fraction}")
            }
        }
        None => body.to_string(),
    };
    format!("{body}{zone}")
}

/// Canonical text of a value received in binary form.
fn binary_value(
    row: &tokio_postgres::Row,
    i: usize,
    data_type: &Type,
) -> Result<String, QuiverError> {
    fn text<T: ToString>(value: Option<T>) -> String {
        value
            .map(|v| v.to_string())
            .unwrap_or_else(|| "NULL".into())
    }
    fn array<T: ToString>(value: Option<Vec<Option<T>>>) -> String {
        match value {
            None => "NULL".into(),
            Some(items) => format!(
                "{{{}}}",
                items
                    .into_iter()
                    .map(|v| v.map(|v| v.to_string()).unwrap_or_else(|| "NULL".into()))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
    let value = match *data_type {
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)?
            .map(|b| if b { "t" } else { "f" }.to_string())
            .unwrap_or_else(|| "NULL".into()),
        Type::INT2 => text(row.try_get::<_, Option<i16>>(i)?),
        Type::INT4 => text(row.try_get::<_, Option<i32>>(i)?),
        Type::INT8 => text(row.try_get::<_, Option<i64>>(i)?),
        Type::FLOAT4 => text(row.try_get::<_, Option<f32>>(i)?.map(f64::from)),
        Type::FLOAT8 => text(row.try_get::<_, Option<f64>>(i)?),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            match row.try_get::<_, Option<String>>(i)? {
                Some(s) if s.is_empty() => "(empty)".into(),
                other => text(other),
            }
        }
        Type::BYTEA => row
            .try_get::<_, Option<Vec<u8>>>(i)?
            .map(|bytes| {
                format!(
                    "\\x{}",
                    bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
                )
            })
            .unwrap_or_else(|| "NULL".into()),
        Type::DATE => text(row.try_get::<_, Option<chrono::NaiveDate>>(i)?),
        Type::TIMESTAMP => row
            .try_get::<_, Option<chrono::NaiveDateTime>>(i)?
            .map(|t| trim_fraction(&t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()))
            .unwrap_or_else(|| "NULL".into()),
        Type::TIMESTAMPTZ => row
            .try_get::<_, Option<chrono::DateTime<chrono::Utc>>>(i)?
            .map(|t| trim_fraction(&t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()))
            .unwrap_or_else(|| "NULL".into()),
        Type::INTERVAL => row
            .try_get::<_, Option<Interval>>(i)?
            .map(|interval| interval.to_string())
            .unwrap_or_else(|| "NULL".into()),
        Type::INT2_ARRAY => array(row.try_get::<_, Option<Vec<Option<i16>>>>(i)?),
        Type::INT4_ARRAY => array(row.try_get::<_, Option<Vec<Option<i32>>>>(i)?),
        Type::INT8_ARRAY => array(row.try_get::<_, Option<Vec<Option<i64>>>>(i)?),
        Type::FLOAT4_ARRAY => array(row.try_get::<_, Option<Vec<Option<f32>>>>(i)?),
        Type::FLOAT8_ARRAY => array(row.try_get::<_, Option<Vec<Option<f64>>>>(i)?),
        Type::TEXT_ARRAY => array(row.try_get::<_, Option<Vec<Option<String>>>>(i)?),
        ref other => {
            return Err(QuiverError {
                sqlstate: None,
                message: format!("the test runner cannot decode type {other} in binary"),
            });
        }
    };
    Ok(value)
}

/// A PostgreSQL interval decoded from its binary form, printed as PostgreSQL prints it.
struct Interval {
    microseconds: i64,
    days: i32,
    months: i32,
}

impl<'a> tokio_postgres::types::FromSql<'a> for Interval {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let bytes: [u8; 16] = raw.try_into().map_err(|_| "an interval is 16 bytes")?;
        let (micros, rest) = bytes.split_at(8);
        let (days, months) = rest.split_at(4);
        Ok(Interval {
            microseconds: i64::from_be_bytes(micros.try_into()?),
            days: i32::from_be_bytes(days.try_into()?),
            months: i32::from_be_bytes(months.try_into()?),
        })
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::INTERVAL
    }
}

impl std::fmt::Display for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural = |n: i32, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
        let mut parts = Vec::new();
        if self.months != 0 {
            parts.push(plural(self.months, "mon"));
        }
        if self.days != 0 {
            parts.push(plural(self.days, "day"));
        }
        if self.microseconds != 0 || parts.is_empty() {
            let seconds = self.microseconds / 1_000_000;
            parts.push(format!(
                "{:02}:{:02}:{:02}",
                seconds / 3600,
                seconds / 60 % 60,
                seconds % 60
            ));
        }
        write!(f, "{}", parts.join(" "))
    }
}

/// A `quiver serve` process on a fresh data directory, killed on drop.
struct Server {
    child: Child,
    port: u16,
    _data_dir: tempfile::TempDir,
}

impl Server {
    fn start(quiver: &Path, options: &[&str]) -> Result<Server, String> {
        let data_dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?
            .port();
        let child = Command::new(quiver)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data_dir.path())
            .args(options)
            .env(
                "QUIVER_LOG",
                "warn,buoyant_kernel=error,deltalake_core=error",
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", quiver.display()))?;
        let server = Server {
            child,
            port,
            _data_dir: data_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(format!("quiver did not listen on port {port} within 60 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    async fn connect(&self, protocol: Protocol) -> Result<Quiver, String> {
        let client = self.client().await?;
        let describer = match protocol {
            Protocol::Simple => Some(self.client().await?),
            Protocol::Extended => None,
        };
        Ok(Quiver {
            client,
            describer,
            protocol,
        })
    }

    async fn client(&self) -> Result<Client, String> {
        let config = format!(
            "host=127.0.0.1 port={} user=quiver dbname=quiver",
            self.port
        );
        let (client, connection) = tokio_postgres::connect(&config, NoTls)
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn slt_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            if let Ok(entries) = std::fs::read_dir(path) {
                let mut found: Vec<PathBuf> = entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "slt"))
                    .collect();
                found.sort();
                files.extend(found);
            }
        } else {
            files.push(path.clone());
        }
    }
    files
}

async fn run_file(quiver: &Path, file: &Path, protocol: Protocol) -> Result<(), String> {
    // The extended protocol's runs (prepared statements: the serving fast path) also run with
    // an online row cache, so every online-store rule of the suite holds with and without one.
    let options: &[&str] = match protocol {
        Protocol::Simple => &[],
        Protocol::Extended => &["--online-row-cache-mb", "4"],
    };
    let server = Server::start(quiver, options)?;
    let db = server.connect(protocol).await?;
    let mut slot = Some(db);
    let mut runner = sqllogictest::Runner::new(move || {
        let db = slot.take();
        async move {
            db.ok_or(QuiverError {
                sqlstate: None,
                message: "one connection per file".into(),
            })
        }
    });
    // Column types are not compared: values are checked in canonical text form instead.
    runner.with_column_validator(|_, _| true);
    runner
        .run_file_async(file)
        .await
        .map_err(|e| e.display(true).to_string())
}

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let mut quiver = std::env::var_os("QUIVER_BIN").map(PathBuf::from);
    let mut paths = Vec::new();
    while let Some(arg) = args.next() {
        if arg == "--quiver" {
            quiver = args.next().map(PathBuf::from);
        } else {
            paths.push(PathBuf::from(arg));
        }
    }
    let Some(quiver) = quiver else {
        eprintln!("quiver-sqllogictest: pass --quiver PATH or set QUIVER_BIN to the quiver binary");
        return std::process::ExitCode::FAILURE;
    };
    if paths.is_empty() {
        paths.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("slt"));
    }
    let files = slt_files(&paths);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("quiver-sqllogictest: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let (mut passed, mut failed) = (0, 0);
    for file in &files {
        for protocol in [Protocol::Simple, Protocol::Extended] {
            let name = format!("{} ({protocol:?})", file.display());
            match runtime.block_on(run_file(&quiver, file, protocol)) {
                Ok(()) => {
                    passed += 1;
                    println!("PASS {name}");
                }
                Err(e) => {
                    failed += 1;
                    println!("FAIL {name}\n{e}");
                }
            }
        }
    }
    println!("sqllogictest: {passed} passed, {failed} failed");
    if failed == 0 && passed > 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
