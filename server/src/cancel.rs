//! CancelRequest handling that reaches the whole statement.
//!
//! pgwire cancels the future that *plans* a statement, but rows are computed lazily while they are
//! streamed to the client, after that future has finished. Each connection therefore also has a
//! [`CancelSignal`]; a CancelRequest fires it, and [`cancellable`] ends the row stream with 57014.
//! Dropping the DataFusion stream stops the query's work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use pgwire::api::ConnectionManager;
use pgwire::api::cancel::CancelHandler;
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::startup::SecretKey;
use quiver_sql::SqlError;
use tokio::sync::watch;

type ConnectionKey = (i32, Bytes);

/// Counts the cancel requests of one connection; streams watch it for changes.
pub struct CancelSignal(watch::Sender<u64>);

impl CancelSignal {
    fn fire(&self) {
        self.0.send_modify(|count| *count += 1);
    }

    /// A receiver that sees only cancel requests made from now on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// The cancel signals of all open connections.
pub struct Cancellation {
    manager: Arc<ConnectionManager>,
    signals: Mutex<HashMap<ConnectionKey, Arc<CancelSignal>>>,
}

/// Unregisters a connection's signal when the connection ends.
pub struct SignalGuard {
    key: ConnectionKey,
    cancellation: Arc<Cancellation>,
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        self.cancellation.lock().remove(&self.key);
    }
}

impl Cancellation {
    pub fn new(manager: Arc<ConnectionManager>) -> Arc<Self> {
        Arc::new(Cancellation {
            manager,
            signals: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ConnectionKey, Arc<CancelSignal>>> {
        match self.signals.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Registers a connection; keep the guard as long as the connection lives.
    pub fn register(
        self: &Arc<Self>,
        pid: i32,
        secret_key: &SecretKey,
    ) -> (Arc<CancelSignal>, SignalGuard) {
        let key = (pid, secret_key.to_bytes());
        let signal = Arc::new(CancelSignal(watch::channel(0).0));
        self.lock().insert(key.clone(), signal.clone());
        (
            signal,
            SignalGuard {
                key,
                cancellation: self.clone(),
            },
        )
    }
}

/// The protocol's cancel handler: fires both pgwire's planning-phase cancel and our signal.
pub struct QuiverCancelHandler(pub Arc<Cancellation>);

#[async_trait]
impl CancelHandler for QuiverCancelHandler {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let signal = self
            .0
            .lock()
            .get(&(request.pid, request.secret_key.to_bytes()))
            .cloned();
        tracing::debug!(
            pid = request.pid,
            found = signal.is_some(),
            "cancel request"
        );
        if let Some(signal) = signal {
            signal.fire();
        }
        self.0
            .manager
            .cancel(request.pid, &request.secret_key)
            .await;
    }
}

/// Ends `stream` with [`SqlError::Canceled`] as soon as a cancel request arrives, or with
/// [`SqlError::StatementTimeout`] at `deadline`.
pub fn cancellable<T: Send + 'static>(
    stream: impl Stream<Item = Result<T, SqlError>> + Send + 'static,
    mut cancel: watch::Receiver<u64>,
    deadline: Option<tokio::time::Instant>,
) -> BoxStream<'static, Result<T, SqlError>> {
    cancel.mark_unchanged();
    futures::stream::unfold(
        (stream.boxed(), cancel, false),
        move |(mut stream, mut cancel, ended)| async move {
            if ended {
                return None;
            }
            let timeout = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                changed = cancel.changed() => {
                    if changed.is_err() {
                        // The connection is gone; nobody will read further rows.
                        return None;
                    }
                    Some((Err(SqlError::Canceled), (stream, cancel, true)))
                }
                () = timeout => Some((Err(SqlError::StatementTimeout), (stream, cancel, true))),
                item = stream.next() => item.map(|item| (item, (stream, cancel, false))),
            }
        },
    )
    .boxed()
}
