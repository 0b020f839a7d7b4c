//! `feature_vector(view, key...)` and `feature_vectors(view, keys)`: a feature view served from the
//! online store.
//!
//! The view's own query is evaluated with two substitutions, so serving computes exactly what
//! training computed: its left relation (the spine) becomes one row per requested key, with the
//! key given, the spine's time the current time ([`CLOCK`]) and its other columns NULL (or, when the spine is a feature
//! group, that group's online rows for the keys); every feature group joined to it becomes its
//! online projection restricted to the keys, which the online table answers with point lookups.
//! The label is left out, and the transformations fitted on the view's latest training dataset are
//! applied by the same SQL that wrote the training data.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    self, Expr, FunctionArg, FunctionArgExpr, JoinConstraint, JoinOperator, SetExpr, TableAlias,
    TableFactor, VisitorMut,
};
use quiver_catalog::{CatalogState, DatasetSource, FeatureView, Relation};

use crate::error::{SqlError, SqlResult};
use crate::feature_view::view_query;
use crate::online::ONLINE_SCHEMA;
use crate::parser::{normalize_ident, quote_ident};
use crate::training_dataset::transformed_columns;

/// The function serving queries read the time with: the current time as a timestamp without
/// time zone (UTC), as `now()` gives it by default, but read as each request runs. `now()` is the
/// time of the statement, fixed when the statement is optimised, and a prepared serving
/// statement is optimised once, when it is prepared, for all its executions.
pub(crate) const CLOCK: &str = "quiver_now";

/// [`CLOCK`], for a session's context.
pub(crate) fn clock() -> datafusion::logical_expr::ScalarUDF {
    use datafusion::arrow::datatypes::{DataType, TimeUnit};
    use datafusion::common::ScalarValue;
    use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
    create_udf(
        CLOCK,
        vec![],
        DataType::Timestamp(TimeUnit::Nanosecond, None),
        Volatility::Volatile,
        std::sync::Arc::new(|_: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(ScalarValue::TimestampNanosecond(
                chrono::Utc::now().timestamp_nanos_opt(),
                None,
            )))
        }),
    )
}

/// Rewrites every `feature_vector(...)` / `feature_vectors(...)` in a statement into a derived
/// table computing it.
pub(crate) fn rewrite_serving_calls(
    statement: &mut ast::Statement,
    snapshot: &CatalogState,
    project: &str,
) -> SqlResult<()> {
    crate::feature_view::rewrite(statement, &mut ServingCalls { snapshot, project })
}

struct ServingCalls<'a> {
    snapshot: &'a CatalogState,
    project: &'a str,
}

/// The keys asked for: one key's columns (as SQL), or an array of single-column keys.
pub(crate) enum Keys {
    One(Vec<String>),
    Many(String),
}

impl VisitorMut for ServingCalls<'_> {
    type Break = SqlError;

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<SqlError> {
        expand_table_function(
            factor,
            &["feature_vector", "feature_vectors"],
            |function, args| self.query_for(function == "feature_vectors", args),
        )
    }
}

/// A call's arguments when all are plain expressions (no names, no `*`).
pub(crate) fn unnamed_args(args: &[FunctionArg]) -> Option<Vec<&Expr>> {
    args.iter()
        .map(|arg| match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(expr)) => Some(expr),
            _ => None,
        })
        .collect()
}

/// Whether a statement calls one of `functions` in a FROM clause.
pub(crate) fn calls_table_function(statement: &ast::Statement, functions: &[&str]) -> bool {
    struct FindCall<'a>(&'a [&'a str], bool);
    impl ast::Visitor for FindCall<'_> {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            if let TableFactor::Table {
                name,
                args: Some(_),
                ..
            } = factor
                && let [single] = name.0.as_slice()
                && single
                    .as_ident()
                    .map(normalize_ident)
                    .is_some_and(|f| self.0.contains(&f.as_str()))
            {
                self.1 = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    let mut finder = FindCall(functions, false);
    let _ = ast::Visit::visit(statement, &mut finder);
    finder.1
}

/// Replaces a FROM item calling one of `functions` with the derived table `expand` builds from
/// the function's name and arguments, aliased as written or else by the function's name.
pub(crate) fn expand_table_function(
    factor: &mut TableFactor,
    functions: &[&str],
    expand: impl FnOnce(&str, &[FunctionArg]) -> SqlResult<Box<ast::Query>>,
) -> ControlFlow<SqlError> {
    let TableFactor::Table {
        name,
        alias,
        args: Some(args),
        ..
    } = factor
    else {
        return ControlFlow::Continue(());
    };
    let Some(function) = (match name.0.as_slice() {
        [single] => single.as_ident().map(normalize_ident),
        _ => None,
    })
    .filter(|f| functions.contains(&f.as_str())) else {
        return ControlFlow::Continue(());
    };
    let query = match expand(&function, &args.args) {
        Ok(query) => query,
        Err(e) => return ControlFlow::Break(e),
    };
    let alias = alias.take().unwrap_or_else(|| TableAlias {
        explicit: true,
        name: ast::Ident::new(function),
        columns: vec![],
        at: None,
    });
    *factor = TableFactor::Derived {
        lateral: false,
        subquery: query,
        alias: Some(alias),
        sample: None,
    };
    ControlFlow::Continue(())
}

impl ServingCalls<'_> {
    fn query_for(&self, many: bool, args: &[FunctionArg]) -> SqlResult<Box<ast::Query>> {
        let usage = || {
            SqlError::InvalidParameter(if many {
                "feature_vectors takes a feature view's name and an array of keys: feature_vectors('fraud', ARRAY[1, 2])".into()
            } else {
                "feature_vector takes a feature view's name and its key: feature_vector('fraud', 42)".into()
            })
        };
        let exprs = unnamed_args(args).ok_or_else(usage)?;
        let Some((Expr::Value(view_name), keys)) = exprs.split_first().map(|(v, k)| (*v, k)) else {
            return Err(usage());
        };
        let ast::Value::SingleQuotedString(view_name) = &view_name.value else {
            return Err(usage());
        };
        let keys = match (many, keys) {
            (_, []) => return Err(usage()),
            (true, [array]) => Keys::Many(array.to_string()),
            (true, _) => return Err(usage()),
            (false, keys) => Keys::One(keys.iter().map(|k| k.to_string()).collect()),
        };
        let view = self
            .snapshot
            .resolve_feature_view(self.project, view_name)
            .ok_or_else(|| {
                SqlError::UndefinedTable(format!("feature view \"{view_name}\" does not exist"))
            })?;
        let fitted = fitted_transforms(self.snapshot, self.project, view)?;
        serving_query(self.snapshot, self.project, view, &keys, &fitted)
    }
}

/// One relation of the view's FROM clause, as written.
struct Joined {
    relation: Relation,
    alias: String,
}

/// The feature vectors of `view` for `keys`, transformed by `fitted`.
pub(crate) fn serving_query(
    snapshot: &CatalogState,
    project: &str,
    view: &FeatureView,
    keys: &Keys,
    fitted: &[quiver_catalog::FittedTransform],
) -> SqlResult<Box<ast::Query>> {
    let unservable = |why: &str| {
        SqlError::NotSupported(format!(
            "feature view \"{}\" cannot be served from the online store: {why}",
            view.qualified_name()
        ))
    };
    let mut query = view_query(view)?;
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Err(unservable("its query is not a single SELECT"));
    };
    let [from] = select.from.as_mut_slice() else {
        return Err(unservable("it reads more than one FROM item"));
    };
    let spine = joined(snapshot, project, &from.relation)
        .ok_or_else(|| unservable("its first relation is not a feature group or table"))?;
    // Equalities between a spine column and a joined relation's column, per join, and the spine's
    // time in the first ASOF join's condition.
    let mut equalities: Vec<Vec<(String, String)>> = Vec::new();
    let mut spine_time = None;
    for join in &from.joins {
        let right = alias_of(&join.relation);
        let (constraint, condition) = match &join.join_operator {
            JoinOperator::AsOf {
                match_condition,
                constraint,
            } => (constraint, Some(match_condition)),
            JoinOperator::Join(c)
            | JoinOperator::Inner(c)
            | JoinOperator::Left(c)
            | JoinOperator::LeftOuter(c) => (c, None),
            _ => {
                return Err(unservable(
                    "it joins with an operator other than ASOF, INNER or LEFT",
                ));
            }
        };
        let mut pairs = Vec::new();
        match constraint {
            JoinConstraint::On(expr) => {
                collect_equalities(expr, &spine.alias, right.as_deref(), &mut pairs)
            }
            JoinConstraint::Using(columns) => {
                for column in columns {
                    let name = crate::parser::object_name_to_string(column);
                    pairs.push((name.clone(), name));
                }
            }
            _ => {}
        }
        if spine_time.is_none()
            && let Some(Expr::BinaryOp { left, right: r, .. }) = condition
        {
            spine_time = [left.as_ref(), r.as_ref()]
                .into_iter()
                .find_map(|side| column_of(side, &spine.alias));
        }
        equalities.push(pairs);
    }
    let spine_keys: Vec<String> = match spine.relation.feature_group() {
        Some(_) => spine.relation.primary_key.clone(),
        None => {
            let mut columns: Vec<String> = Vec::new();
            for (column, _) in equalities.iter().flatten() {
                if !columns.contains(column) {
                    columns.push(column.clone());
                }
            }
            columns
        }
    };
    if spine_keys.is_empty() {
        return Err(unservable(
            "it reads no feature group whose key the request could give",
        ));
    }
    let key_exprs: Vec<String> = match keys {
        Keys::One(values) => {
            if values.len() != spine_keys.len() {
                return Err(SqlError::InvalidParameter(format!(
                    "feature view \"{}\" is served by its key ({}): {} value(s) expected, {} given",
                    view.qualified_name(),
                    spine_keys.join(", "),
                    spine_keys.len(),
                    values.len()
                )));
            }
            values.clone()
        }
        Keys::Many(_) if spine_keys.len() != 1 => {
            return Err(SqlError::NotSupported(format!(
                "feature_vectors takes an array of single-column keys; feature view \"{}\" has the key ({}): call feature_vector per key",
                view.qualified_name(),
                spine_keys.join(", ")
            )));
        }
        Keys::Many(_) => vec!["__quiver_keys.k".to_string()],
    };
    let key_filter = |column: &str, index: usize| match keys {
        Keys::One(values) => format!("{} = {}", quote_ident(column), values[index]),
        Keys::Many(array) => format!("{} = ANY({array})", quote_ident(column)),
    };
    // The spine: the requested keys.
    from.relation = match spine.relation.feature_group() {
        Some(_) => {
            let filters: Vec<String> = spine_keys
                .iter()
                .enumerate()
                .map(|(i, k)| key_filter(k, i))
                .collect();
            online_lookup(&spine, &filters, view)?
        }
        None => {
            let columns: Vec<String> = spine
                .relation
                .columns
                .iter()
                .map(|c| {
                    let value = match spine_keys.iter().position(|k| k == &c.name) {
                        Some(i) => key_exprs[i].clone(),
                        None if spine_time.as_deref() == Some(c.name.as_str()) => {
                            format!("{CLOCK}()")
                        }
                        None => "NULL".to_string(),
                    };
                    format!(
                        "CAST({value} AS {}) AS {}",
                        c.data_type.sql_name(),
                        quote_ident(&c.name)
                    )
                })
                .collect();
            let source = match keys {
                Keys::One(_) => String::new(),
                // Typed, so that a parameter ($1) gets the key's array type.
                Keys::Many(array) => {
                    let key_type = spine
                        .relation
                        .column(&spine_keys[0])
                        .map(|c| c.data_type.sql_name())
                        .unwrap_or_else(|| "bigint".into());
                    format!(" FROM unnest(CAST({array} AS {key_type}[])) AS __quiver_keys(k)")
                }
            };
            derived(
                &format!("SELECT {}{source}", columns.join(", ")),
                &spine.alias,
            )?
        }
    };
    // Every joined relation: its online rows for the keys.
    for (join, pairs) in from.joins.iter_mut().zip(&equalities) {
        let right = joined(snapshot, project, &join.relation)
            .ok_or_else(|| unservable("it joins a relation that is not a feature group"))?;
        let filters: Vec<String> = pairs
            .iter()
            .filter_map(|(spine_column, right_column)| {
                spine_keys
                    .iter()
                    .position(|k| k == spine_column)
                    .map(|i| key_filter(right_column, i))
            })
            .collect();
        join.relation = online_lookup(&right, &filters, view)?;
    }
    let columns: Vec<String> = view
        .columns
        .iter()
        .map(|c| c.name.clone())
        .filter(|c| view.label.as_deref() != Some(c.as_str()))
        .collect();
    let items: Vec<String> = transformed_columns(&columns, fitted)?
        .into_iter()
        .map(|(sql, name)| format!("{sql} AS {}", quote_ident(&name)))
        .collect();
    parse_query(&format!(
        "SELECT {} FROM ({query}) AS __quiver_view",
        items.join(", ")
    ))
}

/// The transformations fitted on the latest training dataset of this view version.
fn fitted_transforms(
    snapshot: &CatalogState,
    project: &str,
    view: &FeatureView,
) -> SqlResult<Vec<quiver_catalog::FittedTransform>> {
    if view.transforms.is_empty() {
        return Ok(Vec::new());
    }
    snapshot
        .training_datasets(project)
        .filter(|d| {
            d.source
                == DatasetSource::FeatureView {
                    name: view.name.clone(),
                    version: view.version,
                }
        })
        .max_by_key(|d| (d.created_at, d.oid))
        .map(|d| d.transforms.clone())
        .ok_or_else(|| {
            SqlError::PrerequisiteState(format!(
                "feature view \"{}\" has transformations, which are fitted when a training dataset is created from it; create one first",
                view.qualified_name()
            ))
        })
}

/// `(SELECT * FROM online.<group> WHERE filters) AS alias`, for an online feature group.
fn online_lookup(
    joined: &Joined,
    filters: &[String],
    view: &FeatureView,
) -> SqlResult<TableFactor> {
    let Some(spec) = joined.relation.feature_group() else {
        return Err(SqlError::NotSupported(format!(
            "feature view \"{}\" reads table \"{}\", which has no online store; only feature groups are served",
            view.qualified_name(),
            joined.relation.name
        )));
    };
    if !spec.options.online {
        return Err(SqlError::PrerequisiteState(format!(
            "feature view \"{}\" reads feature group \"{}\", which is not online: ALTER FEATURE GROUP {} VERSION {} SET (online = true)",
            view.qualified_name(),
            joined.relation.qualified_name(),
            joined.relation.name,
            spec.version
        )));
    }
    let filter = if filters.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", filters.join(" AND "))
    };
    derived(
        &format!(
            "SELECT * FROM {ONLINE_SCHEMA}.{}{filter}",
            quote_ident(&joined.relation.qualified_name())
        ),
        &joined.alias,
    )
}

fn derived(sql: &str, alias: &str) -> SqlResult<TableFactor> {
    Ok(TableFactor::Derived {
        lateral: false,
        subquery: parse_query(sql)?,
        alias: Some(TableAlias {
            explicit: true,
            name: ast::Ident::with_quote('"', alias),
            columns: vec![],
            at: None,
        }),
        sample: None,
    })
}

pub(crate) fn parse_query(sql: &str) -> SqlResult<Box<ast::Query>> {
    let statements = crate::parser::parse(sql).map_err(|e| SqlError::Syntax(e.to_string()))?;
    match <[crate::parser::Statement; 1]>::try_from(statements) {
        Ok([crate::parser::Statement::Sql(statement)]) => match *statement {
            ast::Statement::Query(query) => Ok(query),
            _ => Err(SqlError::Internal(format!("not a query: {sql}"))),
        },
        _ => Err(SqlError::Internal(format!("not one query: {sql}"))),
    }
}

/// A FROM item naming a relation of the project, with the name the query qualifies it by.
fn joined(snapshot: &CatalogState, project: &str, factor: &TableFactor) -> Option<Joined> {
    let TableFactor::Table {
        name, args: None, ..
    } = factor
    else {
        return None;
    };
    let relation = snapshot
        .resolve(project, &crate::parser::object_name_to_string(name))?
        .clone();
    Some(Joined {
        relation,
        alias: alias_of(factor)?,
    })
}

/// The name a query qualifies a relation's columns with: its alias, or its name.
fn alias_of(factor: &TableFactor) -> Option<String> {
    match factor {
        TableFactor::Table { name, alias, .. } => Some(
            alias
                .as_ref()
                .map(|a| normalize_ident(&a.name))
                .unwrap_or_else(|| crate::parser::object_name_to_string(name)),
        ),
        _ => None,
    }
}

/// The column a `qualifier.column` expression names, when the qualifier is `alias`.
fn column_of(expr: &Expr, alias: &str) -> Option<String> {
    match expr {
        Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
            (normalize_ident(&parts[0]) == alias).then(|| normalize_ident(&parts[1]))
        }
        Expr::Nested(inner) => column_of(inner, alias),
        _ => None,
    }
}

/// The `spine.a = right.b` conjuncts of an ON clause, as (a, b).
fn collect_equalities(
    expr: &Expr,
    spine: &str,
    right: Option<&str>,
    pairs: &mut Vec<(String, String)>,
) {
    match expr {
        Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::And,
            right: r,
        } => {
            collect_equalities(left, spine, right, pairs);
            collect_equalities(r, spine, right, pairs);
        }
        Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::Eq,
            right: r,
        } => {
            let Some(right) = right else {
                return;
            };
            if let (Some(a), Some(b)) = (column_of(left, spine), column_of(r, right)) {
                pairs.push((a, b));
            } else if let (Some(a), Some(b)) = (column_of(r, spine), column_of(left, right)) {
                pairs.push((a, b));
            }
        }
        Expr::Nested(inner) => collect_equalities(inner, spine, right, pairs),
        _ => {}
    }
}
