//! `train_model(model, training_dataset, version, algorithm [, params])`, a table function whose
//! one row is the registered model version, and `tune_model(...)` with a grid of parameters, whose
//! rows are its trials. The work happens when the rows are read, not when the call is planned, so
//! Describe, EXPLAIN and a prepared statement never train.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, Int32Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::catalog::{TableFunctionImpl, TableProvider};
use datafusion::common::{DataFusionError, Result as DfResult, ScalarValue};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, cast};
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::ident;
use quiver_catalog::{
    CatalogCommand, DatasetSource, ExperimentRun, Model, ModelTask, ResultColumn, TrainingDataset,
};
use serde_json::{Map, Value};

use futures::{StreamExt, TryStreamExt};
use smartcore::linalg::basic::arrays::Array as _;
use smartcore::linalg::basic::matrix::DenseMatrix;

use super::algorithm::{Algorithm, Fitted, Hyperparameters, matrix};
use super::metrics::{better, evaluate, metrics_json};
use super::{artifact_path, new_run_id};
use crate::Engine;
use crate::error::{SqlError, SqlResult};
use crate::session::Notices;
use crate::training_dataset::{split_table, transformed_columns};

/// train_model's own keys of the parameters object; the others are the algorithm's.
const OWN_PARAMETERS: [&str; 2] = ["label", "exclude"];

/// tune_model's own keys besides train_model's: how the grid is searched.
const SEARCH_PARAMETERS: [&str; 3] = ["search", "trials", "search_seed"];

/// The most trials one tune_model call runs.
const MAX_TRIALS: usize = 1_000;

/// How often a running fit reports that it still runs.
const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// The splits a model is fitted on and evaluated on.
const TRAIN_SPLIT: &str = "train";
const TEST_SPLIT: &str = "test";

/// `train_model`, or `tune_model` when `tune`, as registered in a session's context.
#[derive(Debug)]
pub(crate) struct TrainModelFunction {
    pub engine: Arc<Engine>,
    pub project: String,
    pub user: String,
    pub notices: Notices,
    pub tune: bool,
}

/// What a call asks for, checked as far as it can be without reading data.
#[derive(Debug, Clone)]
struct Request {
    model: String,
    dataset: String,
    dataset_version: u32,
    algorithm: Algorithm,
    /// One for train_model; the grid's points for tune_model.
    trials: Vec<Hyperparameters>,
    tune: bool,
    label: Option<String>,
    exclude: Vec<String>,
}

impl TableFunctionImpl for TrainModelFunction {
    fn call(&self, args: &[Expr]) -> DfResult<Arc<dyn TableProvider>> {
        let request = self
            .request(args)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let job = Arc::new(TrainJob {
            engine: self.engine.clone(),
            project: self.project.clone(),
            user: self.user.clone(),
            notices: self.notices.clone(),
            request,
            schema: result_schema(self.tune),
        });
        Ok(Arc::new(StreamingTable::try_new(
            job.schema.clone(),
            vec![job],
        )?))
    }
}

impl TrainModelFunction {
    fn request(&self, args: &[Expr]) -> SqlResult<Request> {
        const TRAIN_USAGE: &str = "train_model takes a model name, a training dataset, its version, an algorithm and optionally parameters as JSON: train_model('m', 'td', 1, 'logistic_regression', '{\"l2\": 0.01}')";
        const TUNE_USAGE: &str = "tune_model takes a model name, a training dataset, its version, an algorithm and a grid of parameters as JSON: tune_model('m', 'td', 1, 'random_forest_classifier', '{\"n_trees\": [50, 100], \"max_depth\": [4, 8]}')";
        let usage = if self.tune { TUNE_USAGE } else { TRAIN_USAGE };
        if !(4..=5).contains(&args.len()) {
            return Err(SqlError::UndefinedFunction(usage.into()));
        }
        // The call is planned before parameters are bound, and what it does depends on them.
        if args.iter().any(|a| matches!(a, Expr::Placeholder(_))) {
            return Err(SqlError::NotSupported(format!(
                "{}'s arguments must be constants, not parameters ($1): they decide what it trains",
                if self.tune {
                    "tune_model"
                } else {
                    "train_model"
                }
            )));
        }
        let text = |expr: &Expr| match expr {
            Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)), _) => {
                Ok(s.clone())
            }
            _ => Err(SqlError::InvalidParameter(usage.into())),
        };
        let model = text(&args[0])?;
        let dataset = text(&args[1])?;
        let dataset_version = match &args[2] {
            Expr::Literal(value, _) => value
                .cast_to(&DataType::Int64)
                .ok()
                .and_then(|v| match v {
                    ScalarValue::Int64(Some(v)) => u32::try_from(v).ok(),
                    _ => None,
                })
                .ok_or_else(|| SqlError::InvalidParameter(usage.into()))?,
            _ => return Err(SqlError::InvalidParameter(usage.into())),
        };
        let algorithm = Algorithm::parse(&text(&args[3])?)?;
        let given: Map<String, Value> = match args.get(4) {
            None => Map::new(),
            Some(expr) => match serde_json::from_str(&text(expr)?) {
                Ok(Value::Object(map)) => map,
                Ok(Value::Null) => Map::new(),
                _ => {
                    return Err(SqlError::InvalidParameter(
                        "train_model's parameters must be a JSON object, such as '{\"l2\": 0.01}'"
                            .into(),
                    ));
                }
            },
        };
        let label = match given.get("label") {
            None | Some(Value::Null) => None,
            Some(Value::String(label)) => Some(label.clone()),
            Some(other) => {
                return Err(SqlError::InvalidParameter(format!(
                    "train_model's \"label\" must be a column name, not {other}"
                )));
            }
        };
        let exclude = match given.get("exclude") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Some(other) => {
                return Err(SqlError::InvalidParameter(format!(
                    "train_model's \"exclude\" must be an array of column names, not {other}"
                )));
            }
        };
        let trials = if self.tune {
            grid(algorithm, &given)?
        } else {
            vec![Hyperparameters::new(algorithm, &given, &OWN_PARAMETERS)?]
        };
        // The dataset must exist now; whether its columns fit is checked when it is read.
        self.engine.catalog.snapshot().training_dataset(
            &self.project,
            &dataset,
            Some(dataset_version),
        )?;
        if model.is_empty() {
            return Err(SqlError::InvalidParameter(
                "a model needs a name: train_model('m', ...)".into(),
            ));
        }
        Ok(Request {
            model,
            dataset,
            dataset_version,
            algorithm,
            trials,
            tune: self.tune,
            label,
            exclude,
        })
    }
}

/// The points of tune_model's grid: each key with an array of values is searched, every other
/// key is fixed. `"search": "random"` tries `trials` points drawn from the grid (with
/// `search_seed`) instead of all of them.
fn grid(algorithm: Algorithm, given: &Map<String, Value>) -> SqlResult<Vec<Hyperparameters>> {
    let mut fixed = Map::new();
    let mut dimensions: Vec<(String, Vec<Value>)> = Vec::new();
    for (key, value) in given {
        match value {
            Value::Array(values) if !OWN_PARAMETERS.contains(&key.as_str()) => {
                if values.is_empty() {
                    return Err(SqlError::InvalidParameter(format!(
                        "tune_model's \"{key}\" has no values to try"
                    )));
                }
                dimensions.push((key.clone(), values.clone()));
            }
            _ if SEARCH_PARAMETERS.contains(&key.as_str()) => {}
            _ => {
                fixed.insert(key.clone(), value.clone());
            }
        }
    }
    let mut points = vec![fixed];
    for (key, values) in &dimensions {
        let mut next = Vec::with_capacity(points.len() * values.len());
        for point in &points {
            for value in values {
                let mut point = point.clone();
                point.insert(key.clone(), value.clone());
                next.push(point);
            }
        }
        if next.len() > MAX_TRIALS * 100 {
            return Err(SqlError::InvalidParameter(format!(
                "tune_model's grid has more than {} points; search it with '{{\"search\": \"random\", \"trials\": 50}}'",
                MAX_TRIALS * 100
            )));
        }
        points = next;
    }
    match given.get("search").and_then(Value::as_str) {
        None | Some("grid") => {}
        Some("random") => {
            let trials = given
                .get("trials")
                .and_then(Value::as_u64)
                .filter(|t| *t >= 1)
                .ok_or_else(|| {
                    SqlError::InvalidParameter(
                        "a random search needs a number of trials: '{\"search\": \"random\", \"trials\": 20}'".into(),
                    )
                })? as usize;
            let mut seed = given
                .get("search_seed")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            // A seeded partial Fisher-Yates shuffle: the first `trials` points are the sample.
            let keep = trials.min(points.len());
            for i in 0..keep {
                seed = crate::training_dataset::mix(seed.wrapping_add(0x9e37_79b9_7f4a_7c15));
                let j = i + (seed % (points.len() - i) as u64) as usize;
                points.swap(i, j);
            }
            points.truncate(keep);
        }
        Some(other) => {
            return Err(SqlError::InvalidParameter(format!(
                "tune_model's search is \"grid\" or \"random\", not \"{other}\""
            )));
        }
    }
    if points.len() > MAX_TRIALS {
        return Err(SqlError::InvalidParameter(format!(
            "tune_model's grid has {} points, more than {MAX_TRIALS}; search it with '{{\"search\": \"random\", \"trials\": 50}}'",
            points.len()
        )));
    }
    let mut reserved: Vec<&str> = OWN_PARAMETERS.to_vec();
    reserved.extend(SEARCH_PARAMETERS);
    points
        .iter()
        .map(|point| Hyperparameters::new(algorithm, point, &reserved))
        .collect()
}

fn result_schema(tune: bool) -> SchemaRef {
    let fields = if tune {
        vec![
            Field::new("model", DataType::Utf8, false),
            Field::new("version", DataType::Int32, true),
            Field::new("params", DataType::Utf8, false),
            Field::new("metrics", DataType::Utf8, false),
            Field::new("run_id", DataType::Utf8, false),
            Field::new("best", DataType::Boolean, false),
        ]
    } else {
        vec![
            Field::new("model", DataType::Utf8, false),
            Field::new("version", DataType::Int32, false),
            Field::new("metrics", DataType::Utf8, false),
            Field::new("run_id", DataType::Utf8, false),
        ]
    };
    Arc::new(Schema::new(fields))
}

/// One training run or search, started when its rows are read.
#[derive(Debug, Clone)]
struct TrainJob {
    engine: Arc<Engine>,
    project: String,
    user: String,
    notices: Notices,
    request: Request,
    schema: SchemaRef,
}

impl PartitionStream for TrainJob {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _context: Arc<TaskContext>) -> SendableRecordBatchStream {
        let job = self.clone();
        let row = futures::stream::once(async move {
            job.run()
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), row))
    }
}

/// What a dataset's columns mean to the model: derived from the dataset and the request.
struct Columns {
    task: ModelTask,
    label: String,
    inputs: Vec<ResultColumn>,
    features: Vec<String>,
}

/// A split read into memory: features row-major, labels as numbers (0/1 for classification).
struct SplitData {
    features: Vec<f64>,
    labels: Vec<f64>,
}

/// One fitted and evaluated trial.
struct Trial {
    parameters: Hyperparameters,
    fitted: Arc<Fitted>,
    metrics: Vec<(String, f64)>,
    run_id: String,
    started_at: chrono::DateTime<Utc>,
    duration_ms: u64,
}

/// Fits one point of the grid on the train split and scores it on the test split.
#[allow(clippy::ptr_arg)] // smartcore's labels are a Vec
fn fit_and_evaluate(
    parameters: Hyperparameters,
    x: &DenseMatrix<f64>,
    y: &Vec<f64>,
    test: &SplitData,
    task: ModelTask,
) -> SqlResult<Trial> {
    let started_at = Utc::now();
    let clock = Instant::now();
    let fitted = Fitted::fit(&parameters, x, y)?;
    let width = x.shape().1;
    let predictions = fitted.predict(&test.features, width)?;
    let metrics = evaluate(task, &test.labels, &predictions);
    Ok(Trial {
        parameters,
        fitted: Arc::new(fitted),
        metrics,
        run_id: new_run_id(),
        started_at,
        duration_ms: clock.elapsed().as_millis() as u64,
    })
}

impl TrainJob {
    async fn run(&self) -> SqlResult<RecordBatch> {
        let request = &self.request;
        let snapshot = self.engine.catalog.snapshot();
        let dataset = snapshot
            .training_dataset(
                &self.project,
                &request.dataset,
                Some(request.dataset_version),
            )?
            .clone();
        let split_names = dataset.split.names();
        for needed in [TRAIN_SPLIT, TEST_SPLIT] {
            if !split_names.iter().any(|s| s == needed) {
                return Err(SqlError::PrerequisiteState(format!(
                    "training dataset \"{}\" version {} has no split \"{needed}\" (its splits: {}); a model is fitted on \"train\" and evaluated on \"test\": create one with SPLIT (train = 0.8, test = 0.2)",
                    dataset.name,
                    dataset.version,
                    split_names.join(", ")
                )));
            }
        }
        let columns = self.columns(&snapshot, &dataset)?;
        let (train, classes) = self
            .read_split(&dataset, TRAIN_SPLIT, &columns, None)
            .await?;
        let width = columns.features.len();
        let rows = train.labels.len();
        if rows == 0 {
            return Err(SqlError::Data(format!(
                "the train split of training dataset \"{}\" version {} has no rows",
                dataset.name, dataset.version
            )));
        }
        let (test, _) = self
            .read_split(&dataset, TEST_SPLIT, &columns, Some(&classes))
            .await?;
        let trials = request.trials.len();
        self.notices.send(format!(
            "{} \"{}\": fitting {} on {rows} rows x {width} features{}",
            if request.tune {
                "tune_model"
            } else {
                "train_model"
            },
            request.model,
            request.algorithm.sql_name(),
            if request.tune {
                format!(", {trials} trials")
            } else {
                String::new()
            }
        ));
        let train_x = Arc::new(matrix(train.features, rows, width)?);
        let train_y = Arc::new(train.labels);
        let test = Arc::new(test);
        // Trials run side by side, as many at once as the machine has cores.
        let parallel = self.engine.target_partitions().max(1);
        let task = columns.task;
        let runs = futures::stream::iter(request.trials.iter().cloned().map(|parameters| {
            let (x, y, test) = (train_x.clone(), train_y.clone(), test.clone());
            tokio::task::spawn_blocking(move || fit_and_evaluate(parameters, &x, &y, &test, task))
        }))
        .buffered(parallel)
        .map(|joined| {
            joined.map_err(|e| SqlError::Internal(format!("training task failed: {e}")))?
        })
        .try_collect::<Vec<Trial>>();
        let results = self.with_progress(runs, "fitting").await?;

        // The best trial is registered; the others are recorded as runs.
        let best = (0..results.len())
            .reduce(|best, i| {
                if better(task, &results[best].metrics, &results[i].metrics) {
                    i
                } else {
                    best
                }
            })
            .unwrap_or(0);
        let run = |trial: &Trial| ExperimentRun {
            run_id: trial.run_id.clone(),
            project: self.project.clone(),
            model: request.model.clone(),
            model_version: None,
            algorithm: request.algorithm.sql_name().to_string(),
            params: trial.parameters.to_json(),
            metrics: trial.metrics.clone(),
            training_dataset: dataset.name.clone(),
            training_dataset_version: dataset.version,
            duration_ms: trial.duration_ms,
            user: self.user.clone(),
            started_at: trial.started_at,
        };
        let others: Vec<ExperimentRun> = results
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != best)
            .map(|(_, trial)| run(trial))
            .collect();
        if !others.is_empty() {
            self.engine
                .change_catalog(CatalogCommand::RecordRuns(others))
                .await?;
        }
        let winner = &results[best];
        let version = self
            .register(&dataset, columns, classes, winner, run(winner))
            .await?;

        let versions: Vec<Option<i32>> = (0..results.len())
            .map(|i| (i == best).then_some(version as i32))
            .collect();
        let text = |f: &dyn Fn(&Trial) -> String| -> Arc<StringArray> {
            Arc::new(StringArray::from_iter_values(results.iter().map(f)))
        };
        let model_names = text(&|_| request.model.clone());
        let metrics = text(&|t| metrics_json(&t.metrics));
        let run_ids = text(&|t| t.run_id.clone());
        let columns: Vec<datafusion::arrow::array::ArrayRef> = if request.tune {
            vec![
                model_names,
                Arc::new(Int32Array::from(versions)),
                text(&|t| t.parameters.to_json()),
                metrics,
                run_ids,
                Arc::new(BooleanArray::from_iter(
                    (0..results.len()).map(|i| Some(i == best)),
                )),
            ]
        } else {
            vec![
                model_names,
                Arc::new(Int32Array::from(vec![version as i32])),
                metrics,
                run_ids,
            ]
        };
        RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| SqlError::Internal(e.to_string()))
    }

    /// Registers a trial's model as the next version: the artifact first, then the catalog
    /// entry naming it (with its run), whose failure removes the artifact again.
    async fn register(
        &self,
        dataset: &TrainingDataset,
        columns: Columns,
        classes: Vec<String>,
        trial: &Trial,
        run: ExperimentRun,
    ) -> SqlResult<u32> {
        let request = &self.request;
        let version = self
            .engine
            .catalog
            .snapshot()
            .model_versions(&self.project, &request.model)
            .map(|m| m.version)
            .max()
            .unwrap_or(0)
            + 1;
        // Megabytes of JSON for a forest: written off the async runtime.
        let fitted = trial.fitted.clone();
        let artifact = tokio::task::spawn_blocking(move || serde_json::to_vec(fitted.as_ref()))
            .await
            .map_err(|e| SqlError::Internal(format!("serializing the model failed: {e}")))?
            .map_err(|e| SqlError::Internal(format!("serializing the model: {e}")))?;
        let root = self.engine.offline.location();
        let relative = artifact_path(&self.project, &request.model, version, &trial.run_id);
        quiver_storage::write_object(root, &relative, artifact).await?;
        let model = Model {
            oid: 0,
            project: self.project.clone(),
            name: request.model.clone(),
            version,
            algorithm: request.algorithm.sql_name().to_string(),
            task: columns.task,
            params: trial.parameters.to_json(),
            label: columns.label,
            classes,
            inputs: columns.inputs,
            features: columns.features,
            transforms: dataset.transforms.clone(),
            training_dataset: dataset.name.clone(),
            training_dataset_version: dataset.version,
            feature_view: match &dataset.source {
                DatasetSource::FeatureView { name, version } => Some((name.clone(), *version)),
                DatasetSource::Query => None,
            },
            metrics: trial.metrics.clone(),
            artifact: quiver_storage::object_url(root, &relative),
            run_id: trial.run_id.clone(),
            owner: self.user.clone(),
            created_at: Utc::now(),
        };
        let registered = self
            .engine
            .change_catalog(CatalogCommand::CreateModel {
                model: Box::new(model),
                run: Box::new(run),
            })
            .await;
        match registered {
            Ok(quiver_catalog::Applied::Model(oid)) => {
                self.engine.models.insert(oid, trial.fitted.clone());
                Ok(version)
            }
            Ok(other) => Err(SqlError::Internal(format!(
                "registering a model applied {other:?}"
            ))),
            Err(e) => {
                quiver_storage::delete_object(root, &relative).await?;
                Err(e)
            }
        }
    }

    /// Waits for work, telling the client every few seconds that it still runs. When the
    /// statement is canceled this future is dropped: fits already running finish on their
    /// threads and their results are thrown away, so nothing is registered.
    async fn with_progress<T>(
        &self,
        work: impl std::future::Future<Output = SqlResult<T>>,
        what: &str,
    ) -> SqlResult<T> {
        let clock = Instant::now();
        let mut ticks = tokio::time::interval(PROGRESS_INTERVAL);
        ticks.tick().await;
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = ticks.tick() => self.notices.send(format!(
                    "{} \"{}\": {what}, {} s so far",
                    if self.request.tune { "tune_model" } else { "train_model" },
                    self.request.model,
                    clock.elapsed().as_secs()
                )),
            }
        }
    }

    /// The label, the inputs `predict` will take and the features the algorithm reads.
    fn columns(
        &self,
        snapshot: &quiver_catalog::CatalogState,
        dataset: &TrainingDataset,
    ) -> SqlResult<Columns> {
        let request = &self.request;
        let label = request
            .label
            .clone()
            .or_else(|| dataset.label.clone())
            .ok_or_else(|| {
                SqlError::InvalidParameter(format!(
                    "training dataset \"{}\" has no label: name the column to predict with '{{\"label\": \"column\"}}'",
                    dataset.name
                ))
            })?;
        // The columns before transformations: the feature view's, or the query's (which has none).
        let raw: Vec<ResultColumn> = match &dataset.source {
            DatasetSource::FeatureView { name, version } if !dataset.transforms.is_empty() => {
                snapshot
                    .feature_view(&self.project, name, Some(*version))
                    .map_err(|_| {
                        SqlError::PrerequisiteState(format!(
                            "feature view \"{name}\" version {version}, whose transformations training dataset \"{}\" applies, no longer exists",
                            dataset.name
                        ))
                    })?
                    .columns
                    .clone()
            }
            _ => dataset.columns.clone(),
        };
        let undefined = |column: &str| {
            SqlError::UndefinedColumn(format!(
                "column \"{column}\" is not a column of training dataset \"{}\" (its columns: {})",
                dataset.name,
                raw.iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        };
        if !raw.iter().any(|c| c.name == label) {
            return Err(undefined(&label));
        }
        if dataset.transforms.iter().any(|t| t.column() == label) {
            return Err(SqlError::InvalidParameter(format!(
                "label \"{label}\" is transformed in training dataset \"{}\"; a model predicts a column as it is",
                dataset.name
            )));
        }
        if let Some(unknown) = request
            .exclude
            .iter()
            .find(|e| !raw.iter().any(|c| &&c.name == e))
        {
            return Err(undefined(unknown));
        }
        let inputs: Vec<ResultColumn> = raw
            .into_iter()
            .filter(|c| c.name != label && !request.exclude.contains(&c.name))
            .collect();
        if inputs.is_empty() {
            return Err(SqlError::InvalidParameter(format!(
                "training dataset \"{}\" leaves no feature besides the label \"{label}\"",
                dataset.name
            )));
        }
        let names: Vec<String> = inputs.iter().map(|c| c.name.clone()).collect();
        let features = transformed_columns(&names, &dataset.transforms)?
            .into_iter()
            .map(|(_, name)| name)
            .collect();
        Ok(Columns {
            task: request.algorithm.task(),
            label,
            inputs,
            features,
        })
    }

    /// Reads a split's features and labels. `classes`: the train split's two classes, which a
    /// later split's labels must be among; for the train split they are found (and returned).
    async fn read_split(
        &self,
        dataset: &TrainingDataset,
        split: &str,
        columns: &Columns,
        classes: Option<&[String]>,
    ) -> SqlResult<(SplitData, Vec<String>)> {
        let provider = split_table(
            &self.engine,
            &self.project,
            &dataset.name,
            dataset.version,
            split,
        )
        .await?;
        let schema = provider.schema();
        for feature in &columns.features {
            let field = schema.field_with_name(feature).map_err(|_| {
                SqlError::Internal(format!(
                    "feature \"{feature}\" is missing from training dataset \"{}\"",
                    dataset.name
                ))
            })?;
            if !(field.data_type().is_numeric() || field.data_type() == &DataType::Boolean) {
                return Err(SqlError::DatatypeMismatch(format!(
                    "feature \"{feature}\" of training dataset \"{}\" is {}, not a number: give it a one_hot or label_encoder transformation in the feature view, or leave it out with '{{\"exclude\": [\"{feature}\"]}}'",
                    dataset.name,
                    crate::feature_view::pg_type_name(field.data_type())
                )));
            }
        }
        let label_type = match columns.task {
            ModelTask::Regression => DataType::Float64,
            ModelTask::BinaryClassification => DataType::Utf8,
        };
        if columns.task == ModelTask::Regression {
            let field = schema
                .field_with_name(&columns.label)
                .map_err(|_| SqlError::Internal(format!("label \"{}\" missing", columns.label)))?;
            if !field.data_type().is_numeric() {
                return Err(SqlError::DatatypeMismatch(format!(
                    "{} predicts a number, and label \"{}\" is {}",
                    self.request.algorithm.sql_name(),
                    columns.label,
                    crate::feature_view::pg_type_name(field.data_type())
                )));
            }
        }
        // Quiver's own context: a computed split (npy, hdf5, tfrecords) runs the dataset's query,
        // ASOF joins and all.
        let context = crate::session::build_context(
            &self.engine,
            &self.project,
            &self.user,
            Default::default(),
        )?;
        let mut selection: Vec<Expr> = columns
            .features
            .iter()
            .map(|f| cast(ident(f), DataType::Float64))
            .collect();
        selection.push(cast(ident(&columns.label), label_type));
        let batches = context
            .read_table(provider)?
            .select(selection)?
            .collect()
            .await?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let width = columns.features.len();
        let mut features = vec![0.0; rows * width];
        let mut label_values: Vec<Option<String>> = Vec::new();
        let mut labels: Vec<f64> = Vec::with_capacity(rows);
        let mut offset = 0;
        let null_error = |column: &str| {
            SqlError::Data(format!(
                "column \"{column}\" of training dataset \"{}\" has NULL in split \"{split}\"; a model needs a value in every row: fill it in the feature view (COALESCE) or leave it out with '{{\"exclude\": [\"{column}\"]}}'",
                dataset.name
            ))
        };
        for batch in &batches {
            let n = batch.num_rows();
            for (j, feature) in columns.features.iter().enumerate() {
                let values = batch.column(j).as_primitive::<Float64Type>();
                if values.null_count() > 0 {
                    return Err(null_error(feature));
                }
                for (i, value) in values.values().iter().enumerate() {
                    features[(offset + i) * width + j] = *value;
                }
            }
            let label = batch.column(width);
            if label.null_count() > 0 {
                return Err(null_error(&columns.label));
            }
            match columns.task {
                ModelTask::Regression => {
                    labels.extend_from_slice(label.as_primitive::<Float64Type>().values())
                }
                ModelTask::BinaryClassification => label_values.extend(
                    label
                        .as_string::<i32>()
                        .iter()
                        .map(|v| v.map(str::to_string)),
                ),
            }
            offset += n;
        }
        let classes = match columns.task {
            ModelTask::Regression => Vec::new(),
            ModelTask::BinaryClassification => {
                let classes = match classes {
                    Some(classes) => classes.to_vec(),
                    None => two_classes(&label_values, &columns.label, dataset)?,
                };
                for value in label_values.iter().flatten() {
                    match classes.iter().position(|c| c == value) {
                        Some(index) => labels.push(index as f64),
                        None => {
                            return Err(SqlError::Data(format!(
                                "label \"{}\" has the value {value} in split \"{split}\", which the train split does not have (its classes: {})",
                                columns.label,
                                classes.join(", ")
                            )));
                        }
                    }
                }
                classes
            }
        };
        Ok((SplitData { features, labels }, classes))
    }
}

/// The label's two values, negative first: numbers in numeric order, other text in text order
/// (so false before true, 0 before 1).
fn two_classes(
    values: &[Option<String>],
    label: &str,
    dataset: &TrainingDataset,
) -> SqlResult<Vec<String>> {
    let mut classes: Vec<String> = Vec::new();
    for value in values.iter().flatten() {
        if !classes.contains(value) {
            classes.push(value.clone());
            if classes.len() > 2 {
                break;
            }
        }
    }
    if classes.len() != 2 {
        return Err(SqlError::Data(format!(
            "binary classification needs a label with two values; label \"{label}\" of training dataset \"{}\" has {} in its train split ({}{})",
            dataset.name,
            if classes.len() > 2 {
                "more than two".to_string()
            } else {
                classes.len().to_string()
            },
            classes
                .iter()
                .take(2)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            if classes.len() > 2 { ", ..." } else { "" }
        )));
    }
    match (classes[0].parse::<f64>(), classes[1].parse::<f64>()) {
        (Ok(a), Ok(b)) if a > b => classes.swap(0, 1),
        (Ok(_), Ok(_)) => {}
        _ => classes.sort(),
    }
    Ok(classes)
}
