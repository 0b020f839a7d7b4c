//! Rewrites of the PostgreSQL-isms in clients' catalog queries that datafusion-pg-catalog's
//! compatibility parser leaves, into SQL DataFusion plans. They apply to statements that read
//! `pg_catalog` only (see `parser::parse`).

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{self, ObjectName, VisitMut, VisitorMut};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// An expression from SQL text a rewrite composes; `None` if it does not parse (the rewrite is
/// then left undone and the planner reports on the original).
fn parse_expr(sql: &str) -> Option<ast::Expr> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .and_then(|mut parser| parser.parse_expr())
        .ok()
}

/// Whether a (maybe qualified) name's last part is one of these, case-insensitively.
fn named(name: &ObjectName, any_of: &[&str]) -> bool {
    name.0
        .last()
        .and_then(|part| part.as_ident())
        .is_some_and(|ident| any_of.iter().any(|n| ident.value.eq_ignore_ascii_case(n)))
}

/// The SQL keywords that name the session's user; PostgreSQL reserves them, so unquoted they are
/// never column names.
const USER_KEYWORDS: &[&str] = &["current_user", "session_user", "user", "current_role"];

/// `current_user`, `session_user`, `user` and `current_role` (keywords, not columns) become
/// calls of the session's `session_user()`, a select-list item keeping the keyword as its name.
/// Applies to every statement: BI tools and drivers ask who they are outside catalog queries too.
pub(crate) fn user_keywords_to_calls(statement: &mut ast::Statement) {
    // sqlparser reads them as identifiers or as calls without an argument list.
    let keyword = |expr: &ast::Expr| -> Option<String> {
        let ident = match expr {
            ast::Expr::Identifier(ident) => ident,
            ast::Expr::Function(call) if matches!(call.args, ast::FunctionArguments::None) => {
                match call.name.0.as_slice() {
                    [part] => part.as_ident()?,
                    _ => return None,
                }
            }
            _ => return None,
        };
        (ident.quote_style.is_none()
            && USER_KEYWORDS
                .iter()
                .any(|k| ident.value.eq_ignore_ascii_case(k)))
        .then(|| ident.value.to_lowercase())
    };
    let call = || {
        ast::Expr::Function(ast::Function {
            name: ObjectName::from(vec![ast::Ident::new("session_user")]),
            uses_odbc_syntax: false,
            parameters: ast::FunctionArguments::None,
            args: ast::FunctionArguments::List(ast::FunctionArgumentList {
                duplicate_treatment: None,
                args: Vec::new(),
                clauses: Vec::new(),
            }),
            filter: None,
            null_treatment: None,
            over: None,
            within_group: Vec::new(),
        })
    };
    let _ = ast::visit_statements_mut(statement, |statement| {
        if let ast::Statement::Query(query) = statement
            && let ast::SetExpr::Select(select) = query.body.as_mut()
        {
            for item in &mut select.projection {
                if let ast::SelectItem::UnnamedExpr(expr) = item
                    && let Some(name) = keyword(expr)
                {
                    *item = ast::SelectItem::ExprWithAlias {
                        expr: call(),
                        alias: ast::Ident::new(name),
                    };
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    let _ = ast::visit_expressions_mut(statement, |expr| {
        if keyword(expr).is_some() {
            *expr = call();
        }
        ControlFlow::<()>::Continue(())
    });
}

/// Rewrites a catalog query in place.
pub(crate) fn rewrite_catalog_query(statement: &mut ast::Statement) {
    if asyncpg_type_lookup(statement) {
        return;
    }
    array_subqueries_to_aggregates(statement);
    generate_subscripts_to_unnest(statement);
    expand_arrays_and_access_fields(statement);
    let _ = statement.visit(&mut ExistsInSelectList);
    regproc_literals_to_names(statement);
    search_path_lookups(statement);
    relation_sizes_from_pages(statement);
    aggregate_scalar_lookups(statement);
    acl_lists_from_text(statement);
}

/// The name of the recursive CTE of asyncpg's type introspection query.
const ASYNCPG_TYPE_TREE: &str = "typeinfo_tree";

/// asyncpg's type introspection, as DataFusion can plan and asyncpg can read it. asyncpg sends it
/// for every type it has no codec for (arrays above all), with the types as `$1::oid[]`, and
/// decodes its answer only with the codecs it has built in, so:
/// - a domain's base type is `typbasetype`, one step: asyncpg walks the chain with a correlated
///   recursive subquery DataFusion cannot plan, and Quiver has no CREATE DOMAIN, so its domains
///   (information_schema's) are over base types;
/// - a composite type's attribute types are text (`{23,25}`): asyncpg decodes `oid[]` and
///   `text[]` only, and an oid array is described as `int4[]`;
/// - `x::regtype::text` is `format_type(x, NULL)`, `-` for 0 as regtype gives it.
///
/// Returns whether the statement was that query (and is now the rewritten one).
fn asyncpg_type_lookup(statement: &mut ast::Statement) -> bool {
    let is_type_lookup = matches!(statement, ast::Statement::Query(query)
        if query.with.as_ref().is_some_and(|with| with.recursive
            && with.cte_tables.iter().any(|cte| cte.alias.name.value == ASYNCPG_TYPE_TREE)));
    if !is_type_lookup {
        return false;
    }
    // The types asked for: the array in the first `ti.oid = any(...)` (the recursion's start;
    // `$1::oid[]` as asyncpg sends it), which the compatibility parser has made
    // `array_contains(array, ti.oid)`.
    let is_type_oid = |expr: &ast::Expr| {
        matches!(expr, ast::Expr::CompoundIdentifier(parts)
            if parts.iter().map(|p| p.value.as_str()).eq(["ti", "oid"]))
    };
    let mut asked = None;
    let _ = ast::visit_expressions(statement, |expr| {
        let array = match expr {
            ast::Expr::AnyOp { left, right, .. } if is_type_oid(left) => Some(right.as_ref()),
            ast::Expr::Function(call) if named(&call.name, &["array_contains"]) => {
                match &call.args {
                    ast::FunctionArguments::List(list) => match list.args.as_slice() {
                        [
                            ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(array)),
                            ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(element)),
                        ] if is_type_oid(element) => Some(array),
                        _ => None,
                    },
                    _ => None,
                }
            }
            _ => None,
        };
        match array {
            Some(array) => {
                asked = Some(array.to_string());
                ControlFlow::Break(())
            }
            None => ControlFlow::Continue(()),
        }
    });
    let Some(asked) = asked else {
        return false;
    };
    let attributes = |column: &str| {
        format!(
            "CASE WHEN t.typtype = 'c' THEN (SELECT array_agg(CAST(ia.{column} AS TEXT) ORDER BY ia.attnum) \
             FROM pg_catalog.pg_attribute ia JOIN pg_catalog.pg_class c ON ia.attrelid = c.oid \
             WHERE ia.attnum > 0 AND NOT ia.attisdropped AND c.reltype = t.oid) END"
        )
    };
    // regtype's text: the type's name, `-` for no type.
    let type_name = |column: &str| {
        format!("CASE WHEN {column} = 0 THEN '-' ELSE format_type({column}, NULL) END")
    };
    let columns = "ti.oid, ti.ns, ti.name, ti.kind, ti.basetype, ti.elemtype, ti.elemdelim, \
                   ti.range_subtype, ti.attrtypoids, ti.attrnames";
    let sql = format!(
        "WITH RECURSIVE typeinfo AS (\
            SELECT t.oid AS oid, ns.nspname AS ns, t.typname AS name, t.typtype AS kind, \
                CASE WHEN t.typtype = 'd' THEN t.typbasetype END AS basetype, \
                t.typelem AS elemtype, elem_t.typdelim AS elemdelim, \
                COALESCE(range_t.rngsubtype, multirange_t.rngsubtype) AS range_subtype, \
                {attrtypoids} AS attrtypoids, {attrnames} AS attrnames \
            FROM pg_catalog.pg_type t \
            JOIN pg_catalog.pg_namespace ns ON ns.oid = t.typnamespace \
            LEFT JOIN pg_catalog.pg_type elem_t \
                ON t.typlen = -1 AND t.typelem != 0 AND t.typelem = elem_t.oid \
            LEFT JOIN pg_catalog.pg_range range_t ON t.oid = range_t.rngtypid \
            LEFT JOIN pg_catalog.pg_range multirange_t ON t.oid = multirange_t.rngmultitypid), \
         {ASYNCPG_TYPE_TREE}(oid, ns, name, kind, basetype, elemtype, elemdelim, range_subtype, \
            attrtypoids, attrnames, depth) AS (\
            SELECT {columns}, 0 FROM typeinfo ti WHERE ti.oid = any({asked}) \
            UNION ALL \
            SELECT {columns}, tt.depth + 1 FROM typeinfo ti, {ASYNCPG_TYPE_TREE} tt \
            WHERE (tt.elemtype IS NOT NULL AND ti.oid = tt.elemtype) \
               OR (tt.attrtypoids IS NOT NULL AND array_has(tt.attrtypoids, CAST(ti.oid AS TEXT))) \
               OR (tt.range_subtype IS NOT NULL AND ti.oid = tt.range_subtype) \
               OR (tt.basetype IS NOT NULL AND ti.oid = tt.basetype)) \
         SELECT DISTINCT *, {basetype_name} AS basetype_name, \
            {elemtype_name} AS elemtype_name, {range_subtype_name} AS range_subtype_name \
         FROM {ASYNCPG_TYPE_TREE} ORDER BY depth DESC",
        basetype_name = type_name("basetype"),
        elemtype_name = type_name("elemtype"),
        range_subtype_name = type_name("range_subtype"),
        attrtypoids = attributes("atttypid"),
        attrnames = attributes("attname"),
    );
    match Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&sql)
        .and_then(|mut parser| parser.parse_statement())
    {
        Ok(rewritten) => {
            *statement = rewritten;
            true
        }
        // Left as sent: the planner reports on the original.
        Err(_) => false,
    }
}

/// `array_to_string(proacl, E'\n')` (psql's `\df+`, `\l`'s access privileges) over the ACL
/// columns, which the system tables hold as text (`{a=X/b,c=X/b}`, or NULL), as the same
/// entries joined by the separator.
fn acl_lists_from_text(statement: &mut ast::Statement) {
    let _ = ast::visit_expressions_mut(statement, |expr| {
        if let ast::Expr::Function(call) = expr
            && named(&call.name, &["array_to_string"])
            && let ast::FunctionArguments::List(list) = &call.args
            && let [
                ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(acl)),
                ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(separator)),
            ] = list.args.as_slice()
            && match acl {
                ast::Expr::Identifier(column) => column.value.ends_with("acl"),
                ast::Expr::CompoundIdentifier(parts) => parts
                    .last()
                    .is_some_and(|column| column.value.ends_with("acl")),
                _ => false,
            }
            && let Some(rewritten) = parse_expr(&format!(
                "replace(btrim(CAST({acl} AS TEXT), '{{}}'), ',', {separator})"
            ))
        {
            *expr = rewritten;
        }
        ControlFlow::<()>::Continue(())
    });
}

/// `'pg_catalog.array_in'::regproc` as `'array_in'`. datafusion-pg-catalog resolves a regproc
/// literal to `(SELECT oid FROM pg_catalog.pg_proc WHERE proname = 'pg_catalog.array_in')`, but
/// its static `pg_type` keeps the type functions (`typinput`, `typoutput`, ...) by name, which is
/// what clients compare regproc literals with (pgjdbc's type cache: `typinput =
/// 'pg_catalog.array_in'::regproc`); so the literal stays the function's bare name.
fn regproc_literals_to_names(statement: &mut ast::Statement) {
    let _ = ast::visit_expressions_mut(statement, |expr| {
        if let ast::Expr::Subquery(query) = expr
            && let ast::SetExpr::Select(select) = query.body.as_ref()
            && let [from] = select.from.as_slice()
            && from.joins.is_empty()
            && let ast::TableFactor::Table { name, .. } = &from.relation
            && named(name, &["pg_proc"])
            && let Some(ast::Expr::BinaryOp {
                left,
                op: ast::BinaryOperator::Eq,
                right,
            }) = &select.selection
            && matches!(left.as_ref(), ast::Expr::Identifier(column) if column.value == "proname")
            && let ast::Expr::Value(value) = right.as_ref()
            && let ast::Value::SingleQuotedString(function) = &value.value
        {
            let bare = function.rsplit('.').next().unwrap_or(function).to_string();
            *expr = ast::Expr::Value(ast::Value::SingleQuotedString(bare).into());
        }
        ControlFlow::<()>::Continue(())
    });
}

/// `generate_subscripts(a, d)` (SQLAlchemy numbers a constraint's key columns with it, beside
/// `unnest(a)`) as `unnest(CASE WHEN d = 1 THEN range(1, cardinality(a) + 1) END)`: DataFusion
/// has unnest but not generate_subscripts, and unnests side by side in a select list in step, as
/// PostgreSQL does. Catalog arrays are one-dimensional, so another dimension has no subscripts.
fn generate_subscripts_to_unnest(statement: &mut ast::Statement) {
    let _ = ast::visit_expressions_mut(statement, |expr| {
        if let ast::Expr::Function(call) = expr
            && call.name.0.len() == 1
            && named(&call.name, &["generate_subscripts"])
            && let ast::FunctionArguments::List(list) = &call.args
            && let [
                ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(array)),
                ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(dimension)),
            ] = list.args.as_slice()
            && let Some(rewritten) = parse_expr(&format!(
                "unnest(CASE WHEN {dimension} = 1 THEN range(1, CAST(cardinality({array}) AS BIGINT) + 1) END)"
            ))
        {
            *expr = rewritten;
        }
        ControlFlow::<()>::Continue(())
    });
}

/// `pg_table_size(oid)`, `pg_relation_size(oid)` and `pg_total_relation_size(oid)` (psql's
/// `\dt+`) read the relation's `relpages`, which `pg_class` fills from the offline files'
/// sizes, as `(SELECT max(relpages * 8192) FROM pg_catalog.pg_class WHERE oid = ...)`: the
/// sizes come from the store, which a function evaluated row by row cannot wait for.
fn relation_sizes_from_pages(statement: &mut ast::Statement) {
    let _ = ast::visit_expressions_mut(statement, |expr| {
        if let ast::Expr::Function(call) = expr
            && named(
                &call.name,
                &[
                    "pg_table_size",
                    "pg_relation_size",
                    "pg_total_relation_size",
                ],
            )
            && let ast::FunctionArguments::List(list) = &call.args
            && let [ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(oid))] =
                list.args.as_slice()
            && let Some(size) = parse_expr(&format!(
                "(SELECT max(CAST(sized.relpages AS BIGINT) * {}) \
                 FROM pg_catalog.pg_class AS sized WHERE sized.oid = {oid})",
                super::objects::PAGE_BYTES
            ))
        {
            *expr = size;
        }
        ControlFlow::<()>::Continue(())
    });
}

/// datafusion-pg-catalog resolves an unqualified `'name'::regclass` with `n.nspname =
/// current_schema()`; PostgreSQL's search path also always holds `pg_catalog`, so
/// `'pg_class'::regclass` (Metabase's and SQLAlchemy's `classoid` comparisons) finds the system
/// table. The comparison becomes `n.nspname IN ('pg_catalog', current_schema())`.
fn search_path_lookups(statement: &mut ast::Statement) {
    let _ = ast::visit_expressions_mut(statement, |expr| {
        if let ast::Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::Eq,
            right,
        } = expr
            && matches!(left.as_ref(), ast::Expr::CompoundIdentifier(parts)
                if parts.last().is_some_and(|p| p.value.eq_ignore_ascii_case("nspname")))
            && matches!(right.as_ref(), ast::Expr::Function(call)
                if call.name.to_string().eq_ignore_ascii_case("current_schema"))
        {
            *expr = ast::Expr::InList {
                expr: left.clone(),
                list: vec![
                    ast::Expr::Value(ast::Value::SingleQuotedString("pg_catalog".into()).into()),
                    right.as_ref().clone(),
                ],
                negated: false,
            };
        }
        ControlFlow::<()>::Continue(())
    });
}

/// pgjdbc's key queries: `information_schema._pg_expandarray(a)`, a set-returning function of
/// (element x, position n) records, becomes `unnest(_pg_expandarray_records(a))` over our
/// function that pairs each element with its position; `(record).field` becomes
/// `record['field']`, the field access DataFusion plans.
fn expand_arrays_and_access_fields(statement: &mut ast::Statement) {
    let _ = ast::visit_expressions_mut(statement, |expr| {
        match expr {
            // datafusion-pg-catalog has already dropped the `information_schema.` qualifier.
            ast::Expr::Function(call) if named(&call.name, &["_pg_expandarray"]) => {
                let mut expand = call.clone();
                expand.name = ObjectName::from(vec![ast::Ident::new(super::EXPAND_ARRAY)]);
                let mut unnest = call.clone();
                unnest.name = ObjectName::from(vec![ast::Ident::new("unnest")]);
                unnest.args = ast::FunctionArguments::List(ast::FunctionArgumentList {
                    duplicate_treatment: None,
                    args: vec![ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(
                        ast::Expr::Function(expand),
                    ))],
                    clauses: Vec::new(),
                });
                *expr = ast::Expr::Function(unnest);
            }
            // Only `(record).field`: in `t.column[i]` the dot names a column, not a field.
            ast::Expr::CompoundFieldAccess { root, access_chain }
                if matches!(root.as_ref(), ast::Expr::Nested(_)) =>
            {
                // The parentheses only group for the dot; DataFusion unnests
                // `unnest(...)['field']` but not a parenthesised unnest.
                if let ast::Expr::Nested(inner) = root.as_ref()
                    && matches!(inner.as_ref(), ast::Expr::Function(_))
                {
                    *root = inner.clone();
                }
                for access in access_chain.iter_mut() {
                    if let ast::AccessExpr::Dot(ast::Expr::Identifier(field)) = access {
                        *access = ast::AccessExpr::Subscript(ast::Subscript::Index {
                            index: ast::Expr::Value(
                                ast::Value::SingleQuotedString(field.value.clone()).into(),
                            ),
                        });
                    }
                }
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
}

/// Aggregates that already make a subquery's one value.
const AGGREGATES: &[&str] = &[
    "count",
    "max",
    "min",
    "sum",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
];

/// A correlated scalar subquery must aggregate for DataFusion to decorrelate it, so
/// `(SELECT e FROM ... WHERE key = outer.key)` (pgjdbc's `getTypeInfo` asks pg_class whether a
/// type's relation is composite this way) becomes `(SELECT max(e) ...)`. Catalog lookups are by
/// key and find at most one row, for which the two are the same.
fn aggregate_scalar_lookups(statement: &mut ast::Statement) {
    let _ = ast::visit_expressions_mut(statement, |expr| {
        if let ast::Expr::Subquery(query) = expr
            && query.limit_clause.is_none()
            && let ast::SetExpr::Select(select) = query.body.as_mut()
            && select.selection.is_some()
            && select.having.is_none()
            && matches!(&select.group_by, ast::GroupByExpr::Expressions(e, _) if e.is_empty())
            && let [
                ast::SelectItem::UnnamedExpr(item)
                | ast::SelectItem::ExprWithAlias { expr: item, .. },
            ] = select.projection.as_mut_slice()
        {
            let aggregated =
                matches!(item, ast::Expr::Function(call) if named(&call.name, AGGREGATES));
            if !aggregated && let Some(max) = parse_expr(&format!("max({item})")) {
                *item = max;
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

/// `EXISTS (SELECT ... FROM ... WHERE ...)` in a select list (psql's `\d index`) as
/// `coalesce((SELECT count(*) FROM ... WHERE ...), 0) > 0`: DataFusion plans EXISTS only as a
/// filter, but it decorrelates a counting scalar subquery anywhere. The coalesce is there
/// because a decorrelated count of no rows is NULL rather than 0.
struct ExistsInSelectList;

impl VisitorMut for ExistsInSelectList {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut ast::Query) -> ControlFlow<()> {
        if let ast::SetExpr::Select(select) = query.body.as_mut() {
            for item in &mut select.projection {
                let (ast::SelectItem::UnnamedExpr(expr)
                | ast::SelectItem::ExprWithAlias { expr, .. }) = item
                else {
                    continue;
                };
                let _ = ast::visit_expressions_mut(expr, |expr| {
                    if let ast::Expr::Exists { subquery, negated } = expr
                        && let Some(count) = counted(subquery)
                    {
                        let comparison = if *negated { "= 0" } else { "> 0" };
                        if let Some(rewritten) =
                            parse_expr(&format!("coalesce(({count}), 0) {comparison}"))
                        {
                            *expr = ast::Expr::Nested(Box::new(rewritten));
                        }
                    }
                    ControlFlow::<()>::Continue(())
                });
            }
        }
        ControlFlow::Continue(())
    }
}

/// `SELECT ... FROM f WHERE w` as `SELECT count(*) FROM f WHERE w`, for a plain select.
fn counted(query: &ast::Query) -> Option<ast::Query> {
    let mut query = query.clone();
    if query.limit_clause.is_some() || query.fetch.is_some() || query.with.is_some() {
        return None;
    }
    query.order_by = None;
    let ast::SetExpr::Select(select) = query.body.as_mut() else {
        return None;
    };
    let grouped = !matches!(&select.group_by, ast::GroupByExpr::Expressions(e, _) if e.is_empty());
    if grouped || select.having.is_some() {
        return None;
    }
    select.distinct = None;
    select.projection = vec![ast::SelectItem::UnnamedExpr(parse_expr("count(*)")?)];
    Some(query)
}

/// PostgreSQL's `ARRAY(SELECT e FROM ...)` collects a subquery's rows into an array. DataFusion
/// has no such constructor, but `(SELECT array_agg(e) FROM ...)` is the same, except that no rows
/// give NULL rather than an empty array, which the catalog queries that use it (psql's `\d+` and
/// `\du`) print alike. Subqueries of another shape are left for the planner to refuse.
fn array_subqueries_to_aggregates(statement: &mut ast::Statement) {
    let _ = ast::visit_expressions_mut(statement, |expr| {
        if let ast::Expr::Function(call) = expr
            && call.name.0.len() == 1
            && named(&call.name, &["array"])
            && let ast::FunctionArguments::Subquery(query) = &call.args
            && let Some(array) = array_of_rows(query)
        {
            *expr = array;
        }
        ControlFlow::<()>::Continue(())
    });
}

/// The array and element alias of `FROM unnest(a) x`, the only relation of a FROM clause.
fn unnested_array(from: &[ast::TableWithJoins]) -> Option<(ast::Expr, ast::Ident)> {
    let [relation] = from else {
        return None;
    };
    if !relation.joins.is_empty() {
        return None;
    }
    let ast::TableFactor::Table {
        name,
        alias: Some(alias),
        args: Some(args),
        ..
    } = &relation.relation
    else {
        return None;
    };
    let is_unnest = named(name, &["unnest"]);
    match args.args.as_slice() {
        [ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(array))]
            if is_unnest && alias.columns.is_empty() =>
        {
            Some((array.clone(), alias.name.clone()))
        }
        _ => None,
    }
}

/// `ARRAY(SELECT e FROM ... [ORDER BY o])` as `(SELECT array_agg(e [ORDER BY o]) FROM ...)`, and
/// `ARRAY(SELECT e(x) FROM unnest(a) x)` as `array_transform(a, x -> e(x))`.
fn array_of_rows(query: &ast::Query) -> Option<ast::Expr> {
    let mut query = query.clone();
    if query.limit_clause.is_some() || query.fetch.is_some() || query.with.is_some() {
        return None;
    }
    let order_by = query.order_by.take();
    let ast::SetExpr::Select(select) = query.body.as_mut() else {
        return None;
    };
    let grouped = !matches!(&select.group_by, ast::GroupByExpr::Expressions(e, _) if e.is_empty());
    if select.distinct.is_some() || grouped || select.having.is_some() {
        return None;
    }
    let element = match select.projection.as_slice() {
        [ast::SelectItem::UnnamedExpr(expr)] | [ast::SelectItem::ExprWithAlias { expr, .. }] => {
            expr
        }
        _ => return None,
    };
    if order_by.is_none()
        && select.selection.is_none()
        && let Some((array, alias)) = unnested_array(&select.from)
    {
        // `ARRAY(SELECT e(x) FROM unnest(a) x)` maps e over a; the subquery would need a lateral
        // join, which DataFusion does not plan, but its lambda does the same.
        let lambda = ast::Expr::Lambda(ast::LambdaFunction {
            params: ast::OneOrManyWithParens::One(ast::LambdaFunctionParameter {
                name: alias,
                data_type: None,
            }),
            body: Box::new(element.clone()),
            syntax: ast::LambdaSyntax::Arrow,
        });
        let transform = ast::Function {
            name: ObjectName::from(vec![ast::Ident::new("array_transform")]),
            uses_odbc_syntax: false,
            parameters: ast::FunctionArguments::None,
            args: ast::FunctionArguments::List(ast::FunctionArgumentList {
                duplicate_treatment: None,
                args: vec![
                    ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(array)),
                    ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(lambda)),
                ],
                clauses: Vec::new(),
            }),
            filter: None,
            null_treatment: None,
            over: None,
            within_group: Vec::new(),
        };
        return Some(ast::Expr::Function(transform));
    }
    let positional = order_by.as_ref().is_some_and(|order_by| {
        matches!(&order_by.kind, ast::OrderByKind::Expressions(exprs)
            if exprs.iter().any(|e| matches!(e.expr, ast::Expr::Value(_))))
    });
    if positional {
        // `ORDER BY 1` names a select-list position, not a value to order the aggregate by.
        return None;
    }
    let aggregate = match order_by {
        Some(order_by) => format!("array_agg({element} {order_by})"),
        None => format!("array_agg({element})"),
    };
    let aggregate = parse_expr(&aggregate)?;
    select.projection = vec![ast::SelectItem::UnnamedExpr(aggregate)];
    Some(ast::Expr::Subquery(Box::new(query)))
}

#[cfg(test)]
mod tests {
    use crate::parser::{Statement, parse};

    #[test]
    fn array_subqueries_of_catalog_queries_become_aggregates() {
        let psql = "SELECT ARRAY(SELECT b.rolname FROM pg_catalog.pg_roles b \
                    WHERE b.oid = r.oid ORDER BY b.rolname) AS memberof FROM pg_catalog.pg_roles r";
        let parsed: [Statement; 1] = parse(psql).unwrap().try_into().unwrap();
        let [Statement::Sql(rewritten)] = parsed else {
            panic!("one plain statement expected");
        };
        assert_eq!(
            rewritten.to_string(),
            "SELECT (SELECT array_agg(b.rolname ORDER BY b.rolname) FROM pg_catalog.pg_roles b \
             WHERE b.oid = r.oid) AS memberof FROM pg_catalog.pg_roles r"
        );

        // A shape array_agg cannot express is left alone.
        let limited = "SELECT ARRAY(SELECT relname FROM pg_catalog.pg_class ORDER BY 1)";
        let parsed: [Statement; 1] = parse(limited).unwrap().try_into().unwrap();
        let [Statement::Sql(kept)] = parsed else {
            panic!("one plain statement expected");
        };
        assert!(
            kept.to_string().starts_with("SELECT ARRAY(SELECT"),
            "{kept}"
        );

        let unnest = "SELECT array(select 'toast.' || x from pg_catalog.unnest(c.reloptions) x) \
                      FROM pg_catalog.pg_class c";
        let parsed: [Statement; 1] = parse(unnest).unwrap().try_into().unwrap();
        let [Statement::Sql(mapped)] = parsed else {
            panic!("one plain statement expected");
        };
        assert_eq!(
            mapped.to_string(),
            "SELECT array_transform(c.reloptions, x -> 'toast.' || x) FROM pg_catalog.pg_class c"
        );
    }

    #[test]
    fn exists_in_a_select_list_becomes_a_count() {
        let psql = "SELECT NOT i.indimmediate AND EXISTS (SELECT 1 FROM pg_catalog.pg_constraint \
                    WHERE conindid = i.indexrelid) AS d FROM pg_catalog.pg_index i \
                    WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = i.indrelid)";
        let parsed: [Statement; 1] = parse(psql).unwrap().try_into().unwrap();
        let [Statement::Sql(rewritten)] = parsed else {
            panic!("one plain statement expected");
        };
        assert_eq!(
            rewritten.to_string(),
            "SELECT NOT i.indimmediate AND (coalesce((SELECT count(*) FROM pg_catalog.pg_constraint \
             WHERE conindid = i.indexrelid), 0) > 0) AS d FROM pg_catalog.pg_index i \
             WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = i.indrelid)"
        );
    }
}
