//! The discovery tables: `quiver.feature_groups`, `quiver.features`, `quiver.tables`, ...,
//! `quiver.cluster_nodes`.
//!
//! They are ordinary tables to the user (filter, join, `ILIKE` for search), built per query from one
//! catalog snapshot, so a listing is always consistent with itself.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Int32Array, Int32Builder, Int64Array, Int64Builder,
    IntervalMonthDayNanoBuilder, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{
    DataType, Field, IntervalMonthDayNano, IntervalUnit, Schema, SchemaRef, TimeUnit,
};
use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;
use quiver_catalog::raft::MemberStatus;
use quiver_catalog::{
    CatalogState, DatasetSource, ExperimentRun, FeatureView, Model, Project, ProjectRole, Relation,
    Split, TrainingDataset,
};

use crate::Engine;
use crate::audit::AuditEvent;
use crate::error::{SqlError, SqlResult};
use crate::models::metrics_json;
use crate::types::UTC;

/// The names of the discovery tables.
pub const TABLES: &[&str] = &[
    "feature_groups",
    "features",
    "tables",
    "projects",
    "feature_views",
    "feature_view_columns",
    "training_datasets",
    "models",
    "experiments",
    "audit_log",
    "cluster_nodes",
];

/// Builds the discovery table `name` of a project, or `None` if there is no such table.
pub async fn table(
    engine: &Engine,
    project: &str,
    viewer: &str,
    name: &str,
) -> SqlResult<Option<Arc<dyn TableProvider>>> {
    let snapshot = engine.catalog.snapshot();
    let relations: Vec<&Relation> = snapshot.relations(project).collect();
    let batch = match name {
        "feature_groups" => {
            let groups: Vec<&Relation> = relations
                .into_iter()
                .filter(|r| r.feature_group().is_some())
                .collect();
            let mut rows = Vec::with_capacity(groups.len());
            for group in &groups {
                let offline = engine.offline.row_count(group.oid).await? as i64;
                let online = match engine.online.has_table(group.oid) {
                    true => Some(engine.online.row_count(group.oid).await? as i64),
                    false => None,
                };
                rows.push((offline, online));
            }
            feature_groups(&groups, &rows)?
        }
        "features" => features(&relations)?,
        "tables" => {
            let tables: Vec<&Relation> = relations
                .into_iter()
                .filter(|r| r.feature_group().is_none())
                .collect();
            let mut rows = Vec::with_capacity(tables.len());
            for table in &tables {
                rows.push(engine.offline.row_count(table.oid).await? as i64);
            }
            tables_batch(&tables, &rows)?
        }
        "projects" => projects(&snapshot.visible_projects(viewer).collect::<Vec<_>>())?,
        "feature_views" => feature_views(&snapshot.feature_views(project).collect::<Vec<_>>())?,
        "training_datasets" => {
            training_datasets(&snapshot.training_datasets(project).collect::<Vec<_>>())?
        }
        "feature_view_columns" => {
            feature_view_columns(&snapshot.feature_views(project).collect::<Vec<_>>())?
        }
        "models" => models(&snapshot.models(project).collect::<Vec<_>>())?,
        "experiments" => experiments(&snapshot.experiment_runs(project).collect::<Vec<_>>())?,
        "audit_log" => {
            let superuser = snapshot.user(viewer).is_some_and(|u| u.superuser);
            if !superuser && snapshot.role_in(project, viewer) != Some(ProjectRole::DataOwner) {
                // Listings (information_schema) still see the table; reading it is refused.
                return Ok(Some(Arc::new(DeniedTable {
                    schema: audit_log(&[])?.schema(),
                    message: format!(
                        "quiver.audit_log is readable by superusers and the data owners of project \"{project}\""
                    ),
                })));
            }
            audit_log(&engine.audit.events(superuser, project)?)?
        }
        "cluster_nodes" => match engine.catalog.node() {
            Some(node) => {
                let online = engine
                    .online_group()
                    .map(|group| group.group().member_status())
                    .unwrap_or_default();
                cluster_nodes(&node.member_status(), &online, &snapshot)?
            }
            None => cluster_nodes(&[], &[], &snapshot)?,
        },
        _ => return Ok(None),
    };
    let table = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
    Ok(Some(Arc::new(table)))
}

/// The columns of the discovery table `name`, without computing its rows (row counts read the
/// stores), or `None` if there is no such table.
pub(crate) fn schema(name: &str) -> SqlResult<Option<SchemaRef>> {
    let empty = match name {
        "feature_groups" => feature_groups(&[], &[])?,
        "features" => features(&[])?,
        "tables" => tables_batch(&[], &[])?,
        "projects" => projects(&[])?,
        "feature_views" => feature_views(&[])?,
        "training_datasets" => training_datasets(&[])?,
        "feature_view_columns" => feature_view_columns(&[])?,
        "models" => models(&[])?,
        "experiments" => experiments(&[])?,
        "audit_log" => audit_log(&[])?,
        "cluster_nodes" => cluster_nodes(&[], &[], &CatalogState::new())?,
        _ => return Ok(None),
    };
    Ok(Some(empty.schema()))
}

fn timestamptz() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
}

fn batch(fields: Vec<Field>, columns: Vec<ArrayRef>) -> SqlResult<RecordBatch> {
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| SqlError::Internal(format!("building a discovery table: {e}")))
}

/// `row_counts`: per group, its offline rows and (when online) its online keys.
fn feature_groups(
    groups: &[&Relation],
    row_counts: &[(i64, Option<i64>)],
) -> SqlResult<RecordBatch> {
    let mut name = StringBuilder::new();
    let mut version = Int32Builder::new();
    let mut oid = Int64Builder::new();
    let mut online = BooleanBuilder::new();
    let mut primary_key = StringBuilder::new();
    let mut event_time = StringBuilder::new();
    let mut ttl = IntervalMonthDayNanoBuilder::new();
    let mut description = StringBuilder::new();
    let mut tags = StringBuilder::new();
    let mut partition_by = StringBuilder::new();
    let mut owner = StringBuilder::new();
    let mut created_at = TimestampMicrosecondBuilder::new().with_timezone(UTC);
    let mut rows = Int64Builder::new();
    let mut online_rows = Int64Builder::new();
    for (group, (offline_count, online_count)) in groups.iter().zip(row_counts) {
        let Some(spec) = group.feature_group() else {
            continue;
        };
        name.append_value(&group.name);
        version.append_value(spec.version as i32);
        oid.append_value(group.oid as i64);
        online.append_value(spec.options.online);
        primary_key.append_value(group.primary_key.join(", "));
        event_time.append_option(spec.event_time.as_deref());
        ttl.append_option(spec.options.ttl_seconds.map(|s| IntervalMonthDayNano {
            months: 0,
            days: (s / 86_400) as i32,
            nanoseconds: (s % 86_400) * 1_000_000_000,
        }));
        description.append_option(spec.options.description.as_deref());
        tags.append_value(spec.options.tags.join(", "));
        partition_by.append_option(spec.options.partition_by.as_deref());
        owner.append_value(&group.owner);
        created_at.append_value(group.created_at.timestamp_micros());
        rows.append_value(*offline_count);
        online_rows.append_option(*online_count);
    }
    batch(
        vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("version", DataType::Int32, false),
            Field::new("oid", DataType::Int64, false),
            Field::new("online", DataType::Boolean, false),
            Field::new("primary_key", DataType::Utf8, false),
            Field::new("event_time", DataType::Utf8, true),
            Field::new("ttl", DataType::Interval(IntervalUnit::MonthDayNano), true),
            Field::new("description", DataType::Utf8, true),
            Field::new("tags", DataType::Utf8, false),
            Field::new("partition_by", DataType::Utf8, true),
            Field::new("owner", DataType::Utf8, false),
            Field::new("created_at", timestamptz(), false),
            Field::new("offline_rows", DataType::Int64, false),
            Field::new("online_rows", DataType::Int64, true),
        ],
        vec![
            Arc::new(name.finish()),
            Arc::new(version.finish()),
            Arc::new(oid.finish()),
            Arc::new(online.finish()),
            Arc::new(primary_key.finish()),
            Arc::new(event_time.finish()),
            Arc::new(ttl.finish()),
            Arc::new(description.finish()),
            Arc::new(tags.finish()),
            Arc::new(partition_by.finish()),
            Arc::new(owner.finish()),
            Arc::new(created_at.finish()),
            Arc::new(rows.finish()),
            Arc::new(online_rows.finish()),
        ],
    )
}

fn features(relations: &[&Relation]) -> SqlResult<RecordBatch> {
    let mut group = StringBuilder::new();
    let mut version = Int32Builder::new();
    let mut position = Int32Builder::new();
    let mut name = StringBuilder::new();
    let mut data_type = StringBuilder::new();
    let mut nullable = BooleanBuilder::new();
    let mut primary_key = BooleanBuilder::new();
    let mut event_time = BooleanBuilder::new();
    let mut description = StringBuilder::new();
    for relation in relations {
        let Some(spec) = relation.feature_group() else {
            continue;
        };
        for (index, column) in relation.columns.iter().enumerate() {
            group.append_value(&relation.name);
            version.append_value(spec.version as i32);
            position.append_value(index as i32 + 1);
            name.append_value(&column.name);
            data_type.append_value(column.data_type.sql_name());
            nullable.append_value(column.nullable);
            primary_key.append_value(relation.primary_key.contains(&column.name));
            event_time.append_value(spec.event_time.as_deref() == Some(column.name.as_str()));
            description.append_option(column.description.as_deref());
        }
    }
    batch(
        vec![
            Field::new("feature_group", DataType::Utf8, false),
            Field::new("version", DataType::Int32, false),
            Field::new("position", DataType::Int32, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("type", DataType::Utf8, false),
            Field::new("nullable", DataType::Boolean, false),
            Field::new("primary_key", DataType::Boolean, false),
            Field::new("event_time", DataType::Boolean, false),
            Field::new("description", DataType::Utf8, true),
        ],
        vec![
            Arc::new(group.finish()),
            Arc::new(version.finish()),
            Arc::new(position.finish()),
            Arc::new(name.finish()),
            Arc::new(data_type.finish()),
            Arc::new(nullable.finish()),
            Arc::new(primary_key.finish()),
            Arc::new(event_time.finish()),
            Arc::new(description.finish()),
        ],
    )
}

fn tables_batch(tables: &[&Relation], offline_rows: &[i64]) -> SqlResult<RecordBatch> {
    let mut name = StringBuilder::new();
    let mut oid = Int64Builder::new();
    let mut primary_key = StringBuilder::new();
    let mut columns = Int32Builder::new();
    let mut owner = StringBuilder::new();
    let mut created_at = TimestampMicrosecondBuilder::new().with_timezone(UTC);
    let mut rows = Int64Builder::new();
    for (table, row_count) in tables.iter().zip(offline_rows) {
        name.append_value(&table.name);
        oid.append_value(table.oid as i64);
        primary_key.append_value(table.primary_key.join(", "));
        columns.append_value(table.columns.len() as i32);
        owner.append_value(&table.owner);
        created_at.append_value(table.created_at.timestamp_micros());
        rows.append_value(*row_count);
    }
    batch(
        vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("oid", DataType::Int64, false),
            Field::new("primary_key", DataType::Utf8, false),
            Field::new("columns", DataType::Int32, false),
            Field::new("owner", DataType::Utf8, false),
            Field::new("created_at", timestamptz(), false),
            Field::new("offline_rows", DataType::Int64, false),
        ],
        vec![
            Arc::new(name.finish()),
            Arc::new(oid.finish()),
            Arc::new(primary_key.finish()),
            Arc::new(columns.finish()),
            Arc::new(owner.finish()),
            Arc::new(created_at.finish()),
            Arc::new(rows.finish()),
        ],
    )
}

/// A table the viewer may list but not read: scanning it is 42501.
#[derive(Debug)]
struct DeniedTable {
    schema: SchemaRef,
    message: String,
}

#[async_trait::async_trait]
impl TableProvider for DeniedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> datafusion::datasource::TableType {
        datafusion::datasource::TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn datafusion::catalog::Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[datafusion::prelude::Expr],
        _limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        Err(datafusion::common::DataFusionError::External(Box::new(
            SqlError::InsufficientPrivilege(self.message.clone()),
        )))
    }
}

fn audit_log(events: &[AuditEvent]) -> SqlResult<RecordBatch> {
    let mut time = TimestampMicrosecondBuilder::new().with_timezone(UTC);
    let mut user = StringBuilder::new();
    let mut project = StringBuilder::new();
    let mut kind = StringBuilder::new();
    let mut object = StringBuilder::new();
    let mut success = BooleanBuilder::new();
    let mut error = StringBuilder::new();
    for event in events {
        time.append_value(event.time.timestamp_micros());
        user.append_value(&event.user);
        project.append_value(&event.project);
        kind.append_value(&event.kind);
        object.append_value(&event.object);
        success.append_value(event.success);
        error.append_option(event.error.as_deref());
    }
    batch(
        vec![
            Field::new("time", timestamptz(), false),
            Field::new("user_name", DataType::Utf8, false),
            Field::new("project", DataType::Utf8, false),
            Field::new("statement", DataType::Utf8, false),
            Field::new("object", DataType::Utf8, false),
            Field::new("success", DataType::Boolean, false),
            Field::new("error", DataType::Utf8, true),
        ],
        vec![
            Arc::new(time.finish()),
            Arc::new(user.finish()),
            Arc::new(project.finish()),
            Arc::new(kind.finish()),
            Arc::new(object.finish()),
            Arc::new(success.finish()),
            Arc::new(error.finish()),
        ],
    )
}

/// The cluster's members as this node sees them (empty on a node without `--peers`): their
/// state in the catalog group (`members`) and in the online store's data group (`online`).
fn cluster_nodes(
    members: &[MemberStatus],
    online: &[MemberStatus],
    catalog: &CatalogState,
) -> SqlResult<RecordBatch> {
    let mut node_id = Int64Builder::new();
    let mut raft_addr = StringBuilder::new();
    let mut sql_addr = StringBuilder::new();
    let mut role = StringBuilder::new();
    let mut this_node = BooleanBuilder::new();
    let mut last_log_index = Int64Builder::new();
    let mut last_applied_index = Int64Builder::new();
    let mut current_term = Int64Builder::new();
    let mut online_role = StringBuilder::new();
    let mut online_last_applied_index = Int64Builder::new();
    for member in members {
        let in_online = online.iter().find(|m| m.node_id == member.node_id);
        online_role.append_option(in_online.map(|m| m.role));
        online_last_applied_index
            .append_option(in_online.and_then(|m| m.last_applied_index.map(|i| i as i64)));
        node_id.append_value(member.node_id as i64);
        raft_addr.append_value(&member.raft_addr);
        sql_addr.append_option(catalog.sql_addr(member.node_id));
        role.append_value(member.role);
        this_node.append_value(member.is_this_node);
        last_log_index.append_option(member.last_log_index.map(|i| i as i64));
        last_applied_index.append_option(member.last_applied_index.map(|i| i as i64));
        current_term.append_value(member.current_term as i64);
    }
    batch(
        vec![
            Field::new("node_id", DataType::Int64, false),
            Field::new("raft_addr", DataType::Utf8, false),
            Field::new("sql_addr", DataType::Utf8, true),
            Field::new("role", DataType::Utf8, false),
            Field::new("is_this_node", DataType::Boolean, false),
            Field::new("last_log_index", DataType::Int64, true),
            Field::new("last_applied_index", DataType::Int64, true),
            Field::new("current_term", DataType::Int64, false),
            Field::new("online_role", DataType::Utf8, true),
            Field::new("online_last_applied_index", DataType::Int64, true),
        ],
        vec![
            Arc::new(node_id.finish()),
            Arc::new(raft_addr.finish()),
            Arc::new(sql_addr.finish()),
            Arc::new(role.finish()),
            Arc::new(this_node.finish()),
            Arc::new(last_log_index.finish()),
            Arc::new(last_applied_index.finish()),
            Arc::new(current_term.finish()),
            Arc::new(online_role.finish()),
            Arc::new(online_last_applied_index.finish()),
        ],
    )
}

fn projects(projects: &[&Project]) -> SqlResult<RecordBatch> {
    let mut name = StringBuilder::new();
    let mut oid = Int64Builder::new();
    let mut description = StringBuilder::new();
    let mut owner = StringBuilder::new();
    let mut created_at = TimestampMicrosecondBuilder::new().with_timezone(UTC);
    for project in projects {
        name.append_value(&project.name);
        oid.append_value(project.oid as i64);
        description.append_option(project.description.as_deref());
        owner.append_value(&project.owner);
        created_at.append_value(project.created_at.timestamp_micros());
    }
    batch(
        vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("oid", DataType::Int64, false),
            Field::new("description", DataType::Utf8, true),
            Field::new("owner", DataType::Utf8, false),
            Field::new("created_at", timestamptz(), false),
        ],
        vec![
            Arc::new(name.finish()),
            Arc::new(oid.finish()),
            Arc::new(description.finish()),
            Arc::new(owner.finish()),
            Arc::new(created_at.finish()),
        ],
    )
}

fn feature_views(views: &[&FeatureView]) -> SqlResult<RecordBatch> {
    let mut name = StringBuilder::new();
    let mut version = Int32Builder::new();
    let mut oid = Int64Builder::new();
    let mut query = StringBuilder::new();
    let mut label = StringBuilder::new();
    let mut transforms = StringBuilder::new();
    let mut description = StringBuilder::new();
    let mut columns = StringBuilder::new();
    let mut owner = StringBuilder::new();
    let mut created_at = TimestampMicrosecondBuilder::new().with_timezone(UTC);
    for view in views {
        name.append_value(&view.name);
        version.append_value(view.version as i32);
        oid.append_value(view.oid as i64);
        query.append_value(&view.query);
        label.append_option(view.label.as_deref());
        transforms.append_value(
            view.transforms
                .iter()
                .map(|t| format!("{}:{}", t.column, t.kind.sql_name()))
                .collect::<Vec<_>>()
                .join(", "),
        );
        description.append_option(view.description.as_deref());
        columns.append_value(
            view.columns
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        );
        owner.append_value(&view.owner);
        created_at.append_value(view.created_at.timestamp_micros());
    }
    batch(
        vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("version", DataType::Int32, false),
            Field::new("oid", DataType::Int64, false),
            Field::new("query", DataType::Utf8, false),
            Field::new("label", DataType::Utf8, true),
            Field::new("transforms", DataType::Utf8, false),
            Field::new("description", DataType::Utf8, true),
            Field::new("columns", DataType::Utf8, false),
            Field::new("owner", DataType::Utf8, false),
            Field::new("created_at", timestamptz(), false),
        ],
        vec![
            Arc::new(name.finish()),
            Arc::new(version.finish()),
            Arc::new(oid.finish()),
            Arc::new(query.finish()),
            Arc::new(label.finish()),
            Arc::new(transforms.finish()),
            Arc::new(description.finish()),
            Arc::new(columns.finish()),
            Arc::new(owner.finish()),
            Arc::new(created_at.finish()),
        ],
    )
}

fn feature_view_columns(views: &[&FeatureView]) -> SqlResult<RecordBatch> {
    let mut view_name = StringBuilder::new();
    let mut version = Int32Builder::new();
    let mut position = Int32Builder::new();
    let mut name = StringBuilder::new();
    let mut data_type = StringBuilder::new();
    let mut label = BooleanBuilder::new();
    let mut transform = StringBuilder::new();
    for view in views {
        for (index, column) in view.columns.iter().enumerate() {
            view_name.append_value(&view.name);
            version.append_value(view.version as i32);
            position.append_value(index as i32 + 1);
            name.append_value(&column.name);
            data_type.append_value(&column.type_name);
            label.append_value(view.label.as_deref() == Some(column.name.as_str()));
            transform.append_option(
                view.transforms
                    .iter()
                    .find(|t| t.column == column.name)
                    .map(|t| t.kind.sql_name()),
            );
        }
    }
    batch(
        vec![
            Field::new("feature_view", DataType::Utf8, false),
            Field::new("version", DataType::Int32, false),
            Field::new("position", DataType::Int32, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("type", DataType::Utf8, false),
            Field::new("label", DataType::Boolean, false),
            Field::new("transform", DataType::Utf8, true),
        ],
        vec![
            Arc::new(view_name.finish()),
            Arc::new(version.finish()),
            Arc::new(position.finish()),
            Arc::new(name.finish()),
            Arc::new(data_type.finish()),
            Arc::new(label.finish()),
            Arc::new(transform.finish()),
        ],
    )
}

fn training_datasets(datasets: &[&TrainingDataset]) -> SqlResult<RecordBatch> {
    let mut name = StringBuilder::new();
    let mut version = Int32Builder::new();
    let mut oid = Int64Builder::new();
    let mut feature_view = StringBuilder::new();
    let mut feature_view_version = Int32Builder::new();
    let mut format = StringBuilder::new();
    let mut location = StringBuilder::new();
    let mut split = StringBuilder::new();
    let mut seed = Int64Builder::new();
    let mut rows = Int64Builder::new();
    let mut split_rows = StringBuilder::new();
    let mut label = StringBuilder::new();
    let mut columns = StringBuilder::new();
    let mut transforms = StringBuilder::new();
    let mut query = StringBuilder::new();
    let mut owner = StringBuilder::new();
    let mut created_at = TimestampMicrosecondBuilder::new().with_timezone(UTC);
    let join = |items: Vec<String>| items.join(", ");
    for dataset in datasets {
        name.append_value(&dataset.name);
        version.append_value(dataset.version as i32);
        oid.append_value(dataset.oid as i64);
        match &dataset.source {
            DatasetSource::FeatureView { name, version } => {
                feature_view.append_value(name);
                feature_view_version.append_value(*version as i32);
            }
            DatasetSource::Query => {
                feature_view.append_null();
                feature_view_version.append_null();
            }
        }
        format.append_value(dataset.format.sql_name());
        location.append_value(&dataset.location);
        match &dataset.split {
            Split::None => {
                split.append_value("none");
                seed.append_null();
            }
            Split::Random {
                weights,
                seed: value,
            } => {
                split.append_value(join(
                    weights.iter().map(|(n, w)| format!("{n} = {w}")).collect(),
                ));
                seed.append_value(*value as i64);
            }
            Split::ByTime { column, bounds } => {
                split.append_value(format!(
                    "by time {column}: {}",
                    join(
                        bounds
                            .iter()
                            .map(|(n, c, b)| {
                                let op = c.symbol();
                                format!("{n} {op} '{b}'")
                            })
                            .collect()
                    )
                ));
                seed.append_null();
            }
        }
        rows.append_value(dataset.split_rows.iter().map(|(_, r)| *r as i64).sum());
        split_rows.append_value(join(
            dataset
                .split_rows
                .iter()
                .map(|(n, r)| format!("{n} = {r}"))
                .collect(),
        ));
        label.append_option(dataset.label.as_deref());
        columns.append_value(join(
            dataset.columns.iter().map(|c| c.name.clone()).collect(),
        ));
        transforms.append_value(join(
            dataset
                .transforms
                .iter()
                .map(|t| t.column().to_string())
                .collect(),
        ));
        query.append_value(&dataset.query);
        owner.append_value(&dataset.owner);
        created_at.append_value(dataset.created_at.timestamp_micros());
    }
    batch(
        vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("version", DataType::Int32, false),
            Field::new("oid", DataType::Int64, false),
            Field::new("feature_view", DataType::Utf8, true),
            Field::new("feature_view_version", DataType::Int32, true),
            Field::new("format", DataType::Utf8, false),
            Field::new("location", DataType::Utf8, false),
            Field::new("split", DataType::Utf8, false),
            Field::new("seed", DataType::Int64, true),
            Field::new("rows", DataType::Int64, false),
            Field::new("split_rows", DataType::Utf8, false),
            Field::new("label", DataType::Utf8, true),
            Field::new("columns", DataType::Utf8, false),
            Field::new("transformed", DataType::Utf8, false),
            Field::new("query", DataType::Utf8, false),
            Field::new("owner", DataType::Utf8, false),
            Field::new("created_at", timestamptz(), false),
        ],
        vec![
            Arc::new(name.finish()),
            Arc::new(version.finish()),
            Arc::new(oid.finish()),
            Arc::new(feature_view.finish()),
            Arc::new(feature_view_version.finish()),
            Arc::new(format.finish()),
            Arc::new(location.finish()),
            Arc::new(split.finish()),
            Arc::new(seed.finish()),
            Arc::new(rows.finish()),
            Arc::new(split_rows.finish()),
            Arc::new(label.finish()),
            Arc::new(columns.finish()),
            Arc::new(transforms.finish()),
            Arc::new(query.finish()),
            Arc::new(owner.finish()),
            Arc::new(created_at.finish()),
        ],
    )
}

fn timestamps(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter_values(values).with_timezone(UTC))
}

fn models(models: &[&Model]) -> SqlResult<RecordBatch> {
    let text = |f: fn(&Model) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(models.iter().map(|m| f(m))))
    };
    batch(
        vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("version", DataType::Int32, false),
            Field::new("oid", DataType::Int64, false),
            Field::new("algorithm", DataType::Utf8, false),
            Field::new("task", DataType::Utf8, false),
            Field::new("label", DataType::Utf8, false),
            Field::new("inputs", DataType::Utf8, false),
            Field::new("features", DataType::Utf8, false),
            Field::new("params", DataType::Utf8, false),
            Field::new("metrics", DataType::Utf8, false),
            Field::new("training_dataset", DataType::Utf8, false),
            Field::new("training_dataset_version", DataType::Int32, false),
            Field::new("feature_view", DataType::Utf8, true),
            Field::new("feature_view_version", DataType::Int32, true),
            Field::new("artifact", DataType::Utf8, false),
            Field::new("run_id", DataType::Utf8, false),
            Field::new("owner", DataType::Utf8, false),
            Field::new("created_at", timestamptz(), false),
        ],
        vec![
            text(|m| m.name.clone()),
            Arc::new(Int32Array::from_iter_values(
                models.iter().map(|m| m.version as i32),
            )),
            Arc::new(Int64Array::from_iter_values(
                models.iter().map(|m| m.oid as i64),
            )),
            text(|m| m.algorithm.clone()),
            text(|m| m.task.sql_name().to_string()),
            text(|m| m.label.clone()),
            text(|m| {
                m.inputs
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
            text(|m| m.features.join(", ")),
            text(|m| m.params.clone()),
            text(|m| metrics_json(&m.metrics)),
            text(|m| m.training_dataset.clone()),
            Arc::new(Int32Array::from_iter_values(
                models.iter().map(|m| m.training_dataset_version as i32),
            )),
            Arc::new(StringArray::from_iter(
                models
                    .iter()
                    .map(|m| m.feature_view.as_ref().map(|(n, _)| n.as_str())),
            )),
            Arc::new(Int32Array::from_iter(
                models
                    .iter()
                    .map(|m| m.feature_view.as_ref().map(|(_, v)| *v as i32)),
            )),
            text(|m| m.artifact.clone()),
            text(|m| m.run_id.clone()),
            text(|m| m.owner.clone()),
            timestamps(models.iter().map(|m| m.created_at.timestamp_micros())),
        ],
    )
}

fn experiments(runs: &[&ExperimentRun]) -> SqlResult<RecordBatch> {
    let text = |f: fn(&ExperimentRun) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(runs.iter().map(|r| f(r))))
    };
    batch(
        vec![
            Field::new("run_id", DataType::Utf8, false),
            Field::new("model", DataType::Utf8, false),
            Field::new("model_version", DataType::Int32, true),
            Field::new("algorithm", DataType::Utf8, false),
            Field::new("params", DataType::Utf8, false),
            Field::new("metrics", DataType::Utf8, false),
            Field::new("training_dataset", DataType::Utf8, false),
            Field::new("training_dataset_version", DataType::Int32, false),
            Field::new("duration_ms", DataType::Int64, false),
            Field::new("user", DataType::Utf8, false),
            Field::new("started_at", timestamptz(), false),
        ],
        vec![
            text(|r| r.run_id.clone()),
            text(|r| r.model.clone()),
            Arc::new(Int32Array::from_iter(
                runs.iter().map(|r| r.model_version.map(|v| v as i32)),
            )),
            text(|r| r.algorithm.clone()),
            text(|r| r.params.clone()),
            text(|r| metrics_json(&r.metrics)),
            text(|r| r.training_dataset.clone()),
            Arc::new(Int32Array::from_iter_values(
                runs.iter().map(|r| r.training_dataset_version as i32),
            )),
            Arc::new(Int64Array::from_iter_values(
                runs.iter().map(|r| r.duration_ms as i64),
            )),
            text(|r| r.user.clone()),
            timestamps(runs.iter().map(|r| r.started_at.timestamp_micros())),
        ],
    )
}
