//! Dictionary-encoded Parquet string columns written from per-row keys: one lookup per run of equal rows, not a hash per row.
//!
//! parquet's Arrow writer interns every row of a string column (a hash and a compare per value)
//! and compares it against the page's min and max. A lake batch has eight such columns whose rows
//! come sorted in long runs of the same few hundred values, so that was a quarter of the
//! aggregate's time. Here a column is a sorted dictionary plus one key per row: a page's min/max are
//! its smallest and largest key, and the data page is the keys' RLE/bit-packed hybrid, exactly the
//! pages parquet itself writes for a dictionary column (PLAIN dictionary page, RLE_DICTIONARY data
//! pages, chunk statistics, column and offset index, optional bloom filter), which every reader
//! already reads.

use std::ops::Range;

use ahash::AHashMap;
use bytes::Bytes;
use parquet::basic::{BoundaryOrder, Compression, Encoding, EncodingMask, PageType, Type};
use parquet::bloom_filter::Sbbf;
use parquet::column::page::{CompressedPage, Page, PageWriteSpec, PageWriter};
use parquet::column::writer::ColumnCloseResult;
use parquet::errors::ParquetError;
use parquet::file::metadata::{
    ColumnChunkMetaData, ColumnChunkMetaDataBuilder, ColumnIndexBuilder, OffsetIndexBuilder,
    PageEncodingStats,
};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::statistics::{Statistics, ValueStatistics};
use parquet::file::writer::{SerializedPageWriter, TrackedWrite};
use parquet::schema::types::ColumnDescPtr;

/// A non-null string column as its distinct values in byte order and one key per row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DictColumn {
    values: Vec<String>,
    keys: Vec<u32>,
}

impl DictColumn {
    /// Builds the column from its rows. A row whose string is the very same slice as the row
    /// before it (the common case for sorted rows borrowing shared tags) costs one pointer compare.
    pub fn from_strs<'a>(rows: impl IntoIterator<Item = &'a str>) -> Self {
        let rows = rows.into_iter();
        let mut keys = Vec::with_capacity(rows.size_hint().0);
        let mut by_slice: AHashMap<(usize, usize), u32> = AHashMap::new();
        let mut by_text: AHashMap<&'a str, u32> = AHashMap::new();
        let mut values: Vec<&'a str> = Vec::new();
        let mut last: Option<(usize, usize, u32)> = None;
        for s in rows {
            let slice = (s.as_ptr() as usize, s.len());
            let key = match last {
                Some((p, l, k)) if (p, l) == slice => k,
                _ => {
                    let k = *by_slice.entry(slice).or_insert_with(|| {
                        *by_text.entry(s).or_insert_with(|| {
                            values.push(s);
                            (values.len() - 1) as u32
                        })
                    });
                    last = Some((slice.0, slice.1, k));
                    k
                }
            };
            keys.push(key);
        }
        // Keys in byte order of their values, so a run of keys' min/max are its values' min/max.
        let mut order: Vec<u32> = (0..values.len() as u32).collect();
        order.sort_unstable_by_key(|&k| values[k as usize]);
        if order.iter().enumerate().any(|(i, &k)| i as u32 != k) {
            let mut rank = vec![0u32; order.len()];
            for (new, &old) in order.iter().enumerate() {
                rank[old as usize] = new as u32;
            }
            for k in &mut keys {
                *k = rank[*k as usize];
            }
        }
        Self {
            values: order
                .iter()
                .map(|&k| values[k as usize].to_owned())
                .collect(),
            keys,
        }
    }

    /// Rows in the column.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the column has no rows.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The distinct values, in byte order.
    pub fn values(&self) -> &[String] {
        &self.values
    }

    fn used(&self, rows: Range<usize>) -> Vec<bool> {
        let mut used = vec![false; self.values.len()];
        for &k in &self.keys[rows] {
            used[k as usize] = true;
        }
        used
    }
}

/// Encodes `rows` of `col` as one column chunk of `descr`, with the compression, page limits,
/// statistics level and bloom filter that `props` sets for it; hand the result to
/// `SerializedRowGroupWriter::append_column`.
pub fn write_chunk(
    col: &DictColumn,
    rows: Range<usize>,
    descr: &ColumnDescPtr,
    props: &WriterProperties,
) -> Result<(Bytes, ColumnCloseResult), ParquetError> {
    if descr.physical_type() != Type::BYTE_ARRAY || descr.max_def_level() != 0 {
        return Err(ParquetError::General(format!(
            "column {} is not a required byte array column",
            descr.path()
        )));
    }
    let path = descr.path();
    let codec = props.compression(path);
    let mut compress = Compressor::new(codec)?;
    let stats = props.statistics_enabled(path);
    let keys = &col.keys[rows.clone()];

    let mut sink = TrackedWrite::new(Vec::new());
    let mut pages = SerializedPageWriter::new(&mut sink);
    let dict = write_dictionary_page(col, &mut pages, &mut compress)?;
    let data = write_data_pages(col, keys, props, &mut pages, &mut compress)?;
    pages.close()?;

    let mut builder = chunk_metadata(descr.clone(), codec, &dict, &data, keys.len());
    if stats != EnabledStatistics::None && !keys.is_empty() {
        builder = builder.set_statistics(chunk_statistics(col, data.lo, data.hi));
    }
    let column_index = if stats == EnabledStatistics::Page && data.count > 0 {
        let mut column_index = data.column_index;
        if data.ascending {
            column_index.set_boundary_order(BoundaryOrder::ASCENDING);
        }
        Some(column_index.build()?)
    } else {
        None
    };
    let offset_index = (!props.offset_index_disabled()).then(|| data.offset_index.build());
    let bloom_filter = match props.bloom_filter_properties(path) {
        Some(bloom) => Some(bloom_filter(col, rows, bloom.fpp())?),
        None => None,
    };
    let close = ColumnCloseResult {
        bytes_written: sink.bytes_written() as u64,
        rows_written: keys.len() as u64,
        metadata: builder.build()?,
        bloom_filter,
        column_index,
        offset_index,
    };
    Ok((Bytes::from(sink.into_inner()?), close))
}

/// Writes the dictionary page: every value, PLAIN (length-prefixed), in byte order.
fn write_dictionary_page(
    col: &DictColumn,
    pages: &mut impl PageWriter,
    compress: &mut Compressor,
) -> Result<PageWriteSpec, ParquetError> {
    let mut dict = Vec::with_capacity(col.values.iter().map(|v| 4 + v.len()).sum());
    for v in &col.values {
        dict.extend_from_slice(&(v.len() as u32).to_le_bytes());
        dict.extend_from_slice(v.as_bytes());
    }
    pages.write_page(CompressedPage::new(
        Page::DictionaryPage {
            buf: compress.run(&dict)?,
            num_values: col.values.len() as u32,
            encoding: Encoding::PLAIN,
            is_sorted: true,
        },
        dict.len(),
    ))
}

/// A chunk's data pages as written: where and how large they are, their key range and indexes.
struct DataPages {
    /// Offset of the first data page, if any.
    offset: Option<i64>,
    /// Data pages written.
    count: i32,
    /// Compressed bytes written, page headers included.
    compressed: i64,
    /// Uncompressed bytes written, page headers included.
    uncompressed: i64,
    /// The smallest key of any page (`u32::MAX` if none).
    lo: u32,
    /// The largest key of any page (0 if none).
    hi: u32,
    /// Whether no page's min or max is below the page before's.
    ascending: bool,
    /// Each page's min and max value.
    column_index: ColumnIndexBuilder,
    /// Each page's offset, size and rows.
    offset_index: OffsetIndexBuilder,
}

/// Writes `keys` as data pages within `props`' page limits: the keys' RLE/bit-packed hybrid,
/// behind one byte of bit width.
fn write_data_pages(
    col: &DictColumn,
    keys: &[u32],
    props: &WriterProperties,
    pages: &mut impl PageWriter,
    compress: &mut Compressor,
) -> Result<DataPages, ParquetError> {
    let width = bit_width(col.values.len());
    let byte_rows = (props.data_page_size_limit() * 8 / (width as usize).max(1)).max(1);
    let page_rows = props.data_page_row_count_limit().min(byte_rows).max(1);
    let mut column_index = ColumnIndexBuilder::new(Type::BYTE_ARRAY);
    let mut offset_index = OffsetIndexBuilder::new();
    let (mut compressed, mut uncompressed) = (0i64, 0i64);
    let (mut data_offset, mut pages_written) = (None, 0);
    let (mut lo, mut hi) = (u32::MAX, 0u32);
    let (mut prev_lo, mut prev_hi, mut ascending) = (0u32, 0u32, true);
    let mut buf = Vec::new();
    for page in keys.chunks(page_rows) {
        buf.clear();
        buf.push(width);
        rle_hybrid(page, width, &mut buf);
        let spec = pages.write_page(CompressedPage::new(
            Page::DataPage {
                buf: compress.run(&buf)?,
                num_values: page.len() as u32,
                encoding: Encoding::RLE_DICTIONARY,
                def_level_encoding: Encoding::RLE,
                rep_level_encoding: Encoding::RLE,
                statistics: None,
            },
            buf.len(),
        ))?;
        data_offset.get_or_insert(spec.offset as i64);
        compressed += spec.compressed_size as i64;
        uncompressed += spec.uncompressed_size as i64;
        offset_index.append_offset_and_size(spec.offset as i64, spec.compressed_size as i32);
        offset_index.append_row_count(page.len() as i64);
        let (page_lo, page_hi) = page
            .iter()
            .fold((u32::MAX, 0), |(l, h), &k| (l.min(k), h.max(k)));
        if pages_written > 0 {
            ascending &= prev_lo <= page_lo && prev_hi <= page_hi;
        }
        (prev_lo, prev_hi) = (page_lo, page_hi);
        (lo, hi) = (lo.min(page_lo), hi.max(page_hi));
        column_index.append(
            false,
            col.values[page_lo as usize].as_bytes().to_vec(),
            col.values[page_hi as usize].as_bytes().to_vec(),
            0,
        );
        pages_written += 1;
    }
    Ok(DataPages {
        offset: data_offset,
        count: pages_written,
        compressed,
        uncompressed,
        lo,
        hi,
        ascending,
        column_index,
        offset_index,
    })
}

/// The chunk's metadata, without statistics: codec, encodings, sizes and page offsets.
fn chunk_metadata(
    descr: ColumnDescPtr,
    codec: Compression,
    dict: &PageWriteSpec,
    data: &DataPages,
    num_values: usize,
) -> ColumnChunkMetaDataBuilder {
    let dict_offset = dict.offset as i64;
    ColumnChunkMetaData::builder(descr)
        .set_compression(codec)
        .set_encodings_mask(EncodingMask::new_from_encodings(
            [Encoding::PLAIN, Encoding::RLE, Encoding::RLE_DICTIONARY].iter(),
        ))
        .set_page_encoding_stats(vec![
            PageEncodingStats {
                page_type: PageType::DICTIONARY_PAGE,
                encoding: Encoding::PLAIN,
                count: 1,
            },
            PageEncodingStats {
                page_type: PageType::DATA_PAGE,
                encoding: Encoding::RLE_DICTIONARY,
                count: data.count,
            },
        ])
        .set_total_compressed_size(dict.compressed_size as i64 + data.compressed)
        .set_total_uncompressed_size(dict.uncompressed_size as i64 + data.uncompressed)
        .set_num_values(num_values as i64)
        .set_data_page_offset(data.offset.unwrap_or(dict_offset))
        .set_dictionary_page_offset(Some(dict_offset))
}

/// The chunk's statistics: min and max value (the values of keys `lo` and `hi`), no nulls.
fn chunk_statistics(col: &DictColumn, lo: u32, hi: u32) -> Statistics {
    let value = |k: u32| parquet::data_type::ByteArray::from(col.values[k as usize].as_str());
    ValueStatistics::new(Some(value(lo)), Some(value(hi)), None, Some(0), false)
        .with_backwards_compatible_min_max(false)
        .into()
}

/// A bloom filter at false-positive rate `fpp` of the values that `rows` of `col` use.
fn bloom_filter(col: &DictColumn, rows: Range<usize>, fpp: f64) -> Result<Sbbf, ParquetError> {
    let used = col.used(rows);
    let distinct = used.iter().filter(|&&u| u).count() as u64;
    let mut filter = Sbbf::new_with_ndv_fpp(distinct.max(1), fpp)?;
    for (v, _) in col.values.iter().zip(&used).filter(|(_, u)| **u) {
        filter.insert(v.as_str());
    }
    Ok(filter)
}

/// Bits per key for a dictionary of `n` values.
fn bit_width(n: usize) -> u8 {
    (usize::BITS - n.saturating_sub(1).leading_zeros()) as u8
}

/// The page codec: zstd or none, the two the lake's writer settings use.
enum Compressor {
    None,
    Zstd(Box<zstd::bulk::Compressor<'static>>),
}

impl Compressor {
    fn new(codec: Compression) -> Result<Self, ParquetError> {
        match codec {
            Compression::UNCOMPRESSED => Ok(Self::None),
            Compression::ZSTD(level) => Ok(Self::Zstd(Box::new(
                zstd::bulk::Compressor::new(level.compression_level())
                    .map_err(|e| ParquetError::External(Box::new(e)))?,
            ))),
            other => Err(ParquetError::NYI(format!(
                "dictionary string columns support zstd or no compression, not {other}"
            ))),
        }
    }

    fn run(&mut self, data: &[u8]) -> Result<Bytes, ParquetError> {
        match self {
            Self::None => Ok(Bytes::copy_from_slice(data)),
            Self::Zstd(z) => z
                .compress(data)
                .map(Bytes::from)
                .map_err(|e| ParquetError::External(Box::new(e))),
        }
    }
}

/// Appends `keys` in Parquet's RLE/bit-packed hybrid encoding at `width` bits: runs of eight or
/// more equal keys as RLE runs, everything else bit-packed in groups of eight.
fn rle_hybrid(keys: &[u32], width: u8, out: &mut Vec<u8>) {
    let run_at = |i: usize| {
        keys[i..]
            .iter()
            .take_while(|&&k| k == keys[i])
            .take(1 << 20)
            .count()
    };
    let value_bytes = (width as usize).div_ceil(8);
    let mut i = 0;
    while i < keys.len() {
        let run = run_at(i);
        if run >= 8 {
            uleb128((run as u64) << 1, out);
            out.extend_from_slice(&keys[i].to_le_bytes()[..value_bytes]);
            i += run;
            continue;
        }
        // Groups of eight until the data ends or a run worth RLE starts on a group boundary
        // (at most 63 groups a run, as parquet's own encoder writes them).
        let start = i;
        let mut groups = 0u64;
        loop {
            i += 8;
            groups += 1;
            if i >= keys.len() || groups == 63 || run_at(i) >= 8 {
                break;
            }
        }
        uleb128((groups << 1) | 1, out);
        bit_pack(
            &keys[start..i.min(keys.len())],
            width,
            groups as usize * 8,
            out,
        );
        i = i.min(keys.len());
    }
}

/// Packs `count` values (`vals` padded with zeros), least significant bit first.
fn bit_pack(vals: &[u32], width: u8, count: usize, out: &mut Vec<u8>) {
    if width == 0 {
        return;
    }
    let (mut acc, mut bits) = (0u64, 0u32);
    for j in 0..count {
        acc |= (vals.get(j).copied().unwrap_or(0) as u64) << bits;
        bits += width as u32;
        while bits >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            bits -= 8;
        }
    }
}

fn uleb128(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_byte_order_and_equal_text_in_other_slices_shares_a_key() {
        let b = String::from("b");
        let col = DictColumn::from_strs(["c", "a", b.as_str(), "b", "a"]);
        assert_eq!(col.values(), ["a", "b", "c"]);
        assert_eq!(col.keys, [2, 0, 1, 1, 0]);
        assert_eq!(
            col.keys
                .iter()
                .map(|&k| col.values[k as usize].as_str())
                .collect::<Vec<_>>(),
            ["c", "a", "b", "b", "a"]
        );
        assert_eq!(col.used(1..3), [true, true, false]);
    }

    #[test]
    fn bit_widths_fit_the_largest_key() {
        assert_eq!(
            [0, 1, 2, 3, 4, 5, 256, 257].map(bit_width),
            [0, 0, 1, 2, 2, 3, 8, 9]
        );
    }

    /// The hybrid decoded by the spec's rules, to check the encoder against.
    fn decode_hybrid(mut data: &[u8], width: u8, n: usize) -> Vec<u32> {
        let mut out = Vec::new();
        let value_bytes = (width as usize).div_ceil(8);
        while out.len() < n {
            let (mut header, mut shift) = (0u64, 0);
            loop {
                let b = data[0];
                data = &data[1..];
                header |= ((b & 0x7f) as u64) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            if header & 1 == 0 {
                let mut v = [0u8; 4];
                v[..value_bytes].copy_from_slice(&data[..value_bytes]);
                data = &data[value_bytes..];
                out.extend(std::iter::repeat_n(
                    u32::from_le_bytes(v),
                    (header >> 1) as usize,
                ));
            } else {
                let count = (header >> 1) as usize * 8;
                let bytes = count * width as usize / 8;
                let (mut acc, mut bits, mut pos) = (0u64, 0u32, 0);
                for _ in 0..count {
                    while bits < width as u32 {
                        acc |= (data[pos] as u64) << bits;
                        pos += 1;
                        bits += 8;
                    }
                    out.push((acc & ((1u64 << width) - 1)) as u32);
                    acc >>= width;
                    bits -= width as u32;
                }
                data = &data[bytes..];
            }
        }
        assert!(data.is_empty(), "{} bytes left over", data.len());
        out.truncate(n);
        out
    }

    proptest::proptest! {
        #[test]
        fn the_hybrid_encoding_decodes_to_the_keys(
            runs in proptest::collection::vec((0u32..300, 1usize..40), 0..200),
        ) {
            let keys: Vec<u32> = runs.iter().flat_map(|&(k, n)| std::iter::repeat_n(k, n)).collect();
            let width = bit_width(300);
            let mut buf = Vec::new();
            rle_hybrid(&keys, width, &mut buf);
            proptest::prop_assert_eq!(decode_hybrid(&buf, width, keys.len()), keys);
        }
    }

    #[test]
    fn a_one_value_dictionary_needs_no_bits() {
        let keys = vec![0u32; 1000];
        let mut buf = Vec::new();
        rle_hybrid(&keys, 0, &mut buf);
        assert_eq!(buf, [0xd0, 0x0f]); // one RLE run of 1000, no value bytes
        assert_eq!(decode_hybrid(&buf, 0, 1000), keys);
    }
}
