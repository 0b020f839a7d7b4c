//! Training datasets: a query's rows, split, transformed and written to files once, recorded in
//! the catalog with everything needed to write the same files again.
//!
//! The query reads every relation at the offline version current when the dataset is created;
//! those versions are recorded, and RECREATE reads them again (the offline store keeps every
//! version), so it writes the same rows whatever was written since. A row's split is a function of
//! its values and the seed (a hash), not of the order rows arrive in, so the same seed puts the
//! same rows in the same split. Transformations are fitted on the train split and recorded.
//!
//! Files are staged under the data dir and published at the end; the catalog entry comes last.
//! Any failure or cancellation before that leaves neither files nor an entry.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use datafusion::arrow::array::{Array, AsArray, Float64Array, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::compute::kernels::cmp::eq;
use datafusion::arrow::datatypes::{DataType, Int32Type, Schema, SchemaRef};
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::common::{Column, DataFusionError, Result as DfResult, ScalarValue};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::file_format::arrow::ArrowFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::functions_aggregate::expr_fn::{array_agg, avg, max, min, stddev_pop};
use datafusion::logical_expr::conditional_expressions::CaseBuilder;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprFunctionExt, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility, cast, lit, when,
};
use datafusion::sql::sqlparser::ast::{self, TableFactor, VisitorMut};
use futures::StreamExt;
use quiver_catalog::{
    CatalogCommand, DatasetFormat, DatasetSource, FittedTransform, Oid, Split, TimeComparison,
    TrainingDataset, Transform, TransformKind,
};
use quiver_storage::{DatasetWriter, FileFormat, StoreLocation};
use std::ops::ControlFlow;

use crate::ddl::{oids_to_drop, version_to_create};
use crate::error::{SqlError, SqlResult};
use crate::feature_view::{pin_versions, result_columns, view_query};
use crate::parser::{
    CreateTrainingDataset, DatasetSourceClause, OptionEntry, OptionValue, SplitClause, quote_ident,
    quote_literal,
};
use crate::session::{CommandTag, Session};
use crate::{Engine, STAGING_DIR};

/// The column that carries each row's split index through the query.
const SPLIT_COLUMN: &str = "__quiver_split";

/// Rows per file for the sharded formats.
const ROWS_PER_FILE: usize = 1_000_000;

/// How often a long write reports its progress with a NOTICE.
const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// The most columns `one_hot` makes of one column.
const MAX_ONE_HOT_CATEGORIES: usize = 1_000;

/// What a dataset is computed from.
struct Definition {
    source: DatasetSource,
    query: Box<ast::Query>,
    reads: Vec<Oid>,
    label: Option<String>,
    transforms: Vec<Transform>,
}

/// `CREATE TRAINING DATASET`.
pub async fn create(session: &Session, create: &CreateTrainingDataset) -> SqlResult<CommandTag> {
    let engine = session.engine();
    let project = session.project();
    let snapshot = engine.catalog.snapshot();
    let existing: Vec<u32> = snapshot
        .training_dataset_versions(project, &create.name)
        .map(|d| d.version)
        .collect();
    let version = version_to_create("training dataset", &create.name, create.version, &existing)?;
    if snapshot
        .training_dataset(project, &create.name, Some(version))
        .is_ok()
    {
        return Err(SqlError::Duplicate(format!(
            "training dataset \"{}\" version {version} already exists",
            create.name
        )));
    }
    let format = dataset_format(&create.format)?;
    let gzip = gzip_option(format, &create.format_options)?;
    let definition = match &create.source {
        DatasetSourceClause::FeatureView { name, version } => {
            let view = snapshot.feature_view(project, name, *version)?;
            Definition {
                source: DatasetSource::FeatureView {
                    name: view.name.clone(),
                    version: view.version,
                },
                query: view_query(view)?,
                reads: view.depends_on.clone(),
                label: view.label.clone(),
                transforms: view.transforms.clone(),
            }
        }
        DatasetSourceClause::Query(query) => {
            let mut query = query.clone();
            let reads = pin_versions(&mut query, &snapshot, project)?;
            Definition {
                source: DatasetSource::Query,
                query,
                reads,
                label: None,
                transforms: Vec::new(),
            }
        }
    };
    let location_text = match &create.location {
        Some(text) => text.clone(),
        None => {
            let dir = engine
                .data_dir()
                .join("datasets")
                .join(project)
                .join(format!("{}_{version}", create.name));
            format!("file://{}", absolute(&dir)?.display())
        }
    };
    let location = dataset_location(&location_text)?;
    // Everything that can be checked before the query runs is.
    check_location_is_free(&location, &split_names_of(&create.split), &create.name).await?;
    let mut read_versions = Vec::with_capacity(definition.reads.len());
    for oid in &definition.reads {
        read_versions.push((*oid, engine.offline.version(*oid).await?));
    }
    let frame = session
        .pinned_frame(
            ast::Statement::Query(definition.query.clone()),
            read_versions.iter().copied().collect(),
        )
        .await?;
    let split = resolve_split(&create.split, frame.schema().as_arrow())?;
    let with_split = with_split_column(frame, &split)?;
    if !definition.transforms.is_empty() {
        session.notice(format!(
            "training dataset \"{}\": fitting transformations on split {}",
            create.name,
            split.names()[train_index(&split) as usize]
        ));
    }
    let fitted = fit(&with_split, &definition.transforms, &split).await?;
    let written = write_files(
        session,
        with_split,
        &fitted,
        &split,
        file_format(format, gzip),
        &location,
        &create.name,
        None,
    )
    .await?;
    let dataset = TrainingDataset {
        oid: 0,
        project: project.to_string(),
        name: create.name.clone(),
        version,
        source: definition.source,
        query: definition.query.to_string(),
        label: definition.label,
        format,
        gzip,
        location: location_text,
        split,
        columns: written.columns,
        file_schema: written.file_schema,
        split_rows: written.split_rows,
        read_versions,
        transforms: fitted,
        owner: session.user().to_string(),
        created_at: Utc::now(),
    };
    let split_names = dataset.split.names();
    if let Err(e) = engine
        .change_catalog(CatalogCommand::CreateTrainingDataset(Box::new(dataset)))
        .await
    {
        quiver_storage::remove_splits(&location, &split_names).await?;
        return Err(e);
    }
    Ok(CommandTag::new("CREATE TRAINING DATASET"))
}

/// `RECREATE TRAINING DATASET name VERSION n`: the same rows, from the recorded offline versions,
/// with the recorded split and transformations, written again to the same location.
pub async fn recreate(session: &Session, name: &str, version: u32) -> SqlResult<CommandTag> {
    let engine = session.engine();
    let snapshot = engine.catalog.snapshot();
    let dataset = snapshot
        .training_dataset(session.project(), name, Some(version))?
        .clone();
    let statement = stored_statement(&dataset)?;
    for (oid, _) in &dataset.read_versions {
        if snapshot.relation(*oid).is_none() {
            return Err(SqlError::UndefinedTable(format!(
                "training dataset \"{name}\" version {version} read a relation (oid {oid}) that has been dropped; it cannot be written again"
            )));
        }
    }
    let frame = session
        .pinned_frame(statement, dataset.read_versions.iter().copied().collect())
        .await?;
    let with_split = with_split_column(frame, &dataset.split)?;
    let location = dataset_location(&dataset.location)?;
    write_files(
        session,
        with_split,
        &dataset.transforms,
        &dataset.split,
        file_format(dataset.format, dataset.gzip),
        &location,
        name,
        Some(&dataset.split_rows),
    )
    .await?;
    Ok(CommandTag::new("RECREATE TRAINING DATASET"))
}

/// The query a dataset was computed from, parsed again.
fn stored_statement(dataset: &TrainingDataset) -> SqlResult<ast::Statement> {
    let statements = crate::parser::parse(&dataset.query)
        .map_err(|e| SqlError::Internal(format!("the stored query does not parse: {e}")))?;
    match <[crate::parser::Statement; 1]>::try_from(statements) {
        Ok([crate::parser::Statement::Sql(statement)]) => Ok(*statement),
        _ => Err(SqlError::Internal(format!(
            "the stored query of training dataset \"{}\" is not one statement",
            dataset.name
        ))),
    }
}

/// `DROP TRAINING DATASET name [VERSION n]`: the catalog entries, then the files.
pub async fn drop(
    session: &Session,
    name: &str,
    version: Option<u32>,
    if_exists: bool,
) -> SqlResult<CommandTag> {
    let tag = CommandTag::new("DROP TRAINING DATASET");
    let engine = session.engine();
    let snapshot = engine.catalog.snapshot();
    let project = session.project();
    let oids = oids_to_drop(
        "training dataset",
        name,
        version.map(|v| snapshot.training_dataset(project, name, Some(v))),
        || {
            snapshot
                .training_dataset_versions(project, name)
                .map(|d| d.oid)
                .collect()
        },
        |dataset| dataset.oid,
        if_exists,
    )?;
    if oids.is_empty() {
        return Ok(tag);
    }
    if let quiver_catalog::Applied::DroppedDatasets(dropped) = engine
        .change_catalog(CatalogCommand::DropTrainingDatasets { oids })
        .await?
    {
        for dataset in dropped {
            let location = dataset_location(&dataset.location)?;
            quiver_storage::remove_splits(&location, &dataset.split.names()).await?;
        }
    }
    Ok(tag)
}

fn dataset_format(name: &str) -> SqlResult<DatasetFormat> {
    match DatasetFormat::ALL.iter().find(|(n, _)| *n == name) {
        Some((_, format)) => Ok(*format),
        None => Err(SqlError::InvalidParameter(format!(
            "unknown training dataset format \"{name}\" (tfrecords, parquet, csv, npy, hdf5 and arrow are)"
        ))),
    }
}

/// `FORMAT tfrecords (compression = 'gzip')`: the one format option there is.
fn gzip_option(format: DatasetFormat, options: &[OptionEntry]) -> SqlResult<bool> {
    let mut gzip = false;
    for option in options {
        match (option.key.as_str(), &option.value, format) {
            ("compression", OptionValue::String(value), DatasetFormat::Tfrecords) => {
                gzip = match value.to_ascii_lowercase().as_str() {
                    "gzip" => true,
                    "none" => false,
                    other => {
                        return Err(SqlError::InvalidParameter(format!(
                            "unknown compression \"{other}\" for tfrecords (gzip and none are)"
                        )));
                    }
                }
            }
            (key, _, format) => {
                return Err(SqlError::InvalidParameter(format!(
                    "format {} takes no option \"{key}\"{}",
                    format.sql_name(),
                    if format == DatasetFormat::Tfrecords {
                        " (compression = 'gzip' is its one option)"
                    } else {
                        ""
                    }
                )));
            }
        }
    }
    Ok(gzip)
}

fn file_format(format: DatasetFormat, gzip: bool) -> FileFormat {
    match format {
        DatasetFormat::Parquet => FileFormat::Parquet,
        DatasetFormat::Csv => FileFormat::Csv,
        DatasetFormat::Arrow => FileFormat::Arrow,
        DatasetFormat::Tfrecords => FileFormat::Tfrecords { gzip },
        DatasetFormat::Npy => FileFormat::Npy,
        DatasetFormat::Hdf5 => FileFormat::Hdf5,
    }
}

/// A dataset's location: a `file://` or `s3://` URL, or an absolute path.
fn dataset_location(text: &str) -> SqlResult<StoreLocation> {
    if !text.contains("://") && !Path::new(text).is_absolute() {
        return Err(SqlError::InvalidParameter(format!(
            "LOCATION '{text}' must be an absolute path, a file:// URL or an s3:// URL"
        )));
    }
    Ok(StoreLocation::parse(text)?)
}

fn absolute(path: &Path) -> SqlResult<PathBuf> {
    std::path::absolute(path).map_err(|e| SqlError::Internal(format!("{}: {e}", path.display())))
}

/// The split as the catalog records it: weights normalised, a seed chosen when none is given,
/// the time column found.
fn resolve_split(clause: &SplitClause, schema: &Schema) -> SqlResult<Split> {
    Ok(match clause {
        SplitClause::None => Split::None,
        SplitClause::Random { weights, seed } => {
            check_split_names(weights.iter().map(|(n, _)| n))?;
            let total: f64 = weights.iter().map(|(_, w)| w).sum();
            Split::Random {
                weights: weights
                    .iter()
                    .map(|(n, w)| (n.clone(), w / total))
                    .collect(),
                seed: seed.unwrap_or_else(rand_seed),
            }
        }
        SplitClause::ByTime { column, bounds } => {
            check_split_names(bounds.iter().map(|(n, _, _)| n))?;
            let temporal: Vec<&str> = schema
                .fields()
                .iter()
                .filter(|f| {
                    matches!(
                        f.data_type(),
                        DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _)
                    )
                })
                .map(|f| f.name().as_str())
                .collect();
            let column = match column {
                Some(column) => {
                    schema.field_with_name(column).map_err(|_| {
                        SqlError::UndefinedColumn(format!(
                            "SPLIT BY TIME column \"{column}\" is not a column of the dataset"
                        ))
                    })?;
                    column.clone()
                }
                None => match temporal.as_slice() {
                    [one] => one.to_string(),
                    [] => {
                        return Err(SqlError::UndefinedColumn(
                            "SPLIT BY TIME needs a date or timestamp column in the dataset, and it has none".into(),
                        ));
                    }
                    several => {
                        return Err(SqlError::InvalidParameter(format!(
                            "SPLIT BY TIME found several time columns ({}); name one: SPLIT BY TIME {} (...)",
                            several.join(", "),
                            several[0]
                        )));
                    }
                },
            };
            Split::ByTime {
                column,
                bounds: bounds.clone(),
            }
        }
    })
}

async fn computed_split(
    engine: &Arc<Engine>,
    project: &str,
    dataset: &TrainingDataset,
    split: &str,
) -> SqlResult<Arc<dyn TableProvider>> {
    for (oid, _) in &dataset.read_versions {
        if engine.catalog.snapshot().relation(*oid).is_none() {
            return Err(SqlError::UndefinedTable(format!(
                "training dataset \"{}\" version {} is in {} and read a relation (oid {oid}) that has been dropped; read its files instead",
                dataset.name,
                dataset.version,
                dataset.format.sql_name()
            )));
        }
    }
    let pins = Arc::new(dataset.read_versions.iter().copied().collect());
    // A stored query runs with its definer's view of the catalog, as a PostgreSQL view does.
    let context = crate::session::build_context(engine, project, &dataset.owner, pins)?;
    let plan = crate::session::plan_in_context(&context, stored_statement(dataset)?).await?;
    let frame = context.execute_logical_plan(plan).await?;
    let index = dataset
        .split
        .names()
        .iter()
        .position(|s| s == split)
        .unwrap_or_default() as i32;
    let rows = with_split_column(frame, &dataset.split)?
        .filter(Expr::Column(Column::from_name(SPLIT_COLUMN)).eq(lit(index)))?;
    Ok(transformed(rows, &dataset.transforms, false)?.into_view())
}

fn check_split_names<'a>(names: impl Iterator<Item = &'a String>) -> SqlResult<()> {
    let mut seen = Vec::new();
    for name in names {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(SqlError::InvalidParameter(format!(
                "split name \"{name}\" must be letters, digits, _ or - (it names a directory)"
            )));
        }
        if seen.contains(&name) {
            return Err(SqlError::InvalidParameter(format!(
                "split \"{name}\" is named twice"
            )));
        }
        seen.push(name);
    }
    if seen.is_empty() {
        return Err(SqlError::InvalidParameter("SPLIT names no split".into()));
    }
    Ok(())
}

/// A seed for a random split given without SEED; recorded, so RECREATE reuses it.
fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Utc::now().timestamp_nanos_opt().unwrap_or_default() as u128);
    hasher.finish() >> 1
}

/// Adds the split index column; rows that fall in no split (a time outside every bound) go.
fn with_split_column(frame: DataFrame, split: &Split) -> SqlResult<DataFrame> {
    let columns: Vec<Expr> = frame
        .schema()
        .fields()
        .iter()
        .map(|f| Expr::Column(Column::from_name(f.name())))
        .collect();
    let index = match split {
        Split::None => lit(0i32),
        Split::Random { weights, seed } => {
            let mut args = vec![lit(*seed as i64)];
            args.extend(columns);
            let fraction = ScalarUDF::from(SplitFraction::new()).call(args);
            let mut cumulative = 0.0;
            let mut case: Option<CaseBuilder> = None;
            for (index, (_, weight)) in weights.iter().enumerate().take(weights.len() - 1) {
                cumulative += weight;
                let condition = fraction.clone().lt(lit(cumulative));
                case = Some(match case {
                    None => when(condition, lit(index as i32)),
                    Some(mut builder) => builder.when(condition, lit(index as i32)),
                });
            }
            let last = lit(weights.len() as i32 - 1);
            match case {
                None => last,
                Some(mut builder) => builder.otherwise(last)?,
            }
        }
        Split::ByTime { column, bounds } => {
            let time = Expr::Column(Column::from_name(column));
            let time_type = frame
                .schema()
                .as_arrow()
                .field_with_name(column)
                .map(|f| f.data_type().clone())
                .map_err(|e| SqlError::Internal(e.to_string()))?;
            let mut builder: Option<CaseBuilder> = None;
            for (index, (_, comparison, bound)) in bounds.iter().enumerate() {
                let bound = cast(lit(bound.clone()), time_type.clone());
                let condition = match comparison {
                    TimeComparison::Lt => time.clone().lt(bound),
                    TimeComparison::LtEq => time.clone().lt_eq(bound),
                    TimeComparison::Gt => time.clone().gt(bound),
                    TimeComparison::GtEq => time.clone().gt_eq(bound),
                };
                builder = Some(match builder {
                    None => when(condition, lit(index as i32)),
                    Some(mut b) => b.when(condition, lit(index as i32)),
                });
            }
            match builder {
                Some(builder) => builder.end()?,
                None => return Err(SqlError::InvalidParameter("SPLIT names no split".into())),
            }
        }
    };
    Ok(frame
        .with_column(SPLIT_COLUMN, index)?
        .filter(Expr::Column(Column::from_name(SPLIT_COLUMN)).is_not_null())?)
}

/// The split transformations are fitted on: `train`, or the first one.
fn train_index(split: &Split) -> i32 {
    split.names().iter().position(|n| n == "train").unwrap_or(0) as i32
}

/// Fits each transformation on the train split's rows.
async fn fit(
    frame: &DataFrame,
    transforms: &[Transform],
    split: &Split,
) -> SqlResult<Vec<FittedTransform>> {
    if transforms.is_empty() {
        return Ok(Vec::new());
    }
    // One pass over the train split: the scalers' statistics and the categories' distinct values
    // of every transformed column, in one aggregate.
    let train = frame
        .clone()
        .filter(Expr::Column(Column::from_name(SPLIT_COLUMN)).eq(lit(train_index(split))))?;
    let mut aggregates = Vec::new();
    for transform in transforms {
        let value = Expr::Column(Column::from_name(&transform.column));
        match transform.kind {
            TransformKind::StandardScaler | TransformKind::MinMaxScaler => {
                let x = cast(value, DataType::Float64);
                aggregates.extend([
                    avg(x.clone()),
                    stddev_pop(x.clone()),
                    min(x.clone()),
                    max(x),
                ]);
            }
            TransformKind::OneHot | TransformKind::LabelEncoder => {
                aggregates.push(array_agg(cast(value, DataType::Utf8)).distinct().build()?);
            }
        }
    }
    let batches = train.aggregate(vec![], aggregates)?.collect().await?;
    let row = batches
        .iter()
        .find(|b| b.num_rows() == 1)
        .ok_or_else(|| SqlError::Internal("fitting returned no row".into()))?;
    let mut next_column = 0;
    let mut fitted = Vec::with_capacity(transforms.len());
    for transform in transforms {
        let column = transform.column.clone();
        let scaler_statistics = || -> SqlResult<[f64; 4]> {
            let mut values = [0.0; 4];
            for (j, value) in values.iter_mut().enumerate() {
                let statistic = row
                    .column(next_column + j)
                    .as_primitive_opt::<datafusion::arrow::datatypes::Float64Type>();
                *value = match statistic {
                    Some(s) if !s.is_null(0) => s.value(0),
                    _ => {
                        return Err(SqlError::Data(format!(
                            "{} cannot be fitted: column \"{}\" has no value in the train split",
                            transform.kind.sql_name(),
                            transform.column
                        )));
                    }
                };
            }
            Ok(values)
        };
        fitted.push(match transform.kind {
            TransformKind::StandardScaler => {
                let [mean, stddev, _, _] = scaler_statistics()?;
                next_column += 4;
                FittedTransform::StandardScaler {
                    column,
                    mean,
                    stddev,
                }
            }
            TransformKind::MinMaxScaler => {
                let [_, _, min, max] = scaler_statistics()?;
                next_column += 4;
                FittedTransform::MinMaxScaler { column, min, max }
            }
            TransformKind::OneHot | TransformKind::LabelEncoder => {
                let lists = row.column(next_column).as_list_opt::<i32>().ok_or_else(|| {
                    SqlError::Internal("the categories of a column are not a list".into())
                })?;
                next_column += 1;
                let mut categories: Vec<String> = match lists.is_null(0) {
                    true => Vec::new(),
                    false => {
                        let values = lists.value(0);
                        let strings =
                            datafusion::arrow::compute::cast(&values, &DataType::Utf8)
                                .map_err(DataFusionError::from)?;
                        strings
                            .as_string::<i32>()
                            .iter()
                            .flatten()
                            .map(str::to_string)
                            .collect()
                    }
                };
                categories.sort_unstable();
                if transform.kind == TransformKind::OneHot
                    && categories.len() > MAX_ONE_HOT_CATEGORIES
                {
                    return Err(SqlError::InvalidParameter(format!(
                        "one_hot of column \"{}\" would make {} columns (at most {MAX_ONE_HOT_CATEGORIES}); use label_encoder",
                        transform.column,
                        categories.len()
                    )));
                }
                match transform.kind {
                    TransformKind::OneHot => FittedTransform::OneHot { column, categories },
                    _ => FittedTransform::LabelEncoder { column, categories },
                }
            }
        });
    }
    Ok(fitted)
}

/// The output columns, as SQL over the input's columns with their names: each input column as it
/// is, or as its fitted transformation makes it. Training data and served feature vectors both
/// come from this one definition. Scalers give double precision; label_encoder gives the
/// category's index (-1 for a category the train split did not have, NULL for NULL); one_hot
/// replaces the column by one 0/1 integer column per category, named `<column>_<category>`.
pub(crate) fn transformed_columns(
    columns: &[String],
    fitted: &[FittedTransform],
) -> SqlResult<Vec<(String, String)>> {
    let mut items: Vec<(String, String)> = Vec::with_capacity(columns.len());
    for name in columns {
        let value = quote_ident(name);
        let as_text = format!("CAST({value} AS VARCHAR)");
        match fitted.iter().find(|t| t.column() == name) {
            None => items.push((value, name.clone())),
            Some(FittedTransform::StandardScaler { mean, stddev, .. }) => {
                // A constant column has no spread to divide by; it becomes all zeros.
                let divisor = if *stddev > 0.0 { *stddev } else { 1.0 };
                items.push((
                    format!(
                        "(CAST({value} AS DOUBLE) - {}) / {}",
                        float_literal(*mean),
                        float_literal(divisor)
                    ),
                    name.clone(),
                ));
            }
            Some(FittedTransform::MinMaxScaler { min, max, .. }) => {
                let range = if max > min { max - min } else { 1.0 };
                items.push((
                    format!(
                        "(CAST({value} AS DOUBLE) - {}) / {}",
                        float_literal(*min),
                        float_literal(range)
                    ),
                    name.clone(),
                ));
            }
            Some(FittedTransform::LabelEncoder { categories, .. }) => {
                let mut case = format!("CASE WHEN {value} IS NULL THEN CAST(NULL AS BIGINT)");
                for (index, category) in categories.iter().enumerate() {
                    case.push_str(&format!(
                        " WHEN {as_text} = {} THEN {index}",
                        quote_literal(category)
                    ));
                }
                case.push_str(" ELSE -1 END");
                items.push((case, name.clone()));
            }
            Some(FittedTransform::OneHot { categories, .. }) => {
                for category in categories {
                    items.push((
                        format!(
                            "CASE WHEN {as_text} = {} THEN 1 ELSE 0 END",
                            quote_literal(category)
                        ),
                        format!("{name}_{category}"),
                    ));
                }
            }
        }
    }
    if let Some((_, duplicate)) = items
        .iter()
        .enumerate()
        .find(|(i, (_, n))| items[..*i].iter().any(|(_, m)| m == n))
        .map(|(_, item)| item)
    {
        return Err(SqlError::Duplicate(format!(
            "the transformed columns would have two columns named \"{duplicate}\"; rename a column of the view"
        )));
    }
    Ok(items)
}

/// A float literal that parses back to the same value.
fn float_literal(value: f64) -> String {
    format!("CAST('{value:?}' AS DOUBLE)")
}

struct Written {
    columns: Vec<quiver_catalog::ResultColumn>,
    file_schema: String,
    split_rows: Vec<(String, u64)>,
}

/// Computes the rows, writes them in staging, and publishes them to `location`. `replacing`: the
/// rows per split of the files being written again (RECREATE); they are replaced only once the
/// new files are complete and hold the same number of rows.
#[allow(clippy::too_many_arguments)]
async fn write_files(
    session: &Session,
    with_split: DataFrame,
    fitted: &[FittedTransform],
    split: &Split,
    file_format: FileFormat,
    location: &StoreLocation,
    name: &str,
    replacing: Option<&[(String, u64)]>,
) -> SqlResult<Written> {
    let engine = session.engine();
    let split_names = split.names();
    if replacing.is_none() {
        check_location_is_free(location, &split_names, name).await?;
    }
    let output = transformed(with_split, fitted, true)?;
    let output_schema: SchemaRef = Arc::new(output.schema().as_arrow().clone());
    let file_schema: SchemaRef = Arc::new(Schema::new(
        output_schema.fields()[..output_schema.fields().len() - 1].to_vec(),
    ));
    let columns = result_columns(&file_schema, &format!("training dataset \"{name}\""))?;
    let staging = StagingDir::new(engine)?;
    let mut writer = DatasetWriter::create(
        &staging.0,
        file_format,
        file_schema.clone(),
        &split_names,
        ROWS_PER_FILE,
    )?;
    let mut batches = session.stream_frame(output);
    let mut written: u64 = 0;
    let mut reported = std::time::Instant::now();
    while let Some(batch) = batches.next().await {
        let batch = batch?;
        written += batch.num_rows() as u64;
        if reported.elapsed() >= PROGRESS_INTERVAL {
            reported = std::time::Instant::now();
            session.notice(format!(
                "training dataset \"{name}\": {written} rows written"
            ));
        }
        let (result, returned) = tokio::task::spawn_blocking(move || {
            let result = write_batch(&mut writer, &batch);
            (result, writer)
        })
        .await
        .map_err(|e| SqlError::Internal(format!("writing a training dataset failed: {e}")))?;
        writer = returned;
        result?;
    }
    let rows = tokio::task::spawn_blocking(move || writer.finish())
        .await
        .map_err(|e| SqlError::Internal(format!("writing a training dataset failed: {e}")))??;
    let split_rows: Vec<(String, u64)> = split_names.iter().cloned().zip(rows).collect();
    if let Some(expected) = replacing {
        if split_rows != expected {
            return Err(SqlError::Internal(format!(
                "training dataset \"{name}\" was computed again with {split_rows:?} rows per split, not the {expected:?} recorded; its files are left as they were"
            )));
        }
        quiver_storage::remove_splits(location, &split_names).await?;
    }
    session.notice(format!(
        "training dataset \"{name}\": {written} rows written; publishing the files"
    ));
    let published = quiver_storage::publish(&staging.0, location, &split_names).await;
    if let Err(e) = published {
        quiver_storage::remove_splits(location, &split_names).await?;
        return Err(e.into());
    }
    let file_schema = serde_json::to_string(file_schema.as_ref())
        .map_err(|e| SqlError::Internal(format!("recording the schema: {e}")))?;
    Ok(Written {
        columns,
        file_schema,
        split_rows,
    })
}

async fn check_location_is_free(
    location: &StoreLocation,
    split_names: &[String],
    name: &str,
) -> SqlResult<()> {
    if quiver_storage::splits_exist(location, split_names).await? {
        return Err(SqlError::Duplicate(format!(
            "the location of training dataset \"{name}\" already holds files of a split ({}); choose another LOCATION",
            split_names.join(", ")
        )));
    }
    Ok(())
}

/// The names of the splits a SPLIT clause makes.
fn split_names_of(clause: &SplitClause) -> Vec<String> {
    match clause {
        SplitClause::None => Split::None.names(),
        SplitClause::Random { weights, .. } => weights.iter().map(|(n, _)| n.clone()).collect(),
        SplitClause::ByTime { bounds, .. } => bounds.iter().map(|(n, _, _)| n.clone()).collect(),
    }
}

/// The rows with their transformations applied, keeping the split column last when asked.
fn transformed(
    with_split: DataFrame,
    fitted: &[FittedTransform],
    keep_split: bool,
) -> SqlResult<DataFrame> {
    let names: Vec<String> = with_split
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|name| name != SPLIT_COLUMN)
        .collect();
    let mut projection = Vec::with_capacity(names.len() + 1);
    for (sql, name) in transformed_columns(&names, fitted)? {
        projection.push(with_split.parse_sql_expr(&sql)?.alias(name));
    }
    if keep_split {
        projection.push(Expr::Column(Column::from_name(SPLIT_COLUMN)));
    }
    Ok(with_split.select(projection)?)
}

/// Writes each row of `batch` (whose last column is the split index) to its split.
fn write_batch(writer: &mut DatasetWriter, batch: &RecordBatch) -> SqlResult<()> {
    let last = batch.num_columns() - 1;
    let splits = batch.column(last).as_primitive::<Int32Type>().clone();
    let data = batch
        .project(&(0..last).collect::<Vec<_>>())
        .map_err(DataFusionError::from)?;
    let first = splits.values().first().copied();
    if splits.null_count() == 0 && splits.values().iter().all(|s| Some(*s) == first) {
        if let Some(split) = first {
            writer.write(split as usize, &data)?;
        }
        return Ok(());
    }
    let mut seen: Vec<i32> = splits.iter().flatten().collect();
    seen.sort_unstable();
    seen.dedup();
    for split in seen {
        let mask = eq(
            &splits,
            &datafusion::arrow::array::Int32Array::new_scalar(split),
        )
        .map_err(DataFusionError::from)?;
        let rows = filter_record_batch(&data, &mask).map_err(DataFusionError::from)?;
        writer.write(split as usize, &rows)?;
    }
    Ok(())
}

/// A staging directory, removed when dropped: after publishing, or when the write fails or the
/// statement is canceled.
struct StagingDir(PathBuf);

impl StagingDir {
    fn new(engine: &Engine) -> SqlResult<StagingDir> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let unique = format!(
            "{}-{}",
            Utc::now().timestamp_micros(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let dir = engine.data_dir().join(STAGING_DIR).join(unique);
        std::fs::create_dir_all(&dir)
            .map_err(|e| SqlError::Internal(format!("{}: {e}", dir.display())))?;
        Ok(StagingDir(dir))
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.0.display(), error = %e, "cannot remove a staging directory");
        }
    }
}

/// `split_fraction(seed, columns...)`: a number in [0, 1) from a hash of the row's values and the
/// seed. The hash (foldhash with a fixed seed, as DataFusion's hash joins use) does not depend on
/// the machine or the process, so a row gets the same fraction every time.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SplitFraction {
    signature: Signature,
}

impl SplitFraction {
    fn new() -> Self {
        SplitFraction {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for SplitFraction {
    fn name(&self) -> &str {
        "quiver_split_fraction"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let seed = leading_int64(&args, "quiver_split_fraction", "a seed")? as u64;
        // A column may arrive as Utf8View in one plan and Utf8 in another (a scan's own types
        // against the planned ones), and the two hash differently: hash one canonical type.
        let arrays = args.args[1..]
            .iter()
            .map(|value| {
                let array = value.to_array(rows)?;
                let canonical = match array.data_type() {
                    DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
                    DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
                    DataType::Dictionary(_, value) => value.as_ref().clone(),
                    _ => return Ok(array),
                };
                Ok(datafusion::arrow::compute::cast(&array, &canonical)?)
            })
            .collect::<DfResult<Vec<_>>>()?;
        let mut hashes = vec![0u64; rows];
        create_hashes(&arrays, &RandomState::with_seed(seed), &mut hashes)?;
        let fractions: Float64Array = hashes
            .iter()
            .map(|h| (mix(*h) >> 11) as f64 / (1u64 << 53) as f64)
            .collect();
        Ok(ColumnarValue::Array(Arc::new(fractions)))
    }
}

/// The constant first argument of one of Quiver's internal UDFs (a seed, a model's OID), which
/// the rewrite that calls it always writes as an integer literal.
pub(crate) fn leading_int64(args: &ScalarFunctionArgs, udf: &str, what: &str) -> DfResult<i64> {
    match args.args.first() {
        Some(ColumnarValue::Scalar(ScalarValue::Int64(Some(value)))) => Ok(*value),
        _ => Err(DataFusionError::Internal(format!(
            "{udf} needs {what} first"
        ))),
    }
}

/// SplitMix64's finaliser: spreads the combined column hashes over all 64 bits.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The schema `training_dataset(...)` calls are rewritten to read from: not listed, not for users.
/// DataFusion names every table function's scan after the function alone, and plans two scans of
/// one name as the same scan, so `training_dataset('td', 1, 'train')` and `(..., 'test')` in one
/// query would read one split twice; a table name per dataset split keeps them apart.
pub(crate) const DATASET_SCHEMA: &str = "__quiver_training_dataset";

/// Rewrites every `training_dataset(name, version, split)` in a statement into a read of
/// [`DATASET_SCHEMA`]`."name/version/split"`, aliased `training_dataset` unless it has an alias.
pub(crate) fn rewrite_dataset_calls(statement: &mut ast::Statement) -> SqlResult<()> {
    crate::feature_view::rewrite(statement, &mut DatasetCalls)
}

struct DatasetCalls;

impl VisitorMut for DatasetCalls {
    type Break = SqlError;

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<SqlError> {
        let TableFactor::Table {
            name,
            alias,
            args: args @ Some(_),
            ..
        } = factor
        else {
            return ControlFlow::Continue(());
        };
        let is_call = matches!(name.0.as_slice(), [single]
            if single.as_ident().is_some_and(|i| crate::parser::normalize_ident(i) == "training_dataset"));
        if !is_call {
            return ControlFlow::Continue(());
        }
        let usage = || {
            SqlError::InvalidParameter(
                "training_dataset takes a name, a version and a split: training_dataset('td', 1, 'train')"
                    .into(),
            )
        };
        let values: Vec<String> = match args.as_ref().map(|a| a.args.as_slice()) {
            Some(arguments) => {
                let mut values = Vec::new();
                for argument in arguments {
                    let ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(ast::Expr::Value(v))) =
                        argument
                    else {
                        return ControlFlow::Break(usage());
                    };
                    match &v.value {
                        ast::Value::SingleQuotedString(s) => values.push(s.clone()),
                        ast::Value::Number(n, _) => values.push(n.to_string()),
                        _ => return ControlFlow::Break(usage()),
                    }
                }
                values
            }
            None => Vec::new(),
        };
        let [dataset, version, split] = values.as_slice() else {
            return ControlFlow::Break(usage());
        };
        if version.parse::<u32>().is_err() || dataset.contains('/') || split.contains('/') {
            return ControlFlow::Break(usage());
        }
        *name = ast::ObjectName(vec![
            ast::ObjectNamePart::Identifier(ast::Ident::new(DATASET_SCHEMA)),
            ast::ObjectNamePart::Identifier(ast::Ident::with_quote(
                '"',
                format!("{dataset}/{version}/{split}"),
            )),
        ]);
        *args = None;
        if alias.is_none() {
            *alias = Some(ast::TableAlias {
                explicit: true,
                name: ast::Ident::new("training_dataset"),
                columns: vec![],
                at: None,
            });
        }
        ControlFlow::Continue(())
    }
}

/// [`DATASET_SCHEMA`]: the splits of a project's training datasets, by `name/version/split`.
#[derive(Debug)]
pub(crate) struct DatasetSchema {
    pub engine: Arc<Engine>,
    pub project: String,
}

#[async_trait::async_trait]
impl SchemaProvider for DatasetSchema {
    fn table_names(&self) -> Vec<String> {
        Vec::new()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let mut parts = name.rsplitn(3, '/');
        let (Some(split), Some(version), Some(dataset)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Ok(None);
        };
        let Ok(version) = version.parse::<u32>() else {
            return Ok(None);
        };
        split_table(&self.engine, &self.project, dataset, version, split)
            .await
            .map(Some)
            .map_err(|e| DataFusionError::External(Box::new(e)))
    }

    fn table_exist(&self, name: &str) -> bool {
        name.splitn(3, '/').count() == 3
    }
}

/// One split of a training dataset, as a table: its files for parquet, csv and arrow; for npy,
/// hdf5 and tfrecords, whose files DataFusion does not read, the split computed again from the
/// recorded query, offline versions, split and transformations (the rows that were written,
/// before the format's own conversions).
pub(crate) async fn split_table(
    engine: &Arc<Engine>,
    project: &str,
    name: &str,
    version: u32,
    split: &str,
) -> SqlResult<Arc<dyn TableProvider>> {
    let snapshot = engine.catalog.snapshot();
    let dataset = snapshot.training_dataset(project, name, Some(version))?;
    if !dataset.split.names().iter().any(|s| s == split) {
        return Err(SqlError::InvalidParameter(format!(
            "training dataset \"{name}\" version {version} has no split \"{split}\" (its splits: {})",
            dataset.split.names().join(", ")
        )));
    }
    let schema: Schema = serde_json::from_str(&dataset.file_schema)
        .map_err(|e| SqlError::Internal(format!("the recorded schema: {e}")))?;
    let (file_format, extension): (Arc<dyn datafusion::datasource::file_format::FileFormat>, _) =
        match dataset.format {
            DatasetFormat::Parquet => (Arc::new(ParquetFormat::default()), ".parquet"),
            DatasetFormat::Csv => (Arc::new(CsvFormat::default().with_has_header(true)), ".csv"),
            DatasetFormat::Arrow => (Arc::new(ArrowFormat), ".arrow"),
            DatasetFormat::Npy | DatasetFormat::Hdf5 | DatasetFormat::Tfrecords => {
                return computed_split(engine, project, dataset, split).await;
            }
        };
    let location = dataset_location(&dataset.location)?;
    let directory = match &location {
        StoreLocation::Local(root) => format!("file://{}/{split}/", root.display()),
        StoreLocation::Remote { base, store, .. } => {
            engine.runtime().register_object_store(base, store.clone());
            format!("{base}{split}/")
        }
    };
    let url = ListingTableUrl::parse(&directory)?;
    let options = ListingOptions::new(file_format).with_file_extension(extension);
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(Arc::new(schema));
    Ok(Arc::new(ListingTable::try_new(config)?))
}
