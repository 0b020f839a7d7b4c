//! The system functions whose answers come from Quiver's catalog, replacing datafusion-pg-catalog's
//! placeholders: `pg_get_userbyid`, `pg_table_is_visible`, `pg_get_indexdef`,
//! `pg_get_constraintdef`, `pg_get_viewdef`, `col_description`, `obj_description`,
//! `pg_type_is_visible`, `pg_function_is_visible`, `to_regtype`, `_pg_expandarray_records` and
//! `version()`.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int32Array, ListArray, StringArray, StructArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Int32Type};
use datafusion::common::{DataFusionError, Result as DfResult, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility, create_udf,
};

use quiver_catalog::CatalogState;

use super::objects::{self, Facet};
use crate::Engine;

/// Which function a [`CatalogFunction`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    UserById,
    TableIsVisible,
    TypeIsVisible,
    FunctionIsVisible,
    IndexDef,
    ConstraintDef,
    ColumnDescription,
    ObjectDescription,
    ViewDef,
    ToRegtype,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::UserById => "pg_get_userbyid",
            Kind::TableIsVisible => "pg_table_is_visible",
            Kind::TypeIsVisible => "pg_type_is_visible",
            Kind::FunctionIsVisible => "pg_function_is_visible",
            Kind::IndexDef => "pg_get_indexdef",
            Kind::ConstraintDef => "pg_get_constraintdef",
            Kind::ColumnDescription => "col_description",
            Kind::ObjectDescription => "obj_description",
            Kind::ViewDef => "pg_get_viewdef",
            Kind::ToRegtype => "to_regtype",
        }
    }

    /// How many arguments the function takes (PostgreSQL's optional ones included).
    fn arities(self) -> &'static [usize] {
        match self {
            Kind::IndexDef => &[1, 3],
            Kind::ConstraintDef | Kind::ObjectDescription | Kind::ViewDef => &[1, 2],
            Kind::ColumnDescription => &[2],
            _ => &[1],
        }
    }
}

/// The version string `version()` returns. Drivers and ORMs (SQLAlchemy above all) parse the
/// PostgreSQL release out of it, so it starts as PostgreSQL's does.
pub(crate) fn version_string() -> String {
    format!(
        "PostgreSQL {} (Quiver {}) on {}-linux, 64-bit",
        crate::settings::SERVER_VERSION,
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    )
}

/// The functions for one session's context.
pub(crate) fn all(engine: &Arc<Engine>) -> Vec<ScalarUDF> {
    [
        Kind::UserById,
        Kind::TableIsVisible,
        Kind::TypeIsVisible,
        Kind::FunctionIsVisible,
        Kind::IndexDef,
        Kind::ConstraintDef,
        Kind::ColumnDescription,
        Kind::ObjectDescription,
        Kind::ViewDef,
        Kind::ToRegtype,
    ]
    .into_iter()
    .map(|kind| {
        ScalarUDF::new_from_impl(CatalogFunction {
            kind,
            engine: engine.clone(),
            signature: Signature::one_of(
                kind.arities()
                    .iter()
                    .map(|arity| TypeSignature::Any(*arity))
                    .collect(),
                Volatility::Stable,
            ),
        })
    })
    .chain([ScalarUDF::new_from_impl(ExpandArray::new())])
    .chain([create_udf(
        "pg_size_pretty",
        vec![DataType::Int64],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let sizes = ColumnarValue::values_to_arrays(args)?;
            let sizes = sizes[0].as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            let pretty: StringArray = sizes.iter().map(|size| size.map(size_pretty)).collect();
            Ok(ColumnarValue::Array(Arc::new(pretty)))
        }),
    )])
    .chain([create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|_: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
                version_string(),
            ))))
        }),
    )])
    .collect()
}

#[derive(Debug)]
struct CatalogFunction {
    kind: Kind,
    engine: Arc<Engine>,
    signature: Signature,
}

impl PartialEq for CatalogFunction {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && Arc::ptr_eq(&self.engine, &other.engine)
    }
}

impl Eq for CatalogFunction {}

impl std::hash::Hash for CatalogFunction {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.kind.hash(state);
    }
}

impl ScalarUDFImpl for CatalogFunction {
    fn name(&self) -> &str {
        self.kind.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(match self.kind {
            Kind::TableIsVisible | Kind::TypeIsVisible | Kind::FunctionIsVisible => {
                DataType::Boolean
            }
            Kind::ToRegtype => DataType::Int32,
            _ => DataType::Utf8,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        if self.kind == Kind::ToRegtype {
            // The one function taking a name: the type's OID, NULL for an unknown type.
            let names = cast(&args.args[0].to_array(rows)?, &DataType::Utf8)?;
            let oids: Int32Array = names
                .as_string::<i32>()
                .iter()
                .map(|name| name.and_then(objects::builtin_type_oid))
                .collect();
            return Ok(ColumnarValue::Array(Arc::new(oids)));
        }
        let oids = cast(&args.args[0].to_array(rows)?, &DataType::Int32)?;
        let oids = oids.as_primitive::<Int32Type>();
        // pg_get_indexdef's second argument: 0 for the whole definition, n for the n-th column;
        // col_description's: the column's number.
        let column = match args.args.get(1) {
            Some(value) if matches!(self.kind, Kind::IndexDef | Kind::ColumnDescription) => {
                Some(cast(&value.to_array(rows)?, &DataType::Int32)?)
            }
            _ => None,
        };
        let snapshot = self.engine.catalog.snapshot();
        let result: ArrayRef = match self.kind {
            Kind::TableIsVisible => Arc::new(
                oids.iter()
                    .map(|oid| oid.map(table_is_visible))
                    .collect::<BooleanArray>(),
            ),
            Kind::TypeIsVisible => Arc::new(
                // The types made by bootstrap (OIDs below 10000) are pg_catalog's; the others
                // in the static pg_type are information_schema's, which is not on the path.
                oids.iter()
                    .map(|oid| oid.map(|oid| (0..10_000).contains(&oid)))
                    .collect::<BooleanArray>(),
            ),
            Kind::FunctionIsVisible => Arc::new(
                // Every function lives in pg_catalog, which is always on the search path.
                oids.iter()
                    .map(|oid| oid.map(|_| true))
                    .collect::<BooleanArray>(),
            ),
            Kind::UserById => Arc::new(
                oids.iter()
                    .map(|oid| oid.map(|oid| user_name(&snapshot, oid)))
                    .collect::<StringArray>(),
            ),
            Kind::IndexDef | Kind::ColumnDescription => Arc::new(
                (0..oids.len())
                    .map(|i| {
                        if oids.is_null(i) {
                            return None;
                        }
                        let column = column
                            .as_ref()
                            .map(|c| c.as_primitive::<Int32Type>())
                            .filter(|c| c.is_valid(i))
                            .map_or(0, |c| c.value(i));
                        match self.kind {
                            Kind::IndexDef => index_definition(&snapshot, oids.value(i), column),
                            _ => description(&snapshot, oids.value(i), column),
                        }
                    })
                    .collect::<StringArray>(),
            ),
            Kind::ViewDef => Arc::new(
                oids.iter()
                    .map(|oid| {
                        let (object, _) = Facet::split(oid?)?;
                        Some(snapshot.feature_view_by_oid(object)?.query.clone())
                    })
                    .collect::<StringArray>(),
            ),
            Kind::ToRegtype => return Err(DataFusionError::Internal("answered above".into())),
            Kind::ObjectDescription => Arc::new(
                oids.iter()
                    .map(|oid| oid.and_then(|oid| description(&snapshot, oid, 0)))
                    .collect::<StringArray>(),
            ),
            Kind::ConstraintDef => Arc::new(
                oids.iter()
                    .map(|oid| oid.and_then(|oid| constraint_definition(&snapshot, oid)))
                    .collect::<StringArray>(),
            ),
        };
        Ok(ColumnarValue::Array(result))
    }
}

/// `_pg_expandarray_records(a)`: each element of `a` with its position from 1, as a list of
/// `{x, n}` records; unnested, it is `information_schema._pg_expandarray`, whose rows pgjdbc
/// reads index keys with.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ExpandArray {
    signature: Signature,
}

impl ExpandArray {
    fn new() -> ExpandArray {
        ExpandArray {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }

    fn record_fields(element: &DataType) -> Fields {
        Fields::from(vec![
            Field::new("x", element.clone(), true),
            Field::new("n", DataType::Int32, false),
        ])
    }
}

impl ScalarUDFImpl for ExpandArray {
    fn name(&self) -> &str {
        super::EXPAND_ARRAY
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        match arg_types {
            [DataType::List(element)] => Ok(DataType::List(Arc::new(Field::new_list_field(
                DataType::Struct(Self::record_fields(element.data_type())),
                true,
            )))),
            other => Err(DataFusionError::Plan(format!(
                "{} expects an array, not {other:?}",
                super::EXPAND_ARRAY
            ))),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let lists = args.args[0].to_array(args.number_rows)?;
        let lists = lists.as_list::<i32>();
        let positions: Int32Array = lists
            .offsets()
            .windows(2)
            .flat_map(|pair| 1..=(pair[1] - pair[0]))
            .collect();
        let values = lists
            .values()
            .slice(lists.offsets()[0] as usize, positions.len());
        let fields = Self::record_fields(values.data_type());
        let records =
            StructArray::try_new(fields.clone(), vec![values, Arc::new(positions)], None)?;
        let offsets = OffsetBuffer::new(
            lists
                .offsets()
                .iter()
                .map(|offset| offset - lists.offsets()[0])
                .collect(),
        );
        let result = ListArray::try_new(
            Arc::new(Field::new_list_field(DataType::Struct(fields), true)),
            offsets,
            Arc::new(records),
            lists.nulls().cloned(),
        )?;
        Ok(ColumnarValue::Array(Arc::new(result)))
    }
}

/// A byte count as `pg_size_pretty` prints it: bytes below 10 kB, then kB, MB, GB, TB, PB, each
/// unit while the value is below 10240 of it, rounded half away from zero.
fn size_pretty(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if bytes.unsigned_abs() < 10 * 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    for (i, unit) in UNITS.iter().enumerate() {
        if value.abs() < 10.0 * 1024.0 - 0.5 || i == UNITS.len() - 1 {
            return format!("{} {unit}", value.round() as i64);
        }
        value /= 1024.0;
    }
    format!("{bytes} bytes")
}

/// Whether an unqualified name finds the relation with this OID: only those in `public` (and
/// `pg_catalog`) are on the search path.
fn table_is_visible(oid: i32) -> bool {
    objects::relation_namespace(oid).is_some_and(objects::namespace_is_visible)
}

/// The comment on a relation (`column` 0) or on its `column`-th column: a feature group's
/// description, a feature view's, a column's.
fn description(snapshot: &CatalogState, oid: i32, column: i32) -> Option<String> {
    let (object, facet) = Facet::split(oid)?;
    if facet.is_key() {
        return None;
    }
    if let Some(relation) = snapshot.relation(object) {
        return match column {
            0 => relation
                .feature_group()
                .and_then(|spec| spec.options.description.clone()),
            n => relation
                .columns
                .get(usize::try_from(n).ok()?.checked_sub(1)?)?
                .description
                .clone(),
        };
    }
    let view = snapshot.feature_view_by_oid(object)?;
    (column == 0).then(|| view.description.clone()).flatten()
}

/// The user's name; PostgreSQL's bootstrap superuser (OID 10, the owner of the shipped system
/// objects) is the system owner; PostgreSQL prints an unknown role OID as `unknown (OID=n)`.
fn user_name(snapshot: &CatalogState, oid: i32) -> String {
    let oid = if oid == objects::BOOTSTRAP_SUPERUSER {
        objects::system_owner(snapshot)
    } else {
        oid
    };
    snapshot
        .users()
        .find(|user| user.oid as i32 == oid)
        .map_or_else(|| format!("unknown (OID={oid})"), |user| user.name.clone())
}

/// The primary-key index or constraint with this OID: its schema, table, name and key columns.
struct KeyIndex {
    schema: &'static str,
    table: String,
    name: String,
    key: Vec<String>,
}

impl KeyIndex {
    /// The key columns as a definition lists them: `a, "B"`.
    fn key_list(&self) -> String {
        self.key
            .iter()
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn key_index(snapshot: &CatalogState, oid: i32) -> Option<KeyIndex> {
    let (object, facet) = Facet::split(oid)?;
    if !facet.is_key() {
        return None;
    }
    let relation = snapshot.relation(object)?;
    if relation.primary_key.is_empty() {
        return None;
    }
    let table = match facet {
        Facet::LatestKey | Facet::OnlineLatestKey => relation.name.clone(),
        _ => relation.qualified_name(),
    };
    let schema = objects::namespaces()
        .into_iter()
        .find(|namespace| namespace.oid == facet.namespace())
        .map_or("public", |namespace| namespace.name);
    Some(KeyIndex {
        schema,
        name: format!("{table}_pkey"),
        table,
        key: relation.primary_key.clone(),
    })
}

/// `CREATE UNIQUE INDEX ...` for a primary-key index, or the name of its `column`-th key column.
fn index_definition(snapshot: &CatalogState, oid: i32, column: i32) -> Option<String> {
    let index = key_index(snapshot, oid)?;
    if column > 0 {
        return index.key.get(column as usize - 1).map(|c| quote(c));
    }
    Some(format!(
        "CREATE UNIQUE INDEX {} ON {}.{} USING btree ({})",
        quote(&index.name),
        index.schema,
        quote(&index.table),
        index.key_list()
    ))
}

/// `PRIMARY KEY (...)` for a primary-key constraint.
fn constraint_definition(snapshot: &CatalogState, oid: i32) -> Option<String> {
    let index = key_index(snapshot, oid)?;
    Some(format!("PRIMARY KEY ({})", index.key_list()))
}

/// An identifier as PostgreSQL prints it: bare when it is a plain lower-case name.
fn quote(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_as_postgresql_prints_them() {
        assert_eq!(quote("cc_num"), "cc_num");
        assert_eq!(quote("Amount"), "\"Amount\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote("1st"), "\"1st\"");
    }

    #[test]
    fn only_public_relations_are_visible() {
        assert!(table_is_visible(Facet::Latest.oid(16_400)));
        assert!(table_is_visible(Facet::VersionedKey.oid(16_400)));
        assert!(!table_is_visible(Facet::OnlineLatest.oid(16_400)));
        assert!(!table_is_visible(14_100));
        assert!(table_is_visible(1259));
    }

    #[test]
    fn sizes_print_as_pg_size_pretty_prints_them() {
        assert_eq!(size_pretty(0), "0 bytes");
        assert_eq!(size_pretty(10_239), "10239 bytes");
        assert_eq!(size_pretty(10_240), "10 kB");
        assert_eq!(size_pretty(1_048_576), "1024 kB");
        assert_eq!(size_pretty(10_485_760), "10 MB");
        assert_eq!(size_pretty(5 * 1024 * 1024 * 1024), "5120 MB");
    }

    #[test]
    fn version_names_the_postgresql_release_first() {
        assert!(version_string().starts_with("PostgreSQL 15.0 (Quiver "));
    }
}
