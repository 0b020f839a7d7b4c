//! `ASOF JOIN`: point-in-time correct joins.
//!
//! sqlparser parses `l ASOF JOIN r MATCH_CONDITION (l.t >= r.t) ON l.k = r.k`; DataFusion has no
//! such join. Planning goes in three steps:
//! 1. [`nest_asof_joins`] rewrites each FROM clause holding an ASOF join so that every ASOF join is
//!    alone in a parenthesised join (`((l ASOF JOIN a ...) ASOF JOIN b ...)`), which DataFusion
//!    hands to relation planners as one table factor;
//! 2. [`AsofRelationPlanner`] plans that factor into an [`AsofJoin`] logical node: both sides
//!    planned by DataFusion, the conditions resolved against them, keys and times cast to common
//!    types, and, when the right side is a feature group, its commit sequence (ties) and ttl;
//! 3. [`AsofExtensionPlanner`] turns the node into an `AsofJoinExec` (see `asof_exec`).

use std::cmp::Ordering;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{
    Column, DFSchema, DFSchemaRef, DataFusionError, Result as DfResult, ScalarValue,
};
use datafusion::datasource::{DefaultTableSource, provider_as_source};
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::expr::Cast;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::planner::{
    PlannedRelation, RelationPlanner, RelationPlannerContext, RelationPlanning,
};
use datafusion::logical_expr::type_coercion::binary::comparison_coercion;
use datafusion::logical_expr::utils::split_conjunction_owned;
use datafusion::logical_expr::{
    BinaryExpr, Expr, ExprSchemable, Extension, LogicalPlan, LogicalPlanBuilder, Operator,
    SubqueryAlias, TableScan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use datafusion::sql::sqlparser::ast::{
    self, JoinConstraint, JoinOperator, SetExpr, TableFactor, TableWithJoins,
};

use crate::asof_exec::{AsofJoinExec, MatchDirection};
use crate::error::SqlError;
use crate::relation::RelationTable;
use quiver_storage::SEQUENCE_COLUMN;

/// Rewrites every FROM clause of the statement that holds an ASOF join so that each ASOF join is
/// the only join of a nested join, left-deep: `l ASOF JOIN a .. JOIN b .. ASOF JOIN c ..` becomes
/// `(((l ASOF JOIN a ..) JOIN b ..) ASOF JOIN c ..)`, the order SQL joins associate in anyway.
pub(crate) fn nest_asof_joins(statement: &mut ast::Statement) {
    struct Nest;
    impl ast::VisitorMut for Nest {
        type Break = ();
        fn pre_visit_query(&mut self, query: &mut ast::Query) -> ControlFlow<()> {
            nest_in_set_expr(&mut query.body);
            ControlFlow::Continue(())
        }
    }
    let _ = ast::VisitMut::visit(statement, &mut Nest);
}

fn nest_in_set_expr(body: &mut SetExpr) {
    match body {
        SetExpr::Select(select) => select.from.iter_mut().for_each(nest_in_from),
        SetExpr::SetOperation { left, right, .. } => {
            nest_in_set_expr(left);
            nest_in_set_expr(right);
        }
        // Nested queries are visited on their own.
        _ => {}
    }
}

fn nest_in_from(from: &mut TableWithJoins) {
    nest_in_factor(&mut from.relation);
    for join in &mut from.joins {
        nest_in_factor(&mut join.relation);
    }
    let Some(last_asof) = from
        .joins
        .iter()
        .rposition(|join| matches!(join.join_operator, JoinOperator::AsOf { .. }))
    else {
        return;
    };
    let rest = from.joins.split_off(last_asof + 1);
    let nested = std::mem::take(&mut from.joins);
    let placeholder = TableFactor::NestedJoin {
        table_with_joins: Box::new(TableWithJoins {
            relation: from.relation.clone(),
            joins: Vec::new(),
        }),
        alias: None,
    };
    let mut relation = std::mem::replace(&mut from.relation, placeholder);
    for join in nested {
        relation = TableFactor::NestedJoin {
            table_with_joins: Box::new(TableWithJoins {
                relation,
                joins: vec![join],
            }),
            alias: None,
        };
    }
    from.relation = relation;
    from.joins = rest;
}

fn nest_in_factor(factor: &mut TableFactor) {
    if let TableFactor::NestedJoin {
        table_with_joins, ..
    } = factor
    {
        nest_in_from(table_with_joins);
    }
}

/// How the right time must relate to the left time: `l.t >= r.t` and friends, written from the
/// left side's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub(crate) enum MatchCondition {
    /// `l.t >= r.t`: the latest right row at or before the left time.
    AtOrBefore,
    /// `l.t > r.t`: the latest right row strictly before.
    Before,
    /// `l.t <= r.t`: the earliest right row at or after.
    AtOrAfter,
    /// `l.t < r.t`: the earliest right row strictly after.
    After,
}

impl MatchCondition {
    fn from_operator(op: Operator) -> Option<MatchCondition> {
        match op {
            Operator::GtEq => Some(MatchCondition::AtOrBefore),
            Operator::Gt => Some(MatchCondition::Before),
            Operator::LtEq => Some(MatchCondition::AtOrAfter),
            Operator::Lt => Some(MatchCondition::After),
            _ => None,
        }
    }

    pub(crate) fn operator(self) -> &'static str {
        match self {
            MatchCondition::AtOrBefore => ">=",
            MatchCondition::Before => ">",
            MatchCondition::AtOrAfter => "<=",
            MatchCondition::After => "<",
        }
    }

    pub(crate) fn direction(self) -> MatchDirection {
        match self {
            MatchCondition::AtOrBefore | MatchCondition::Before => MatchDirection::Backward,
            MatchCondition::AtOrAfter | MatchCondition::After => MatchDirection::Forward,
        }
    }

    /// Whether a right row whose time equals the left time matches.
    pub(crate) fn inclusive(self) -> bool {
        matches!(self, MatchCondition::AtOrBefore | MatchCondition::AtOrAfter)
    }
}

/// The logical ASOF join: every left row once, with the right row of equal keys whose time is the
/// closest satisfying the condition, or NULLs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct AsofJoin {
    pub left: LogicalPlan,
    pub right: LogicalPlan,
    /// Equal keys: (left expression, right expression), already of one type each.
    pub on: Vec<(Expr, Expr)>,
    pub left_time: Expr,
    pub right_time: Expr,
    pub condition: MatchCondition,
    /// The right side's commit order, for ties on the right time (feature groups only).
    pub right_sequence: Option<Expr>,
    /// A match older (or, looking forward, newer) than this many seconds gives NULLs.
    pub ttl_seconds: Option<i64>,
    schema: DFSchemaRef,
}

impl PartialOrd for AsofJoin {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        (
            &self.left,
            &self.right,
            &self.on,
            &self.left_time,
            &self.right_time,
            &self.condition,
            &self.right_sequence,
            &self.ttl_seconds,
        )
            .partial_cmp(&(
                &other.left,
                &other.right,
                &other.on,
                &other.left_time,
                &other.right_time,
                &other.condition,
                &other.right_sequence,
                &other.ttl_seconds,
            ))
    }
}

impl AsofJoin {
    #[allow(clippy::too_many_arguments)]
    fn try_new(
        left: LogicalPlan,
        right: LogicalPlan,
        on: Vec<(Expr, Expr)>,
        left_time: Expr,
        right_time: Expr,
        condition: MatchCondition,
        right_sequence: Option<Expr>,
        ttl_seconds: Option<i64>,
    ) -> DfResult<AsofJoin> {
        let schema = Arc::new(output_schema(&left, &right)?);
        Ok(AsofJoin {
            left,
            right,
            on,
            left_time,
            right_time,
            condition,
            right_sequence,
            ttl_seconds,
            schema,
        })
    }

    /// The right input's columns that are in the output (all but the commit sequence).
    pub(crate) fn right_output_columns(right: &DFSchema) -> Vec<usize> {
        (0..right.fields().len())
            .filter(|&i| right.field(i).name() != SEQUENCE_COLUMN)
            .collect()
    }
}

/// Left columns, then the right side's (nullable: a left row may have no match).
fn output_schema(left: &LogicalPlan, right: &LogicalPlan) -> DfResult<DFSchema> {
    let right_schema = right.schema();
    let kept = AsofJoin::right_output_columns(right_schema);
    let right_fields = kept.iter().map(|&i| {
        let (qualifier, field) = right_schema.qualified_field(i);
        (
            qualifier.cloned(),
            Arc::new(field.as_ref().clone().with_nullable(true)),
        )
    });
    let fields: Vec<_> = left
        .schema()
        .iter()
        .map(|(q, f)| (q.cloned(), f.clone()))
        .chain(right_fields)
        .collect();
    DFSchema::new_with_metadata(fields, left.schema().metadata().clone())
}

impl UserDefinedLogicalNodeCore for AsofJoin {
    fn name(&self) -> &str {
        "AsofJoin"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.left, &self.right]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    /// Left keys, right keys, left time, right time, then the right sequence if any.
    fn expressions(&self) -> Vec<Expr> {
        let mut exprs: Vec<Expr> = self.on.iter().map(|(l, _)| l.clone()).collect();
        exprs.extend(self.on.iter().map(|(_, r)| r.clone()));
        exprs.push(self.left_time.clone());
        exprs.push(self.right_time.clone());
        exprs.extend(self.right_sequence.clone());
        exprs
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "AsofJoin: match={} {} {}, on=[{}]",
            self.left_time,
            self.condition.operator(),
            self.right_time,
            self.on
                .iter()
                .map(|(l, r)| format!("{l} = {r}"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        if let Some(ttl) = self.ttl_seconds {
            write!(f, ", ttl={ttl}s")?;
        }
        Ok(())
    }

    /// Projection push-down: the inputs need the output columns asked for, plus the columns the
    /// keys, times and sequence read, so a query reading one feature of a wide group scans and
    /// sorts that feature only.
    fn necessary_children_exprs(&self, output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        let left_schema = self.left.schema();
        let right_schema = self.right.schema();
        let left_width = left_schema.fields().len();
        let right_output = AsofJoin::right_output_columns(right_schema);
        let mut left: Vec<usize> = output_columns
            .iter()
            .filter(|&&i| i < left_width)
            .copied()
            .collect();
        let mut right: Vec<usize> = output_columns
            .iter()
            .filter_map(|&i| i.checked_sub(left_width))
            .map(|i| right_output.get(i).copied())
            .collect::<Option<_>>()?;
        let left_exprs = self.on.iter().map(|(l, _)| l).chain([&self.left_time]);
        for column in left_exprs.flat_map(|e| e.column_refs()) {
            left.push(left_schema.index_of_column(column).ok()?);
        }
        let right_exprs = self
            .on
            .iter()
            .map(|(_, r)| r)
            .chain([&self.right_time])
            .chain(self.right_sequence.iter());
        for column in right_exprs.flat_map(|e| e.column_refs()) {
            right.push(right_schema.index_of_column(column).ok()?);
        }
        for indices in [&mut left, &mut right] {
            indices.sort_unstable();
            indices.dedup();
        }
        Some(vec![left, right])
    }

    fn with_exprs_and_inputs(
        &self,
        mut exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DfResult<Self> {
        let keys = self.on.len();
        let expected = 2 * keys + 2 + usize::from(self.right_sequence.is_some());
        if exprs.len() != expected || inputs.len() != 2 {
            return Err(DataFusionError::Internal(format!(
                "AsofJoin takes {expected} expressions and 2 inputs, got {} and {}",
                exprs.len(),
                inputs.len()
            )));
        }
        let right_sequence = self.right_sequence.as_ref().and_then(|_| exprs.pop());
        let right_time = exprs.pop().unwrap_or_else(|| self.right_time.clone());
        let left_time = exprs.pop().unwrap_or_else(|| self.left_time.clone());
        let right_keys = exprs.split_off(keys);
        let on = exprs.into_iter().zip(right_keys).collect();
        let right = inputs.pop().unwrap_or_else(|| self.right.clone());
        let left = inputs.pop().unwrap_or_else(|| self.left.clone());
        AsofJoin::try_new(
            left,
            right,
            on,
            left_time,
            right_time,
            self.condition,
            right_sequence,
            self.ttl_seconds,
        )
    }
}

/// Plans a nested join whose only join is an ASOF join (see [`nest_asof_joins`]).
#[derive(Debug)]
pub(crate) struct AsofRelationPlanner;

impl RelationPlanner for AsofRelationPlanner {
    fn plan_relation(
        &self,
        relation: TableFactor,
        context: &mut dyn RelationPlannerContext,
    ) -> DfResult<RelationPlanning> {
        let TableFactor::NestedJoin {
            table_with_joins,
            alias,
        } = relation
        else {
            return Ok(RelationPlanning::Original(Box::new(relation)));
        };
        let is_asof = table_with_joins.joins.len() == 1
            && matches!(
                table_with_joins.joins[0].join_operator,
                JoinOperator::AsOf { .. }
            );
        if !is_asof {
            return Ok(RelationPlanning::Original(Box::new(
                TableFactor::NestedJoin {
                    table_with_joins,
                    alias,
                },
            )));
        }
        let TableWithJoins {
            relation: left,
            mut joins,
        } = *table_with_joins;
        let Some(join) = joins.pop() else {
            return Err(DataFusionError::Internal("ASOF JOIN without a join".into()));
        };
        let JoinOperator::AsOf {
            match_condition,
            constraint,
        } = join.join_operator
        else {
            return Err(DataFusionError::Internal("not an ASOF JOIN".into()));
        };
        let left = context.plan(left)?;
        let right = with_commit_sequence(context.plan(join.relation)?)?;
        let plan = plan_asof_join(context, left, right, match_condition, constraint)?;
        Ok(RelationPlanning::Planned(Box::new(PlannedRelation {
            plan,
            alias,
        })))
    }
}

fn plan_asof_join(
    context: &mut dyn RelationPlannerContext,
    left: LogicalPlan,
    right: LogicalPlan,
    match_condition: ast::Expr,
    constraint: JoinConstraint,
) -> DfResult<LogicalPlan> {
    let both = left.schema().as_ref().clone().join(right.schema())?;
    let side = |expr: &Expr| -> Side {
        let columns = expr.column_refs();
        if columns.is_empty() {
            Side::Neither
        } else if columns.iter().all(|c| left.schema().has_column(c)) {
            Side::Left
        } else if columns.iter().all(|c| right.schema().has_column(c)) {
            Side::Right
        } else {
            Side::Neither
        }
    };

    let condition = context.sql_to_expr(match_condition, &both)?;
    let (left_time, condition, right_time) = match condition {
        Expr::BinaryExpr(BinaryExpr {
            left: a,
            op,
            right: b,
        }) => {
            let found = MatchCondition::from_operator(op);
            match (found, side(&a), side(&b)) {
                (Some(c), Side::Left, Side::Right) => (*a, c, *b),
                (Some(_), Side::Right, Side::Left) => {
                    let swapped = op.swap().and_then(MatchCondition::from_operator);
                    match swapped {
                        Some(c) => (*b, c, *a),
                        None => return Err(bad_match_condition()),
                    }
                }
                _ => return Err(bad_match_condition()),
            }
        }
        _ => return Err(bad_match_condition()),
    };

    let mut on = Vec::new();
    match constraint {
        JoinConstraint::On(expr) => {
            for equality in split_conjunction_owned(context.sql_to_expr(expr, &both)?) {
                // `ON true`: no keys, the closest row of the whole right side.
                if matches!(equality, Expr::Literal(ScalarValue::Boolean(Some(true)), _)) {
                    continue;
                }
                let Expr::BinaryExpr(BinaryExpr {
                    left: a,
                    op: Operator::Eq,
                    right: b,
                }) = equality
                else {
                    return Err(bad_on());
                };
                match (side(&a), side(&b)) {
                    (Side::Left, Side::Right) => on.push((*a, *b)),
                    (Side::Right, Side::Left) => on.push((*b, *a)),
                    _ => return Err(bad_on()),
                }
            }
        }
        JoinConstraint::Using(names) => {
            for name in names {
                let column = context.normalize_ident(
                    name.0
                        .last()
                        .and_then(|part| part.as_ident())
                        .cloned()
                        .ok_or_else(bad_on)?,
                );
                let left_column = left
                    .schema()
                    .qualified_field_with_unqualified_name(&column)?;
                let right_column = right
                    .schema()
                    .qualified_field_with_unqualified_name(&column)?;
                on.push((
                    Expr::Column(Column::from(left_column)),
                    Expr::Column(Column::from(right_column)),
                ));
            }
        }
        JoinConstraint::None => {}
        JoinConstraint::Natural => {
            return Err(user_error(SqlError::NotSupported(
                "NATURAL ASOF JOIN is not supported; name the keys with ON or USING".into(),
            )));
        }
    }

    let mut coerced_on = Vec::with_capacity(on.len());
    for (l, r) in on {
        coerced_on.push(to_common_type(l, r, &left, &right, "key")?);
    }
    let (left_time, right_time) = to_common_type(left_time, right_time, &left, &right, "time")?;
    let right_sequence = right
        .schema()
        .columns()
        .into_iter()
        .find(|c| c.name == SEQUENCE_COLUMN)
        .map(Expr::Column);
    let ttl_seconds = feature_group_table(&right)
        .and_then(|table| table.relation().feature_group())
        .and_then(|spec| spec.options.ttl_seconds);
    let node = AsofJoin::try_new(
        left,
        right,
        coerced_on,
        left_time,
        right_time,
        condition,
        right_sequence,
        ttl_seconds,
    )?;
    Ok(LogicalPlan::Extension(Extension {
        node: Arc::new(node),
    }))
}

enum Side {
    Left,
    Right,
    Neither,
}

fn user_error(error: SqlError) -> DataFusionError {
    DataFusionError::External(Box::new(error))
}

fn bad_match_condition() -> DataFusionError {
    user_error(SqlError::Syntax(
        "ASOF JOIN's MATCH_CONDITION must compare a left time with a right time by >=, >, <= or <, e.g. MATCH_CONDITION (l.ts >= r.ts)".into(),
    ))
}

fn bad_on() -> DataFusionError {
    user_error(SqlError::Syntax(
        "ASOF JOIN's ON must be equalities between a left and a right expression joined by AND, e.g. ON l.k = r.k".into(),
    ))
}

/// Casts a left and a right expression to the type both compare as.
fn to_common_type(
    l: Expr,
    r: Expr,
    left: &LogicalPlan,
    right: &LogicalPlan,
    what: &str,
) -> DfResult<(Expr, Expr)> {
    let left_type = l.get_type(left.schema())?;
    let right_type = r.get_type(right.schema())?;
    if left_type == right_type {
        return Ok((l, r));
    }
    let common = comparison_coercion(&left_type, &right_type).ok_or_else(|| {
        user_error(SqlError::DatatypeMismatch(format!(
            "ASOF JOIN cannot compare the {what} {l} ({left_type}) with {r} ({right_type})"
        )))
    })?;
    let cast = |e: Expr, from: &datafusion::arrow::datatypes::DataType| {
        if *from == common {
            e
        } else {
            Expr::Cast(Cast::new(Box::new(e), common.clone()))
        }
    };
    Ok((cast(l, &left_type), cast(r, &right_type)))
}

/// The scan a right side is (`table` or `table AS alias`), with its alias if any.
fn direct_scan(plan: &LogicalPlan) -> Option<(&TableScan, Option<&SubqueryAlias>)> {
    match plan {
        LogicalPlan::TableScan(scan) => Some((scan, None)),
        LogicalPlan::SubqueryAlias(alias) => match alias.input.as_ref() {
            LogicalPlan::TableScan(scan) => Some((scan, Some(alias))),
            _ => None,
        },
        _ => None,
    }
}

/// The feature group a right side scans directly, if it does.
fn feature_group_table(plan: &LogicalPlan) -> Option<&RelationTable> {
    let (scan, _) = direct_scan(plan)?;
    let source = scan.source.as_ref().downcast_ref::<DefaultTableSource>()?;
    source
        .table_provider
        .as_ref()
        .downcast_ref::<RelationTable>()
        .filter(|table| table.relation().feature_group().is_some())
}

/// A right side that scans a feature group is scanned with its commit sequence as well, which
/// orders rows of equal time (the later commit wins).
fn with_commit_sequence(plan: LogicalPlan) -> DfResult<LogicalPlan> {
    let (Some(table), Some((scan, alias))) = (feature_group_table(&plan), direct_scan(&plan))
    else {
        return Ok(plan);
    };
    let sequenced = provider_as_source(Arc::new(table.with_commit_sequence()));
    let rescan = LogicalPlanBuilder::scan(scan.table_name.clone(), sequenced, None)?;
    match alias {
        Some(alias) => rescan.alias(alias.alias.clone())?.build(),
        None => rescan.build(),
    }
}

/// Turns [`AsofJoin`] nodes into [`AsofJoinExec`]s.
#[derive(Debug)]
pub(crate) struct AsofExtensionPlanner;

#[async_trait]
impl ExtensionPlanner for AsofExtensionPlanner {
    async fn plan_extension(
        &self,
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session_state: &dyn Session,
        planning_context: &PhysicalPlanningContext,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        if let [input] = physical_inputs
            && let Some(logged) = crate::models::LogPredictions::plan(node, input)
        {
            return Ok(Some(logged));
        }
        let Some(join) = node.as_any().downcast_ref::<AsofJoin>() else {
            return Ok(None);
        };
        let [left_plan, right_plan] = logical_inputs else {
            return Err(DataFusionError::Internal("AsofJoin has two inputs".into()));
        };
        let [left, right] = physical_inputs else {
            return Err(DataFusionError::Internal("AsofJoin has two inputs".into()));
        };
        let on_left = |e: &Expr| {
            planner.create_physical_expr(e, left_plan.schema(), session_state, planning_context)
        };
        let on_right = |e: &Expr| {
            planner.create_physical_expr(e, right_plan.schema(), session_state, planning_context)
        };
        let keys = join
            .on
            .iter()
            .map(|(l, r)| Ok((on_left(l)?, on_right(r)?)))
            .collect::<DfResult<Vec<_>>>()?;
        let exec = AsofJoinExec::try_new(
            left.clone(),
            right.clone(),
            keys,
            on_left(&join.left_time)?,
            on_right(&join.right_time)?,
            join.condition,
            join.right_sequence.as_ref().map(on_right).transpose()?,
            join.ttl_seconds,
            AsofJoin::right_output_columns(right_plan.schema()),
        )?;
        Ok(Some(Arc::new(exec)))
    }
}

/// DataFusion's physical planner with Quiver's extension nodes.
#[derive(Debug)]
pub(crate) struct QuiverQueryPlanner;

#[async_trait]
impl QueryPlanner for QuiverQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn Session,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(AsofExtensionPlanner)])
            .create_physical_plan(logical_plan, session_state)
            .await
    }
}
