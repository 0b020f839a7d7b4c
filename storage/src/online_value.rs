//! The online store's row encoding (value format 2): a row's columns, written by us and read
//! straight into Arrow arrays.
//!
//! Why our own: format 1 stored rows in Arrow's row format, which Arrow documents as unstable
//! across releases (an upgrade could make stored rows unreadable), and whose decoder, made for
//! sorting many rows, cost a one-key lookup of 50 columns more than its RocksDB get
//! (bench/online_lookup). This one is fixed, documented here, and decodes many columns of one
//! row with one allocation for all their fixed-width values.
//!
//! After the value header (see `online.rs`), for a row of `n` columns:
//! - a validity bitmap of `ceil(n / 8)` bytes, bit `i % 8` of byte `i / 8` set when column `i` is
//!   not NULL;
//! - then the value of every non-NULL column, in column order:
//!   - fixed-width types (integers, floats, dates, times, timestamps, intervals, decimals): the
//!     value's bytes, little-endian, as wide as the type;
//!   - booleans: one byte, 0 or 1;
//!   - text and bytes: the length as a little-endian u32, then the bytes (text is UTF-8);
//!   - lists: the element count as a little-endian u32, the elements' validity bitmap
//!     (`ceil(count / 8)` bytes, as above), then every non-NULL element encoded as its type.
//!
//! A row never changes its encoding in place: a stored row written before an ADD COLUMN holds
//! fewer columns (the header counts them) and the added ones read as NULL.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayData, ArrayRef, BooleanBufferBuilder, NullBufferBuilder, PrimitiveArray,
    downcast_primitive, make_array,
};
use datafusion::arrow::buffer::{Buffer, MutableBuffer, NullBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, FieldRef, SchemaRef};
use datafusion::arrow::util::bit_util;

use crate::error::{StorageError, StorageResult};

// Fixed-width values are copied in the machine's byte order, which the format fixes as
// little-endian: every platform Quiver builds for.
#[cfg(not(target_endian = "little"))]
compile_error!("the online store's value format is little-endian");

/// How one column's values are encoded, by type.
#[derive(Debug, Clone)]
pub(crate) enum Codec {
    Boolean,
    Fixed(usize),
    /// Text or bytes with i32 offsets in Arrow (`large`: i64).
    Bytes {
        large: bool,
    },
    List {
        large: bool,
        element: FieldRef,
        codec: Box<Codec>,
    },
}

impl Codec {
    pub(crate) fn of(data_type: &DataType) -> StorageResult<Codec> {
        if let Some(width) = data_type.primitive_width() {
            return Ok(Codec::Fixed(width));
        }
        Ok(match data_type {
            DataType::Boolean => Codec::Boolean,
            DataType::Utf8 | DataType::Binary => Codec::Bytes { large: false },
            DataType::LargeUtf8 | DataType::LargeBinary => Codec::Bytes { large: true },
            DataType::List(element) | DataType::LargeList(element) => Codec::List {
                large: matches!(data_type, DataType::LargeList(_)),
                element: element.clone(),
                codec: Box::new(Codec::of(element.data_type())?),
            },
            other => {
                return Err(StorageError::Schema(format!(
                    "the online store cannot hold a column of type {other}"
                )));
            }
        })
    }
}

/// Appends the columns of row `row` of `columns` (each as `ArrayData`, so a batch's arrays are
/// unpacked once) to `out`.
pub(crate) fn encode_row(
    codecs: &[Codec],
    columns: &[ArrayData],
    row: usize,
    out: &mut Vec<u8>,
) -> StorageResult<()> {
    let bitmap_at = out.len();
    out.resize(bitmap_at + columns.len().div_ceil(8), 0);
    for (i, (codec, data)) in codecs.iter().zip(columns).enumerate() {
        if data.is_null(row) {
            continue;
        }
        bit_util::set_bit(&mut out[bitmap_at..], i);
        encode_value(codec, data, row, out)?;
    }
    Ok(())
}

fn encode_value(
    codec: &Codec,
    data: &ArrayData,
    index: usize,
    out: &mut Vec<u8>,
) -> StorageResult<()> {
    let at = data.offset() + index;
    match codec {
        Codec::Boolean => out.push(u8::from(bit_util::get_bit(
            data.buffers()[0].as_slice(),
            at,
        ))),
        Codec::Fixed(width) => {
            out.extend_from_slice(&data.buffers()[0].as_slice()[at * width..(at + 1) * width])
        }
        Codec::Bytes { large } => {
            let (start, end) = value_range(data, *large, index);
            let bytes = &data.buffers()[1].as_slice()[start..end];
            out.extend_from_slice(&length(bytes.len())?.to_le_bytes());
            out.extend_from_slice(bytes);
        }
        Codec::List { large, codec, .. } => {
            let (start, end) = value_range(data, *large, index);
            let elements = &data.child_data()[0];
            out.extend_from_slice(&length(end - start)?.to_le_bytes());
            let bitmap_at = out.len();
            out.resize(bitmap_at + (end - start).div_ceil(8), 0);
            for (i, element) in (start..end).enumerate() {
                if elements.is_null(element) {
                    continue;
                }
                bit_util::set_bit(&mut out[bitmap_at..], i);
                encode_value(codec, elements, element, out)?;
            }
        }
    }
    Ok(())
}

/// The range of value `index` of a variable-width array, from its offsets.
fn value_range(data: &ArrayData, large: bool, index: usize) -> (usize, usize) {
    if large {
        let offsets = data.buffer::<i64>(0);
        (offsets[index] as usize, offsets[index + 1] as usize)
    } else {
        let offsets = data.buffer::<i32>(0);
        (offsets[index] as usize, offsets[index + 1] as usize)
    }
}

fn length(len: usize) -> StorageResult<u32> {
    u32::try_from(len).map_err(|_| StorageError::Schema("an online value over 4 GiB".into()))
}

/// One column of a primitive type `$t`: `len` values at element `offset` of `buffer`.
macro_rules! primitive_array {
    ($t:ty, $buffer:expr, $offset:expr, $len:expr, $nulls:expr, $data_type:expr) => {
        PrimitiveArray::<$t>::try_new(ScalarBuffer::new($buffer, $offset, $len), $nulls)
            .map(|values| Arc::new(values.with_data_type($data_type.clone())) as ArrayRef)
            .map_err(|e| StorageError::Internal(format!("online store: a stored row: {e}")))
    };
}

/// Decodes rows (each: a column count, at most the schema's, and the encoded columns after the
/// header) into one array per column of `schema`, in order.
pub(crate) fn decode_rows(
    schema: &SchemaRef,
    codecs: &[Codec],
    rows: &[(usize, &[u8])],
) -> StorageResult<Vec<ArrayRef>> {
    let len = rows.len();
    // The fixed-width columns share one buffer, each in a region aligned for any type: a lookup
    // of one row of 50 doubles allocates once for its values, not 50 times.
    let mut shared_len = 0;
    let mut columns: Vec<Column> = codecs
        .iter()
        .map(|codec| match codec {
            Codec::Fixed(width) => {
                let at = shared_len;
                shared_len += (len * width).next_multiple_of(ALIGNMENT);
                Column::Shared { at, width: *width }
            }
            other => Column::Own(Decoder::new(other)),
        })
        .collect();
    let mut shared = MutableBuffer::from_len_zeroed(shared_len);
    let mut nulls: Vec<NullBufferBuilder> =
        codecs.iter().map(|_| NullBufferBuilder::new(len)).collect();
    for (row, (count, value)) in rows.iter().enumerate() {
        let mut cursor = Cursor(value);
        let bitmap = cursor.take(count.div_ceil(8))?;
        for (i, (column, nulls)) in columns.iter_mut().zip(&mut nulls).enumerate() {
            let present = i < *count && bit_util::get_bit(bitmap, i);
            nulls.append(present);
            match column {
                &mut Column::Shared { at, width } if present => {
                    let start = at + row * width;
                    shared.as_slice_mut()[start..start + width]
                        .copy_from_slice(cursor.take(width)?);
                }
                Column::Shared { .. } => {}
                Column::Own(decoder) if present => decoder.decode(&mut cursor)?,
                Column::Own(decoder) => decoder.append_null(),
            }
        }
    }
    let shared: Buffer = shared.into();
    columns
        .into_iter()
        .zip(nulls)
        .zip(schema.fields())
        .map(|((column, mut nulls), field)| {
            let nulls = nulls.finish();
            match column {
                Column::Shared { at, width } => {
                    let data_type = field.data_type();
                    let (buffer, offset) = (shared.clone(), at / width);
                    // Made directly: an `ArrayData` per column (builder, validation, a vector
                    // of buffers) cost a one-row lookup more than its RocksDB get. Every type
                    // with a primitive width is a primitive array type.
                    downcast_primitive! {
                        data_type => (primitive_array, buffer, offset, len, nulls, data_type),
                        _ => Err(StorageError::Internal(format!(
                            "online store: no primitive array of type {data_type}"
                        ))),
                    }
                }
                Column::Own(decoder) => decoder.finish(field.data_type(), len, nulls),
            }
        })
        .collect()
}

/// One column's value in a stored row, as stored (the module's format), for a reader that
/// encodes values itself rather than through Arrow arrays: the server's answer to a key lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredValue<'a> {
    Boolean(bool),
    /// A fixed-width value's bytes, little-endian, as wide as the column's type.
    Fixed(&'a [u8]),
    /// Text (UTF-8) or bytes.
    Bytes(&'a [u8]),
    /// A list, still in the format's encoding (count, bitmap, elements).
    List(&'a [u8]),
}

/// Reads the columns of one row (`count` columns stored, the codecs' columns after them NULL)
/// into `out`, one per codec, `None` for NULL.
pub(crate) fn read_row<'a>(
    codecs: &[Codec],
    count: usize,
    value: &'a [u8],
    out: &mut Vec<Option<StoredValue<'a>>>,
) -> StorageResult<()> {
    out.clear();
    let mut cursor = Cursor(value);
    let bitmap = cursor.take(count.div_ceil(8))?;
    for (i, codec) in codecs.iter().enumerate() {
        if i >= count || !bit_util::get_bit(bitmap, i) {
            out.push(None);
            continue;
        }
        out.push(Some(match codec {
            Codec::Boolean => StoredValue::Boolean(cursor.take(1)?[0] != 0),
            Codec::Fixed(width) => StoredValue::Fixed(cursor.take(*width)?),
            Codec::Bytes { .. } => {
                let len = cursor.length()?;
                StoredValue::Bytes(cursor.take(len)?)
            }
            Codec::List { .. } => {
                let rest = cursor.0;
                skip_value(codec, &mut cursor)?;
                StoredValue::List(&rest[..rest.len() - cursor.0.len()])
            }
        }));
    }
    Ok(())
}

/// Moves `cursor` past one value of `codec`.
fn skip_value(codec: &Codec, cursor: &mut Cursor<'_>) -> StorageResult<()> {
    match codec {
        Codec::Boolean => {
            cursor.take(1)?;
        }
        Codec::Fixed(width) => {
            cursor.take(*width)?;
        }
        Codec::Bytes { .. } => {
            let len = cursor.length()?;
            cursor.take(len)?;
        }
        Codec::List { codec, .. } => {
            let count = cursor.length()?;
            let bitmap = cursor.take(count.div_ceil(8))?;
            for i in 0..count {
                if bit_util::get_bit(bitmap, i) {
                    skip_value(codec, cursor)?;
                }
            }
        }
    }
    Ok(())
}

/// Alignment of each fixed-width column's region in the shared buffer: enough for any Arrow
/// native type.
const ALIGNMENT: usize = 32;

enum Column {
    /// Values at `at` in the shared buffer, `width` bytes each.
    Shared {
        at: usize,
        width: usize,
    },
    Own(Decoder),
}

/// Builds the values of one column of any supported type (list elements included).
enum Decoder {
    Boolean(BooleanBufferBuilder),
    Fixed {
        width: usize,
        values: MutableBuffer,
    },
    Bytes {
        large: bool,
        offsets: Vec<i64>,
        values: Vec<u8>,
    },
    List {
        large: bool,
        element: FieldRef,
        offsets: Vec<i64>,
        nulls: NullBufferBuilder,
        elements: Box<Decoder>,
    },
}

impl Decoder {
    fn new(codec: &Codec) -> Decoder {
        match codec {
            Codec::Boolean => Decoder::Boolean(BooleanBufferBuilder::new(0)),
            Codec::Fixed(width) => Decoder::Fixed {
                width: *width,
                values: MutableBuffer::new(0),
            },
            Codec::Bytes { large } => Decoder::Bytes {
                large: *large,
                offsets: vec![0],
                values: Vec::new(),
            },
            Codec::List {
                large,
                element,
                codec,
            } => Decoder::List {
                large: *large,
                element: element.clone(),
                offsets: vec![0],
                nulls: NullBufferBuilder::new(0),
                elements: Box::new(Decoder::new(codec)),
            },
        }
    }

    fn append_null(&mut self) {
        match self {
            Decoder::Boolean(values) => values.append(false),
            Decoder::Fixed { width, values } => values.extend_zeros(*width),
            Decoder::Bytes { offsets, .. } | Decoder::List { offsets, .. } => {
                offsets.push(offsets.last().copied().unwrap_or(0))
            }
        }
    }

    fn decode(&mut self, cursor: &mut Cursor<'_>) -> StorageResult<()> {
        match self {
            Decoder::Boolean(values) => values.append(cursor.take(1)?[0] != 0),
            Decoder::Fixed { width, values } => values.extend_from_slice(cursor.take(*width)?),
            Decoder::Bytes {
                offsets, values, ..
            } => {
                let len = cursor.length()?;
                values.extend_from_slice(cursor.take(len)?);
                offsets.push(values.len() as i64);
            }
            Decoder::List {
                offsets,
                nulls,
                elements,
                ..
            } => {
                let count = cursor.length()?;
                let bitmap = cursor.take(count.div_ceil(8))?;
                for i in 0..count {
                    let present = bit_util::get_bit(bitmap, i);
                    nulls.append(present);
                    if present {
                        elements.decode(cursor)?;
                    } else {
                        elements.append_null();
                    }
                }
                let last = offsets.last().copied().unwrap_or(0);
                offsets.push(last + count as i64);
            }
        }
        Ok(())
    }

    fn finish(
        self,
        data_type: &DataType,
        len: usize,
        nulls: Option<NullBuffer>,
    ) -> StorageResult<ArrayRef> {
        let builder = ArrayData::builder(data_type.clone()).len(len).nulls(nulls);
        match self {
            Decoder::Boolean(mut values) => array(builder.add_buffer(values.finish().into_inner())),
            Decoder::Fixed { values, .. } => array(builder.add_buffer(values.into())),
            Decoder::Bytes {
                large,
                offsets,
                values,
            } => array(
                builder
                    .add_buffer(offsets_buffer(large, offsets)?)
                    .add_buffer(Buffer::from_vec(values)),
            ),
            Decoder::List {
                large,
                element,
                offsets,
                mut nulls,
                elements,
            } => {
                let count = offsets.last().copied().unwrap_or(0) as usize;
                let elements = elements.finish(element.data_type(), count, nulls.finish())?;
                array(
                    builder
                        .add_buffer(offsets_buffer(large, offsets)?)
                        .child_data(vec![elements.to_data()]),
                )
            }
        }
    }
}

fn offsets_buffer(large: bool, offsets: Vec<i64>) -> StorageResult<Buffer> {
    if large {
        return Ok(Buffer::from_vec(offsets));
    }
    let narrow = offsets
        .into_iter()
        .map(i32::try_from)
        .collect::<Result<Vec<i32>, _>>()
        .map_err(|_| StorageError::Schema("online values over 2 GiB in one column".into()))?;
    Ok(Buffer::from_vec(narrow))
}

/// An array from its parts, validated: a corrupt stored value gives an error, never a bad array.
fn array(builder: datafusion::arrow::array::ArrayDataBuilder) -> StorageResult<ArrayRef> {
    let data = builder
        .build()
        .map_err(|e| StorageError::Internal(format!("online store: a stored row: {e}")))?;
    Ok(make_array(data))
}

/// Reads a stored value front to back.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize) -> StorageResult<&'a [u8]> {
        if self.0.len() < len {
            return Err(StorageError::Internal(
                "online store: a stored row ends early".into(),
            ));
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(taken)
    }

    fn length(&mut self) -> StorageResult<usize> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use datafusion::arrow::array::{
        Array, BooleanArray, Float32Builder, Float64Array, Int16Array, ListBuilder, RecordBatch,
        StringArray, TimestampMicrosecondArray,
    };
    use datafusion::arrow::datatypes::{Field, Schema, TimeUnit};

    /// Every type a feature group column can have, NULLs in every column, a NULL list element,
    /// an empty list and an empty string: encoded row by row and decoded, the batch is equal.
    #[test]
    fn rows_round_trip_every_column_type() {
        let mut embeddings = ListBuilder::new(Float32Builder::new())
            .with_field(Arc::new(Field::new("element", DataType::Float32, true)));
        embeddings.values().append_value(9.0);
        embeddings.append(true);
        embeddings.values().append_value(1.5);
        embeddings.values().append_null();
        embeddings.append(true);
        embeddings.append(false);
        embeddings.append(true);
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int16, true),
            Field::new("score", DataType::Float64, true),
            Field::new("flag", DataType::Boolean, true),
            Field::new("name", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new(
                "embedding",
                DataType::List(Arc::new(Field::new("element", DataType::Float32, true))),
                true,
            ),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int16Array::from(vec![Some(9), Some(1), None, Some(-3)])),
                Arc::new(Float64Array::from(vec![
                    Some(9.0),
                    Some(0.25),
                    Some(-1e300),
                    None,
                ])),
                Arc::new(BooleanArray::from(vec![
                    Some(false),
                    Some(true),
                    None,
                    Some(false),
                ])),
                Arc::new(StringArray::from(vec![
                    Some("nine"),
                    Some("ünï"),
                    Some(""),
                    None,
                ])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![Some(9), None, Some(7), Some(-8)])
                        .with_timezone("UTC"),
                ),
                Arc::new(embeddings.finish()),
            ],
        )
        .unwrap();
        // Sliced, so offsets into the arrays are exercised too.
        let batch = batch.slice(1, 3);
        let codecs: Vec<Codec> = schema
            .fields()
            .iter()
            .map(|f| Codec::of(f.data_type()).unwrap())
            .collect();
        let columns: Vec<ArrayData> = batch.columns().iter().map(|c| c.to_data()).collect();
        let encoded: Vec<Vec<u8>> = (0..batch.num_rows())
            .map(|row| {
                let mut out = Vec::new();
                encode_row(&codecs, &columns, row, &mut out).unwrap();
                out
            })
            .collect();
        let rows: Vec<(usize, &[u8])> = encoded.iter().map(|v| (6, &v[..])).collect();
        let decoded = decode_rows(&schema, &codecs, &rows).unwrap();
        let decoded = RecordBatch::try_new(schema.clone(), decoded).unwrap();
        assert_eq!(decoded, batch);

        // Only the middle row, from a slice of the batch.
        let middle = decode_rows(&schema, &codecs, &rows[1..2]).unwrap();
        let middle = RecordBatch::try_new(schema.clone(), middle).unwrap();
        assert_eq!(middle, batch.slice(1, 1));

        // A row written when the table had two columns: the rest read as NULL.
        let narrow_codecs = &codecs[..2];
        let mut narrow = Vec::new();
        encode_row(narrow_codecs, &columns[..2], 0, &mut narrow).unwrap();
        let old = decode_rows(&schema, &codecs, &[(2, &narrow[..])]).unwrap();
        assert_eq!(old[1].as_ref(), batch.column(1).slice(0, 1).as_ref());
        assert!((2..6).all(|c| old[c].is_null(0)));

        // A truncated value is an error, not a wrong row.
        let cut = &encoded[0][..encoded[0].len() - 1];
        assert!(decode_rows(&schema, &codecs, &[(6, cut)]).is_err());

        // Value by value, as the server reads a key lookup's rows.
        let mut values = Vec::new();
        read_row(&codecs, 6, &encoded[0], &mut values).unwrap();
        let embedding = [&2u32.to_le_bytes()[..], &[0b01], &1.5f32.to_le_bytes()].concat();
        assert_eq!(
            values,
            vec![
                Some(StoredValue::Fixed(&1i16.to_le_bytes())),
                Some(StoredValue::Fixed(&0.25f64.to_le_bytes())),
                Some(StoredValue::Boolean(true)),
                Some(StoredValue::Bytes("ünï".as_bytes())),
                None,
                Some(StoredValue::List(&embedding)),
            ]
        );
        read_row(&codecs, 2, &narrow, &mut values).unwrap();
        assert_eq!(values.len(), 6);
        assert!(values[0].is_some() && values[2..].iter().all(Option::is_none));
        // A list before another column is stepped over exactly.
        let list_first = [codecs[5].clone(), codecs[1].clone()];
        let mut row = Vec::new();
        encode_row(
            &list_first,
            &[columns[5].clone(), columns[1].clone()],
            0,
            &mut row,
        )
        .unwrap();
        read_row(&list_first, 2, &row, &mut values).unwrap();
        assert_eq!(
            values,
            vec![
                Some(StoredValue::List(&embedding)),
                Some(StoredValue::Fixed(&0.25f64.to_le_bytes())),
            ]
        );
        assert!(read_row(&codecs, 6, cut, &mut values).is_err());
    }

    #[test]
    fn unsupported_types_are_refused_by_name() {
        let error = Codec::of(&DataType::Utf8View).unwrap_err();
        assert!(error.to_string().contains("Utf8View"), "{error}");
    }
}
