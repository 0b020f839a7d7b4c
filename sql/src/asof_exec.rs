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

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Decimal128Array, Decimal256Array, RecordBatch, new_null_array,
};
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::compute::{cast, interleave};
use datafusion::arrow::datatypes::i256;
use datafusion::arrow::datatypes::{
    DataType, Field, FieldRef, Int64Type, Schema, SchemaRef, TimeUnit,
};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::ColumnarValue;
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
    /// With one integer key and an integer-like time: the packed (key, time) of each side, which
    /// the inputs are sorted by and the merge compares.
    packed: Option<(PackedKeyTime, PackedKeyTime)>,
    /// The right input's columns that are output (all but the commit sequence).
    right_output: Vec<usize>,
    schema: SchemaRef,
}

#[derive(Debug)]
pub(crate) struct AsofJoinExec {
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    spec: Arc<JoinSpec>,
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
        let (left_keys, right_keys): (Vec<_>, Vec<_>) = keys.into_iter().unzip();
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
        let packed = match (&left_keys[..], &right_keys[..]) {
            ([left_key], [right_key])
                if packs(&left_key.data_type(&left.schema())?)
                    && packs(&right_key.data_type(&right_schema)?)
                    && packs(&left_time.data_type(&left.schema())?)
                    && packs(&right_time.data_type(&right_schema)?) =>
            {
                Some((
                    PackedKeyTime {
                        key: Arc::clone(left_key),
                        time: left_time.clone(),
                        sequence: None,
                    },
                    PackedKeyTime {
                        key: Arc::clone(right_key),
                        time: right_time.clone(),
                        // Looking backward, the merge settles ties by the sequence itself
                        // (`Merge::find`), so the right side sorts by 128 bits, not 256: the
                        // sorts are most of a feature-store join's time.
                        sequence: right_sequence
                            .clone()
                            .filter(|_| condition.direction() == MatchDirection::Forward)
                            .map(|s| (s, sequence_order(condition).descending)),
                    },
                ))
            }
            _ => None,
        };
        let ttl_micros = ttl_seconds
            .map(|s| {
                s.checked_mul(1_000_000).ok_or_else(|| {
                    DataFusionError::Plan(format!("ttl of {s} seconds is too large"))
                })
            })
            .transpose()?;
        // Left rows come out in the order they go in, partition by partition, so the left's
        // ordering and partitioning (by the keys) hold for the output, whose first columns are the
        // left's. A chained ASOF join relies on it: its left input is this join's output.
        let left_ordering = left.output_ordering().cloned();
        let properties = PlanProperties::new(
            EquivalenceProperties::new_with_orderings(schema.clone(), left_ordering),
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
                packed,
                right_output,
                schema,
            }),
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
            // Made from whole seconds, so this is exact.
            spec.ttl_micros.map(|micros| micros / 1_000_000),
            spec.right_output.clone(),
        )
    }
}

/// How the right side's commit sequence sorts within rows of equal key and time: the later commit
/// must be the one the merge settles on, the last one looking backward, the first looking forward.
fn sequence_order(condition: MatchCondition) -> SortOptions {
    SortOptions {
        descending: condition.direction() == MatchDirection::Forward,
        nulls_first: true,
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
        if let Some(micros) = spec.ttl_micros {
            write!(f, ", ttl={}s", micros / 1_000_000)?;
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
        if let Some((left, right)) = &spec.packed {
            // One column each; the right's holds the commit sequence too.
            let packed =
                |p: &PackedKeyTime| (Arc::new(p.clone()) as Arc<dyn PhysicalExpr>, ASCENDING);
            return vec![requirement([packed(left)]), requirement([packed(right)])];
        }
        let ascending = |e: &Arc<dyn PhysicalExpr>| (e.clone(), ASCENDING);
        let left = spec
            .left_keys
            .iter()
            .chain([&spec.left_time])
            .map(ascending);
        let sequence = spec
            .right_sequence
            .iter()
            .map(|e| (e.clone(), sequence_order(spec.condition)));
        let right = spec
            .right_keys
            .iter()
            .chain([&spec.right_time])
            .map(ascending)
            .chain(sequence);
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

#[derive(Clone, Copy)]
enum Side {
    Left,
    Right,
}

/// One batch's keys and times in comparable form.
struct SortKeys {
    order: RowOrder,
    /// Whether the row can match at all: no NULL in its keys or time.
    valid: Vec<bool>,
    /// The time in microseconds since the epoch, when a ttl applies.
    micros: Option<Vec<Option<i64>>>,
}

/// How rows of a batch compare by key and by time.
enum RowOrder {
    /// One integer key and an integer-like time packed as by [`PackedKeyTime`].
    Packed(Vec<i128>),
    /// Any keys and time, in Arrow's row format; `keys` is `None` when the join has no keys.
    Rows { keys: Option<Rows>, times: Rows },
}

impl SortKeys {
    /// How row `at` of these keys compares with row `other_at` of `other`'s by key.
    fn key_cmp(&self, at: usize, other: &SortKeys, other_at: usize) -> Ordering {
        match (&self.order, &other.order) {
            (RowOrder::Packed(a), RowOrder::Packed(b)) => (a[at] >> 64).cmp(&(b[other_at] >> 64)),
            (RowOrder::Rows { keys: Some(a), .. }, RowOrder::Rows { keys: Some(b), .. }) => {
                a.row(at).cmp(&b.row(other_at))
            }
            // No keys (`ON true`): every row has every other row's key.
            _ => Ordering::Equal,
        }
    }

    /// How row `at` compares with row `other_at` of `other` by time (for rows of equal keys).
    fn time_cmp(&self, at: usize, other: &SortKeys, other_at: usize) -> Ordering {
        match (&self.order, &other.order) {
            (RowOrder::Packed(a), RowOrder::Packed(b)) => a[at].cmp(&b[other_at]),
            (RowOrder::Rows { times: a, .. }, RowOrder::Rows { times: b, .. }) => {
                a.row(at).cmp(&b.row(other_at))
            }
            _ => Ordering::Equal,
        }
    }
}

/// Whether a key or time of this type packs into 64 bits, order kept.
fn packs(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::Date32
            | DataType::Date64
            | DataType::Timestamp(_, _)
    )
}

/// `(key, time)` as one `Decimal128` whose order is the lexicographic order of the pair: the key
/// in the high 64 bits, the time with its sign bit flipped in the low 64. Sorting by one primitive
/// column is several times faster in DataFusion than by two (its comparator for several columns
/// is dynamic), and the merge then compares one integer. NULL when the key or the time is.
///
/// With a `sequence` (a feature group's commit order, for ties; only looking forward, where the
/// first row at or after the left time must be the later commit's) the sort column is a
/// `Decimal256` of (key, time, sequence), the sequence inverted when it must sort descending.
#[derive(Debug, Clone, Eq)]
pub(crate) struct PackedKeyTime {
    key: Arc<dyn PhysicalExpr>,
    time: Arc<dyn PhysicalExpr>,
    /// The commit sequence and whether it sorts descending.
    sequence: Option<(Arc<dyn PhysicalExpr>, bool)>,
}

impl PartialEq for PackedKeyTime {
    fn eq(&self, other: &Self) -> bool {
        let same_sequence = match (&self.sequence, &other.sequence) {
            (Some((a, a_descending)), Some((b, b_descending))) => {
                **a == **b && a_descending == b_descending
            }
            (None, None) => true,
            _ => false,
        };
        *self.key == *other.key && *self.time == *other.time && same_sequence
    }
}

impl std::hash::Hash for PackedKeyTime {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state);
        self.time.hash(state);
        if let Some((sequence, descending)) = &self.sequence {
            sequence.hash(state);
            descending.hash(state);
        }
    }
}

/// A signed 64-bit value as an unsigned one of the same order.
fn order_bits(value: i64) -> u64 {
    (value as u64) ^ (1 << 63)
}

impl PackedKeyTime {
    fn as_i64(expr: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> DfResult<ArrayRef> {
        let array = expr.evaluate(batch)?.into_array(batch.num_rows())?;
        Ok(cast(&array, &DataType::Int64)?)
    }

    /// The packed (key, time) the merge compares.
    fn pack(&self, batch: &RecordBatch) -> DfResult<Decimal128Array> {
        let keys = Self::as_i64(&self.key, batch)?;
        let times = Self::as_i64(&self.time, batch)?;
        let packed: Decimal128Array = keys
            .as_primitive::<Int64Type>()
            .iter()
            .zip(times.as_primitive::<Int64Type>().iter())
            .map(|(key, time)| Some(((key? as i128) << 64) | i128::from(order_bits(time?))))
            .collect();
        Ok(packed.with_precision_and_scale(38, 0)?)
    }

    /// The sort column: the packed (key, time), with the sequence when there is one.
    fn sort_column(&self, batch: &RecordBatch) -> DfResult<ArrayRef> {
        let Some((sequence, descending)) = &self.sequence else {
            return Ok(Arc::new(self.pack(batch)?));
        };
        let keys = Self::as_i64(&self.key, batch)?;
        let times = Self::as_i64(&self.time, batch)?;
        let sequences = Self::as_i64(sequence, batch)?;
        let packed: Decimal256Array = keys
            .as_primitive::<Int64Type>()
            .iter()
            .zip(times.as_primitive::<Int64Type>().iter())
            .zip(sequences.as_primitive::<Int64Type>().iter())
            .map(|((key, time), sequence)| {
                let mut sequence = order_bits(sequence.unwrap_or(i64::MIN));
                if *descending {
                    sequence = !sequence;
                }
                let low = (u128::from(order_bits(time?)) << 64) | u128::from(sequence);
                Some(i256::from_parts(low, i128::from(key?)))
            })
            .collect();
        Ok(Arc::new(packed.with_precision_and_scale(76, 0)?))
    }
}

impl fmt::Display for PackedKeyTime {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match &self.sequence {
            Some((sequence, _)) => write!(f, "({}, {}, {})", self.key, self.time, sequence),
            None => write!(f, "({}, {})", self.key, self.time),
        }
    }
}

impl PhysicalExpr for PackedKeyTime {
    fn return_field(&self, _input_schema: &Schema) -> DfResult<FieldRef> {
        let data_type = match self.sequence {
            Some(_) => DataType::Decimal256(76, 0),
            None => DataType::Decimal128(38, 0),
        };
        Ok(Arc::new(Field::new(self.to_string(), data_type, true)))
    }

    fn evaluate(&self, batch: &RecordBatch) -> DfResult<ColumnarValue> {
        Ok(ColumnarValue::Array(self.sort_column(batch)?))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        let mut children = vec![&self.key, &self.time];
        children.extend(self.sequence.as_ref().map(|(sequence, _)| sequence));
        children
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> DfResult<Arc<dyn PhysicalExpr>> {
        let expected = 2 + usize::from(self.sequence.is_some());
        if children.len() != expected {
            return Err(DataFusionError::Internal(format!(
                "PackedKeyTime takes {expected} children"
            )));
        }
        let sequence = match &self.sequence {
            Some((_, descending)) => children.pop().map(|s| (s, *descending)),
            None => None,
        };
        let time = children.pop();
        let key = children.pop();
        match (key, time) {
            (Some(key), Some(time)) => Ok(Arc::new(PackedKeyTime {
                key,
                time,
                sequence,
            })),
            _ => Err(DataFusionError::Internal(
                "PackedKeyTime takes a key and a time".into(),
            )),
        }
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// A right batch (its output columns) with its sort keys.
struct RightBatch {
    columns: RecordBatch,
    sort: SortKeys,
    /// The commit sequence of each row, when ties are settled by the merge (looking backward
    /// with packed keys, the sort leaves rows of equal key and time in any order).
    sequence: Option<Vec<i64>>,
}

impl RightBatch {
    /// Whether row `at` loses a tie to row `other_at` of `other`: the same key and time, and an
    /// earlier commit.
    fn loses_tie_to(&self, at: usize, other: &RightBatch, other_at: usize) -> bool {
        let (Some(sequence), Some(other_sequence)) = (&self.sequence, &other.sequence) else {
            return false;
        };
        self.sort.key_cmp(at, &other.sort, other_at) == Ordering::Equal
            && self.sort.time_cmp(at, &other.sort, other_at) == Ordering::Equal
            && sequence[at] < other_sequence[other_at]
    }
}

/// How the merge puts a batch's keys and times in comparable form.
enum Comparison {
    /// Packed as the inputs are sorted: [`JoinSpec::packed`].
    Packed {
        left: PackedKeyTime,
        right: PackedKeyTime,
    },
    /// In Arrow's row format.
    Rows {
        keys: RowConverter,
        times: RowConverter,
    },
}

/// The merge of one partition.
struct Merge {
    spec: Arc<JoinSpec>,
    left: SendableRecordBatchStream,
    right: SendableRecordBatchStream,
    comparison: Comparison,
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
        let comparison = match &spec.packed {
            Some((left, right)) => Comparison::Packed {
                left: left.clone(),
                right: right.clone(),
            },
            None => {
                let sort_field = |e: &Arc<dyn PhysicalExpr>| -> DfResult<SortField> {
                    Ok(SortField::new_with_options(
                        e.data_type(&left_schema)?,
                        ASCENDING,
                    ))
                };
                Comparison::Rows {
                    keys: RowConverter::new(
                        spec.left_keys
                            .iter()
                            .map(sort_field)
                            .collect::<DfResult<_>>()?,
                    )?,
                    times: RowConverter::new(vec![sort_field(&spec.left_time)?])?,
                }
            }
        };
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
            comparison,
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

    fn sort_keys(&self, batch: &RecordBatch, side: Side) -> DfResult<SortKeys> {
        let spec = &self.spec;
        let (keys, time) = match side {
            Side::Left => (&spec.left_keys, &spec.left_time),
            Side::Right => (&spec.right_keys, &spec.right_time),
        };
        let rows = batch.num_rows();
        // The ttl compares times as microseconds; only then are they needed apart from the order.
        let micros = |times: &ArrayRef| -> DfResult<Option<Vec<Option<i64>>>> {
            spec.ttl_micros.map(|_| epoch_micros(times)).transpose()
        };
        let (key_converter, time_converter) = match &self.comparison {
            Comparison::Rows { keys, times } => (keys, times),
            Comparison::Packed { left, right } => {
                let packed = match side {
                    Side::Left => left,
                    Side::Right => right,
                };
                let values = packed.pack(batch)?;
                let micros = match spec.ttl_micros {
                    Some(_) => micros(&time.evaluate(batch)?.into_array(rows)?)?,
                    None => None,
                };
                return Ok(SortKeys {
                    valid: (0..rows).map(|row| values.is_valid(row)).collect(),
                    order: RowOrder::Packed(values.values().to_vec()),
                    micros,
                });
            }
        };
        let time_array = time.evaluate(batch)?.into_array(rows)?;
        let key_arrays = keys
            .iter()
            .map(|e| e.evaluate(batch)?.into_array(rows))
            .collect::<DfResult<Vec<_>>>()?;
        let mut valid = vec![true; rows];
        for array in key_arrays.iter().chain([&time_array]) {
            if let Some(nulls) = array.logical_nulls() {
                for (row, ok) in valid.iter_mut().enumerate() {
                    *ok &= nulls.is_valid(row);
                }
            }
        }
        Ok(SortKeys {
            order: RowOrder::Rows {
                keys: if key_arrays.is_empty() {
                    None
                } else {
                    Some(key_converter.convert_columns(&key_arrays)?)
                },
                times: time_converter.convert_columns(std::slice::from_ref(&time_array))?,
            },
            valid,
            micros: micros(&time_array)?,
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
                    let sort = self.sort_keys(&batch, Side::Right)?;
                    let sequence = match &self.spec.right_sequence {
                        Some(sequence)
                            if self.spec.condition.direction() == MatchDirection::Backward =>
                        {
                            let values = PackedKeyTime::as_i64(sequence, &batch)?;
                            Some(
                                values
                                    .as_primitive::<Int64Type>()
                                    .iter()
                                    .map(|s| s.unwrap_or(i64::MIN))
                                    .collect(),
                            )
                        }
                        _ => None,
                    };
                    self.current = Some(Arc::new(RightBatch {
                        columns: batch.project(&self.spec.right_output)?,
                        sort,
                        sequence,
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
            match batch.sort.key_cmp(at, left, row) {
                Ordering::Less => {
                    self.position += 1;
                    continue;
                }
                Ordering::Greater => break,
                Ordering::Equal => {}
            }
            let right_time = batch.sort.time_cmp(at, left, row);
            match direction {
                MatchDirection::Backward => {
                    let satisfies = right_time == Ordering::Less
                        || (inclusive && right_time == Ordering::Equal);
                    if !satisfies {
                        break;
                    }
                    // Rows of equal key and time may come in any commit order: the later
                    // commit stays the candidate.
                    let keep = match &self.candidate {
                        Some((candidate, candidate_at)) => {
                            batch.loses_tie_to(at, candidate, *candidate_at)
                        }
                        None => false,
                    };
                    if !keep {
                        self.candidate = Some((batch.clone(), at));
                    }
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
                if batch.sort.key_cmp(*at, left, row) == Ordering::Equal =>
            {
                Some((batch.clone(), *at))
            }
            _ => None,
        })
    }

    async fn join(&mut self, left: RecordBatch) -> DfResult<RecordBatch> {
        let spec = self.spec.clone();
        let sort = self.sort_keys(&left, Side::Left)?;
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
