//! Index arrays in the integer widths Megatron uses (so files match its `.npy` caches byte for
//! byte), with `.npy` (format 1.0, C order, little-endian) writing and zero-copy memory-mapped reading.

use std::io::Write;
use std::path::Path;

use memmap2::Mmap;
use openseek_common::Failure;

/// An owned 1-D or 2-D integer array; `cols` is 1 for a vector, 2 for Megatron's sample index.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexArray {
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    U32(Vec<u32>),
}

impl IndexArray {
    pub fn len(&self) -> usize {
        match self {
            IndexArray::I16(v) => v.len(),
            IndexArray::I32(v) => v.len(),
            IndexArray::I64(v) => v.len(),
            IndexArray::U32(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    #[inline]
    pub fn get(&self, i: usize) -> i64 {
        match self {
            IndexArray::I16(v) => v[i] as i64,
            IndexArray::I32(v) => v[i] as i64,
            IndexArray::I64(v) => v[i],
            IndexArray::U32(v) => v[i] as i64,
        }
    }
    pub fn descr(&self) -> &'static str {
        match self {
            IndexArray::I16(_) => "<i2",
            IndexArray::I32(_) => "<i4",
            IndexArray::I64(_) => "<i8",
            IndexArray::U32(_) => "<u4",
        }
    }
    fn bytes(&self) -> Vec<u8> {
        match self {
            IndexArray::I16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            IndexArray::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            IndexArray::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            IndexArray::U32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
    pub fn to_vec_i64(&self) -> Vec<i64> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }
}

/// Write `array` as `.npy` with `cols` columns (1: shape `(n,)`, 2: shape `(n/2, 2)`).
pub fn write_npy(out: &mut impl Write, array: &IndexArray, cols: usize) -> std::io::Result<()> {
    let rows = array.len() / cols;
    let shape = if cols == 1 { format!("({rows},)") } else { format!("({rows}, {cols})") };
    let mut header = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}", array.descr());
    // magic(6) + version(2) + header length(2) + header, padded with spaces to a multiple of 64, ending in '\n'.
    let total = 10 + header.len() + 1;
    let pad = (64 - total % 64) % 64;
    header.push_str(&" ".repeat(pad));
    header.push('\n');
    out.write_all(b"\x93NUMPY\x01\x00")?;
    out.write_all(&(header.len() as u16).to_le_bytes())?;
    out.write_all(header.as_bytes())?;
    // Write in chunks to bound the temporary buffer.
    const CHUNK: usize = 1 << 20;
    let n = array.len();
    let mut start = 0;
    while start < n {
        let end = (start + CHUNK).min(n);
        let part = match array {
            IndexArray::I16(v) => IndexArray::I16(v[start..end].to_vec()),
            IndexArray::I32(v) => IndexArray::I32(v[start..end].to_vec()),
            IndexArray::I64(v) => IndexArray::I64(v[start..end].to_vec()),
            IndexArray::U32(v) => IndexArray::U32(v[start..end].to_vec()),
        };
        out.write_all(&part.bytes())?;
        start = end;
    }
    Ok(())
}

/// A memory-mapped `.npy` integer array.
pub struct NpyMap {
    map: Mmap,
    offset: usize,
    len: usize,
    kind: Kind,
    pub shape: Vec<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    I16,
    I32,
    I64,
    U32,
}

impl NpyMap {
    pub fn open(path: &Path) -> Result<Self, Failure> {
        let file = std::fs::File::open(path).map_err(|e| Failure::io_at(path, "cannot open", &e))?;
        // SAFETY: the store's files are written once and never modified in place.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Failure::io_at(path, "cannot map", &e))?;
        let bad = |what: &str| Failure::data(format!("{}: not a valid .npy index file ({what}); rebuild the store", path.display()));
        if map.len() < 10 || &map[..6] != b"\x93NUMPY" {
            return Err(bad("bad magic"));
        }
        let (hlen, hstart) = match map[6] {
            1 => (u16::from_le_bytes([map[8], map[9]]) as usize, 10),
            2 | 3 => {
                if map.len() < 12 {
                    return Err(bad("short header"));
                }
                (u32::from_le_bytes(map[8..12].try_into().unwrap()) as usize, 12)
            }
            _ => return Err(bad("unknown version")),
        };
        if map.len() < hstart + hlen {
            return Err(bad("short header"));
        }
        let header = std::str::from_utf8(&map[hstart..hstart + hlen]).map_err(|_| bad("header not UTF-8"))?;
        let kind = if header.contains("'<i2'") {
            Kind::I16
        } else if header.contains("'<i4'") {
            Kind::I32
        } else if header.contains("'<i8'") {
            Kind::I64
        } else if header.contains("'<u4'") {
            Kind::U32
        } else {
            return Err(bad("unsupported dtype"));
        };
        if header.contains("'fortran_order': True") {
            return Err(bad("fortran order"));
        }
        let shape_start = header.find("'shape': (").ok_or_else(|| bad("no shape"))? + "'shape': (".len();
        let shape_end = header[shape_start..].find(')').ok_or_else(|| bad("no shape"))? + shape_start;
        let shape: Vec<usize> = header[shape_start..shape_end]
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().map_err(|_| bad("bad shape")))
            .collect::<Result<_, _>>()?;
        let len: usize = shape.iter().product();
        let width = match kind {
            Kind::I16 => 2,
            Kind::I32 | Kind::U32 => 4,
            Kind::I64 => 8,
        };
        let offset = hstart + hlen;
        if map.len() != offset + len * width {
            return Err(bad(&format!("size {} does not match shape {:?}", map.len(), shape)));
        }
        Ok(NpyMap { map, offset, len, kind, shape })
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Element `i` of the flattened array.
    #[inline]
    pub fn get(&self, i: usize) -> i64 {
        let b = &self.map[self.offset..];
        match self.kind {
            Kind::I16 => i16::from_le_bytes([b[2 * i], b[2 * i + 1]]) as i64,
            Kind::I32 => i32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap()) as i64,
            Kind::U32 => u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap()) as i64,
            Kind::I64 => i64::from_le_bytes(b[8 * i..8 * i + 8].try_into().unwrap()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        for (arr, cols) in [
            (IndexArray::I16(vec![1, -2, 3]), 1),
            (IndexArray::I32(vec![1, 2, 3, 4]), 2),
            (IndexArray::I64(vec![i64::MAX, -1]), 1),
            (IndexArray::U32(vec![u32::MAX, 0, 7]), 1),
        ] {
            let path = dir.path().join("a.npy");
            let mut f = std::fs::File::create(&path).unwrap();
            write_npy(&mut f, &arr, cols).unwrap();
            drop(f);
            let bytes = std::fs::read(&path).unwrap();
            let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            assert_eq!((10 + hlen) % 64, 0);
            let m = NpyMap::open(&path).unwrap();
            assert_eq!(m.len(), arr.len());
            assert_eq!(m.shape.len(), if cols == 1 { 1 } else { 2 });
            for i in 0..arr.len() {
                assert_eq!(m.get(i), arr.get(i));
            }
        }
    }
}
