//! `pg_get_function_result(oid)`, `pg_get_function_arguments(oid)` and
//! `pg_get_function_sqlbody(oid)` over pg_proc's rows, as psql's `\df` and `\df+` show them:
//! `SETOF text`, `TABLE(name text, ...)`; `x integer, OUT y text`. The texts are computed once
//! from datafusion-pg-catalog's pg_proc, types named by its `format_type` (pg_type's name for
//! the types it does not know).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Int32Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int32Type};
use datafusion::common::config::ConfigOptions;
use datafusion::common::{DataFusionError, Result as DfResult, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, Volatility, create_udf,
};
use datafusion_pg_catalog::pg_catalog::format_type::create_format_type_udf;
use datafusion_pg_catalog::pg_catalog::{ArrowTable, PgCatalogStaticTables};

use crate::error::{SqlError, SqlResult};

/// A function's result and argument texts.
#[derive(Debug, Default, Clone)]
struct Signature {
    result: String,
    arguments: String,
    /// The body of a `BEGIN ATOMIC` SQL function; none of the built-in functions has one.
    sql_body: Option<String>,
}

/// The two functions, answering from pg_proc as it is shipped.
pub(crate) fn functions(static_tables: &PgCatalogStaticTables) -> SqlResult<Vec<ScalarUDF>> {
    let type_names = TypeNames::new(&table_rows(&static_tables.pg_type)?)?;
    let signatures = Arc::new(signatures(
        &table_rows(&static_tables.pg_proc)?,
        type_names,
    )?);
    let udf = |name: &str, text: fn(&Signature) -> Option<&str>| {
        let signatures = signatures.clone();
        create_udf(
            name,
            vec![DataType::Int32],
            DataType::Utf8,
            Volatility::Immutable,
            Arc::new(move |args: &[ColumnarValue]| {
                let oids = ColumnarValue::values_to_arrays(args)?;
                let oids = cast(&oids[0], &DataType::Int32)?;
                let texts: StringArray = oids
                    .as_primitive::<Int32Type>()
                    .iter()
                    .map(|oid| oid.and_then(|oid| signatures.get(&oid)).and_then(text))
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(texts)))
            }),
        )
    };
    Ok(vec![
        udf("pg_get_function_result", |s| Some(&s.result)),
        udf("pg_get_function_arguments", |s| Some(&s.arguments)),
        udf("pg_get_function_sqlbody", |s| s.sql_body.as_deref()),
    ])
}

/// The rows of one of datafusion-pg-catalog's shipped tables.
fn table_rows(table: &ArrowTable) -> SqlResult<Vec<RecordBatch>> {
    let table = table.try_into_memtable()?;
    let mut rows = Vec::new();
    for partition in &table.batches {
        let batches = partition
            .try_read()
            .map_err(|e| SqlError::Internal(format!("a system table is being written: {e}")))?;
        rows.extend(batches.iter().cloned());
    }
    Ok(rows)
}

fn signatures(
    rows: &[RecordBatch],
    mut type_names: TypeNames,
) -> DfResult<HashMap<i32, Signature>> {
    let mut signatures = HashMap::new();
    for batch in rows {
        let column = |name: &str| -> DfResult<&Arc<dyn Array>> {
            batch
                .column_by_name(name)
                .ok_or_else(|| DataFusionError::Internal(format!("pg_proc has no column {name}")))
        };
        let oids = cast(column("oid")?, &DataType::Int32)?;
        let returns = cast(column("prorettype")?, &DataType::Int32)?;
        let sets = cast(column("proretset")?, &DataType::Boolean)?;
        let text = |name: &str| -> DfResult<StringArray> {
            Ok(cast(column(name)?, &DataType::Utf8)?
                .as_string::<i32>()
                .clone())
        };
        let (argument_types, all_types, modes, names, bodies) = (
            text("proargtypes")?,
            text("proallargtypes")?,
            text("proargmodes")?,
            text("proargnames")?,
            text("prosqlbody")?,
        );
        let oids = oids.as_primitive::<Int32Type>();
        let returns = returns.as_primitive::<Int32Type>();
        let sets = sets.as_boolean();
        for row in 0..batch.num_rows() {
            fn value(array: &StringArray, row: usize) -> Option<&str> {
                (!array.is_null(row)).then(|| array.value(row))
            }
            // With OUT or TABLE arguments every argument is in proallargtypes, with its mode.
            let types = match value(&all_types, row).map(list) {
                Some(types) if !types.is_empty() => types,
                _ => value(&argument_types, row)
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect(),
            };
            let modes = value(&modes, row).map(list).unwrap_or_default();
            let names = value(&names, row).map(list).unwrap_or_default();
            let mut arguments = Vec::new();
            let mut table_columns = Vec::new();
            for (index, type_oid) in types.iter().enumerate() {
                let type_name = type_names.name(type_oid.parse().unwrap_or(0))?;
                let name = names.get(index).filter(|n| !n.is_empty());
                let named = match name {
                    Some(name) => format!("{name} {type_name}"),
                    None => type_name,
                };
                match modes.get(index).map(String::as_str) {
                    Some("t") => table_columns.push(named),
                    Some("o") => arguments.push(format!("OUT {named}")),
                    Some("b") => arguments.push(format!("INOUT {named}")),
                    Some("v") => arguments.push(format!("VARIADIC {named}")),
                    _ => arguments.push(named),
                }
            }
            let result = if !table_columns.is_empty() {
                format!("TABLE({})", table_columns.join(", "))
            } else {
                let returned = type_names.name(returns.value(row))?;
                if sets.value(row) {
                    format!("SETOF {returned}")
                } else {
                    returned
                }
            };
            signatures.insert(
                oids.value(row),
                Signature {
                    result,
                    arguments: arguments.join(", "),
                    sql_body: value(&bodies, row).map(str::to_owned),
                },
            );
        }
    }
    Ok(signatures)
}

/// The items of a list as pg_proc's text shows them: `[1034, 26]`, `['acl', 'grantor']`,
/// `{i,o}`.
fn list(text: &str) -> Vec<String> {
    let inner = text
        .trim()
        .trim_matches(|c| matches!(c, '[' | ']' | '{' | '}'));
    if inner.trim().is_empty() {
        return Vec::new();
    }
    inner
        .split(',')
        .map(|item| {
            item.trim()
                .trim_matches(|c| c == '\'' || c == '"')
                .to_string()
        })
        .collect()
}

/// Type names by OID: `format_type`'s, else pg_type's (`_name` as `name[]`), remembered.
struct TypeNames {
    named: HashMap<i32, String>,
    /// pg_type's typname by OID.
    catalog: HashMap<i32, String>,
}

impl TypeNames {
    fn new(pg_type: &[RecordBatch]) -> DfResult<TypeNames> {
        let mut catalog = HashMap::new();
        for batch in pg_type {
            let (Some(oids), Some(names)) =
                (batch.column_by_name("oid"), batch.column_by_name("typname"))
            else {
                return Err(DataFusionError::Internal(
                    "pg_type has no oid or typname".into(),
                ));
            };
            let oids = cast(oids, &DataType::Int32)?;
            let names = cast(names, &DataType::Utf8)?;
            for (oid, name) in oids
                .as_primitive::<Int32Type>()
                .iter()
                .zip(names.as_string::<i32>().iter())
            {
                if let (Some(oid), Some(name)) = (oid, name) {
                    catalog.insert(oid, name.to_string());
                }
            }
        }
        Ok(TypeNames {
            named: HashMap::new(),
            catalog,
        })
    }

    fn name(&mut self, oid: i32) -> DfResult<String> {
        if let Some(name) = self.named.get(&oid) {
            return Ok(name.clone());
        }
        let formatted = format_type(oid)?;
        // format_type names the types it does not know `oid(n)`.
        let name = match self.catalog.get(&oid) {
            Some(typname) if formatted.starts_with("oid(") => match typname.strip_prefix('_') {
                Some(element) => format!("{element}[]"),
                None => typname.clone(),
            },
            _ => formatted,
        };
        self.named.insert(oid, name.clone());
        Ok(name)
    }
}

fn format_type(oid: i32) -> DfResult<String> {
    let udf = create_format_type_udf();
    let args = vec![
        ColumnarValue::Array(Arc::new(Int32Array::from(vec![oid]))),
        ColumnarValue::Scalar(ScalarValue::Int32(None)),
    ];
    let result = udf.invoke_with_args(ScalarFunctionArgs {
        args,
        arg_fields: vec![
            Arc::new(Field::new("oid", DataType::Int32, true)),
            Arc::new(Field::new("typemod", DataType::Int32, true)),
        ],
        number_rows: 1,
        return_field: Arc::new(Field::new("format_type", DataType::Utf8, true)),
        config_options: Arc::new(ConfigOptions::default()),
    })?;
    let array = result.to_array(1)?;
    let array = cast(&array, &DataType::Utf8)?;
    let names = array.as_string::<i32>();
    Ok(if names.is_null(0) {
        "-".to_string()
    } else {
        names.value(0).to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signature_of(name: &str, arguments: &str) -> Signature {
        let tables = PgCatalogStaticTables::try_new().unwrap();
        let rows = table_rows(&tables.pg_proc).unwrap();
        let type_names = TypeNames::new(&table_rows(&tables.pg_type).unwrap()).unwrap();
        let signatures = signatures(&rows, type_names).unwrap();
        for batch in &rows {
            let names = cast(batch.column_by_name("proname").unwrap(), &DataType::Utf8).unwrap();
            let oids = cast(batch.column_by_name("oid").unwrap(), &DataType::Int32).unwrap();
            for row in 0..batch.num_rows() {
                let oid = oids.as_primitive::<Int32Type>().value(row);
                if names.as_string::<i32>().value(row) == name
                    && signatures[&oid].arguments == arguments
                {
                    return signatures[&oid].clone();
                }
            }
        }
        panic!("no {name}({arguments}) in pg_proc");
    }

    #[test]
    fn signatures_read_as_postgresql_shows_them() {
        assert_eq!(
            signature_of("abs", "double precision").result,
            "double precision"
        );
        assert_eq!(
            signature_of("random", "min integer, max integer").result,
            "integer"
        );
        assert_eq!(
            signature_of("string_to_table", "text, text").result,
            "SETOF text"
        );
        let aclexplode = signature_of(
            "aclexplode",
            "acl aclitem[], OUT grantor oid, OUT grantee oid, OUT privilege_type text, \
             OUT is_grantable boolean",
        );
        assert_eq!(aclexplode.result, "SETOF record");
        assert_eq!(aclexplode.sql_body, None);
        assert_eq!(
            list("['acl', 'grantor']"),
            vec!["acl".to_string(), "grantor".to_string()]
        );
        assert_eq!(list("{i,o}"), vec!["i".to_string(), "o".to_string()]);
        assert!(list("[]").is_empty());
    }
}
