//! The `pg_catalog` tables Quiver fills from its own catalog: `pg_class`, `pg_attribute`,
//! `pg_namespace`, `pg_database`, `pg_index`, `pg_constraint`, `pg_description`, `pg_roles` and
//! `pg_settings` (the session's settings).
//! Their columns are datafusion-pg-catalog's (so its rewrites and oid handling keep working); the
//! rows are [`objects::relations`], so OIDs are stable and primary keys, owners and comments are real.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{CatalogProviderList, MemTable, TableProvider};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion_pg_catalog::pg_catalog::PgCatalogStaticTables;

use super::objects::{self, BTREE_AM, PG_CLASS_OID, PgIndex, PgRelation, RelKind, Sizes};
use crate::Engine;
use crate::error::{SqlError, SqlResult};
use crate::settings::SettingsView;

/// The tables this module builds, by name.
pub(crate) const TABLES: &[&str] = &[
    "pg_class",
    "pg_attribute",
    "pg_namespace",
    "pg_database",
    "pg_index",
    "pg_constraint",
    "pg_description",
    "pg_roles",
    "pg_settings",
];

/// Rows for a table with a given schema, given column by name; a column a row does not name is
/// NULL, or its type's zero value where the column is NOT NULL.
struct Rows {
    schema: SchemaRef,
    columns: Vec<Vec<ScalarValue>>,
}

impl Rows {
    fn new(schema: SchemaRef) -> Rows {
        let columns = vec![Vec::new(); schema.fields().len()];
        Rows { schema, columns }
    }

    fn push(&mut self, row: &[(&str, ScalarValue)]) -> SqlResult<()> {
        for (field, column) in self.schema.fields().iter().zip(&mut self.columns) {
            let value = match row.iter().find(|(name, _)| name == field.name()) {
                Some((_, value)) => value.clone(),
                None if field.is_nullable() => ScalarValue::try_new_null(field.data_type())?,
                None => ScalarValue::new_default(field.data_type())?,
            };
            column.push(value);
        }
        Ok(())
    }

    fn finish(self) -> SqlResult<RecordBatch> {
        let arrays = self
            .schema
            .fields()
            .iter()
            .zip(self.columns)
            .map(|(field, values)| -> SqlResult<ArrayRef> {
                let array = if values.is_empty() {
                    datafusion::arrow::array::new_empty_array(field.data_type())
                } else {
                    ScalarValue::iter_to_array(values)?
                };
                // Row values say Int32 or Utf8 where a column may be Int16 or a dictionary.
                Ok(cast(&array, field.data_type()).map_err(DataFusionError::from)?)
            })
            .collect::<SqlResult<Vec<_>>>()?;
        Ok(RecordBatch::try_new(self.schema, arrays).map_err(DataFusionError::from)?)
    }
}

fn int(value: i32) -> ScalarValue {
    ScalarValue::Int32(Some(value))
}

fn small(value: i16) -> ScalarValue {
    ScalarValue::Int16(Some(value))
}

fn text(value: impl Into<String>) -> ScalarValue {
    ScalarValue::Utf8(Some(value.into()))
}

fn flag(value: bool) -> ScalarValue {
    ScalarValue::Boolean(Some(value))
}

fn optional_text(value: &Option<String>) -> ScalarValue {
    ScalarValue::Utf8(value.clone())
}

fn small_list(values: &[i16]) -> ScalarValue {
    let values: Vec<ScalarValue> = values.iter().map(|v| small(*v)).collect();
    ScalarValue::List(ScalarValue::new_list_nullable(&values, &DataType::Int16))
}

fn int_list(values: &[i32]) -> ScalarValue {
    let values: Vec<ScalarValue> = values.iter().map(|v| int(*v)).collect();
    ScalarValue::List(ScalarValue::new_list_nullable(&values, &DataType::Int32))
}

/// A nullable array column, as PostgreSQL's array-typed catalog columns are.
fn list_field(name: &str, element: DataType) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new("item", element, true))),
        true,
    )
}

/// `schema` with `name` replaced by (or, if absent, extended with) `field`.
fn with_field(schema: &SchemaRef, field: Field) -> SchemaRef {
    let mut fields: Vec<Field> = schema
        .fields()
        .iter()
        .filter(|f| f.name() != field.name())
        .map(|f| f.as_ref().clone())
        .collect();
    match schema.index_of(field.name()) {
        Ok(position) => fields.insert(position, field),
        Err(_) => fields.push(field),
    }
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// What the tables are built from.
pub(crate) struct Sources<'a> {
    pub static_tables: &'a PgCatalogStaticTables,
    /// The columns of every `pg_catalog` table.
    pub system_tables: &'a [(String, SchemaRef)],
    pub engine: &'a Arc<Engine>,
    pub project: &'a str,
    /// The session's user.
    pub viewer: &'a str,
    /// The session's catalogs.
    pub catalogs: &'a Arc<dyn CatalogProviderList>,
    /// The session's settings.
    pub settings: &'a SettingsView,
}

/// Builds the table `name` for the project; `template` is datafusion-pg-catalog's table of that
/// name, whose columns it keeps.
pub(crate) async fn build(
    name: &str,
    template: &Arc<dyn TableProvider>,
    sources: &Sources<'_>,
) -> SqlResult<Arc<dyn TableProvider>> {
    let Sources {
        static_tables,
        engine,
        ..
    } = sources;
    let schema = template.schema();
    let mut batches = Vec::new();
    let schema = match name {
        "pg_namespace" => {
            let owner = objects::system_owner(&engine.catalog.snapshot());
            let mut rows = Rows::new(schema.clone());
            for namespace in objects::namespaces() {
                rows.push(&[
                    ("oid", int(namespace.oid)),
                    ("nspname", text(namespace.name)),
                    ("nspowner", int(owner)),
                ])?;
            }
            batches.push(rows.finish()?);
            schema
        }
        "pg_database" => {
            let snapshot = engine.catalog.snapshot();
            let mut rows = Rows::new(schema.clone());
            for project in snapshot.visible_projects(sources.viewer) {
                rows.push(&[
                    ("oid", int(project.oid as i32)),
                    ("datname", text(&project.name)),
                    ("datdba", int(objects::user_oid(&snapshot, &project.owner))),
                    ("encoding", int(6)),
                    ("datlocprovider", text("c")),
                    ("datcollate", text("C.UTF-8")),
                    ("datctype", text("C.UTF-8")),
                    ("datallowconn", flag(true)),
                    ("datconnlimit", int(-1)),
                    ("dattablespace", int(1663)),
                ])?;
            }
            batches.push(rows.finish()?);
            schema
        }
        "pg_roles" => {
            let snapshot = engine.catalog.snapshot();
            let mut rows = Rows::new(schema.clone());
            for user in snapshot.users() {
                rows.push(&[
                    ("oid", int(user.oid as i32)),
                    ("rolname", text(&user.name)),
                    ("rolsuper", flag(user.superuser)),
                    ("rolinherit", flag(true)),
                    ("rolcreaterole", flag(user.superuser)),
                    // Every user may create projects (and is their first data owner).
                    ("rolcreatedb", flag(true)),
                    ("rolcanlogin", flag(true)),
                    ("rolreplication", flag(false)),
                    (
                        "rolconnlimit",
                        int(user
                            .connection_limit
                            .map_or(-1, |n| n.min(i32::MAX as u32) as i32)),
                    ),
                    ("rolpassword", text("********")),
                    ("rolbypassrls", flag(user.superuser)),
                ])?;
            }
            batches.push(rows.finish()?);
            schema
        }
        "pg_settings" => {
            let mut rows = Rows::new(schema.clone());
            for setting in sources.settings.rows() {
                rows.push(&[
                    ("name", text(&setting.name)),
                    ("setting", text(&setting.setting)),
                    ("category", text("Quiver")),
                    ("context", text(setting.context)),
                    ("vartype", text("string")),
                    ("source", text(setting.source)),
                    ("reset_val", text(&setting.reset_val)),
                    ("pending_restart", flag(false)),
                ])?;
            }
            batches.push(rows.finish()?);
            schema
        }
        "pg_class" => {
            let relations = objects::relations(sources, Sizes::Read).await?;
            let schema = with_field(&schema, list_field("reloptions", DataType::Utf8));
            let mut rows = Rows::new(schema.clone());
            for relation in &relations {
                rows.push(&class_row(relation))?;
            }
            batches.push(rows.finish()?);
            schema
        }
        "pg_attribute" => {
            let relations = objects::relations(sources, Sizes::Skip).await?;
            let mut rows = Rows::new(schema.clone());
            for relation in &relations {
                for (position, column) in relation.columns.iter().enumerate() {
                    rows.push(&[
                        ("attrelid", int(relation.oid)),
                        ("attname", text(&column.name)),
                        ("atttypid", int(column.type_oid)),
                        ("attstattarget", int(-1)),
                        ("attlen", small(-1)),
                        ("attnum", small(position as i16 + 1)),
                        ("attndims", int(0)),
                        ("attcacheoff", int(-1)),
                        ("atttypmod", int(column.type_modifier)),
                        ("attalign", text("i")),
                        ("attstorage", text(storage(column.type_oid))),
                        ("attcompression", text("")),
                        ("attnotnull", flag(column.not_null)),
                        ("atthasdef", flag(false)),
                        ("atthasmissing", flag(false)),
                        ("attidentity", text("")),
                        ("attgenerated", text("")),
                        ("attisdropped", flag(false)),
                        ("attislocal", flag(true)),
                        ("attinhcount", int(0)),
                        ("attcollation", int(0)),
                    ])?;
                }
            }
            batches.push(rows.finish()?);
            schema
        }
        "pg_index" => {
            let relations = objects::relations(sources, Sizes::Skip).await?;
            // int2vector and oidvector are arrays to PostgreSQL's clients, which unnest them.
            let mut schema = schema;
            for (name, element) in [
                ("indkey", DataType::Int16),
                ("indcollation", DataType::Int32),
                ("indclass", DataType::Int32),
                ("indoption", DataType::Int16),
            ] {
                schema = with_field(&schema, list_field(name, element));
            }
            let mut rows = Rows::new(schema.clone());
            for (_, index) in primary_keys(&relations) {
                let key_count = index.key.len() as i16;
                let zeros = vec![0; index.key.len()];
                rows.push(&[
                    ("indexrelid", int(index.oid)),
                    ("indrelid", int(index.table)),
                    ("indnatts", small(key_count)),
                    ("indnkeyatts", small(key_count)),
                    ("indisunique", flag(true)),
                    ("indnullsnotdistinct", flag(false)),
                    ("indisprimary", flag(true)),
                    ("indisexclusion", flag(false)),
                    ("indimmediate", flag(true)),
                    ("indisclustered", flag(false)),
                    ("indisvalid", flag(true)),
                    ("indcheckxmin", flag(false)),
                    ("indisready", flag(true)),
                    ("indislive", flag(true)),
                    ("indisreplident", flag(false)),
                    ("indkey", small_list(&index.key)),
                    ("indcollation", int_list(&zeros)),
                    ("indclass", int_list(&zeros)),
                    ("indoption", small_list(&vec![0; index.key.len()])),
                ])?;
            }
            batches.push(rows.finish()?);
            schema
        }
        "pg_constraint" => {
            let relations = objects::relations(sources, Sizes::Skip).await?;
            // PostgreSQL's conkey is int2[]: clients unnest it.
            let schema = with_field(&schema, list_field("conkey", DataType::Int16));
            let mut rows = Rows::new(schema.clone());
            for (relation, index) in primary_keys(&relations) {
                rows.push(&[
                    ("oid", int(index.oid)),
                    ("conname", text(&index.name)),
                    ("connamespace", int(relation.namespace)),
                    ("contype", text("p")),
                    ("condeferrable", flag(false)),
                    ("condeferred", flag(false)),
                    ("convalidated", flag(true)),
                    ("conrelid", int(index.table)),
                    ("contypid", int(0)),
                    ("conindid", int(index.oid)),
                    ("conparentid", int(0)),
                    ("confrelid", int(0)),
                    ("confupdtype", text(" ")),
                    ("confdeltype", text(" ")),
                    ("confmatchtype", text(" ")),
                    ("conislocal", flag(true)),
                    ("coninhcount", small(0)),
                    ("connoinherit", flag(true)),
                    ("conkey", small_list(&index.key)),
                ])?;
            }
            batches.push(rows.finish()?);
            schema
        }
        "pg_description" => {
            // The built-in objects' descriptions (functions, types, ...) and the project's.
            batches.extend(static_tables.pg_description.data().iter().cloned());
            let relations = objects::relations(sources, Sizes::Skip).await?;
            let mut rows = Rows::new(schema.clone());
            for relation in &relations {
                let comments = std::iter::once((0, &relation.description)).chain(
                    relation
                        .columns
                        .iter()
                        .enumerate()
                        .map(|(position, column)| (position as i32 + 1, &column.description)),
                );
                for (subid, comment) in comments {
                    if comment.is_some() {
                        rows.push(&[
                            ("objoid", int(relation.oid)),
                            ("classoid", int(PG_CLASS_OID)),
                            ("objsubid", int(subid)),
                            ("description", optional_text(comment)),
                        ])?;
                    }
                }
            }
            batches.push(rows.finish()?);
            schema
        }
        other => {
            return Err(SqlError::Internal(format!(
                "pg_catalog.{other} is not built by Quiver"
            )));
        }
    };
    let batches = batches
        .into_iter()
        .map(|batch| batch.with_schema(schema.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(DataFusionError::from)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![batches])?))
}

/// The primary-key indexes among the relations, each with its index relation.
fn primary_keys(relations: &[PgRelation]) -> impl Iterator<Item = (&PgRelation, &PgIndex)> {
    relations
        .iter()
        .filter(|relation| relation.kind == RelKind::Index)
        .filter_map(|relation| relation.index.as_ref().map(|index| (relation, index)))
}

/// A `pg_class` row.
fn class_row(relation: &PgRelation) -> Vec<(&'static str, ScalarValue)> {
    let is_index = relation.kind == RelKind::Index;
    vec![
        ("oid", int(relation.oid)),
        ("relname", text(&relation.name)),
        ("relnamespace", int(relation.namespace)),
        ("reltype", int(0)),
        ("reloftype", int(0)),
        ("relowner", int(relation.owner)),
        ("relam", int(if is_index { BTREE_AM } else { 0 })),
        ("relfilenode", int(0)),
        ("reltablespace", int(0)),
        ("relpages", int(relation.pages)),
        ("reltuples", ScalarValue::Float64(Some(relation.tuples))),
        ("relallvisible", int(0)),
        ("reltoastrelid", int(0)),
        (
            "relhasindex",
            flag(relation.kind == RelKind::Table && relation.index.is_some()),
        ),
        ("relisshared", flag(false)),
        ("relpersistence", text("p")),
        ("relkind", text(relation.kind.code())),
        ("relnatts", small(relation.columns.len() as i16)),
        ("relchecks", small(0)),
        ("relhasrules", flag(false)),
        ("relhastriggers", flag(false)),
        ("relhassubclass", flag(false)),
        ("relrowsecurity", flag(false)),
        ("relforcerowsecurity", flag(false)),
        ("relispopulated", flag(true)),
        ("relreplident", text(if is_index { "n" } else { "d" })),
        ("relispartition", flag(false)),
        ("relrewrite", int(0)),
        ("relfrozenxid", int(0)),
        ("relminmxid", int(0)),
    ]
}

/// `attstorage`: PostgreSQL keeps fixed-width values plain and variable-width ones extended.
fn storage(type_oid: i32) -> &'static str {
    let variable_width = postgres_types::Type::from_oid(type_oid as u32).is_some_and(|t| {
        matches!(t.kind(), postgres_types::Kind::Array(_))
            || [
                postgres_types::Type::TEXT,
                postgres_types::Type::VARCHAR,
                postgres_types::Type::BYTEA,
                postgres_types::Type::NUMERIC,
                postgres_types::Type::JSON,
                postgres_types::Type::JSONB,
            ]
            .contains(&t)
    });
    if variable_width { "x" } else { "p" }
}

/// Which of the tables in [`TABLES`] a name is, case-insensitively.
pub(crate) fn is_built_here(name: &str) -> bool {
    TABLES.contains(&name.to_ascii_lowercase().as_str())
}
