//! Result column names as PostgreSQL gives them to unnamed select-list items. DataFusion names a
//! column after its whole expression (`count(*)`, `now()`); PostgreSQL after the function
//! (`count`, `now`), which is what drivers and data frames expose as column names
//! (`df["count"]`). Applied to the statement a client runs for rows, never to stored queries
//! (feature views keep the names they were created with).

use std::collections::HashMap;

use datafusion::sql::sqlparser::ast::{self, Expr, SelectItem, SetExpr};

/// Names the unnamed items of a query's select list as PostgreSQL does, where that name is not
/// taken by another result column (DataFusion requires distinct names; PostgreSQL does not).
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
    let names: Vec<Option<String>> = select.projection.iter().map(output_name).collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for name in names.iter().flatten() {
        *counts.entry(name.as_str()).or_default() += 1;
    }
    let proposals: Vec<Option<String>> = select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::UnnamedExpr(expr) if !is_column(expr) => postgres_name(expr),
            _ => None,
        })
        .collect();
    for proposal in proposals.iter().flatten() {
        *counts.entry(proposal.as_str()).or_default() += 1;
    }
    for (item, proposal) in select.projection.iter_mut().zip(&proposals) {
        if let (SelectItem::UnnamedExpr(expr), Some(name)) = (&*item, proposal)
            && counts.get(name.as_str()) == Some(&1)
        {
            *item = SelectItem::ExprWithAlias {
                expr: expr.clone(),
                alias: ast::Ident::with_quote('"', name.clone()),
            };
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

/// The name an item already has: its alias or its column's name.
fn output_name(item: &SelectItem) -> Option<String> {
    match item {
        SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.clone()),
        SelectItem::UnnamedExpr(Expr::Identifier(ident)) => Some(ident.value.clone()),
        SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => {
            parts.last().map(|p| p.value.clone())
        }
        _ => None,
    }
}

/// PostgreSQL's name for an unnamed expression (its FigureColname), for the shapes whose name
/// is not `?column?`: a function call is named by the function, a cast by what it casts, CASE
/// `case`.
fn postgres_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Function(call) => call
            .name
            .0
            .last()
            .and_then(|part| part.as_ident())
            .map(|ident| ident.value.to_lowercase()),
        Expr::Cast { expr, .. } | Expr::Nested(expr) => match expr.as_ref() {
            Expr::Identifier(ident) => Some(ident.value.clone()),
            Expr::CompoundIdentifier(parts) => parts.last().map(|p| p.value.clone()),
            other => postgres_name(other),
        },
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
            named("SELECT count(*), now(), amount::text, CASE WHEN x THEN 1 END, x + 1 FROM t"),
            "SELECT count(*) AS \"count\", now() AS \"now\", amount::TEXT AS \"amount\", \
             CASE WHEN x THEN 1 END AS \"case\", x + 1 FROM t"
        );
    }

    #[test]
    fn a_name_another_column_has_is_left_to_the_engine() {
        assert_eq!(
            named("SELECT count(*), count(x), sum(x) FROM t"),
            "SELECT count(*), count(x), sum(x) AS \"sum\" FROM t"
        );
        assert_eq!(
            named("SELECT amount, max(amount)::text FROM t"),
            "SELECT amount, max(amount)::TEXT AS \"max\" FROM t"
        );
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
