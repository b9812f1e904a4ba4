//! The safetensors file format, read through a memory map and written in one pass:
//! u64 LE header length, JSON header `{name: {dtype, shape, data_offsets}}`, then raw little-endian data.

use memmap2::Mmap;
use openseek_common::Failure;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// One tensor's entry in a header.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dtype: String,
    pub shape: Vec<i64>,
    pub start: usize,
    pub end: usize,
}

/// An open safetensors file.
pub struct SafetensorsFile {
    pub path: PathBuf,
    map: Mmap,
    data_start: usize,
    pub entries: BTreeMap<String, Entry>,
}

/// The tch kind of a safetensors dtype name, for the float types a checkpoint holds.
pub fn kind_of(dtype: &str) -> Option<Kind> {
    Some(match dtype {
        "F32" => Kind::Float,
        "BF16" => Kind::BFloat16,
        "F16" => Kind::Half,
        "F64" => Kind::Double,
        _ => return None,
    })
}

fn dtype_name(kind: Kind) -> Result<&'static str, Failure> {
    Ok(match kind {
        Kind::Float => "F32",
        Kind::BFloat16 => "BF16",
        Kind::Half => "F16",
        Kind::Double => "F64",
        other => return Err(Failure::software(format!("cannot write tensors of kind {other:?} to safetensors"))),
    })
}

impl SafetensorsFile {
    /// Map the file and parse its header; every offset is checked against the file size.
    pub fn open(path: &Path) -> Result<SafetensorsFile, Failure> {
        let file = std::fs::File::open(path).map_err(|e| Failure::io_at(path, "cannot open", &e))?;
        // SAFETY: the checkpoint is read-only for the life of the map; a concurrent writer would be a usage error.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Failure::io_at(path, "cannot map", &e))?;
        let bad = |what: String| Failure::data(format!("{}: not a safetensors file: {what}", path.display()));
        if map.len() < 8 {
            return Err(bad(format!("only {} bytes", map.len())));
        }
        let header_len = u64::from_le_bytes(map[..8].try_into().unwrap()) as usize;
        if header_len > map.len() - 8 {
            return Err(bad(format!("header length {header_len} exceeds the file size {}", map.len())));
        }
        let header: Map<String, Value> =
            serde_json::from_slice(&map[8..8 + header_len]).map_err(|e| bad(format!("header JSON: {e}")))?;
        let data_start = 8 + header_len;
        let data_len = map.len() - data_start;
        let mut entries = BTreeMap::new();
        for (name, v) in header {
            if name == "__metadata__" {
                continue;
            }
            let dtype = v["dtype"].as_str().ok_or_else(|| bad(format!("{name}: no dtype")))?.to_string();
            let shape: Vec<i64> = v["shape"]
                .as_array()
                .and_then(|a| a.iter().map(|d| d.as_i64()).collect())
                .ok_or_else(|| bad(format!("{name}: bad shape {}", v["shape"])))?;
            let offs: Vec<usize> = v["data_offsets"]
                .as_array()
                .and_then(|a| a.iter().map(|d| d.as_u64().map(|x| x as usize)).collect())
                .filter(|o: &Vec<usize>| o.len() == 2)
                .ok_or_else(|| bad(format!("{name}: bad data_offsets {}", v["data_offsets"])))?;
            let (start, end) = (offs[0], offs[1]);
            let elem = match dtype.as_str() {
                "F64" | "I64" | "U64" => 8,
                "F32" | "I32" | "U32" => 4,
                "BF16" | "F16" | "I16" | "U16" => 2,
                _ => 1,
            };
            let numel: i64 = shape.iter().product();
            if start > end || end > data_len || end - start != numel as usize * elem {
                return Err(bad(format!("{name}: data_offsets [{start}, {end}] do not fit shape {shape:?} {dtype} in {data_len} data bytes")));
            }
            entries.insert(name, Entry { dtype, shape, start, end });
        }
        Ok(SafetensorsFile { path: path.to_path_buf(), map, data_start, entries })
    }

    /// Read one tensor onto the CPU, converted to `kind`.
    pub fn tensor(&self, name: &str, kind: Kind) -> Result<Tensor, Failure> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| Failure::data(format!("{}: no tensor {name}", self.path.display())))?;
        let src = kind_of(&e.dtype).ok_or_else(|| {
            Failure::data(format!("{}: {name} has dtype {}; expected F32, BF16, F16 or F64", self.path.display(), e.dtype))
        })?;
        let bytes = &self.map[self.data_start + e.start..self.data_start + e.end];
        let t = Tensor::f_from_data_size(bytes, &e.shape, src)
            .map_err(|err| Failure::data(format!("{}: {name}: {err}", self.path.display())))?;
        Ok(if src == kind { t } else { t.to_kind(kind) })
    }
}

/// Write `tensors` (any device, contiguous or not) as one safetensors file with `{"format": "pt"}` metadata.
pub fn write(out: &mut impl Write, tensors: &[(String, Tensor)]) -> Result<(), Failure> {
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    let mut cpu = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(Device::Cpu).contiguous();
        let len = t.numel() * t.kind().elt_size_in_bytes();
        header.insert(
            name.clone(),
            json!({"dtype": dtype_name(t.kind())?, "shape": t.size(), "data_offsets": [offset, offset + len]}),
        );
        offset += len;
        cpu.push(t);
    }
    let mut text = serde_json::to_vec(&Value::Object(header)).unwrap();
    // The data starts 8-byte aligned: pad the header with spaces.
    text.resize(text.len() + (8 - text.len() % 8) % 8, b' ');
    let io = |e: std::io::Error| Failure::io(format!("writing safetensors: {e}"));
    out.write_all(&(text.len() as u64).to_le_bytes()).map_err(io)?;
    out.write_all(&text).map_err(io)?;
    for t in cpu {
        let mut buf = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut buf, t.numel()).map_err(|e| Failure::software(format!("copying tensor data: {e}")))?;
        out.write_all(&buf).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_values_dtypes_and_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let a = Tensor::arange(12, (Kind::Float, Device::Cpu)).reshape([3, 4]);
        let b = Tensor::from_slice(&[1.5f32, -2.25]).to_kind(Kind::BFloat16);
        let at = a.tr(); // not contiguous
        write(&mut std::fs::File::create(&path).unwrap(), &[("a".into(), at.shallow_clone()), ("b".into(), b.shallow_clone())]).unwrap();
        let f = SafetensorsFile::open(&path).unwrap();
        assert_eq!(f.entries["a"].shape, vec![4, 3]);
        assert_eq!(f.entries["b"].dtype, "BF16");
        assert!(f.tensor("a", Kind::Float).unwrap().equal(&at));
        assert!(f.tensor("b", Kind::Float).unwrap().equal(&Tensor::from_slice(&[1.5f32, -2.25])));
        let header_len = u64::from_le_bytes(std::fs::read(&path).unwrap()[..8].try_into().unwrap());
        assert_eq!(header_len % 8, 0);
    }

    #[test]
    fn truncated_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        write(&mut std::fs::File::create(&path).unwrap(), &[("a".into(), Tensor::ones([64], (Kind::Float, Device::Cpu)))]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let err = SafetensorsFile::open(&path).err().unwrap();
        assert!(err.message.contains("do not fit"), "{}", err.message);
    }
}
