//! Feature views: named, versioned queries over feature groups.
//!
//! A view is stored as SQL text in which every feature group is named by its exact version
//! (`transactions_1`, never `transactions`), so a later version of a group never changes what an
//! existing view returns. Queries that name a view get its text inlined as a derived table before
//! planning, the way PostgreSQL expands a view's rewrite rule; views are never planned apart from
//! the query that reads them.

use std::collections::HashSet;
use std::ops::ControlFlow;

use chrono::Utc;
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::sql::sqlparser::ast::{
    self, Ident, ObjectName, ObjectNamePart, TableAlias, TableFactor, VisitMut, VisitorMut,
};
use quiver_catalog::{
    CatalogCommand, CatalogState, FeatureView, Oid, ResultColumn, Transform, TransformKind,
};

use crate::ddl::{already_exists, oids_to_drop, version_to_create};
use crate::error::{SqlError, SqlResult};
use crate::parser::{self, CreateFeatureView, OptionValue, normalize_ident};
use crate::project_catalog::PUBLIC_SCHEMA;
use crate::session::{CommandTag, Session};

/// `CREATE FEATURE VIEW`.
pub async fn create(session: &Session, create: &CreateFeatureView) -> SqlResult<CommandTag> {
    let tag = CommandTag::new("CREATE FEATURE VIEW");
    let engine = session.engine();
    let project = session.project();
    let snapshot = engine.catalog.snapshot();
    let existing: Vec<u32> = snapshot
        .feature_view_versions(project, &create.name)
        .map(|v| v.version)
        .collect();
    if create.if_not_exists && already_exists(create.version, &existing) {
        return Ok(tag);
    }
    let version = version_to_create("feature view", &create.name, create.version, &existing)?;
    let mut query = create.query.clone();
    let depends_on = pin_versions(&mut query, &snapshot, project)?;
    let plan = session
        .plan_sql_statement(ast::Statement::Query(query.clone()))
        .await?;
    let schema = plan.schema().as_arrow().clone();
    let columns = result_columns(&schema, &format!("feature view \"{}\"", create.name))?;
    let mut label = None;
    let mut description = None;
    let mut transforms = Vec::new();
    for option in &create.options {
        let text = match &option.value {
            OptionValue::String(text) => text.clone(),
            other => {
                return Err(SqlError::InvalidParameter(format!(
                    "option \"{}\" takes a string, found {other}",
                    option.key
                )));
            }
        };
        match option.key.as_str() {
            "label" => label = Some(text),
            "description" => description = Some(text),
            "transform" => transforms = parse_transforms(&text)?,
            other => {
                return Err(SqlError::InvalidParameter(format!(
                    "unknown feature view option \"{other}\" (label, description and transform are)"
                )));
            }
        }
    }
    let column_of = |name: &str, role: &str| {
        schema.field_with_name(name).map_err(|_| {
            SqlError::UndefinedColumn(format!(
                "{role} column \"{name}\" is not a column of feature view \"{}\" (its columns: {})",
                create.name,
                column_list(&columns)
            ))
        })
    };
    if let Some(label) = &label {
        column_of(label, "label")?;
    }
    for transform in &transforms {
        let field = column_of(&transform.column, "transformed")?;
        let numeric = field.data_type().is_numeric();
        let fits = match transform.kind {
            TransformKind::StandardScaler | TransformKind::MinMaxScaler => numeric,
            TransformKind::OneHot | TransformKind::LabelEncoder => {
                !field.data_type().is_floating() && !field.data_type().is_nested()
            }
        };
        if !fits {
            return Err(SqlError::DatatypeMismatch(format!(
                "{} cannot transform column \"{}\" of type {}: {}",
                transform.kind.sql_name(),
                transform.column,
                pg_type_name(field.data_type()),
                if numeric {
                    "categories need integer, text or boolean values"
                } else {
                    "scalers need a numeric column"
                }
            )));
        }
        if label.as_deref() == Some(transform.column.as_str()) {
            return Err(SqlError::InvalidParameter(format!(
                "the label column \"{}\" cannot be transformed",
                transform.column
            )));
        }
    }
    engine
        .change_catalog(CatalogCommand::CreateFeatureView(FeatureView {
            oid: 0,
            project: project.to_string(),
            name: create.name.clone(),
            version,
            query: query.to_string(),
            columns,
            label,
            transforms,
            description,
            depends_on,
            owner: session.user().to_string(),
            created_at: Utc::now(),
        }))
        .await?;
    Ok(tag)
}

/// `DROP FEATURE VIEW name [VERSION n]`: one version, or all of them.
pub async fn drop(
    session: &Session,
    name: &str,
    version: Option<u32>,
    if_exists: bool,
) -> SqlResult<CommandTag> {
    let tag = CommandTag::new("DROP FEATURE VIEW");
    let engine = session.engine();
    let snapshot = engine.catalog.snapshot();
    let project = session.project();
    let oids = oids_to_drop(
        "feature view",
        name,
        version.map(|v| snapshot.feature_view(project, name, Some(v))),
        || {
            snapshot
                .feature_view_versions(project, name)
                .map(|v| v.oid)
                .collect()
        },
        |view| view.oid,
        if_exists,
    )?;
    if oids.is_empty() {
        return Ok(tag);
    }
    engine
        .change_catalog(CatalogCommand::DropFeatureViews { oids })
        .await?;
    Ok(tag)
}

/// Parses `'amount:standard_scaler, category:one_hot'`.
fn parse_transforms(text: &str) -> SqlResult<Vec<Transform>> {
    let mut transforms: Vec<Transform> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((column, kind)) = item.split_once(':') else {
            return Err(SqlError::InvalidParameter(format!(
                "transform \"{item}\" is not of the form column:transformation"
            )));
        };
        let column = column.trim().to_string();
        let kind = kind.trim();
        let Some((_, kind)) = TransformKind::ALL
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(kind))
        else {
            return Err(SqlError::InvalidParameter(format!(
                "unknown transformation \"{kind}\" for column \"{column}\" (standard_scaler, min_max_scaler, one_hot and label_encoder are)"
            )));
        };
        if transforms.iter().any(|t| t.column == column) {
            return Err(SqlError::InvalidParameter(format!(
                "column \"{column}\" has more than one transformation"
            )));
        }
        transforms.push(Transform {
            column,
            kind: *kind,
        });
    }
    Ok(transforms)
}

/// The columns of a query's result, as the catalog lists them; names must be unique since files
/// and feature vectors address columns by name.
pub(crate) fn result_columns(schema: &Schema, what: &str) -> SqlResult<Vec<ResultColumn>> {
    let mut seen = HashSet::new();
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        if !seen.insert(field.name().as_str()) {
            return Err(SqlError::Duplicate(format!(
                "{what} has two columns named \"{}\"; give them distinct names with AS",
                field.name()
            )));
        }
        columns.push(ResultColumn {
            name: field.name().clone(),
            type_name: pg_type_name(field.data_type()),
        });
    }
    Ok(columns)
}

/// The PostgreSQL name of the type a column of this Arrow type has on the wire.
pub(crate) fn pg_type_name(data_type: &DataType) -> String {
    arrow_pg::datatypes::into_pg_type(data_type)
        .map(|t| t.name().to_string())
        .unwrap_or_else(|_| data_type.to_string())
}

fn column_list(columns: &[ResultColumn]) -> String {
    columns
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Names every feature group a query reads by its exact version, inlines the feature views it
/// reads, and returns the relations it reads.
pub(crate) fn pin_versions(
    query: &mut ast::Query,
    snapshot: &CatalogState,
    project: &str,
) -> SqlResult<Vec<Oid>> {
    let mut rewriter = Rewriter {
        snapshot,
        project,
        pin: true,
        ctes: HashSet::new(),
        read: Vec::new(),
    };
    rewrite(query, &mut rewriter)?;
    Ok(rewriter.read)
}

/// Replaces every feature view a statement names by its query.
pub(crate) fn inline_views(
    statement: &mut ast::Statement,
    snapshot: &CatalogState,
    project: &str,
) -> SqlResult<()> {
    if snapshot.feature_views(project).next().is_none() {
        return Ok(());
    }
    let mut rewriter = Rewriter {
        snapshot,
        project,
        pin: false,
        ctes: HashSet::new(),
        read: Vec::new(),
    };
    rewrite(statement, &mut rewriter)
}

/// Runs an AST rewriter that stops at the first error.
pub(crate) fn rewrite(
    node: &mut impl VisitMut,
    rewriter: &mut impl VisitorMut<Break = SqlError>,
) -> SqlResult<()> {
    match node.visit(rewriter) {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

struct Rewriter<'a> {
    snapshot: &'a CatalogState,
    project: &'a str,
    /// Also rename feature groups to their exact versions and collect what is read.
    pin: bool,
    /// Names of common table expressions seen so far: they shadow views and relations.
    ctes: HashSet<String>,
    read: Vec<Oid>,
}

impl VisitorMut for Rewriter<'_> {
    type Break = SqlError;

    fn pre_visit_query(&mut self, query: &mut ast::Query) -> ControlFlow<SqlError> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.ctes.insert(normalize_ident(&cte.alias.name));
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<SqlError> {
        let TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } = factor
        else {
            return ControlFlow::Continue(());
        };
        let Some(relation_name) = public_name(name) else {
            return ControlFlow::Continue(());
        };
        if self.ctes.contains(&relation_name) {
            return ControlFlow::Continue(());
        }
        if let Some(relation) = self.snapshot.resolve(self.project, &relation_name) {
            if self.pin {
                if !self.read.contains(&relation.oid) {
                    self.read.push(relation.oid);
                }
                let exact = relation.qualified_name();
                if exact != relation_name {
                    // An alias keeps the name the rest of the query qualifies columns with.
                    if alias.is_none() {
                        *alias = Some(table_alias(&relation_name));
                    }
                    *name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new(exact))]);
                }
            }
            return ControlFlow::Continue(());
        }
        let Some(view) = self
            .snapshot
            .resolve_feature_view(self.project, &relation_name)
        else {
            return ControlFlow::Continue(());
        };
        let subquery = match view_query(view) {
            Ok(query) => query,
            Err(e) => return ControlFlow::Break(e),
        };
        if self.pin {
            for oid in &view.depends_on {
                if !self.read.contains(oid) {
                    self.read.push(*oid);
                }
            }
        }
        let alias = alias.take().unwrap_or_else(|| table_alias(&relation_name));
        *factor = TableFactor::Derived {
            lateral: false,
            subquery,
            alias: Some(alias),
            sample: None,
        };
        ControlFlow::Continue(())
    }
}

/// A view as a DataFusion view table, for listings (pg_catalog, information_schema): its query
/// planned in a context of its own.
pub(crate) async fn view_table(
    engine: &std::sync::Arc<crate::Engine>,
    project: &str,
    view: &FeatureView,
) -> SqlResult<std::sync::Arc<dyn datafusion::catalog::TableProvider>> {
    // A stored query runs with its definer's view of the catalog, as a PostgreSQL view does.
    let context = crate::session::build_context(engine, project, &view.owner, Default::default())?;
    let plan =
        crate::session::plan_in_context(&context, ast::Statement::Query(view_query(view)?)).await?;
    Ok(std::sync::Arc::new(datafusion::datasource::ViewTable::new(
        plan,
        Some(view.query.clone()),
    )))
}

/// The stored query of a view, parsed again.
pub(crate) fn view_query(view: &FeatureView) -> SqlResult<Box<ast::Query>> {
    let statements = parser::parse(&view.query).map_err(|e| {
        SqlError::Internal(format!(
            "the stored query of feature view \"{}\" does not parse: {e}",
            view.qualified_name()
        ))
    })?;
    match <[parser::Statement; 1]>::try_from(statements) {
        Ok([parser::Statement::Sql(statement)]) => match *statement {
            ast::Statement::Query(query) => Ok(query),
            other => Err(SqlError::Internal(format!(
                "the stored query of feature view \"{}\" is not a query: {other}",
                view.qualified_name()
            ))),
        },
        _ => Err(SqlError::Internal(format!(
            "the stored query of feature view \"{}\" is not one query",
            view.qualified_name()
        ))),
    }
}

fn table_alias(name: &str) -> TableAlias {
    TableAlias {
        explicit: true,
        name: Ident::with_quote('"', name),
        columns: vec![],
        at: None,
    }
}

/// The name of a relation in schema `public`: `x` or `public.x`; `None` for other schemas.
fn public_name(name: &ObjectName) -> Option<String> {
    let parts: Vec<&Ident> = name.0.iter().filter_map(|p| p.as_ident()).collect();
    match parts.as_slice() {
        [single] => Some(normalize_ident(single)),
        [schema, table] if normalize_ident(schema) == PUBLIC_SCHEMA => Some(normalize_ident(table)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transforms_parse_and_bad_ones_are_named() {
        let transforms = parse_transforms("amount:standard_scaler, category : ONE_HOT").unwrap();
        assert_eq!(
            transforms,
            vec![
                Transform {
                    column: "amount".into(),
                    kind: TransformKind::StandardScaler
                },
                Transform {
                    column: "category".into(),
                    kind: TransformKind::OneHot
                },
            ]
        );
        for bad in ["amount", "amount:log", "a:one_hot, a:label_encoder"] {
            assert!(
                matches!(parse_transforms(bad), Err(SqlError::InvalidParameter(_))),
                "{bad}"
            );
        }
    }
}
