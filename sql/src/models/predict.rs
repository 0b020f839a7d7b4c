//! `predict(model, version, input...)`: batch scoring in any query.
//!
//! A call is rewritten before planning into `quiver_predict(<model oid>, transformed inputs...)`.
//! The inputs are transformed by the same SQL that wrote the model's training data
//! (`transformed_columns`), with each input column replaced by the argument given for it, so a
//! row is scored exactly as the model saw its training rows. `quiver_predict` is a vectorised UDF
//! over the model's fitted artifact, loaded into the engine's cache before planning.

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Float64Array};
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::sql::sqlparser::ast::{self, Expr, FunctionArguments, VisitorMut};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use quiver_catalog::{CatalogState, Model, Oid};

use crate::Engine;
use crate::error::{SqlError, SqlResult};
use crate::parser::normalize_ident;
use crate::serving::unnamed_args;
use crate::training_dataset::{leading_int64, transformed_columns};

/// The UDF calls of `predict` become.
pub(crate) const PREDICT_UDF: &str = "quiver_predict";

/// Rewrites every `predict(...)` of a statement; returns the models it scores with, which must
/// be loaded into the engine's cache before the statement runs.
pub(crate) fn rewrite_predict_calls(
    statement: &mut ast::Statement,
    snapshot: &CatalogState,
    project: &str,
) -> SqlResult<Vec<Model>> {
    let mut calls = PredictCalls {
        snapshot,
        project,
        models: Vec::new(),
    };
    crate::feature_view::rewrite(statement, &mut calls)?;
    Ok(calls.models)
}

struct PredictCalls<'a> {
    snapshot: &'a CatalogState,
    project: &'a str,
    models: Vec<Model>,
}

impl VisitorMut for PredictCalls<'_> {
    type Break = SqlError;

    /// An unaliased `predict(...)` column is named `predict`, as PostgreSQL names a function's
    /// column, not after the call it became.
    fn post_visit_query(&mut self, query: &mut ast::Query) -> ControlFlow<SqlError> {
        if let ast::SetExpr::Select(select) = query.body.as_mut() {
            for item in &mut select.projection {
                if let ast::SelectItem::UnnamedExpr(Expr::Function(function)) = item
                    && function.name.to_string() == PREDICT_UDF
                {
                    *item = ast::SelectItem::ExprWithAlias {
                        expr: Expr::Function(function.clone()),
                        alias: ast::Ident::new("predict"),
                    };
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<SqlError> {
        let Expr::Function(function) = expr else {
            return ControlFlow::Continue(());
        };
        let is_predict = matches!(function.name.0.as_slice(),
            [single] if single.as_ident().map(normalize_ident).as_deref() == Some("predict"));
        if !is_predict {
            return ControlFlow::Continue(());
        }
        match self.rewrite(&function.args) {
            Ok(rewritten) => {
                *expr = rewritten;
                ControlFlow::Continue(())
            }
            Err(e) => ControlFlow::Break(e),
        }
    }
}

impl PredictCalls<'_> {
    fn rewrite(&mut self, args: &FunctionArguments) -> SqlResult<Expr> {
        let usage = || {
            SqlError::InvalidParameter(
                "predict takes a model's name, its version and the model's inputs: predict('fraud_model', 1, amount, category)".into(),
            )
        };
        let FunctionArguments::List(list) = args else {
            return Err(usage());
        };
        let exprs = unnamed_args(&list.args).ok_or_else(usage)?;
        let [Expr::Value(name), Expr::Value(version), inputs @ ..] = exprs.as_slice() else {
            return Err(usage());
        };
        if [name, version]
            .iter()
            .any(|v| matches!(v.value, ast::Value::Placeholder(_)))
        {
            return Err(SqlError::NotSupported(
                "predict's model name and version must be constants, not parameters ($1): the model is chosen when the statement is planned".into(),
            ));
        }
        let (ast::Value::SingleQuotedString(name), ast::Value::Number(version, _)) =
            (&name.value, &version.value)
        else {
            return Err(usage());
        };
        let version: u32 = version.parse().map_err(|_| usage())?;
        let model = self.snapshot.model(self.project, name, Some(version))?;
        if inputs.len() != model.inputs.len() {
            return Err(SqlError::InvalidParameter(format!(
                "model \"{name}\" version {version} takes {} input(s) ({}), {} given",
                model.inputs.len(),
                model
                    .inputs
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                inputs.len()
            )));
        }
        let mut features = Vec::with_capacity(model.features.len());
        for (column, given) in model.inputs.iter().zip(inputs) {
            for (sql, _) in
                transformed_columns(std::slice::from_ref(&column.name), &model.transforms)?
            {
                let mut feature = Parser::new(&PostgreSqlDialect {})
                    .try_with_sql(&sql)
                    .and_then(|mut p| p.parse_expr())
                    .map_err(|e| SqlError::Internal(format!("transformation {sql}: {e}")))?;
                substitute(&mut feature, &column.name, given)?;
                features.push(feature);
            }
        }
        let mut sql = format!("{PREDICT_UDF}({}", model.oid);
        for feature in &features {
            sql.push_str(&format!(", {feature}"));
        }
        sql.push(')');
        let call = Parser::new(&PostgreSqlDialect {})
            .try_with_sql(&sql)
            .and_then(|mut p| p.parse_expr())
            .map_err(|e| SqlError::Internal(format!("{sql}: {e}")))?;
        if !self.models.iter().any(|m| m.oid == model.oid) {
            self.models.push(model.clone());
        }
        Ok(call)
    }
}

/// Replaces the column `name` in a transformation by the expression given for it.
fn substitute(expr: &mut Expr, name: &str, given: &Expr) -> SqlResult<()> {
    struct Substitute<'a> {
        name: &'a str,
        given: &'a Expr,
    }
    impl VisitorMut for Substitute<'_> {
        type Break = SqlError;
        fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<SqlError> {
            if let Expr::Identifier(ident) = expr
                && ident.value == self.name
            {
                *expr = Expr::Nested(Box::new(self.given.clone()));
            }
            ControlFlow::Continue(())
        }
    }
    crate::feature_view::rewrite(expr, &mut Substitute { name, given })
}

/// `quiver_predict(model oid, feature...)`: the model's prediction for each row, NULL where a
/// feature is NULL.
#[derive(Debug)]
pub(crate) struct PredictFunction {
    engine: Arc<Engine>,
    signature: Signature,
}

impl PredictFunction {
    pub(crate) fn new(engine: Arc<Engine>) -> PredictFunction {
        PredictFunction {
            engine,
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl PartialEq for PredictFunction {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.engine, &other.engine)
    }
}

impl Eq for PredictFunction {}

impl std::hash::Hash for PredictFunction {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        PREDICT_UDF.hash(state);
    }
}

impl ScalarUDFImpl for PredictFunction {
    fn name(&self) -> &str {
        PREDICT_UDF
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let oid = leading_int64(&args, PREDICT_UDF, "a model oid")? as Oid;
        let fitted = self.engine.models.get(oid).ok_or_else(|| {
            DataFusionError::Execution(format!("model {oid} is not loaded (was it dropped?)"))
        })?;
        let columns = args.args[1..]
            .iter()
            .map(|value| {
                let array = value.to_array(rows)?;
                Ok(datafusion::arrow::compute::cast(
                    &array,
                    &DataType::Float64,
                )?)
            })
            .collect::<DfResult<Vec<_>>>()?;
        let width = columns.len();
        // Rows with a NULL feature get no prediction; the others are scored together.
        let complete: Vec<bool> = (0..rows)
            .map(|i| columns.iter().all(|c| c.is_valid(i)))
            .collect();
        let values: Vec<&[f64]> = columns
            .iter()
            .map(|c| c.as_primitive::<Float64Type>().values().as_ref())
            .collect();
        let mut features = Vec::with_capacity(rows * width);
        for (i, _) in complete.iter().enumerate().filter(|(_, c)| **c) {
            features.extend(values.iter().map(|column| column[i]));
        }
        let predictions = fitted
            .predict(&features, width)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let mut predictions = predictions.into_iter();
        let result: Float64Array = complete
            .iter()
            .map(|c| if *c { predictions.next() } else { None })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(result)))
    }
}
