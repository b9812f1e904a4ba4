//! Token dtypes of the indexed dataset (Megatron's `DType` codes) and `Tokens`, a zero-copy
//! typed view of one sequence.

use openseek_common::Failure;

/// The element type of a `.bin`, with Megatron's numeric codes (the byte at offset 17 of the `.idx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DType {
    U8 = 1,
    I8 = 2,
    I16 = 3,
    I32 = 4,
    I64 = 5,
    F64 = 6,
    F32 = 7,
    U16 = 8,
}

impl DType {
    /// Every dtype, in code order.
    pub const ALL: [DType; 8] =
        [DType::U8, DType::I8, DType::I16, DType::I32, DType::I64, DType::F64, DType::F32, DType::U16];

    /// Megatron's numeric code.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<DType> {
        DType::ALL.iter().copied().find(|d| d.code() == code)
    }

    /// Bytes per token.
    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 => 1,
            DType::I16 | DType::U16 => 2,
            DType::I32 | DType::F32 => 4,
            DType::I64 | DType::F64 => 8,
        }
    }

    /// The numpy name ("uint16", "int32", ...), as Megatron's `DType` enum spells it.
    pub fn name(self) -> &'static str {
        match self {
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::F64 => "float64",
            DType::F32 => "float32",
            DType::U16 => "uint16",
        }
    }

    /// Parse a numpy name ("uint16") or a short name ("u16").
    pub fn from_name(name: &str) -> Option<DType> {
        let name = name.to_ascii_lowercase();
        DType::ALL.iter().copied().find(|d| {
            d.name() == name
                || match d {
                    DType::U8 => name == "u8",
                    DType::I8 => name == "i8",
                    DType::I16 => name == "i16",
                    DType::I32 => name == "i32",
                    DType::I64 => name == "i64",
                    DType::F64 => name == "f64",
                    DType::F32 => name == "f32",
                    DType::U16 => name == "u16",
                }
        })
    }

    /// Megatron's rule (`DType.optimal_dtype`): uint16 when the vocabulary has fewer than 65,500
    /// entries, else int32.
    pub fn for_vocab_size(vocab_size: usize) -> DType {
        if vocab_size < 65500 {
            DType::U16
        } else {
            DType::I32
        }
    }

    /// The largest token id this dtype stores exactly (for the float dtypes: the largest integer
    /// up to which every integer is exact, 2^24 and 2^53).
    pub fn max_token(self) -> u64 {
        match self {
            DType::U8 => u8::MAX as u64,
            DType::I8 => i8::MAX as u64,
            DType::I16 => i16::MAX as u64,
            DType::U16 => u16::MAX as u64,
            DType::I32 => i32::MAX as u64,
            DType::I64 => i64::MAX as u64,
            DType::F32 => 1 << 24,
            DType::F64 => 1 << 53,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }

    /// Append `tokens` to `out` as little-endian bytes of this dtype; fails (naming the first
    /// offending token and its position) if one exceeds `max_token`.
    pub(crate) fn encode_u32(self, tokens: &[u32], out: &mut Vec<u8>) -> Result<(), Failure> {
        let max = self.max_token();
        if max < u32::MAX as u64 {
            if let Some(pos) = tokens.iter().position(|&t| t as u64 > max) {
                return Err(Failure::data(format!(
                    "token id {} at position {pos} does not fit the shard dtype {} (largest id {max}); \
                     use a wider dtype (int32 holds any vocabulary Megatron supports)",
                    tokens[pos],
                    self.name()
                )));
            }
        }
        out.reserve(tokens.len() * self.size());
        match self {
            DType::U8 => out.extend(tokens.iter().map(|&t| t as u8)),
            DType::I8 => out.extend(tokens.iter().map(|&t| t as i8 as u8)),
            DType::I16 => tokens.iter().for_each(|&t| out.extend_from_slice(&(t as i16).to_le_bytes())),
            DType::U16 => tokens.iter().for_each(|&t| out.extend_from_slice(&(t as u16).to_le_bytes())),
            DType::I32 => tokens.iter().for_each(|&t| out.extend_from_slice(&(t as i32).to_le_bytes())),
            DType::I64 => tokens.iter().for_each(|&t| out.extend_from_slice(&(t as i64).to_le_bytes())),
            DType::F32 => tokens.iter().for_each(|&t| out.extend_from_slice(&(t as f32).to_le_bytes())),
            DType::F64 => tokens.iter().for_each(|&t| out.extend_from_slice(&(t as f64).to_le_bytes())),
        }
        Ok(())
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A zero-copy view of one sequence's tokens, typed by the shard's dtype (the `.bin` is
/// memory-mapped; every sequence starts at a multiple of the item size, so the view is aligned).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tokens<'a> {
    U8(&'a [u8]),
    I8(&'a [i8]),
    I16(&'a [i16]),
    I32(&'a [i32]),
    I64(&'a [i64]),
    F64(&'a [f64]),
    F32(&'a [f32]),
    U16(&'a [u16]),
}

macro_rules! each {
    ($self:expr, $s:ident => $body:expr) => {
        #[allow(clippy::unnecessary_cast)]
        match $self {
            Tokens::U8($s) => $body,
            Tokens::I8($s) => $body,
            Tokens::I16($s) => $body,
            Tokens::I32($s) => $body,
            Tokens::I64($s) => $body,
            Tokens::F64($s) => $body,
            Tokens::F32($s) => $body,
            Tokens::U16($s) => $body,
        }
    };
}

impl<'a> Tokens<'a> {
    /// View `bytes` (little-endian, aligned for `dtype`, a whole number of items) as tokens.
    /// Panics if `bytes` is misaligned or not a multiple of the item size: the reader only
    /// hands in slices it validated.
    pub fn from_bytes(dtype: DType, bytes: &'a [u8]) -> Tokens<'a> {
        use bytemuck::cast_slice as c;
        if bytes.is_empty() {
            // An empty mapping's pointer need not be aligned: hand out static empty slices.
            return match dtype {
                DType::U8 => Tokens::U8(&[]),
                DType::I8 => Tokens::I8(&[]),
                DType::I16 => Tokens::I16(&[]),
                DType::I32 => Tokens::I32(&[]),
                DType::I64 => Tokens::I64(&[]),
                DType::F64 => Tokens::F64(&[]),
                DType::F32 => Tokens::F32(&[]),
                DType::U16 => Tokens::U16(&[]),
            };
        }
        match dtype {
            DType::U8 => Tokens::U8(bytes),
            DType::I8 => Tokens::I8(c(bytes)),
            DType::I16 => Tokens::I16(c(bytes)),
            DType::I32 => Tokens::I32(c(bytes)),
            DType::I64 => Tokens::I64(c(bytes)),
            DType::F64 => Tokens::F64(c(bytes)),
            DType::F32 => Tokens::F32(c(bytes)),
            DType::U16 => Tokens::U16(c(bytes)),
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Tokens::U8(_) => DType::U8,
            Tokens::I8(_) => DType::I8,
            Tokens::I16(_) => DType::I16,
            Tokens::I32(_) => DType::I32,
            Tokens::I64(_) => DType::I64,
            Tokens::F64(_) => DType::F64,
            Tokens::F32(_) => DType::F32,
            Tokens::U16(_) => DType::U16,
        }
    }

    pub fn len(&self) -> usize {
        each!(self, s => s.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Token `i` as i64 (float dtypes are converted with `as`: truncated toward zero, saturating).
    /// Panics if `i` is out of range.
    pub fn get(&self, i: usize) -> i64 {
        each!(self, s => s[i] as i64)
    }

    /// Sub-view of tokens `range`. Panics if out of range.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Tokens<'a> {
        match *self {
            Tokens::U8(s) => Tokens::U8(&s[range]),
            Tokens::I8(s) => Tokens::I8(&s[range]),
            Tokens::I16(s) => Tokens::I16(&s[range]),
            Tokens::I32(s) => Tokens::I32(&s[range]),
            Tokens::I64(s) => Tokens::I64(&s[range]),
            Tokens::F64(s) => Tokens::F64(&s[range]),
            Tokens::F32(s) => Tokens::F32(&s[range]),
            Tokens::U16(s) => Tokens::U16(&s[range]),
        }
    }

    /// All tokens as i64 (floats converted as in `get`).
    pub fn to_vec_i64(&self) -> Vec<i64> {
        each!(self, s => s.iter().map(|&t| t as i64).collect())
    }

    /// All tokens as u32 token ids. Panics if one is not a valid id (negative, above u32::MAX, or
    /// a float that is not a whole number); use `try_to_vec_u32` to get an error instead.
    pub fn to_vec_u32(&self) -> Vec<u32> {
        self.try_to_vec_u32().unwrap_or_else(|e| panic!("{e}"))
    }

    /// All tokens as u32 token ids, or a data error naming the first token that is not one.
    pub fn try_to_vec_u32(&self) -> Result<Vec<u32>, Failure> {
        fn bad(pos: usize, value: impl std::fmt::Display) -> Failure {
            Failure::data(format!("token at position {pos} is {value}, which is not a token id (0..=4294967295)"))
        }
        match *self {
            Tokens::U8(s) => Ok(s.iter().map(|&t| t as u32).collect()),
            Tokens::U16(s) => Ok(s.iter().map(|&t| t as u32).collect()),
            Tokens::I8(s) => s.iter().enumerate().map(|(i, &t)| u32::try_from(t).map_err(|_| bad(i, t))).collect(),
            Tokens::I16(s) => s.iter().enumerate().map(|(i, &t)| u32::try_from(t).map_err(|_| bad(i, t))).collect(),
            Tokens::I32(s) => s.iter().enumerate().map(|(i, &t)| u32::try_from(t).map_err(|_| bad(i, t))).collect(),
            Tokens::I64(s) => s.iter().enumerate().map(|(i, &t)| u32::try_from(t).map_err(|_| bad(i, t))).collect(),
            Tokens::F32(s) => s.iter().enumerate().map(|(i, &t)| float_id(t as f64).ok_or_else(|| bad(i, t))).collect(),
            Tokens::F64(s) => s.iter().enumerate().map(|(i, &t)| float_id(t).ok_or_else(|| bad(i, t))).collect(),
        }
    }

    /// The raw little-endian bytes, exactly as stored in the `.bin`.
    pub fn as_bytes(&self) -> &'a [u8] {
        match *self {
            Tokens::U8(s) => s,
            Tokens::I8(s) => bytemuck::cast_slice(s),
            Tokens::I16(s) => bytemuck::cast_slice(s),
            Tokens::I32(s) => bytemuck::cast_slice(s),
            Tokens::I64(s) => bytemuck::cast_slice(s),
            Tokens::F64(s) => bytemuck::cast_slice(s),
            Tokens::F32(s) => bytemuck::cast_slice(s),
            Tokens::U16(s) => bytemuck::cast_slice(s),
        }
    }
}

/// A float that is a whole number in u32 range, as that id.
fn float_id(t: f64) -> Option<u32> {
    (t.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&t)).then_some(t as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_sizes_names_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_code(d.code()), Some(d));
            assert_eq!(DType::from_name(d.name()), Some(d));
        }
        assert_eq!(DType::from_code(0), None);
        assert_eq!(DType::from_code(9), None);
        assert_eq!(DType::U16.code(), 8);
        assert_eq!(DType::I32.code(), 4);
        assert_eq!(DType::F64.size(), 8);
        assert_eq!(DType::U16.name(), "uint16");
        assert_eq!(DType::from_name("u16"), Some(DType::U16));
    }

    #[test]
    fn vocab_rule_matches_megatron() {
        assert_eq!(DType::for_vocab_size(50257), DType::U16);
        assert_eq!(DType::for_vocab_size(65499), DType::U16);
        assert_eq!(DType::for_vocab_size(65500), DType::I32);
        assert_eq!(DType::for_vocab_size(151851), DType::I32);
    }

    #[test]
    fn encode_rejects_ids_out_of_range() {
        let mut out = Vec::new();
        DType::U16.encode_u32(&[0, 65535], &mut out).unwrap();
        assert_eq!(out, vec![0, 0, 255, 255]);
        let err = DType::U16.encode_u32(&[1, 65536], &mut out).unwrap_err();
        assert!(err.message.contains("65536") && err.message.contains("position 1"), "{}", err.message);
        assert!(DType::I8.encode_u32(&[128], &mut out).is_err());
        assert!(DType::I32.encode_u32(&[1 << 31], &mut out).is_err());
        assert!(DType::F32.encode_u32(&[(1 << 24) + 1], &mut out).is_err());
        DType::I64.encode_u32(&[u32::MAX], &mut out).unwrap();
    }

    #[test]
    fn to_vec_u32_rejects_non_ids() {
        let v = [1i32, -2];
        let t = Tokens::I32(&v);
        assert_eq!(t.get(1), -2);
        assert!(t.try_to_vec_u32().unwrap_err().message.contains("position 1 is -2"));
        let f = [1.0f32, 2.5];
        assert!(Tokens::F32(&f).try_to_vec_u32().is_err());
        let f = [1.0f64, 7.0];
        assert_eq!(Tokens::F64(&f).to_vec_u32(), vec![1, 7]);
        assert_eq!(Tokens::F64(&f).as_bytes().len(), 16);
    }
}
