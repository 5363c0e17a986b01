//! Parquet column chunks of flat string and binary columns whose rows come as dictionary arrays.
//!
//! parquet-rs's writer hashes every row's value into its dictionary and compares it with the
//! page's least and greatest so far, even when the rows come as keys into a dictionary of a few
//! values, as a scan hands out `l_shipmode` (seven values in 60M rows of TPC-H lineitem at scale
//! factor 10). That was a tenth of the CPU time of a scan writing three columns. This encoder
//! does the hashing and comparing once per value of an input dictionary: a row costs a lookup
//! from its key to the output's id and a bit test (is the id in the page yet). Rows that come as
//! plain arrays are interned one by one, as parquet-rs does.
//!
//! The chunk comes out as parquet-rs writes it with the sink's properties: data pages v1 of
//! dictionary ids (RLE / bit-packed), a PLAIN dictionary page first, PLAIN data pages from where
//! the dictionary outgrows its limit, statistics truncated as parquet-rs truncates them, the
//! column and offset indexes, and page encoding statistics (flow's scans use them to keep a
//! chunk's dictionary). The sink splices the chunk into its row group with
//! `SerializedRowGroupWriter::append_column`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, DictionaryArray, GenericByteArray};
use arrow::datatypes::{ByteArrayType, DataType, Int32Type};
use bytes::{Buf, Bytes};
use parquet::basic::{BoundaryOrder, Compression, ConvertedType, Encoding, LogicalType, PageType, Type as Physical};
use parquet::column::page::{CompressedPage, Page, PageWriter};
use parquet::column::writer::ColumnCloseResult;
use parquet::data_type::ByteArray;
use parquet::errors::{ParquetError, Result};
use parquet::file::metadata::{ColumnChunkMetaData, ColumnIndexBuilder, OffsetIndexBuilder, PageEncodingStats};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::statistics::{Statistics, ValueStatistics};
use parquet::file::writer::{SerializedPageWriter, TrackedWrite};
use parquet::schema::types::ColumnDescPtr;

/// An id not given yet (in a remapping of input keys).
const UNSEEN: u32 = u32::MAX;

/// Whether `array`, a batch's column of a field written to the leaf `descr`, is one this encoder
/// takes over for a row group: a flat string or binary leaf, dictionary keys of `Int32`, and
/// properties this encoder writes as parquet-rs would (dictionary on, statistics per page, data
/// pages v1, no Bloom filter).
pub(crate) fn takes(array: &dyn Array, descr: &ColumnDescPtr, props: &WriterProperties) -> bool {
    let path = descr.path();
    let dictionary = matches!(array.data_type(), DataType::Dictionary(k, v)
        if k.as_ref() == &DataType::Int32 && matches!(v.as_ref(), DataType::Utf8 | DataType::Binary));
    dictionary
        && descr.physical_type() == Physical::BYTE_ARRAY
        && descr.max_rep_level() == 0
        && descr.max_def_level() <= 1
        && path.parts().len() == 1
        && props.dictionary_enabled(path)
        && props.statistics_enabled(path) == EnabledStatistics::Page
        && props.bloom_filter_properties(path).is_none()
        && props.writer_version() == WriterVersion::PARQUET_1_0
        && Compressor::handles(props.compression(path))
}

/// One column chunk being encoded (see the module's documentation).
pub(crate) struct DictColumn {
    descr: ColumnDescPtr,
    name: String,
    optional: bool,
    utf8: bool,
    compression: Compression,
    compressor: Compressor,
    dictionary_page_encoding: Encoding,
    dictionary_data_encoding: Encoding,
    page_bytes: usize,
    page_rows: usize,
    dictionary_limit: usize,
    statistics_truncate: Option<usize>,
    index_truncate: Option<usize>,

    /// The dictionary page's values, PLAIN-encoded (a length, then the bytes), in id order.
    dictionary: Vec<u8>,
    /// Each id's value in `dictionary`: start and length.
    spans: Vec<(u32, u32)>,
    /// Ids by the hash of their value.
    table: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::FixedState,
    /// The dictionary passed its limit: pages are PLAIN from here on.
    plain: bool,
    /// Some pages were written with dictionary ids (so the chunk has a dictionary page).
    used_dictionary: bool,

    /// The input dictionary of the last batch, and each of its keys' id (`UNSEEN` before use).
    input: Option<ArrayRef>,
    remap: Vec<u32>,

    /// The page being filled: its ids (or PLAIN values), definition levels, rows and nulls.
    ids: Vec<u32>,
    values: Vec<u8>,
    levels: Vec<u8>,
    rows_in_page: usize,
    nulls_in_page: u64,
    /// Which ids the page holds (a bit per id), and those ids: the page's least and greatest
    /// value are found among them when it is written.
    in_page: Vec<u64>,
    page_ids: Vec<u32>,
    /// Least and greatest of a PLAIN page.
    page_min: Option<Vec<u8>>,
    page_max: Option<Vec<u8>>,

    /// Data pages written so far (header and body each); the dictionary page goes before them
    /// when the chunk is closed.
    data: TrackedWrite<Vec<u8>>,
    /// Each data page's offset in `data`, size and rows.
    pages: Vec<(u64, i32, i64)>,
    index: ColumnIndexBuilder,
    ascending: bool,
    descending: bool,
    last_page: Option<(Vec<u8>, Vec<u8>)>,
    min: Option<Vec<u8>>,
    max: Option<Vec<u8>>,
    nulls: u64,
    rows: u64,
    dictionary_pages: i32,
    plain_pages: i32,
    uncompressed: u64,
    compressed: u64,
}

impl DictColumn {
    /// An encoder for the leaf `descr` (named `name` in errors), written as `props` say.
    pub(crate) fn new(descr: ColumnDescPtr, name: &str, props: &WriterProperties) -> Result<DictColumn> {
        let path = descr.path().clone();
        let compression = props.compression(&path);
        let compressor = Compressor::new(compression)
            .ok_or_else(|| ParquetError::General(format!("no dictionary column encoder for {compression}")))?;
        let utf8 =
            descr.logical_type_ref() == Some(&LogicalType::String) || descr.converted_type() == ConvertedType::UTF8;
        Ok(DictColumn {
            optional: descr.max_def_level() > 0,
            utf8,
            name: name.to_string(),
            compression,
            compressor,
            dictionary_page_encoding: props.dictionary_page_encoding(),
            dictionary_data_encoding: props.dictionary_data_page_encoding(),
            page_bytes: props.data_page_size_limit().max(1),
            page_rows: props.data_page_row_count_limit().max(1),
            dictionary_limit: props.dictionary_page_size_limit(),
            statistics_truncate: props.statistics_truncate_length(),
            index_truncate: props.column_index_truncate_length(),
            dictionary: Vec::new(),
            spans: Vec::new(),
            table: hashbrown::HashTable::new(),
            hasher: foldhash::fast::FixedState::default(),
            plain: false,
            used_dictionary: false,
            input: None,
            remap: Vec::new(),
            ids: Vec::new(),
            values: Vec::new(),
            levels: Vec::new(),
            rows_in_page: 0,
            nulls_in_page: 0,
            in_page: Vec::new(),
            page_ids: Vec::new(),
            page_min: None,
            page_max: None,
            data: TrackedWrite::new(Vec::new()),
            pages: Vec::new(),
            index: ColumnIndexBuilder::new(Physical::BYTE_ARRAY),
            ascending: true,
            descending: true,
            last_page: None,
            min: None,
            max: None,
            nulls: 0,
            rows: 0,
            dictionary_pages: 0,
            plain_pages: 0,
            uncompressed: 0,
            compressed: 0,
            descr,
        })
    }

    /// Appends a column of a batch: a dictionary array of strings or binaries, or a plain one.
    pub(crate) fn write(&mut self, array: &dyn Array) -> Result<()> {
        match array.data_type() {
            DataType::Dictionary(k, _) if k.as_ref() == &DataType::Int32 => {
                let dictionary = array.as_dictionary::<Int32Type>();
                match dictionary.values().data_type() {
                    DataType::Utf8 => self.write_keys(dictionary, dictionary.values().as_string::<i32>()),
                    DataType::Binary => self.write_keys(dictionary, dictionary.values().as_binary::<i32>()),
                    other => Err(self.unsupported(other)),
                }
            }
            DataType::Dictionary(_, v) => {
                // Other key types (not made by flow's scans): as a plain array.
                let plain = arrow::compute::cast(array, v).map_err(|e| ParquetError::General(e.to_string()))?;
                self.write(plain.as_ref())
            }
            DataType::Utf8 => self.write_plain(array.as_string::<i32>()),
            DataType::Binary => self.write_plain(array.as_binary::<i32>()),
            other => Err(self.unsupported(other)),
        }
    }

    fn unsupported(&self, t: &DataType) -> ParquetError {
        ParquetError::General(format!("column {}: cannot write {t} as a dictionary of byte arrays", self.name))
    }

    fn null_in_required(&self) -> ParquetError {
        ParquetError::General(format!("column {}: a null in a column declared non-nullable", self.name))
    }

    fn write_keys<T: ByteArrayType>(
        &mut self,
        array: &DictionaryArray<Int32Type>,
        values: &GenericByteArray<T>,
    ) -> Result<()> {
        if array.is_empty() {
            return Ok(());
        }
        // A dictionary much larger than the batch is cheaper to look up row by row than to map;
        // so is any once the chunk has turned PLAIN.
        if self.plain || values.len() > 4 * array.len() + 1024 {
            return self.write_rows(array.len(), |i| array.is_valid(i).then(|| array.keys().value(i) as usize), values);
        }
        let same = self.input.as_ref().is_some_and(|input| Arc::ptr_eq(input, array.values()));
        if !same {
            self.input = Some(array.values().clone());
            self.remap.clear();
            self.remap.resize(values.len(), UNSEEN);
        }
        let keys = array.keys().values();
        let value_nulls = values.null_count() > 0;
        for (i, &key) in keys.iter().enumerate() {
            let key = key as usize;
            if array.is_null(i) || (value_nulls && values.is_null(key)) {
                self.push_null()?;
                continue;
            }
            if self.plain {
                self.push_plain(values.value(key).as_ref());
            } else {
                let mut id = self.remap[key];
                if id == UNSEEN {
                    id = self.intern(values.value(key).as_ref());
                    self.remap[key] = id;
                }
                self.push_id(id);
            }
            self.end_row()?;
        }
        Ok(())
    }

    fn write_plain<T: ByteArrayType>(&mut self, array: &GenericByteArray<T>) -> Result<()> {
        self.write_rows(array.len(), |i| array.is_valid(i).then_some(i), array)
    }

    /// Appends `rows` rows, row `i` being `values`' value at `index(i)`, or null for `None`.
    fn write_rows<T: ByteArrayType>(
        &mut self,
        rows: usize,
        index: impl Fn(usize) -> Option<usize>,
        values: &GenericByteArray<T>,
    ) -> Result<()> {
        for i in 0..rows {
            match index(i).filter(|&at| values.is_valid(at)) {
                None => self.push_null()?,
                Some(at) => {
                    let value: &[u8] = values.value(at).as_ref();
                    if self.plain {
                        self.push_plain(value);
                    } else {
                        let id = self.intern(value);
                        self.push_id(id);
                    }
                    self.end_row()?;
                }
            }
        }
        Ok(())
    }

    fn push_null(&mut self) -> Result<()> {
        if !self.optional {
            return Err(self.null_in_required());
        }
        self.levels.push(0);
        self.nulls_in_page += 1;
        self.rows_in_page += 1;
        self.page_full_check()
    }

    #[inline]
    fn push_id(&mut self, id: u32) {
        self.ids.push(id);
        let (word, bit) = ((id >> 6) as usize, 1u64 << (id & 63));
        if self.in_page[word] & bit == 0 {
            self.in_page[word] |= bit;
            self.page_ids.push(id);
        }
    }

    fn push_plain(&mut self, value: &[u8]) {
        self.values.extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.values.extend_from_slice(value);
        if self.page_min.as_deref().is_none_or(|m| value < m) {
            self.page_min = Some(value.to_vec());
        }
        if self.page_max.as_deref().is_none_or(|m| value > m) {
            self.page_max = Some(value.to_vec());
        }
    }

    #[inline]
    fn end_row(&mut self) -> Result<()> {
        if self.optional {
            self.levels.push(1);
        }
        self.rows_in_page += 1;
        if !self.plain && self.dictionary.len() > self.dictionary_limit {
            // Like parquet-rs: the page so far keeps its ids, the rest of the chunk is PLAIN.
            self.write_page()?;
            self.plain = true;
            self.input = None;
            self.remap = Vec::new();
            return Ok(());
        }
        self.page_full_check()
    }

    #[inline]
    fn page_full_check(&mut self) -> Result<()> {
        let bytes = match self.plain {
            true => self.values.len(),
            false => self.ids.len() * bit_width(self.spans.len()) as usize / 8,
        };
        if self.rows_in_page >= self.page_rows || bytes >= self.page_bytes {
            self.write_page()?;
        }
        Ok(())
    }

    /// The id of `value`, added to the dictionary if new.
    fn intern(&mut self, value: &[u8]) -> u32 {
        use std::hash::BuildHasher;
        let hash = self.hasher.hash_one(value);
        let (dictionary, spans) = (&self.dictionary, &self.spans);
        if let Some(&id) = self.table.find(hash, |&id| span(dictionary, spans[id as usize]) == value) {
            return id;
        }
        let id = self.spans.len() as u32;
        self.dictionary.extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.spans.push((self.dictionary.len() as u32, value.len() as u32));
        self.dictionary.extend_from_slice(value);
        let (dictionary, spans, hasher) = (&self.dictionary, &self.spans, &self.hasher);
        self.table.insert_unique(hash, id, |&id| hasher.hash_one(span(dictionary, spans[id as usize])));
        if self.in_page.len() * 64 <= id as usize {
            self.in_page.push(0);
        }
        id
    }

    fn value(&self, id: u32) -> &[u8] {
        span(&self.dictionary, self.spans[id as usize])
    }

    /// Encodes, compresses and writes the page being filled.
    fn write_page(&mut self) -> Result<()> {
        if self.rows_in_page == 0 {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(self.values.len() + self.ids.len() * 4 + self.levels.len() / 8 + 16);
        if self.optional {
            buf.extend_from_slice(&[0; 4]);
            rle_hybrid(&self.levels, 1, &mut buf);
            let length = (buf.len() - 4) as u32;
            buf[..4].copy_from_slice(&length.to_le_bytes());
        }
        let (encoding, least, greatest) = if self.plain {
            buf.extend_from_slice(&self.values);
            (Encoding::PLAIN, self.page_min.take(), self.page_max.take())
        } else {
            let width = bit_width(self.spans.len());
            buf.push(width);
            rle_hybrid(&self.ids, width, &mut buf);
            let mut ids = self.page_ids.iter().copied();
            let (least, greatest) = match ids.next() {
                None => (None, None),
                Some(first) => {
                    let (mut least, mut greatest) = (first, first);
                    for id in ids {
                        if self.value(id) < self.value(least) {
                            least = id;
                        }
                        if self.value(id) > self.value(greatest) {
                            greatest = id;
                        }
                    }
                    (Some(self.value(least).to_vec()), Some(self.value(greatest).to_vec()))
                }
            };
            for &id in &self.page_ids {
                self.in_page[(id >> 6) as usize] &= !(1u64 << (id & 63));
            }
            self.page_ids.clear();
            self.used_dictionary = true;
            (self.dictionary_data_encoding, least, greatest)
        };
        let uncompressed = buf.len();
        let body = self.compressor.compress(buf)?;
        let page = Page::DataPage {
            buf: Bytes::from(body),
            num_values: self.rows_in_page as u32,
            encoding,
            def_level_encoding: Encoding::RLE,
            rep_level_encoding: Encoding::RLE,
            statistics: None,
        };
        let spec = SerializedPageWriter::new(&mut self.data).write_page(CompressedPage::new(page, uncompressed))?;
        self.uncompressed += spec.uncompressed_size as u64;
        self.compressed += spec.compressed_size as u64;
        self.pages.push((spec.offset, spec.compressed_size as i32, self.rows_in_page as i64));
        match encoding {
            Encoding::PLAIN => self.plain_pages += 1,
            _ => self.dictionary_pages += 1,
        }
        self.page_statistics(least, greatest);
        self.rows += self.rows_in_page as u64;
        self.nulls += self.nulls_in_page;
        self.ids.clear();
        self.values.clear();
        self.levels.clear();
        self.rows_in_page = 0;
        self.nulls_in_page = 0;
        Ok(())
    }

    /// The column index entry of the page just written, and the chunk's least and greatest.
    fn page_statistics(&mut self, least: Option<Vec<u8>>, greatest: Option<Vec<u8>>) {
        let (Some(least), Some(greatest)) = (least, greatest) else {
            self.index.append(true, vec![], vec![], self.nulls_in_page as i64, None);
            return;
        };
        if let Some((last_least, last_greatest)) = &self.last_page {
            self.ascending &= !(last_least > &least || last_greatest > &greatest);
            self.descending &= !(&least > last_least || &greatest > last_greatest);
        }
        let (index_least, _) = truncate_min(self.index_truncate, &least, self.utf8);
        let (index_greatest, _) = truncate_max(self.index_truncate, &greatest, self.utf8);
        self.index.append(false, index_least, index_greatest, self.nulls_in_page as i64, None);
        if self.min.as_ref().is_none_or(|m| &least < m) {
            self.min = Some(least.clone());
        }
        if self.max.as_ref().is_none_or(|m| &greatest > m) {
            self.max = Some(greatest.clone());
        }
        self.last_page = Some((least, greatest));
    }

    /// The encoded bytes of the chunk so far, and an estimate of the page being filled.
    pub(crate) fn estimated_total_bytes(&self) -> usize {
        let page = match self.plain {
            true => self.values.len(),
            false => self.ids.len() * bit_width(self.spans.len()) as usize / 8,
        };
        self.data.bytes_written() + self.dictionary.len() + page + self.levels.len() / 8
    }

    /// The bytes this encoder holds, the input dictionary it keeps for the next batch included.
    pub(crate) fn memory_size(&self) -> usize {
        self.input.as_ref().map_or(0, |values| values.get_array_memory_size())
            + self.compressor.memory_size()
            + self.data.inner().capacity()
            + self.dictionary.capacity()
            + self.spans.capacity() * 8
            + self.table.capacity() * 5
            + self.remap.capacity() * 4
            + self.ids.capacity() * 4
            + self.values.capacity()
            + self.levels.capacity()
            + self.in_page.capacity() * 8
            + self.page_ids.capacity() * 4
            + self.pages.capacity() * 24
    }

    /// Writes the last page and hands out the chunk (the dictionary page first) and what the
    /// row group records of it.
    pub(crate) fn close(mut self) -> Result<(EncodedChunk, ColumnCloseResult)> {
        self.write_page()?;
        let mut encodings = vec![Encoding::RLE];
        let mut encoding_stats = Vec::new();
        let mut head = TrackedWrite::new(Vec::new());
        if self.used_dictionary {
            let uncompressed = self.dictionary.len();
            let body = self.compressor.compress(std::mem::take(&mut self.dictionary))?;
            let page = Page::DictionaryPage {
                buf: Bytes::from(body),
                num_values: self.spans.len() as u32,
                encoding: self.dictionary_page_encoding,
                is_sorted: false,
            };
            let spec = SerializedPageWriter::new(&mut head).write_page(CompressedPage::new(page, uncompressed))?;
            self.uncompressed += spec.uncompressed_size as u64;
            self.compressed += spec.compressed_size as u64;
            encodings.push(self.dictionary_page_encoding);
            encoding_stats.push(PageEncodingStats {
                page_type: PageType::DICTIONARY_PAGE,
                encoding: self.dictionary_page_encoding,
                count: 1,
            });
        }
        let head = Bytes::from(head.into_inner()?);
        let data = Bytes::from(std::mem::replace(&mut self.data, TrackedWrite::new(Vec::new())).into_inner()?);
        let dictionary_len = head.len() as i64;
        for (encoding, count) in
            [(self.dictionary_data_encoding, self.dictionary_pages), (Encoding::PLAIN, self.plain_pages)]
        {
            if count > 0 {
                encodings.push(encoding);
                encoding_stats.push(PageEncodingStats { page_type: PageType::DATA_PAGE, encoding, count });
            }
        }
        encodings.dedup();
        let mut offsets = OffsetIndexBuilder::new();
        for &(offset, size, rows) in &self.pages {
            offsets.append_row_count(rows);
            offsets.append_offset_and_size(dictionary_len + offset as i64, size);
        }
        self.index.set_boundary_order(match (self.ascending, self.descending) {
            (true, _) => BoundaryOrder::ASCENDING,
            (false, true) => BoundaryOrder::DESCENDING,
            (false, false) => BoundaryOrder::UNORDERED,
        });
        let statistics = self.chunk_statistics();
        let metadata = ColumnChunkMetaData::builder(self.descr.clone())
            .set_compression(self.compression)
            .set_encodings(encodings)
            .set_page_encoding_stats(encoding_stats)
            .set_total_compressed_size(self.compressed as i64)
            .set_total_uncompressed_size(self.uncompressed as i64)
            .set_num_values(self.rows as i64)
            .set_data_page_offset(dictionary_len)
            .set_dictionary_page_offset(self.used_dictionary.then_some(0))
            .set_statistics(statistics)
            .build()?;
        let close = ColumnCloseResult {
            bytes_written: (head.len() + data.len()) as u64,
            rows_written: self.rows,
            metadata,
            bloom_filter: None,
            column_index: Some(self.index.build()?),
            offset_index: Some(offsets.build()),
        };
        Ok((EncodedChunk { head, data }, close))
    }

    fn chunk_statistics(&self) -> Statistics {
        let signed = self.descr.sort_order().is_signed();
        let (Some(least), Some(greatest)) = (&self.min, &self.max) else {
            let none = ValueStatistics::<ByteArray>::new(None, None, None, Some(self.nulls), false);
            return Statistics::ByteArray(none.with_backwards_compatible_min_max(signed));
        };
        let (least, least_cut) = truncate_min(self.statistics_truncate, least, self.utf8);
        let (greatest, greatest_cut) = truncate_max(self.statistics_truncate, greatest, self.utf8);
        let stats = ValueStatistics::new(
            Some(ByteArray::from(least)),
            Some(ByteArray::from(greatest)),
            None,
            Some(self.nulls),
            false,
        )
        .with_backwards_compatible_min_max(signed)
        .with_min_is_exact(!least_cut)
        .with_max_is_exact(!greatest_cut);
        Statistics::ByteArray(stats)
    }
}

fn span(dictionary: &[u8], (start, len): (u32, u32)) -> &[u8] {
    &dictionary[start as usize..(start + len) as usize]
}

/// Bits for ids below `count` (none for a dictionary of one value or none).
fn bit_width(count: usize) -> u8 {
    (usize::BITS - count.saturating_sub(1).leading_zeros()) as u8
}

/// Appends `values` in Parquet's RLE / bit-packing hybrid at `width` bits each: runs of eight or
/// more equal values as RLE runs, the rest bit-packed in groups of eight (the last one padded
/// with zeros; readers stop at the page's count of values).
fn rle_hybrid<T: Copy + Into<u32> + PartialEq>(values: &[T], width: u8, out: &mut Vec<u8>) {
    let value_bytes = (width as usize).div_ceil(8);
    let mut literals: Vec<u32> = Vec::new();
    let mut i = 0;
    while i < values.len() {
        let v = values[i];
        let mut run = 1;
        while i + run < values.len() && values[i + run] == v {
            run += 1;
        }
        // Literals go out in whole groups of eight (padding is allowed only at the end): a run
        // lends them the values that fill their last group, and is an RLE run if eight remain.
        let lend = (8 - literals.len() % 8) % 8;
        if run >= lend + 8 {
            literals.extend(std::iter::repeat_n(v.into(), lend));
            bit_packed(&literals, width, out);
            literals.clear();
            varint(((run - lend) as u64) << 1, out);
            out.extend_from_slice(&v.into().to_le_bytes()[..value_bytes]);
        } else {
            literals.extend(std::iter::repeat_n(v.into(), run));
        }
        i += run;
    }
    bit_packed(&literals, width, out);
}

/// Appends `values` as bit-packed runs (a header per run of up to 63 groups of eight).
fn bit_packed(values: &[u32], width: u8, out: &mut Vec<u8>) {
    // Every call but the stream's last gets whole groups.
    for run in values.chunks(63 * 8) {
        let groups = run.len().div_ceil(8);
        varint(((groups as u64) << 1) | 1, out);
        let (mut acc, mut bits) = (0u64, 0u32);
        for k in 0..groups * 8 {
            let v = run.get(k).copied().unwrap_or(0) as u64;
            acc |= v << bits;
            bits += width as u32;
            while bits >= 8 {
                out.push(acc as u8);
                acc >>= 8;
                bits -= 8;
            }
        }
    }
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// `data` cut to at most `length` bytes as a lower bound (at a character's end for UTF-8), and
/// whether it was cut; as parquet-rs cuts statistics.
fn truncate_min(length: Option<usize>, data: &[u8], utf8: bool) -> (Vec<u8>, bool) {
    let Some(length) = length.filter(|&l| data.len() > l) else {
        return (data.to_vec(), false);
    };
    let cut = match std::str::from_utf8(data) {
        Ok(s) if utf8 => s.char_indices().map(|(i, c)| i + c.len_utf8()).take_while(|&end| end <= length).last(),
        _ => Some(length),
    };
    match cut {
        Some(end) => (data[..end].to_vec(), true),
        None => (data.to_vec(), false),
    }
}

/// `data` cut to at most `length` bytes and raised to an upper bound (its last character or
/// byte incremented), and whether it was cut; `data` itself when no bound that short exists.
fn truncate_max(length: Option<usize>, data: &[u8], utf8: bool) -> (Vec<u8>, bool) {
    let Some(length) = length.filter(|&l| data.len() > l) else {
        return (data.to_vec(), false);
    };
    let bound = match std::str::from_utf8(data) {
        Ok(s) if utf8 => {
            let end = s.char_indices().map(|(i, c)| i + c.len_utf8()).take_while(|&end| end <= length).last();
            end.and_then(|end| increment_utf8(&s[..end]))
        }
        _ => increment(data[..length].to_vec()),
    };
    match bound {
        Some(bound) => (bound, true),
        None => (data.to_vec(), false),
    }
}

/// The shortest string above every string that `data` starts: its last character that can be
/// incremented without changing its width, incremented, and what follows dropped.
fn increment_utf8(data: &str) -> Option<Vec<u8>> {
    for (i, c) in data.char_indices().rev() {
        if let Some(next) = char::from_u32(c as u32 + 1).filter(|n| n.len_utf8() == c.len_utf8()) {
            let mut out = data.as_bytes()[..i + c.len_utf8()].to_vec();
            next.encode_utf8(&mut out[i..]);
            return Some(out);
        }
    }
    None
}

fn increment(mut data: Vec<u8>) -> Option<Vec<u8>> {
    while let Some(last) = data.pop() {
        if last < u8::MAX {
            data.push(last + 1);
            return Some(data);
        }
    }
    None
}

/// A page compressor for the codecs flow writes. A zstd context is kept from page to page (its
/// tables are not set up again for each), and counted in the encoder's memory.
enum Compressor {
    None,
    Snappy(snap::raw::Encoder),
    Lz4,
    Zstd(zstd::bulk::Compressor<'static>, usize),
}

impl Compressor {
    /// Whether `compression` is one of the codecs [`Compressor::new`] makes.
    fn handles(compression: Compression) -> bool {
        matches!(
            compression,
            Compression::UNCOMPRESSED | Compression::SNAPPY | Compression::LZ4_RAW | Compression::ZSTD(_)
        )
    }

    fn new(compression: Compression) -> Option<Compressor> {
        Some(match compression {
            Compression::UNCOMPRESSED => Compressor::None,
            Compression::SNAPPY => Compressor::Snappy(snap::raw::Encoder::new()),
            Compression::LZ4_RAW => Compressor::Lz4,
            Compression::ZSTD(level) => {
                Compressor::Zstd(zstd::bulk::Compressor::new(level.compression_level()).ok()?, 0)
            }
            _ => return None,
        })
    }

    fn compress(&mut self, data: Vec<u8>) -> Result<Vec<u8>> {
        let external = |e: Box<dyn std::error::Error + Send + Sync>| ParquetError::External(e);
        Ok(match self {
            Compressor::None => data,
            Compressor::Snappy(encoder) => encoder.compress_vec(&data).map_err(|e| external(Box::new(e)))?,
            Compressor::Lz4 => lz4_flex::block::compress(&data),
            Compressor::Zstd(compressor, bytes) => {
                let out = compressor.compress(&data).map_err(|e| external(Box::new(e)))?;
                *bytes = compressor.context_mut().sizeof();
                out
            }
        })
    }

    /// The bytes of the zstd context (its tables and buffers, as sized by the last page).
    fn memory_size(&self) -> usize {
        match self {
            Compressor::Zstd(_, bytes) => *bytes,
            _ => 0,
        }
    }
}

/// An encoded column chunk: the dictionary page (if any), then the data pages.
pub(crate) struct EncodedChunk {
    head: Bytes,
    data: Bytes,
}

impl Length for EncodedChunk {
    fn len(&self) -> u64 {
        (self.head.len() + self.data.len()) as u64
    }
}

impl ChunkReader for EncodedChunk {
    type T = bytes::buf::Reader<bytes::buf::Chain<Bytes, Bytes>>;

    fn get_read(&self, start: u64) -> Result<Self::T> {
        let start = (start as usize).min(self.len() as usize);
        let head_from = start.min(self.head.len());
        let data_from = start - head_from;
        Ok(self.head.slice(head_from..).chain(self.data.slice(data_from..)).reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> Result<Bytes> {
        let mut out = Vec::with_capacity(length);
        std::io::Read::read_to_end(&mut std::io::Read::take(self.get_read(start)?, length as u64), &mut out)?;
        if out.len() < length {
            return Err(ParquetError::EOF(format!("{length} bytes at {start} past the chunk's end")));
        }
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
#[path = "dict_column_tests.rs"]
mod tests;
