//! A session's `information_schema`: DataFusion's tables, with `columns` speaking PostgreSQL.
//!
//! DataFusion names a column's type by its Arrow type (`Int64`, `Timestamp(µs)`); tools that
//! read `information_schema.columns` (dbt, generic SQL editors, hand-written checks) expect
//! PostgreSQL's names (`bigint`, `timestamp without time zone`, `ARRAY`) and `udt_name`
//! (`int8`, `_float8`). The names are those of the types the columns have on the wire, so what
//! the schema says is what a client receives.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{AsArray, Int32Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::compute::kernels::numeric::add;
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use datafusion::catalog::information_schema::{
    INFORMATION_SCHEMA_TABLES, InformationSchemaProvider,
};
use datafusion::catalog::{MemTable, SchemaProvider, Session, TableProvider};
use datafusion::common::Result as DfResult;
use datafusion::datasource::TableType;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::{ExecutionPlan, collect};
use postgres_types::Kind;

use super::SessionCatalogs;
use super::objects::sql_type_name;

const COLUMNS: &str = "columns";
const DATA_TYPE: &str = "data_type";
const ORDINAL_POSITION: &str = "ordinal_position";
const UDT_NAME: &str = "udt_name";

#[derive(Debug)]
pub(super) struct InformationSchema {
    pub(super) catalogs: SessionCatalogs,
}

impl InformationSchema {
    fn generic(&self) -> DfResult<InformationSchemaProvider> {
        Ok(InformationSchemaProvider::new(self.catalogs.get()?))
    }
}

#[async_trait]
impl SchemaProvider for InformationSchema {
    fn table_names(&self) -> Vec<String> {
        INFORMATION_SCHEMA_TABLES
            .iter()
            .map(|name| name.to_string())
            .collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let Some(table) = self.generic()?.table(name).await? else {
            return Ok(None);
        };
        if name.eq_ignore_ascii_case(COLUMNS) {
            return Ok(Some(Arc::new(PostgresColumns::new(table))));
        }
        Ok(Some(table))
    }

    fn table_exist(&self, name: &str) -> bool {
        INFORMATION_SCHEMA_TABLES
            .iter()
            .any(|table| table.eq_ignore_ascii_case(name))
    }
}

/// `information_schema.columns` with `data_type` in PostgreSQL's spelling and `udt_name`.
#[derive(Debug)]
struct PostgresColumns {
    generic: Arc<dyn TableProvider>,
    schema: SchemaRef,
}

impl PostgresColumns {
    fn new(generic: Arc<dyn TableProvider>) -> Self {
        // PostgreSQL's numbers here are `cardinal_number`, an integer domain.
        let mut fields: Vec<Field> = generic
            .schema()
            .fields()
            .iter()
            .map(|field| match field.data_type() {
                DataType::UInt64 => field.as_ref().clone().with_data_type(DataType::Int32),
                _ => field.as_ref().clone(),
            })
            .collect();
        fields.push(Field::new(UDT_NAME, DataType::Utf8, true));
        PostgresColumns {
            generic,
            schema: Arc::new(Schema::new(fields)),
        }
    }

    /// DataFusion's rows with their types renamed and `udt_name` added.
    fn in_postgres_terms(&self, batch: &RecordBatch) -> DfResult<RecordBatch> {
        let position = batch.schema().index_of(DATA_TYPE)?;
        let (data_types, udt_names): (Vec<Option<String>>, Vec<Option<String>>) = batch
            .column(position)
            .as_string::<i32>()
            .iter()
            .map(|arrow_name| {
                let Some(name) = arrow_name else {
                    return (None, None);
                };
                match postgres_names(name) {
                    Some((data_type, udt_name)) => (Some(data_type), Some(udt_name)),
                    // A type with no PostgreSQL counterpart keeps DataFusion's name.
                    None => (Some(name.to_string()), None),
                }
            })
            .unzip();
        let mut columns = batch
            .columns()
            .iter()
            .zip(self.schema.fields())
            .map(|(column, field)| cast(column, field.data_type()))
            .collect::<Result<Vec<_>, _>>()?;
        columns[position] = Arc::new(StringArray::from(data_types));
        // DataFusion counts from 0, PostgreSQL from 1.
        let ordinal = batch.schema().index_of(ORDINAL_POSITION)?;
        columns[ordinal] = Arc::new(add(
            columns[ordinal].as_primitive::<Int32Type>(),
            &Int32Array::new_scalar(1),
        )?);
        columns.push(Arc::new(StringArray::from(udt_names)));
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

/// The `data_type` and `udt_name` PostgreSQL gives a column of the type a value of this Arrow
/// type (DataFusion's display of it) has on the wire.
fn postgres_names(arrow_name: &str) -> Option<(String, String)> {
    let arrow_type: DataType = arrow_name.parse().ok()?;
    let wire_type = arrow_pg::datatypes::into_pg_type(&arrow_type).ok()?;
    let data_type = match wire_type.kind() {
        Kind::Array(_) => "ARRAY".to_string(),
        _ => sql_type_name(wire_type.name()).to_string(),
    };
    Some((data_type, wire_type.name().to_string()))
}

#[async_trait]
impl TableProvider for PostgresColumns {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let generic = self.generic.scan(state, None, &[], None).await?;
        let batches = collect(generic, state.task_ctx())
            .await?
            .iter()
            .map(|batch| self.in_postgres_terms(batch))
            .collect::<DfResult<Vec<_>>>()?;
        MemTable::try_new(self.schema.clone(), vec![batches])?
            .scan(state, projection, filters, limit)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrow_types_get_postgres_names() {
        let named = |arrow: DataType| postgres_names(&arrow.to_string());
        assert_eq!(
            named(DataType::Int64),
            Some(("bigint".into(), "int8".into()))
        );
        assert_eq!(
            named(DataType::Float64),
            Some(("double precision".into(), "float8".into()))
        );
        assert_eq!(named(DataType::Utf8), Some(("text".into(), "text".into())));
        assert_eq!(
            named(DataType::Timestamp(
                datafusion::arrow::datatypes::TimeUnit::Microsecond,
                None
            )),
            Some(("timestamp without time zone".into(), "timestamp".into()))
        );
        assert_eq!(
            named(DataType::Timestamp(
                datafusion::arrow::datatypes::TimeUnit::Microsecond,
                Some("UTC".into())
            )),
            Some(("timestamp with time zone".into(), "timestamptz".into()))
        );
        assert_eq!(
            named(DataType::new_list(DataType::Float64, true)),
            Some(("ARRAY".into(), "_float8".into()))
        );
    }
}
