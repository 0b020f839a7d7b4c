//! The writes of a transaction block: held by the session until COMMIT, visible to the block's
//! own statements, applied to every table at COMMIT as one all-or-nothing commit.
//!
//! INSERT, COPY FROM and DELETE inside `BEGIN` ... `COMMIT` validate their rows when they run
//! (errors name the row, as outside a block) and are then deferred here instead of committed.
//! Scans of the block's statements see them (`RelationTable::scan` overlays the table's
//! [`TableChange`]); other sessions do not until COMMIT. ROLLBACK, or ROLLBACK TO SAVEPOINT for
//! the writes after the savepoint, throws them away.
//!
//! At COMMIT each table's deferred writes collapse into one change: rows to delete (the OR of the
//! block's DELETE predicates, applied to the rows committed before the block) and rows to append
//! (the block's inserted rows that no later DELETE of the block removed). One table's appends are
//! one Delta commit, atomic by itself. Anything else is first recorded in the data directory as a
//! [`MultiTableCommit`], then written table by table; a crash part-way is finished at the next
//! start by [`recover`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::Schema;
use datafusion::common::DFSchema;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};
use datafusion::prelude::SessionConfig;
use quiver_catalog::{Oid, Relation};
use quiver_storage::{MultiTableCommit, TableWrite};

use crate::Engine;
use crate::error::{SqlError, SqlResult};
use crate::relation::{RelationSink, conform_rows, delete_rows};
use crate::types::arrow_schema;

/// The directory of the data dir holding multi-table commits being applied.
const COMMITS_DIR: &str = "transactions";

/// Set in the environment, the server aborts a multi-table COMMIT after its first table: the
/// crash tests' way to stop exactly there (never set outside them).
const CRASH_AFTER_FIRST_TABLE: &str = "QUIVER_TEST_CRASH_AFTER_FIRST_TABLE";

/// A write deferred to the end of the block.
#[derive(Debug, Clone)]
pub(crate) enum Deferred {
    /// Rows already validated and cast to the relation's columns ([`crate::types::arrow_schema`]).
    Append {
        relation: Relation,
        rows: Vec<RecordBatch>,
    },
    /// `DELETE FROM relation WHERE predicate`, the predicate over the relation's bare column names.
    Delete { relation: Relation, predicate: Expr },
}

impl Deferred {
    fn relation(&self) -> &Relation {
        match self {
            Deferred::Append { relation, .. } | Deferred::Delete { relation, .. } => relation,
        }
    }
}

/// What a block changes in one relation so far.
#[derive(Debug, Clone)]
pub(crate) struct TableChange {
    pub relation: Relation,
    /// Committed rows matching this are deleted.
    pub deleted: Option<Expr>,
    /// Rows the block added and still has.
    pub rows: Vec<RecordBatch>,
}

/// The deferred writes of a session's open block, shared with its query contexts (a config
/// extension) so that sinks defer into it and scans overlay it. `None` inside: no block open.
#[derive(Debug, Default)]
pub(crate) struct BlockWrites(Mutex<Option<Vec<Deferred>>>);

impl BlockWrites {
    /// The block writes installed in a session's context configuration, if a block is open.
    pub(crate) fn open_in(config: &SessionConfig) -> Option<Arc<BlockWrites>> {
        config
            .get_extension::<BlockWrites>()
            .filter(|writes| writes.is_open())
    }

    fn lock(&self) -> MutexGuard<'_, Option<Vec<Deferred>>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// BEGIN: writes from now on are deferred.
    pub(crate) fn begin(&self) {
        *self.lock() = Some(Vec::new());
    }

    /// The end of the block: its deferred writes, and writes commit at once again.
    pub(crate) fn end(&self) -> Vec<Deferred> {
        self.lock().take().unwrap_or_default()
    }

    /// How many writes are deferred (a savepoint's mark).
    pub(crate) fn mark(&self) -> usize {
        self.lock().as_ref().map_or(0, Vec::len)
    }

    /// ROLLBACK TO SAVEPOINT: forgets the writes after the mark.
    pub(crate) fn roll_back_to(&self, mark: usize) {
        if let Some(writes) = self.lock().as_mut() {
            writes.truncate(mark);
        }
    }

    /// Defers `write` to the end of the open block.
    pub(crate) fn defer(&self, write: Deferred) -> SqlResult<()> {
        match self.lock().as_mut() {
            Some(writes) => {
                writes.push(write);
                Ok(())
            }
            None => Err(SqlError::Internal(
                "a write was deferred with no transaction block open".into(),
            )),
        }
    }

    /// Whether a block is open.
    pub(crate) fn is_open(&self) -> bool {
        self.lock().is_some()
    }

    /// What the block changed in the relation so far, if anything.
    pub(crate) fn change_of(&self, oid: Oid) -> SqlResult<Option<TableChange>> {
        let writes: Vec<Deferred> = match self.lock().as_ref() {
            Some(writes) => writes
                .iter()
                .filter(|w| w.relation().oid == oid)
                .cloned()
                .collect(),
            None => return Ok(None),
        };
        Ok(changes(writes)?.into_iter().next())
    }
}

/// The writes collapsed per relation, in the order the relations were first written.
fn changes(writes: Vec<Deferred>) -> SqlResult<Vec<TableChange>> {
    let mut order: Vec<Oid> = Vec::new();
    let mut by_relation: HashMap<Oid, TableChange> = HashMap::new();
    for write in writes {
        let relation = write.relation().clone();
        let change = by_relation.entry(relation.oid).or_insert_with(|| {
            order.push(relation.oid);
            TableChange {
                relation,
                deleted: None,
                rows: Vec::new(),
            }
        });
        match write {
            Deferred::Append { rows, .. } => change.rows.extend(rows),
            Deferred::Delete { predicate, .. } => {
                change.rows = remaining_rows(&change.relation, &change.rows, &predicate)?;
                change.deleted = Some(match change.deleted.take() {
                    Some(deleted) => deleted.or(predicate),
                    None => predicate,
                });
            }
        }
    }
    Ok(order
        .into_iter()
        .filter_map(|oid| by_relation.remove(&oid))
        .filter(|change| change.deleted.is_some() || change.rows.iter().any(|b| b.num_rows() > 0))
        .collect())
}

/// The rows for which `predicate` is not true (what a DELETE leaves).
fn remaining_rows(
    relation: &Relation,
    rows: &[RecordBatch],
    predicate: &Expr,
) -> SqlResult<Vec<RecordBatch>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let keep = kept_by(predicate, &arrow_schema(&relation.columns))?;
    let mut remaining = Vec::with_capacity(rows.len());
    for batch in rows {
        let mask = keep.evaluate(batch)?.into_array(batch.num_rows())?;
        remaining.push(
            filter_record_batch(batch, mask.as_boolean())
                .map_err(|e| SqlError::Internal(e.to_string()))?,
        );
    }
    Ok(remaining)
}

/// The rows a DELETE with `predicate` keeps, as a filter over rows of `schema`: those for which
/// the predicate is false or NULL.
pub(crate) fn kept_by(predicate: &Expr, schema: &Schema) -> SqlResult<Arc<dyn PhysicalExpr>> {
    let schema = DFSchema::try_from(schema.clone())?;
    Ok(create_physical_expr(
        &predicate.clone().is_not_true(),
        &schema,
        &ExecutionProps::new(),
        &PhysicalPlanningContext::default(),
    )?)
}

/// How many of the block's rows for `relation` match `predicate` (for DELETE's row count).
pub(crate) fn matching_rows(
    relation: &Relation,
    rows: &[RecordBatch],
    predicate: &Expr,
) -> SqlResult<u64> {
    let before: usize = rows.iter().map(RecordBatch::num_rows).sum();
    let after: usize = remaining_rows(relation, rows, predicate)?
        .iter()
        .map(RecordBatch::num_rows)
        .sum();
    Ok((before - after) as u64)
}

/// COMMIT: applies the block's writes to every table, all or nothing.
pub(crate) async fn commit(engine: &Engine, writes: Vec<Deferred>) -> SqlResult<()> {
    let mut changes = changes(writes)?;
    check_relations_unchanged(engine, &changes)?;
    // One table's appends are one Delta commit: atomic without a record.
    if let [only] = changes.as_slice()
        && only.deleted.is_none()
        && let Some(only) = changes.pop()
    {
        RelationSink::commit_conformed(&only.relation, engine, only.rows, None).await?;
        return Ok(());
    }
    if changes.is_empty() {
        return Ok(());
    }
    let mut tables = Vec::with_capacity(changes.len());
    for change in &changes {
        tables.push(TableWrite {
            table: change.relation.oid,
            after: engine.offline.version(change.relation.oid).await?,
            delete: change.deleted.as_ref().map(predicate_sql).transpose()?,
            rows: change.rows.clone(),
        });
    }
    let record = MultiTableCommit {
        tag: new_tag(),
        tables,
    };
    let dir = engine.data_dir().join(COMMITS_DIR);
    record.record(&dir).await?;
    // Queries planned meanwhile wait, and then see every table's writes.
    let _visible_together = engine.commit_gate.write().await;
    for (index, change) in changes.into_iter().enumerate() {
        if index == 1 && std::env::var_os(CRASH_AFTER_FIRST_TABLE).is_some() {
            tracing::error!("{CRASH_AFTER_FIRST_TABLE} is set: aborting part-way through a COMMIT");
            std::process::abort();
        }
        let name = change.relation.qualified_name();
        apply(engine, change, &record.tag).await.map_err(|e| {
            e.context(format!(
                "COMMIT stopped part-way at \"{name}\" (the rest of the block's writes are \
                 applied when the server next starts)"
            ))
        })?;
    }
    Ok(record.forget(&dir).await?)
}

/// Writes one table's change (rows already conformed), its last commit tagged with `tag`.
async fn apply(engine: &Engine, change: TableChange, tag: &str) -> SqlResult<()> {
    let has_rows = change.rows.iter().any(|b| b.num_rows() > 0);
    if let Some(deleted) = change.deleted {
        let delete_tag = (!has_rows).then_some(tag);
        delete_rows(&change.relation, engine, deleted, delete_tag).await?;
    }
    if has_rows {
        RelationSink::commit_conformed(&change.relation, engine, change.rows, Some(tag)).await?;
    }
    Ok(())
}

/// Finishes the multi-table commits a crash interrupted: each table without a commit carrying
/// the record's tag since the record was made gets its writes. Relations dropped since are
/// skipped. Runs at start, after the online store caught up with the offline one.
pub(crate) async fn recover(engine: &Engine) -> SqlResult<()> {
    let dir = engine.data_dir().join(COMMITS_DIR);
    for record in MultiTableCommit::recorded(&dir).await? {
        let catalog = engine.catalog.snapshot();
        for write in &record.tables {
            let Some(relation) = catalog.relation(write.table) else {
                continue;
            };
            if engine
                .offline
                .has_tagged_commit(write.table, write.after, &record.tag)
                .await?
            {
                continue;
            }
            let deleted = match &write.delete {
                Some(sql) => Some(parse_predicate(relation, sql)?),
                None => None,
            };
            // Checked again: the relation is as the catalog has it now.
            let change = TableChange {
                relation: relation.clone(),
                deleted,
                rows: conform_rows(relation, write.rows.clone())?,
            };
            apply(engine, change, &record.tag).await?;
            tracing::info!(
                relation = %relation.qualified_name(),
                tag = %record.tag,
                "finished the transaction block commit a crash interrupted"
            );
        }
        record.forget(&dir).await?;
    }
    Ok(())
}

/// Every relation the block wrote still exists with the columns its rows were checked against:
/// otherwise nothing is written.
fn check_relations_unchanged(engine: &Engine, changes: &[TableChange]) -> SqlResult<()> {
    let catalog = engine.catalog.snapshot();
    for change in changes {
        match catalog.relation(change.relation.oid) {
            Some(now) if now.columns == change.relation.columns => {}
            Some(_) => {
                return Err(SqlError::SerializationFailure(format!(
                    "the columns of \"{}\" changed after this transaction block wrote to it; \
                     nothing was committed",
                    change.relation.qualified_name()
                )));
            }
            None => {
                return Err(SqlError::SerializationFailure(format!(
                    "\"{}\" was dropped after this transaction block wrote to it; nothing was \
                     committed",
                    change.relation.qualified_name()
                )));
            }
        }
    }
    Ok(())
}

/// A DELETE predicate as SQL text, for the commit record.
fn predicate_sql(predicate: &Expr) -> SqlResult<String> {
    datafusion::sql::unparser::expr_to_sql(predicate)
        .map(|sql| sql.to_string())
        .map_err(SqlError::from)
}

/// A DELETE predicate read back from a commit record.
fn parse_predicate(relation: &Relation, sql: &str) -> SqlResult<Expr> {
    let schema = DFSchema::try_from(arrow_schema(&relation.columns).as_ref().clone())?;
    datafusion::prelude::SessionContext::new()
        .parse_sql_expr(sql, &schema)
        .map_err(SqlError::from)
}

/// A tag no other record has: the time, this process and a counter.
fn new_tag() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
    format!("{nanos:020}-{}-{count}", std::process::id())
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::prelude::{col, lit};
    use quiver_catalog::{Column, ColumnType, RelationKind};

    use super::*;

    fn relation(oid: Oid) -> Relation {
        Relation {
            oid,
            project: "p".into(),
            name: format!("t{oid}"),
            kind: RelationKind::Table,
            columns: vec![
                Column::new("id", ColumnType::BigInt, false),
                Column::new("name", ColumnType::Text, true),
            ],
            primary_key: Vec::new(),
            owner: "quiver".into(),
            created_at: chrono::Utc::now(),
        }
    }

    fn rows(relation: &Relation, ids: &[i64]) -> Vec<RecordBatch> {
        let names: Vec<String> = ids.iter().map(|id| format!("n{id}")).collect();
        vec![
            RecordBatch::try_new(
                arrow_schema(&relation.columns),
                vec![
                    Arc::new(Int64Array::from(ids.to_vec())),
                    Arc::new(StringArray::from(names)),
                ],
            )
            .unwrap(),
        ]
    }

    fn ids(change: &TableChange) -> Vec<i64> {
        change
            .rows
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    #[test]
    fn a_delete_removes_the_rows_inserted_before_it_only() {
        let t = relation(1);
        let writes = BlockWrites::default();
        assert!(
            writes
                .defer(Deferred::Append {
                    relation: t.clone(),
                    rows: rows(&t, &[1]),
                })
                .is_err(),
            "outside a block nothing is deferred"
        );
        writes.begin();
        for write in [
            Deferred::Append {
                relation: t.clone(),
                rows: rows(&t, &[1, 2, 3]),
            },
            Deferred::Delete {
                relation: t.clone(),
                predicate: col("id").gt_eq(lit(2i64)),
            },
            Deferred::Append {
                relation: t.clone(),
                rows: rows(&t, &[4]),
            },
        ] {
            writes.defer(write).unwrap();
        }
        let change = writes.change_of(1).unwrap().unwrap();
        assert_eq!(ids(&change), vec![1, 4]);
        assert_eq!(
            change.deleted.unwrap().to_string(),
            col("id").gt_eq(lit(2i64)).to_string()
        );
        assert!(writes.change_of(2).unwrap().is_none());
    }

    #[test]
    fn savepoints_forget_later_writes_and_deletes_accumulate() {
        let t = relation(1);
        let u = relation(2);
        let writes = BlockWrites::default();
        writes.begin();
        writes
            .defer(Deferred::Delete {
                relation: t.clone(),
                predicate: col("id").eq(lit(7i64)),
            })
            .unwrap();
        let mark = writes.mark();
        writes
            .defer(Deferred::Append {
                relation: u.clone(),
                rows: rows(&u, &[5]),
            })
            .unwrap();
        writes
            .defer(Deferred::Delete {
                relation: t.clone(),
                predicate: col("name").is_null(),
            })
            .unwrap();
        let all = changes(writes.lock().clone().unwrap()).unwrap();
        assert_eq!(
            all.iter().map(|c| c.relation.oid).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(
            all[0].deleted.as_ref().unwrap().to_string(),
            col("id")
                .eq(lit(7i64))
                .or(col("name").is_null())
                .to_string()
        );
        writes.roll_back_to(mark);
        assert!(writes.change_of(2).unwrap().is_none());
        assert_eq!(writes.end().len(), 1);
        assert!(!writes.is_open());
    }

    #[test]
    fn a_delete_predicate_survives_the_commit_record() {
        let t = relation(1);
        let predicate = col("id")
            .in_list(vec![lit(1i64), lit(2i64)], false)
            .or(col("name").eq(lit("it's")));
        let sql = predicate_sql(&predicate).unwrap();
        let parsed = parse_predicate(&t, &sql).unwrap();
        let batch = rows(&t, &[1, 2, 3]);
        assert_eq!(
            matching_rows(&t, &batch, &parsed).unwrap(),
            matching_rows(&t, &batch, &predicate).unwrap()
        );
        assert_eq!(matching_rows(&t, &batch, &parsed).unwrap(), 2);
    }
}
