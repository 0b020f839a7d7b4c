//! TFRecord files of `tf.train.Example` records, as TensorFlow's `TFRecordDataset` reads them.
//!
//! A record is framed as `length (u64 LE) | masked crc32c(length) | data | masked crc32c(data)`.
//! Each Example holds one feature per column: integers, booleans, dates (days since the epoch) and
//! timestamps (microseconds since the epoch) as `int64_list`; floating point as `float_list`
//! (TensorFlow has no double list, so doubles are narrowed to float32); text and bytes as
//! `bytes_list`; arrays as lists of their elements; NULL as an empty list, TensorFlow's missing
//! value. The messages are written with prost's wire-format encoders, field by field, so that a
//! row costs no map or per-feature allocation.

use std::io::Write;

use bytes::BufMut;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float32Type, Int64Type, SchemaRef};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

use crate::dataset::temporal_as_integers;
use crate::error::{StorageError, StorageResult};

/// The tag numbers of `tf.train.Example` (tensorflow/core/example/{example,feature}.proto).
const EXAMPLE_FEATURES: u32 = 1;
const FEATURES_FEATURE: u32 = 1;
const MAP_KEY: u32 = 1;
const MAP_VALUE: u32 = 2;
const FEATURE_BYTES_LIST: u32 = 1;
const FEATURE_FLOAT_LIST: u32 = 2;
const FEATURE_INT64_LIST: u32 = 3;
const LIST_VALUE: u32 = 1;

/// How a column's values are written.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Int64,
    Float,
    Bytes,
}

impl Kind {
    fn of(data_type: &DataType) -> Option<Kind> {
        match data_type {
            t if t.is_integer() => Some(Kind::Int64),
            DataType::Boolean | DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _) => {
                Some(Kind::Int64)
            }
            t if t.is_floating() => Some(Kind::Float),
            DataType::Decimal128(..) => Some(Kind::Float),
            DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView => Some(Kind::Bytes),
            _ => None,
        }
    }

    fn feature_tag(self) -> u32 {
        match self {
            Kind::Int64 => FEATURE_INT64_LIST,
            Kind::Float => FEATURE_FLOAT_LIST,
            Kind::Bytes => FEATURE_BYTES_LIST,
        }
    }
}

/// One column made ready for encoding: its values cast to the list's element type.
enum Values {
    Int64(ArrayRef),
    Float(ArrayRef),
    Bytes(ArrayRef),
    /// An array column: the list array and its elements cast.
    List {
        lists: ArrayRef,
        elements: Box<Values>,
    },
}

impl Values {
    fn prepare(array: &ArrayRef, name: &str) -> StorageResult<Values> {
        let data_type = array.data_type();
        if let DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _) =
            data_type
        {
            let lists = cast(
                array,
                &DataType::LargeList(std::sync::Arc::new(
                    datafusion::arrow::datatypes::Field::new_list_field(
                        list_element_type(data_type).unwrap_or(DataType::Null),
                        true,
                    ),
                )),
            )?;
            let elements = lists.as_list::<i64>().values().clone();
            let elements = Values::prepare(&elements, name)?;
            if matches!(elements, Values::List { .. }) {
                return Err(unsupported(name, data_type));
            }
            return Ok(Values::List {
                lists,
                elements: Box::new(elements),
            });
        }
        let kind = Kind::of(data_type).ok_or_else(|| unsupported(name, data_type))?;
        Ok(match kind {
            Kind::Int64 => Values::Int64(cast(&temporal_as_integers(array)?, &DataType::Int64)?),
            Kind::Float => Values::Float(cast(array, &DataType::Float32)?),
            Kind::Bytes => Values::Bytes(cast(array, &DataType::LargeBinary)?),
        })
    }

    fn kind(&self) -> Kind {
        match self {
            Values::Int64(_) => Kind::Int64,
            Values::Float(_) => Kind::Float,
            Values::Bytes(_) => Kind::Bytes,
            Values::List { elements, .. } => elements.kind(),
        }
    }

    /// The range of element indices row `row` holds: one value, none (NULL), or a list's.
    fn elements_of(&self, row: usize) -> std::ops::Range<usize> {
        match self {
            Values::Int64(a) | Values::Float(a) | Values::Bytes(a) => {
                if a.is_null(row) {
                    row..row
                } else {
                    row..row + 1
                }
            }
            Values::List { lists, .. } => {
                if lists.is_null(row) {
                    0..0
                } else {
                    let offsets = lists.as_list::<i64>().value_offsets();
                    offsets[row] as usize..offsets[row + 1] as usize
                }
            }
        }
    }

    fn leaf(&self) -> &ArrayRef {
        match self {
            Values::Int64(a) | Values::Float(a) | Values::Bytes(a) => a,
            Values::List { elements, .. } => elements.leaf(),
        }
    }
}

fn list_element_type(data_type: &DataType) -> Option<DataType> {
    match data_type {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            Some(f.data_type().clone())
        }
        _ => None,
    }
}

fn unsupported(name: &str, data_type: &DataType) -> StorageError {
    StorageError::UnsupportedFormat(format!(
        "column \"{name}\" of type {data_type} cannot be a tf.train.Example feature"
    ))
}

/// Checks that every column of `schema` can be written as a feature.
pub fn check_schema(schema: &SchemaRef) -> StorageResult<()> {
    for field in schema.fields() {
        let data_type = list_element_type(field.data_type()).unwrap_or(field.data_type().clone());
        if Kind::of(&data_type).is_none() {
            return Err(unsupported(field.name(), field.data_type()));
        }
    }
    Ok(())
}

/// Writes Examples as TFRecords to `out`.
pub struct TfRecordWriter<W: Write> {
    out: W,
    /// Each column's map key, encoded once: `tag(key) | len | name`.
    keys: Vec<Vec<u8>>,
    /// Each thread's framed records of its share of a batch's rows, reused.
    encoded: Vec<Vec<u8>>,
}

impl<W: Write> TfRecordWriter<W> {
    pub fn new(out: W, schema: &SchemaRef) -> StorageResult<Self> {
        check_schema(schema)?;
        let keys = schema
            .fields()
            .iter()
            .map(|field| {
                let mut key = Vec::new();
                encode_key(MAP_KEY, WireType::LengthDelimited, &mut key);
                encode_varint(field.name().len() as u64, &mut key);
                key.extend_from_slice(field.name().as_bytes());
                key
            })
            .collect();
        Ok(TfRecordWriter {
            out,
            keys,
            encoded: vec![Vec::new(); crate::cores()],
        })
    }

    /// Appends one Example per row of `batch`. Encoding is nearly all of the work, so the rows
    /// are shared out among the cores, each share framed into a buffer of its own, and the
    /// buffers written in row order.
    pub fn write(&mut self, batch: &RecordBatch) -> StorageResult<()> {
        let columns = batch
            .columns()
            .iter()
            .zip(batch.schema().fields())
            .map(|(array, field)| Values::prepare(array, field.name()))
            .collect::<StorageResult<Vec<_>>>()?;
        let rows = batch.num_rows();
        let share = rows.div_ceil(self.encoded.len()).max(1);
        let keys = &self.keys;
        let columns = &columns;
        for out in &mut self.encoded {
            out.clear();
        }
        // Only shares with rows get a thread: a batch smaller than the cores starts fewer.
        let work = self
            .encoded
            .iter_mut()
            .enumerate()
            .map(|(index, out)| (index * share..((index + 1) * share).min(rows), out))
            .filter(|(rows, _)| !rows.is_empty());
        crate::on_threads(work, |(rows, out)| encode_rows(keys, columns, rows, out))?;
        for encoded in &self.encoded {
            self.out.write_all(encoded).map_err(io)?;
        }
        Ok(())
    }

    /// Flushes and returns the underlying writer.
    pub fn finish(mut self) -> StorageResult<W> {
        self.out.flush().map_err(io)?;
        Ok(self.out)
    }
}

/// Appends rows `rows` of `columns` to `out`, one framed Example each.
fn encode_rows(
    keys: &[Vec<u8>],
    columns: &[Values],
    rows: std::ops::Range<usize>,
    out: &mut Vec<u8>,
) -> StorageResult<()> {
    let mut record = Vec::new();
    // Each column's (list, feature, map entry) message lengths for the current row.
    let mut lengths: Vec<(usize, usize, usize)> = Vec::with_capacity(columns.len());
    for row in rows {
        record.clear();
        let mut features_len = 0;
        // Lengths first: protobuf puts every message's length before its bytes.
        lengths.clear();
        for (i, values) in columns.iter().enumerate() {
            let list = list_len(values, row);
            let feature = tag_len(values.kind().feature_tag()) + len_prefixed(list);
            let entry = keys[i].len() + tag_len(MAP_VALUE) + len_prefixed(feature);
            features_len += tag_len(FEATURES_FEATURE) + len_prefixed(entry);
            lengths.push((list, feature, entry));
        }
        encode_key(EXAMPLE_FEATURES, WireType::LengthDelimited, &mut record);
        encode_varint(features_len as u64, &mut record);
        for (i, values) in columns.iter().enumerate() {
            let (list, feature, entry) = lengths[i];
            encode_key(FEATURES_FEATURE, WireType::LengthDelimited, &mut record);
            encode_varint(entry as u64, &mut record);
            record.extend_from_slice(&keys[i]);
            encode_key(MAP_VALUE, WireType::LengthDelimited, &mut record);
            encode_varint(feature as u64, &mut record);
            encode_key(
                values.kind().feature_tag(),
                WireType::LengthDelimited,
                &mut record,
            );
            encode_varint(list as u64, &mut record);
            encode_list(values, row, &mut record);
        }
        write_record(out, &record)?;
    }
    Ok(())
}

fn io(e: std::io::Error) -> StorageError {
    StorageError::Io {
        path: "training dataset file".into(),
        source: e,
    }
}

fn tag_len(tag: u32) -> usize {
    encoded_len_varint(u64::from(tag << 3))
}

fn len_prefixed(len: usize) -> usize {
    encoded_len_varint(len as u64) + len
}

/// The encoded length of row `row`'s list message (`Int64List`, `FloatList` or `BytesList`).
fn list_len(values: &Values, row: usize) -> usize {
    let range = values.elements_of(row);
    let elements = match values {
        Values::List { elements, .. } => elements,
        _ => values,
    };
    if range.is_empty() {
        return 0;
    }
    match elements.kind() {
        Kind::Float => tag_len(LIST_VALUE) + len_prefixed(4 * range.len()),
        Kind::Int64 => {
            let ints = elements.leaf().as_primitive::<Int64Type>();
            let packed: usize = range
                .filter(|&i| !ints.is_null(i))
                .map(|i| encoded_len_varint(ints.value(i) as u64))
                .sum();
            tag_len(LIST_VALUE) + len_prefixed(packed)
        }
        Kind::Bytes => {
            let bytes = elements.leaf().as_binary::<i64>();
            range
                .filter(|&i| !bytes.is_null(i))
                .map(|i| tag_len(LIST_VALUE) + len_prefixed(bytes.value(i).len()))
                .sum()
        }
    }
}

fn encode_list(values: &Values, row: usize, buf: &mut Vec<u8>) {
    let range = values.elements_of(row);
    let elements = match values {
        Values::List { elements, .. } => elements,
        _ => values,
    };
    if range.is_empty() {
        return;
    }
    match elements.kind() {
        Kind::Float => {
            let floats = elements.leaf().as_primitive::<Float32Type>();
            encode_key(LIST_VALUE, WireType::LengthDelimited, buf);
            encode_varint(4 * range.len() as u64, buf);
            for i in range {
                // A NULL element of an array is written as NaN: a float list has no holes.
                let value = if floats.is_null(i) {
                    f32::NAN
                } else {
                    floats.value(i)
                };
                buf.put_f32_le(value);
            }
        }
        Kind::Int64 => {
            let ints = elements.leaf().as_primitive::<Int64Type>();
            let packed: usize = range
                .clone()
                .filter(|&i| !ints.is_null(i))
                .map(|i| encoded_len_varint(ints.value(i) as u64))
                .sum();
            encode_key(LIST_VALUE, WireType::LengthDelimited, buf);
            encode_varint(packed as u64, buf);
            for i in range.filter(|&i| !ints.is_null(i)) {
                encode_varint(ints.value(i) as u64, buf);
            }
        }
        Kind::Bytes => {
            let bytes = elements.leaf().as_binary::<i64>();
            for i in range.filter(|&i| !bytes.is_null(i)) {
                encode_key(LIST_VALUE, WireType::LengthDelimited, buf);
                encode_varint(bytes.value(i).len() as u64, buf);
                buf.extend_from_slice(bytes.value(i));
            }
        }
    }
}

/// TFRecord's checksum: crc32c, rotated and offset so that a crc of data holding crcs stays strong.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn write_record(out: &mut impl Write, data: &[u8]) -> StorageResult<()> {
    let length = (data.len() as u64).to_le_bytes();
    out.write_all(&length).map_err(io)?;
    out.write_all(&masked_crc(&length).to_le_bytes())
        .map_err(io)?;
    out.write_all(data).map_err(io)?;
    out.write_all(&masked_crc(data).to_le_bytes()).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use datafusion::arrow::array::{
        Float64Array, Int32Array, ListArray, StringArray, TimestampMicrosecondArray,
    };
    use datafusion::arrow::datatypes::{Field, Schema, TimeUnit};
    use prost::Message;

    use super::*;

    // tf.train.Example as prost messages, to decode what the writer encoded by hand.
    #[derive(Clone, PartialEq, Message)]
    struct Example {
        #[prost(message, optional, tag = "1")]
        features: Option<Features>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct Features {
        #[prost(map = "string, message", tag = "1")]
        feature: HashMap<String, Feature>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct Feature {
        #[prost(oneof = "FeatureKind", tags = "1, 2, 3")]
        kind: Option<FeatureKind>,
    }
    // The names of feature.proto's oneof cases.
    #[allow(clippy::enum_variant_names)]
    #[derive(Clone, PartialEq, prost::Oneof)]
    enum FeatureKind {
        #[prost(message, tag = "1")]
        BytesList(BytesList),
        #[prost(message, tag = "2")]
        FloatList(FloatList),
        #[prost(message, tag = "3")]
        Int64List(Int64List),
    }
    #[derive(Clone, PartialEq, Message)]
    struct BytesList {
        #[prost(bytes = "vec", repeated, tag = "1")]
        value: Vec<Vec<u8>>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct FloatList {
        #[prost(float, repeated, tag = "1")]
        value: Vec<f32>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct Int64List {
        #[prost(int64, repeated, tag = "1")]
        value: Vec<i64>,
    }

    fn read_records(mut data: &[u8]) -> Vec<Vec<u8>> {
        let mut records = Vec::new();
        while !data.is_empty() {
            let length = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
            assert_eq!(
                u32::from_le_bytes(data[8..12].try_into().unwrap()),
                masked_crc(&data[..8])
            );
            let record = &data[12..12 + length];
            assert_eq!(
                u32::from_le_bytes(data[12 + length..16 + length].try_into().unwrap()),
                masked_crc(record)
            );
            records.push(record.to_vec());
            data = &data[16 + length..];
        }
        records
    }

    /// A batch's rows are encoded in shares on several threads; the records still come out in
    /// row order, each once, whatever the batch size (shares of one row, empty shares).
    #[test]
    fn records_keep_the_row_order_across_encoding_threads() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, false)]));
        let mut writer = TfRecordWriter::new(Vec::new(), &schema).unwrap();
        // More shares than rows too: a writer made for four threads.
        writer.encoded = vec![Vec::new(); 4];
        let mut expected = Vec::new();
        for size in [0, 1, 3, 1001] {
            let ids: Vec<i32> = (0..size).map(|i| size * 10_000 + i).collect();
            expected.extend(ids.iter().map(|id| i64::from(*id)));
            let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int32Array::from(ids))])
                .unwrap();
            writer.write(&batch).unwrap();
        }
        let ids: Vec<i64> = read_records(&writer.finish().unwrap())
            .iter()
            .map(|record| {
                let example = Example::decode(record.as_slice()).unwrap();
                match &example.features.unwrap().feature["id"].kind {
                    Some(FeatureKind::Int64List(list)) => list.value[0],
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        assert_eq!(ids, expected);
    }

    #[test]
    fn examples_decode_with_the_tensorflow_schema() {
        let list_field = Field::new_list_field(DataType::Float32, true);
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, true),
            Field::new("amount", DataType::Float64, true),
            Field::new("category", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("embedding", DataType::List(Arc::new(list_field)), true),
        ]));
        let embedding = ListArray::from_iter_primitive::<Float32Type, _, _>(vec![
            Some(vec![Some(0.5), Some(-1.0)]),
            None,
        ]);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int32Array::from(vec![Some(-7), Some(300)])),
                Arc::new(Float64Array::from(vec![Some(2.5), None])),
                Arc::new(StringArray::from(vec![Some("grocery"), Some("")])),
                Arc::new(TimestampMicrosecondArray::from(vec![1_000_000, 2])),
                Arc::new(embedding),
            ],
        )
        .unwrap();
        let mut writer = TfRecordWriter::new(Vec::new(), &schema).unwrap();
        writer.write(&batch).unwrap();
        let records = read_records(&writer.finish().unwrap());
        assert_eq!(records.len(), 2);
        let first = Example::decode(records[0].as_slice()).unwrap();
        let feature = |example: &Example, name: &str| {
            example.features.as_ref().unwrap().feature[name]
                .kind
                .clone()
        };
        assert_eq!(
            feature(&first, "id"),
            Some(FeatureKind::Int64List(Int64List { value: vec![-7] }))
        );
        assert_eq!(
            feature(&first, "amount"),
            Some(FeatureKind::FloatList(FloatList { value: vec![2.5] }))
        );
        assert_eq!(
            feature(&first, "category"),
            Some(FeatureKind::BytesList(BytesList {
                value: vec![b"grocery".to_vec()]
            }))
        );
        assert_eq!(
            feature(&first, "ts"),
            Some(FeatureKind::Int64List(Int64List {
                value: vec![1_000_000]
            }))
        );
        assert_eq!(
            feature(&first, "embedding"),
            Some(FeatureKind::FloatList(FloatList {
                value: vec![0.5, -1.0]
            }))
        );
        let second = Example::decode(records[1].as_slice()).unwrap();
        // NULL is an empty list; an empty string is a list of one empty value.
        assert_eq!(
            feature(&second, "amount"),
            Some(FeatureKind::FloatList(FloatList { value: vec![] }))
        );
        assert_eq!(
            feature(&second, "embedding"),
            Some(FeatureKind::FloatList(FloatList { value: vec![] }))
        );
        assert_eq!(
            feature(&second, "category"),
            Some(FeatureKind::BytesList(BytesList {
                value: vec![vec![]]
            }))
        );
    }
}
