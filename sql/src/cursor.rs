//! Transaction blocks and cursors of one session.
//!
//! A block (`BEGIN` ... `COMMIT`/`ROLLBACK`) is tracked so that clients see PostgreSQL's
//! protocol: the transaction status, an error aborting the block (25P02 until it ends), cursors
//! living until the block ends. The block's writes wait for COMMIT in `transaction`; catalog
//! changes (DDL, grants) commit at once, so a `ROLLBACK` after them says it cannot undo them.
//!
//! A cursor (`DECLARE c CURSOR FOR query`) holds the query's running stream; `FETCH n` takes
//! the next n rows from it, keeping the rest of a batch for the next FETCH, so a cursor over a
//! large result never holds more than a batch beyond what was fetched.

use std::collections::VecDeque;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::sql::sqlparser::ast::{FetchDirection, Value};
use futures::StreamExt;

use crate::error::{SqlError, SqlResult};

/// An open transaction block.
#[derive(Debug, Default)]
pub(crate) struct Block {
    /// A statement failed: everything but the block's end is refused (25P02).
    pub failed: bool,
    /// Statements inside the block that changed the catalog (committed at once).
    pub writes: u32,
    /// Open savepoints, innermost last.
    pub savepoints: Vec<Savepoint>,
}

/// A savepoint of the open block.
#[derive(Debug)]
pub(crate) struct Savepoint {
    name: String,
    /// The block's count of catalog changes when it was set.
    writes: u32,
    /// The mark of the block's deferred writes when it was set.
    deferred: usize,
}

impl Block {
    /// `SAVEPOINT name`, with the mark of the block's deferred writes.
    pub(crate) fn savepoint(&mut self, name: &str, deferred: usize) {
        self.savepoints.push(Savepoint {
            name: name.to_string(),
            writes: self.writes,
            deferred,
        });
    }

    /// The position of the innermost savepoint of this name.
    fn find(&self, name: &str) -> SqlResult<usize> {
        self.savepoints
            .iter()
            .rposition(|savepoint| savepoint.name == name)
            .ok_or_else(|| {
                SqlError::UndefinedSavepoint(format!("savepoint \"{name}\" does not exist"))
            })
    }

    /// `RELEASE SAVEPOINT name`: forgets it and the savepoints set after it.
    pub(crate) fn release(&mut self, name: &str) -> SqlResult<()> {
        let position = self.find(name)?;
        self.savepoints.truncate(position);
        Ok(())
    }

    /// `ROLLBACK TO SAVEPOINT name`: the block is usable again, the savepoint stays; returns how
    /// many catalog changes since it already committed (which it cannot undo), and the mark to
    /// roll the deferred writes back to.
    pub(crate) fn roll_back_to(&mut self, name: &str) -> SqlResult<(u32, usize)> {
        let position = self.find(name)?;
        let (writes_then, deferred) = {
            let savepoint = &self.savepoints[position];
            (savepoint.writes, savepoint.deferred)
        };
        self.savepoints.truncate(position + 1);
        self.failed = false;
        Ok((self.writes - writes_then, deferred))
    }
}

/// An open cursor.
pub(crate) struct Cursor {
    schema: SchemaRef,
    /// In a mutex only so that the session stays `Sync`; `fetch` has `&mut self` and never locks.
    stream: std::sync::Mutex<SendableRecordBatchStream>,
    /// Rows read from the stream and not fetched yet.
    pending: VecDeque<RecordBatch>,
    /// `WITH HOLD`: the cursor outlives the block that declared it.
    pub hold: bool,
}

impl std::fmt::Debug for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursor")
            .field("schema", &self.schema)
            .field("pending", &self.pending.len())
            .field("hold", &self.hold)
            .finish()
    }
}

impl Cursor {
    pub(crate) fn new(stream: SendableRecordBatchStream, hold: bool) -> Cursor {
        Cursor {
            schema: stream.schema(),
            stream: std::sync::Mutex::new(stream),
            pending: VecDeque::new(),
            hold,
        }
    }

    pub(crate) fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The next `count` rows (all the rest for `None`); fewer at the end.
    pub(crate) async fn fetch(&mut self, count: Option<usize>) -> SqlResult<Vec<RecordBatch>> {
        let stream = self
            .stream
            .get_mut()
            .map_err(|_| SqlError::Internal("a cursor's stream was poisoned".into()))?;
        let mut wanted = count.unwrap_or(usize::MAX);
        let mut fetched = Vec::new();
        while wanted > 0 {
            let batch = match self.pending.pop_front() {
                Some(batch) => batch,
                None => match stream.next().await {
                    Some(batch) => batch?,
                    None => break,
                },
            };
            if batch.num_rows() > wanted {
                self.pending
                    .push_front(batch.slice(wanted, batch.num_rows() - wanted));
                fetched.push(batch.slice(0, wanted));
                wanted = 0;
            } else {
                wanted -= batch.num_rows();
                fetched.push(batch);
            }
        }
        Ok(fetched)
    }
}

/// How many rows a FETCH asks for (`None`: all); cursors scan forward only.
pub(crate) fn fetch_count(direction: &FetchDirection) -> SqlResult<Option<usize>> {
    let count = |value: &Value| -> SqlResult<usize> {
        match value {
            Value::Number(text, _) => text.parse::<usize>().map_err(|_| {
                SqlError::InvalidParameter(format!("FETCH count {text} is not a row count"))
            }),
            other => Err(SqlError::Syntax(format!(
                "FETCH count {other} is not a number"
            ))),
        }
    };
    match direction {
        FetchDirection::Next => Ok(Some(1)),
        FetchDirection::Count { limit } => count(&limit.value).map(Some),
        FetchDirection::Forward { limit: Some(limit) } => count(&limit.value).map(Some),
        FetchDirection::Forward { limit: None } => Ok(Some(1)),
        FetchDirection::All | FetchDirection::ForwardAll => Ok(None),
        _ => Err(SqlError::PrerequisiteState(
            "cursor can only scan forward: declare it without SCROLL and FETCH forward".into(),
        )),
    }
}
