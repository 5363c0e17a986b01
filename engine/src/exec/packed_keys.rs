//! Group keys of a few narrow columns packed into one `u64`.
//!
//! TPC-H Q1 groups 60M rows by two one-letter strings. In Arrow's row format each of those is a
//! sentinel, an 8-byte block and a length: 20 bytes a row, encoded, hashed and compared with
//! `memcmp` row by row, which took more CPU than the eight aggregates together. Packed, the two
//! strings are one integer looked up in the open-addressing [`IntMap`](super::int_map::IntMap),
//! as a single integer key is.
//!
//! A packing gives each key column a fixed slot of bits: a small integer (8, 16 or 32 bits, a
//! date, a boolean) its bits and a null flag; a string a length code (0 for null, else the length
//! plus one) and its bytes, up to a length the plan fixes (as many bytes as the 64 bits leave, split
//! between the strings: 3 each for two strings, 7 for one). A string that is longer does not pack:
//! its row goes to the row-format index the packed one keeps beside it. Whether a key packs
//! depends only on the key, so each group lives in exactly one of the two.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Int16Array, Int32Array, Int8Array, PrimitiveArray,
    StringBuilder, UInt16Array, UInt32Array, UInt8Array,
};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Date32Type, Int16Type, Int32Type, Int8Type, UInt16Type, UInt32Type, UInt8Type,
};

use crate::error::{Error, Result};

/// How a key's columns pack into a `u64`.
#[derive(Debug, Clone)]
pub(crate) struct Packing {
    slots: Vec<Slot>,
}

#[derive(Debug, Clone)]
struct Slot {
    data_type: DataType,
    /// Where the slot starts.
    shift: u32,
    kind: Kind,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Bit 0 set for a value, its `bits` low bits above it.
    Int { bits: u32 },
    /// A length code of `len_bits` (0: null, else length + 1), the bytes above it.
    Str { max_len: usize, len_bits: u32 },
}

/// Bits that hold every number up to `n`.
fn bits_for(n: u64) -> u32 {
    64 - n.leading_zeros()
}

fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

impl Packing {
    /// A packing for keys of these types, if they fit 64 bits with room for strings of one byte
    /// at least.
    pub(crate) fn plan(types: &[DataType]) -> Option<Packing> {
        let int_bits = |t: &DataType| match t {
            DataType::Boolean => Some(1),
            DataType::Int8 | DataType::UInt8 => Some(8),
            DataType::Int16 | DataType::UInt16 => Some(16),
            DataType::Int32 | DataType::UInt32 | DataType::Date32 => Some(32),
            _ => None,
        };
        let mut fixed = 0u32;
        let mut strings = 0u32;
        for t in types {
            match (t, int_bits(t)) {
                (_, Some(bits)) => fixed += bits + 1,
                (DataType::Utf8, None) => strings += 1,
                _ => return None,
            }
        }
        if fixed > 64 || types.is_empty() {
            return None;
        }
        // The longest string each string slot holds.
        let max_len = match strings {
            0 => 0,
            s => {
                let per = (64 - fixed) / s;
                let fits = |k: usize| 8 * k as u32 + bits_for(k as u64 + 1) <= per;
                (1..=7).rev().find(|&k| fits(k))?
            }
        };
        let mut shift = 0;
        let mut slots = Vec::with_capacity(types.len());
        for t in types {
            let kind = match int_bits(t) {
                Some(bits) => Kind::Int { bits },
                None => Kind::Str { max_len, len_bits: bits_for(max_len as u64 + 1) },
            };
            slots.push(Slot { data_type: t.clone(), shift, kind });
            shift += match kind {
                Kind::Int { bits } => bits + 1,
                Kind::Str { max_len, len_bits } => 8 * max_len as u32 + len_bits,
            };
        }
        Some(Packing { slots })
    }

    /// Each row's packed key, and which rows did not pack (a string too long), if any.
    pub(crate) fn pack(&self, columns: &[ArrayRef]) -> Result<(Vec<u64>, Option<Vec<bool>>)> {
        let rows = columns.first().map_or(0, |c| c.len());
        let mut keys = vec![0u64; rows];
        let mut unpacked: Option<Vec<bool>> = None;
        for (slot, column) in self.slots.iter().zip(columns) {
            let shift = slot.shift;
            match slot.kind {
                Kind::Int { bits } => {
                    let m = mask(bits);
                    match column.data_type() {
                        DataType::Boolean => {
                            let b = column.as_boolean();
                            for (row, key) in keys.iter_mut().enumerate() {
                                if b.is_valid(row) {
                                    *key |= (1 | (u64::from(b.value(row)) << 1)) << shift;
                                }
                            }
                        }
                        DataType::Int8 => {
                            pack_ints(&mut keys, column.as_primitive::<Int8Type>(), |v| v as u64, m, shift)
                        }
                        DataType::UInt8 => {
                            pack_ints(&mut keys, column.as_primitive::<UInt8Type>(), u64::from, m, shift)
                        }
                        DataType::Int16 => {
                            pack_ints(&mut keys, column.as_primitive::<Int16Type>(), |v| v as u64, m, shift)
                        }
                        DataType::UInt16 => {
                            pack_ints(&mut keys, column.as_primitive::<UInt16Type>(), u64::from, m, shift)
                        }
                        DataType::Int32 => {
                            pack_ints(&mut keys, column.as_primitive::<Int32Type>(), |v| v as u64, m, shift)
                        }
                        DataType::UInt32 => {
                            pack_ints(&mut keys, column.as_primitive::<UInt32Type>(), u64::from, m, shift)
                        }
                        DataType::Date32 => {
                            pack_ints(&mut keys, column.as_primitive::<Date32Type>(), |v| v as u64, m, shift)
                        }
                        other => return Err(Error::Execution(format!("cannot pack a {other} key"))),
                    }
                }
                Kind::Str { max_len, len_bits } => {
                    let strings = column.as_string_opt::<i32>().ok_or_else(|| {
                        Error::Execution(format!("cannot pack a {} key as a string", column.data_type()))
                    })?;
                    let offsets = strings.value_offsets();
                    let data = strings.value_data();
                    let nulls = strings.nulls().filter(|n| n.null_count() > 0);
                    for (row, key) in keys.iter_mut().enumerate() {
                        if nulls.is_some_and(|n| n.is_null(row)) {
                            continue;
                        }
                        let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
                        let len = end - start;
                        if len > max_len {
                            unpacked.get_or_insert_with(|| vec![false; rows])[row] = true;
                            continue;
                        }
                        // Eight bytes at once where the buffer has them, the string's kept.
                        let bytes = match data.get(start..start + 8) {
                            Some(eight) => {
                                u64::from_le_bytes(eight.try_into().expect("eight bytes")) & mask(8 * len as u32)
                            }
                            None => {
                                let mut bytes = [0u8; 8];
                                bytes[..len].copy_from_slice(&data[start..end]);
                                u64::from_le_bytes(bytes)
                            }
                        };
                        *key |= ((len as u64 + 1) | (bytes << len_bits)) << shift;
                    }
                }
            }
        }
        Ok((keys, unpacked))
    }

    /// The key columns of packed keys, in the packing's types.
    pub(crate) fn unpack(&self, keys: &[u64]) -> Result<Vec<ArrayRef>> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let codes = keys.iter().map(|k| k >> slot.shift);
            columns.push(match slot.kind {
                Kind::Int { bits } => {
                    let values = codes.map(|c| (c & 1 == 1).then_some((c >> 1) & mask(bits)));
                    match slot.data_type {
                        DataType::Boolean => Arc::new(values.map(|v| v.map(|v| v == 1)).collect::<BooleanArray>()),
                        DataType::Int8 => Arc::new(values.map(|v| v.map(|v| v as i8)).collect::<Int8Array>()),
                        DataType::UInt8 => Arc::new(values.map(|v| v.map(|v| v as u8)).collect::<UInt8Array>()),
                        DataType::Int16 => Arc::new(values.map(|v| v.map(|v| v as i16)).collect::<Int16Array>()),
                        DataType::UInt16 => Arc::new(values.map(|v| v.map(|v| v as u16)).collect::<UInt16Array>()),
                        DataType::Int32 => Arc::new(values.map(|v| v.map(|v| v as i32)).collect::<Int32Array>()),
                        DataType::UInt32 => Arc::new(values.map(|v| v.map(|v| v as u32)).collect::<UInt32Array>()),
                        DataType::Date32 => Arc::new(values.map(|v| v.map(|v| v as i32)).collect::<Date32Array>()),
                        ref other => return Err(Error::Execution(format!("cannot unpack a {other} key"))),
                    }
                }
                Kind::Str { len_bits, .. } => {
                    let mut builder = StringBuilder::with_capacity(keys.len(), keys.len() * 4);
                    for code in codes {
                        match code & mask(len_bits) {
                            0 => builder.append_null(),
                            len_code => {
                                let bytes = ((code >> len_bits) & mask(56)).to_le_bytes();
                                let s = std::str::from_utf8(&bytes[..len_code as usize - 1])
                                    .map_err(|e| Error::Execution(format!("packed group key: {e}")))?;
                                builder.append_value(s);
                            }
                        }
                    }
                    Arc::new(builder.finish())
                }
            });
        }
        Ok(columns)
    }
}

/// Puts each value's slot (flag and `m` bits of the value) at `shift` of its row's key.
fn pack_ints<T: ArrowPrimitiveType>(
    keys: &mut [u64],
    values: &PrimitiveArray<T>,
    bits: impl Fn(T::Native) -> u64,
    m: u64,
    shift: u32,
) {
    let raw = values.values();
    match values.nulls().filter(|n| n.null_count() > 0) {
        None => keys.iter_mut().zip(raw.iter()).for_each(|(k, v)| *k |= (1 | ((bits(*v) & m) << 1)) << shift),
        Some(nulls) => {
            for (row, (k, v)) in keys.iter_mut().zip(raw.iter()).enumerate() {
                if nulls.is_valid(row) {
                    *k |= (1 | ((bits(*v) & m) << 1)) << shift;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;

    #[test]
    fn keys_pack_and_unpack_to_the_same_values() {
        let types = [DataType::Utf8, DataType::Int16, DataType::Boolean, DataType::Utf8];
        // 19 bits for the integer and the boolean, 22 for each string: 2 bytes.
        let packing = Packing::plan(&types).expect("fits");
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![Some("A"), None, Some(""), Some("xy"), Some("toolong")])),
            Arc::new(Int16Array::from(vec![Some(-1), Some(i16::MAX), None, Some(i16::MIN), Some(0)])),
            Arc::new(BooleanArray::from(vec![Some(true), Some(false), None, Some(true), None])),
            Arc::new(StringArray::from(vec![Some("é"), Some("ab"), None, Some(""), Some("b")])),
        ];
        let (keys, unpacked) = packing.pack(&columns).unwrap();
        assert_eq!(unpacked, Some(vec![false, false, false, false, true]), "a string too long does not pack");
        let distinct: std::collections::HashSet<u64> = keys[..4].iter().copied().collect();
        assert_eq!(distinct.len(), 4, "different keys, different codes");
        let back = packing.unpack(&keys[..4]).unwrap();
        for (b, c) in back.iter().zip(&columns) {
            assert_eq!(b.as_ref(), c.slice(0, 4).as_ref());
        }
        // Null, empty and absent are told apart.
        let (a, _) = packing
            .pack(&[columns[0].slice(1, 2), columns[1].slice(0, 2), columns[2].slice(0, 2), columns[3].slice(0, 2)])
            .unwrap();
        assert_ne!(a[0], a[1]);
    }

    #[test]
    fn what_does_not_fit_is_not_packed() {
        assert!(Packing::plan(&[DataType::Int32, DataType::Int32]).is_none(), "66 bits");
        assert!(Packing::plan(&[DataType::Int64]).is_none());
        assert!(Packing::plan(&[DataType::Utf8, DataType::Float64]).is_none());
        assert!(
            Packing::plan(&[DataType::Int32, DataType::Int16, DataType::Int8, DataType::Utf8]).is_none(),
            "no byte left"
        );
        let two = Packing::plan(&[DataType::Utf8, DataType::Utf8]).unwrap();
        assert!(matches!(two.slots[1].kind, Kind::Str { max_len: 3, .. }));
        let one = Packing::plan(&[DataType::Utf8]).unwrap();
        assert!(matches!(one.slots[0].kind, Kind::Str { max_len: 7, .. }));
    }
}
