//! `AsofJoinExec`: the ASOF join as a streaming sort-merge.
//!
//! Both inputs are hash-partitioned on the keys, so a key's rows meet in one partition and the
//! partitions run on all cores, and sorted by (keys, time) within a partition: DataFusion's
//! physical optimiser inserts those repartitions and sorts from [`ExecutionPlan::
//! required_input_distribution`] and [`ExecutionPlan::required_input_ordering`], and its sort
//! spills to disk under memory pressure. The join then walks both sorted streams once, holding only
//! the right batch it is reading and the batch of the current match: no nested loops, no search of
//! the right side per left row, and never the whole right side in memory.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, new_null_array};
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::compute::{cast, interleave};
use datafusion::arrow::datatypes::{DataType, Int64Type, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{
    EquivalenceProperties, LexRequirement, OrderingRequirements, PhysicalExpr,
    PhysicalSortRequirement,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties, distribution_requirements::InputDistributionRequirements,
};
use futures::StreamExt;

use crate::asof::MatchCondition;

/// Which way from the left time a match is looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MatchDirection {
    /// The latest right row at (or strictly before) the left time.
    Backward,
    /// The earliest right row at (or strictly after) the left time.
    Forward,
}

/// What a partition's merge needs from the plan.
#[derive(Debug)]
struct JoinSpec {
    left_keys: Vec<Arc<dyn PhysicalExpr>>,
    right_keys: Vec<Arc<dyn PhysicalExpr>>,
    left_time: Arc<dyn PhysicalExpr>,
    right_time: Arc<dyn PhysicalExpr>,
    condition: MatchCondition,
    right_sequence: Option<Arc<dyn PhysicalExpr>>,
    ttl_micros: Option<i64>,
    /// The right input's columns that are output (all but the commit sequence).
    right_output: Vec<usize>,
    schema: SchemaRef,
}

#[derive(Debug)]
pub(crate) struct AsofJoinExec {
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    spec: Arc<JoinSpec>,
    ttl_seconds: Option<i64>,
    properties: Arc<PlanProperties>,
}

impl AsofJoinExec {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn try_new(
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
        keys: Vec<(Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>)>,
        left_time: Arc<dyn PhysicalExpr>,
        right_time: Arc<dyn PhysicalExpr>,
        condition: MatchCondition,
        right_sequence: Option<Arc<dyn PhysicalExpr>>,
        ttl_seconds: Option<i64>,
        right_output: Vec<usize>,
    ) -> DfResult<AsofJoinExec> {
        let (left_keys, right_keys) = keys.into_iter().unzip();
        // From the physical inputs, whose types may differ from the logical plan's (a scan may
        // read strings as Utf8View): left columns, then the right's output columns, nullable.
        let right_schema = right.schema();
        let fields: Vec<_> = left
            .schema()
            .fields()
            .iter()
            .cloned()
            .chain(
                right_output
                    .iter()
                    .map(|&i| Arc::new(right_schema.field(i).clone().with_nullable(true))),
            )
            .collect();
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let ttl_micros = ttl_seconds
            .map(|s| {
                s.checked_mul(1_000_000).ok_or_else(|| {
                    DataFusionError::Plan(format!("ttl of {s} seconds is too large"))
                })
            })
            .transpose()?;
        // Left rows come out in the order they go in, partition by partition; the left's
        // partitioning (by the keys) holds for the output, whose first columns are the left's.
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            left.output_partitioning().clone(),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(AsofJoinExec {
            left,
            right,
            spec: Arc::new(JoinSpec {
                left_keys,
                right_keys,
                left_time,
                right_time,
                condition,
                right_sequence,
                ttl_micros,
                right_output,
                schema,
            }),
            ttl_seconds,
            properties: Arc::new(properties),
        })
    }

    fn with_inputs(
        &self,
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
    ) -> DfResult<AsofJoinExec> {
        let spec = &self.spec;
        AsofJoinExec::try_new(
            left,
            right,
            spec.left_keys
                .iter()
                .cloned()
                .zip(spec.right_keys.iter().cloned())
                .collect(),
            spec.left_time.clone(),
            spec.right_time.clone(),
            spec.condition,
            spec.right_sequence.clone(),
            self.ttl_seconds,
            spec.right_output.clone(),
        )
    }
}

/// Ascending, as the merge compares rows; where NULLs sort does not matter, they never match.
const ASCENDING: SortOptions = SortOptions {
    descending: false,
    nulls_first: true,
};

fn requirement(
    exprs: impl IntoIterator<Item = (Arc<dyn PhysicalExpr>, SortOptions)>,
) -> Option<OrderingRequirements> {
    LexRequirement::new(
        exprs
            .into_iter()
            .map(|(expr, options)| PhysicalSortRequirement::new(expr, Some(options))),
    )
    .map(OrderingRequirements::new)
}

impl DisplayAs for AsofJoinExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let spec = &self.spec;
        let on: Vec<String> = spec
            .left_keys
            .iter()
            .zip(&spec.right_keys)
            .map(|(l, r)| format!("{l} = {r}"))
            .collect();
        write!(
            f,
            "AsofJoinExec: match={} {} {}, on=[{}]",
            spec.left_time,
            spec.condition.operator(),
            spec.right_time,
            on.join(", ")
        )?;
        if let Some(ttl) = self.ttl_seconds {
            write!(f, ", ttl={ttl}s")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for AsofJoinExec {
    fn name(&self) -> &str {
        "AsofJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        let spec = &self.spec;
        datafusion::physical_plan::apply_expression_roots(
            spec.left_keys
                .iter()
                .chain(&spec.right_keys)
                .chain([&spec.left_time, &spec.right_time])
                .chain(spec.right_sequence.iter()),
            f,
        )
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.left, &self.right]
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        self.input_distribution_requirements().into_per_child()
    }

    /// Both sides partitioned alike by their keys, so a key's rows meet in one partition.
    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        if self.spec.left_keys.is_empty() {
            return InputDistributionRequirements::new(vec![
                Distribution::SinglePartition,
                Distribution::SinglePartition,
            ]);
        }
        InputDistributionRequirements::co_partitioned(vec![
            Distribution::KeyPartitioned(self.spec.left_keys.clone()),
            Distribution::KeyPartitioned(self.spec.right_keys.clone()),
        ])
    }

    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        let spec = &self.spec;
        let left = spec
            .left_keys
            .iter()
            .chain([&spec.left_time])
            .map(|e| (e.clone(), ASCENDING));
        // Among right rows of equal time the later commit must be the one the merge settles on:
        // the last one looking backward, the first one looking forward.
        let sequence_order = SortOptions {
            descending: spec.condition.direction() == MatchDirection::Forward,
            nulls_first: true,
        };
        let right = spec
            .right_keys
            .iter()
            .chain([&spec.right_time])
            .map(|e| (e.clone(), ASCENDING))
            .chain(
                spec.right_sequence
                    .iter()
                    .map(|e| (e.clone(), sequence_order)),
            );
        vec![requirement(left), requirement(right)]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true, false]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match <[Arc<dyn ExecutionPlan>; 2]>::try_from(children) {
            Ok([left, right]) => Ok(Arc::new(self.with_inputs(left, right)?)),
            Err(_) => Err(DataFusionError::Internal(
                "AsofJoinExec takes two children".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let left = self.left.execute(partition, context.clone())?;
        let right = self.right.execute(partition, context)?;
        let merge = Merge::try_new(self.spec.clone(), left, right)?;
        let batches = futures::stream::try_unfold(merge, |mut merge| async move {
            Ok(merge.next_batch().await?.map(|batch| (batch, merge)))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.spec.schema.clone(),
            batches,
        )))
    }
}

/// One batch's keys and times in comparable form.
struct SortKeys {
    /// `None` when the join has no keys.
    keys: Option<Rows>,
    times: Rows,
    /// Whether the row can match at all: no NULL in its keys or time.
    valid: Vec<bool>,
    /// The time in microseconds since the epoch, when a ttl applies.
    micros: Option<Vec<Option<i64>>>,
}

/// A right batch (its output columns) with its sort keys.
struct RightBatch {
    columns: RecordBatch,
    sort: SortKeys,
}

/// The merge of one partition.
struct Merge {
    spec: Arc<JoinSpec>,
    left: SendableRecordBatchStream,
    right: SendableRecordBatchStream,
    key_converter: RowConverter,
    time_converter: RowConverter,
    /// The right batch being read and the position of the next unread row in it.
    current: Option<Arc<RightBatch>>,
    position: usize,
    right_done: bool,
    /// Looking backward: the last right row that satisfied the condition so far.
    candidate: Option<(Arc<RightBatch>, usize)>,
    /// One row of NULLs in the right output columns, for left rows without a match.
    nulls: RecordBatch,
}

impl Merge {
    fn try_new(
        spec: Arc<JoinSpec>,
        left: SendableRecordBatchStream,
        right: SendableRecordBatchStream,
    ) -> DfResult<Merge> {
        let left_schema = left.schema();
        let key_fields = spec
            .left_keys
            .iter()
            .map(|e| {
                Ok(SortField::new_with_options(
                    e.data_type(&left_schema)?,
                    ASCENDING,
                ))
            })
            .collect::<DfResult<Vec<_>>>()?;
        let time_type = spec.left_time.data_type(&left_schema)?;
        let key_converter = RowConverter::new(key_fields)?;
        let time_converter =
            RowConverter::new(vec![SortField::new_with_options(time_type, ASCENDING)])?;
        // The output's right fields, which are nullable whatever the right input says.
        let right_fields = spec.schema.fields()[left_schema.fields().len()..].to_vec();
        let null_columns: Vec<ArrayRef> = right_fields
            .iter()
            .map(|field| new_null_array(field.data_type(), 1))
            .collect();
        let nulls = RecordBatch::try_new(Arc::new(Schema::new(right_fields)), null_columns)?;
        Ok(Merge {
            spec,
            left,
            right,
            key_converter,
            time_converter,
            current: None,
            position: 0,
            right_done: false,
            candidate: None,
            nulls,
        })
    }

    async fn next_batch(&mut self) -> DfResult<Option<RecordBatch>> {
        while let Some(batch) = self.left.next().await {
            let batch = batch?;
            if batch.num_rows() > 0 {
                return self.join(batch).await.map(Some);
            }
        }
        Ok(None)
    }

    fn sort_keys(
        &self,
        batch: &RecordBatch,
        keys: &[Arc<dyn PhysicalExpr>],
        time: &Arc<dyn PhysicalExpr>,
    ) -> DfResult<SortKeys> {
        let rows = batch.num_rows();
        let key_arrays = keys
            .iter()
            .map(|e| e.evaluate(batch)?.into_array(rows))
            .collect::<DfResult<Vec<_>>>()?;
        let time_array = time.evaluate(batch)?.into_array(rows)?;
        let mut valid = vec![true; rows];
        for array in key_arrays.iter().chain([&time_array]) {
            if let Some(nulls) = array.logical_nulls() {
                for (row, ok) in valid.iter_mut().enumerate() {
                    *ok &= nulls.is_valid(row);
                }
            }
        }
        let micros = match self.spec.ttl_micros {
            Some(_) => Some(epoch_micros(&time_array)?),
            None => None,
        };
        Ok(SortKeys {
            keys: if key_arrays.is_empty() {
                None
            } else {
                Some(self.key_converter.convert_columns(&key_arrays)?)
            },
            times: self.time_converter.convert_columns(&[time_array])?,
            valid,
            micros,
        })
    }

    /// Makes `current` hold an unread row, reading right batches as needed; false at the end.
    async fn has_right_row(&mut self) -> DfResult<bool> {
        loop {
            if let Some(batch) = &self.current
                && self.position < batch.columns.num_rows()
            {
                return Ok(true);
            }
            if self.right_done {
                return Ok(false);
            }
            match self.right.next().await {
                Some(batch) => {
                    let batch = batch?;
                    let sort =
                        self.sort_keys(&batch, &self.spec.right_keys, &self.spec.right_time)?;
                    self.current = Some(Arc::new(RightBatch {
                        columns: batch.project(&self.spec.right_output)?,
                        sort,
                    }));
                    self.position = 0;
                }
                None => {
                    self.right_done = true;
                    self.current = None;
                }
            }
        }
    }

    /// The right row matching left row `row`, which has valid keys and time.
    async fn find(
        &mut self,
        left: &SortKeys,
        row: usize,
    ) -> DfResult<Option<(Arc<RightBatch>, usize)>> {
        // Without keys (`ON true`) every right row has the left row's key.
        let key = left.keys.as_ref().map(|keys| keys.row(row));
        let time = left.times.row(row);
        let inclusive = self.spec.condition.inclusive();
        let direction = self.spec.condition.direction();
        while self.has_right_row().await? {
            let Some(batch) = self.current.as_ref() else {
                break;
            };
            let at = self.position;
            if !batch.sort.valid[at] {
                self.position += 1;
                continue;
            }
            let key_order = match (&batch.sort.keys, &key) {
                (Some(keys), Some(key)) => keys.row(at).cmp(key),
                _ => Ordering::Equal,
            };
            match key_order {
                Ordering::Less => {
                    self.position += 1;
                    continue;
                }
                Ordering::Greater => break,
                Ordering::Equal => {}
            }
            let right_time = batch.sort.times.row(at).cmp(&time);
            match direction {
                MatchDirection::Backward => {
                    let satisfies = right_time == Ordering::Less
                        || (inclusive && right_time == Ordering::Equal);
                    if !satisfies {
                        break;
                    }
                    self.candidate = Some((batch.clone(), at));
                    self.position += 1;
                }
                MatchDirection::Forward => {
                    let too_early = right_time == Ordering::Less
                        || (!inclusive && right_time == Ordering::Equal);
                    if too_early {
                        self.position += 1;
                        continue;
                    }
                    // Not consumed: the next left row of this key may match it too.
                    return Ok(Some((batch.clone(), at)));
                }
            }
        }
        Ok(match (direction, &self.candidate) {
            (MatchDirection::Backward, Some((batch, at)))
                if batch.sort.keys.as_ref().map(|keys| keys.row(*at)) == key =>
            {
                Some((batch.clone(), *at))
            }
            _ => None,
        })
    }

    async fn join(&mut self, left: RecordBatch) -> DfResult<RecordBatch> {
        let spec = self.spec.clone();
        let sort = self.sort_keys(&left, &spec.left_keys, &spec.left_time)?;
        // Index 0 is the row of NULLs; the matched right batches follow.
        let mut sources: Vec<Arc<RightBatch>> = Vec::new();
        let mut picks: Vec<(usize, usize)> = Vec::with_capacity(left.num_rows());
        for row in 0..left.num_rows() {
            let found = if sort.valid[row] {
                self.find(&sort, row).await?
            } else {
                None
            };
            let found = found.filter(|(batch, at)| within_ttl(&spec, &sort, row, batch, *at));
            picks.push(match found {
                None => (0, 0),
                Some((batch, at)) => {
                    let source = match sources.iter().position(|s| Arc::ptr_eq(s, &batch)) {
                        Some(index) => index,
                        None => {
                            sources.push(batch);
                            sources.len() - 1
                        }
                    };
                    (source + 1, at)
                }
            });
        }
        let mut columns = left.columns().to_vec();
        for column in 0..self.nulls.num_columns() {
            let arrays: Vec<&dyn Array> = std::iter::once(self.nulls.column(column).as_ref())
                .chain(sources.iter().map(|s| s.columns.column(column).as_ref()))
                .collect();
            columns.push(interleave(&arrays, &picks)?);
        }
        Ok(RecordBatch::try_new(spec.schema.clone(), columns)?)
    }
}

/// Whether a match is no farther from the left time than the right group's ttl.
fn within_ttl(spec: &JoinSpec, left: &SortKeys, row: usize, right: &RightBatch, at: usize) -> bool {
    let (Some(ttl), Some(left_micros), Some(right_micros)) =
        (spec.ttl_micros, &left.micros, &right.sort.micros)
    else {
        return true;
    };
    match (left_micros[row], right_micros[at]) {
        (Some(l), Some(r)) => l.abs_diff(r) <= ttl.unsigned_abs(),
        _ => true,
    }
}

/// Times as microseconds since the epoch, for the ttl: timestamps (with or without time zone)
/// and dates.
fn epoch_micros(times: &ArrayRef) -> DfResult<Vec<Option<i64>>> {
    let as_timestamp =
        cast(times, &DataType::Timestamp(TimeUnit::Microsecond, None)).map_err(|_| {
            DataFusionError::Plan(format!(
                "a ttl needs a timestamp or date event time to compare ASOF JOIN times, not {}",
                times.data_type()
            ))
        })?;
    let micros = cast(&as_timestamp, &DataType::Int64)?;
    Ok(micros.as_primitive::<Int64Type>().iter().collect())
}
