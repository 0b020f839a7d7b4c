//! Result column names as PostgreSQL gives them to unnamed select-list items. DataFusion names a
//! column after its whole expression (`count(*)`, `now()`); PostgreSQL after the function
//! (`count`, `now`), which is what drivers and data frames expose as column names
//! (`df["count"]`). Applied to the statement a client runs for rows, never to stored queries
//! (feature views keep the names they were created with).

use std::collections::HashMap;

use datafusion::sql::sqlparser::ast::{self, Expr, SelectItem, SetExpr};

/// Marks a result column name made unique for the query engine: the name shown to clients is
/// what comes before it (see [`display_name`]). A control character, so no name a user writes
/// has it.
const UNIQUE_SUFFIX: char = '\u{1f}';

/// The name clients see for a result column: PostgreSQL's, which may be another column's too.
pub fn display_name(name: &str) -> &str {
    name.split(UNIQUE_SUFFIX).next().unwrap_or(name)
}

/// Names the items of a query's select list as PostgreSQL does: an unnamed item after its
/// column, function or cast (`count(*)` is `count`), `?column?` otherwise. PostgreSQL allows
/// two result columns of one name (`SELECT n, n`, `SELECT count(*), count(x)`); the query engine
/// does not, so such columns are aliased with the name and a [`UNIQUE_SUFFIX`] that the protocol
/// layer drops ([`display_name`]).
pub(crate) fn name_like_postgres(query: &mut ast::Query) {
    let Some(select) = first_select(&mut query.body) else {
        return;
    };
    if select.projection.iter().any(|item| {
        matches!(
            item,
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
        )
    }) {
        // The names the wildcard brings are not known here.
        return;
    }
    let names: Vec<String> = select.projection.iter().map(postgres_name_of).collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for name in &names {
        *counts.entry(name.as_str()).or_default() += 1;
    }
    let mut renamed = Vec::with_capacity(names.len());
    for (position, (item, name)) in select.projection.iter().zip(&names).enumerate() {
        let unique = counts.get(name.as_str()) == Some(&1);
        renamed.push(match item {
            SelectItem::ExprWithAlias { .. } if unique => None,
            SelectItem::UnnamedExpr(expr) if unique && is_column(expr) => None,
            SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } => {
                let alias = match unique {
                    true => name.clone(),
                    false => format!("{name}{UNIQUE_SUFFIX}{position}"),
                };
                Some(SelectItem::ExprWithAlias {
                    expr: expr.clone(),
                    alias: ast::Ident::with_quote('"', alias),
                })
            }
            _ => None,
        });
    }
    for (item, renamed) in select.projection.iter_mut().zip(renamed) {
        if let Some(renamed) = renamed {
            *item = renamed;
        }
    }
}

/// The select whose items name a query's columns: the first branch of a set operation.
fn first_select(body: &mut SetExpr) -> Option<&mut ast::Select> {
    match body {
        SetExpr::Select(select) => Some(select),
        SetExpr::SetOperation { left, .. } => first_select(left),
        SetExpr::Query(query) => first_select(&mut query.body),
        _ => None,
    }
}

fn is_column(expr: &Expr) -> bool {
    matches!(expr, Expr::Identifier(_) | Expr::CompoundIdentifier(_))
}

/// The name PostgreSQL gives an item: its alias, its column's name, the name of its function or
/// cast, or `?column?`.
fn postgres_name_of(item: &SelectItem) -> String {
    match item {
        SelectItem::ExprWithAlias { alias, .. } => alias.value.clone(),
        SelectItem::UnnamedExpr(expr) => postgres_name(expr).unwrap_or_else(|| "?column?".into()),
        _ => "?column?".into(),
    }
}

/// PostgreSQL's name for an unnamed expression (its FigureColname), for the shapes whose name
/// is not `?column?`: a column by its name, a function call by the function, a cast by what it
/// casts (or, casting something nameless, by its type), CASE `case`.
fn postgres_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(ident) => Some(ident.value.clone()),
        Expr::CompoundIdentifier(parts) => parts.last().map(|p| p.value.clone()),
        Expr::Function(call) => call
            .name
            .0
            .last()
            .and_then(|part| part.as_ident())
            .map(|ident| ident.value.to_lowercase()),
        // The type internally spelled: `$1::bigint` is `int8`.
        Expr::Cast {
            expr, data_type, ..
        } => postgres_name(expr).or_else(|| {
            crate::system_catalog::builtin_type_oid(&data_type.to_string())
                .and_then(|oid| postgres_types::Type::from_oid(oid as u32))
                .map(|pg_type| pg_type.name().to_string())
        }),
        Expr::Nested(expr) => postgres_name(expr),
        Expr::Case { .. } => Some("case".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn named(sql: &str) -> String {
        let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        let ast::Statement::Query(query) = &mut statements[0] else {
            panic!("a query");
        };
        name_like_postgres(query);
        statements[0].to_string()
    }

    #[test]
    fn functions_casts_and_case_are_named_as_postgresql_names_them() {
        assert_eq!(
            named(
                "SELECT count(*), now(), amount::text, CASE WHEN x THEN 1 END, x + 1, $1::bigint FROM t"
            ),
            "SELECT count(*) AS \"count\", now() AS \"now\", amount::TEXT AS \"amount\", \
             CASE WHEN x THEN 1 END AS \"case\", x + 1 AS \"?column?\", $1::BIGINT AS \"int8\" FROM t"
        );
    }

    #[test]
    fn names_that_repeat_are_made_unique_and_shown_alike() {
        let sql = named("SELECT count(*), count(x), sum(x), n, n, 1 AS a, 2 AS a FROM t");
        let u = UNIQUE_SUFFIX;
        assert_eq!(
            sql,
            format!(
                "SELECT count(*) AS \"count{u}0\", count(x) AS \"count{u}1\", sum(x) AS \"sum\", \
                 n AS \"n{u}3\", n AS \"n{u}4\", 1 AS \"a{u}5\", 2 AS \"a{u}6\" FROM t"
            )
        );
        assert_eq!(display_name(&format!("count{u}1")), "count");
        assert_eq!(display_name("count"), "count");
        assert_eq!(
            named("SELECT amount, max(amount)::text FROM t"),
            "SELECT amount, max(amount)::TEXT AS \"max\" FROM t"
        );
    }

    #[test]
    fn wildcards_and_later_branches_keep_the_engines_names() {
        assert_eq!(
            named("SELECT count FROM t UNION SELECT count(*) FROM u"),
            "SELECT count FROM t UNION SELECT count(*) FROM u"
        );
        assert_eq!(
            named("SELECT *, count(*) FROM t"),
            "SELECT *, count(*) FROM t"
        );
    }
}
