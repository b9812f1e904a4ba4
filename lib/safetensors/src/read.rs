//! Reading one safetensors file: the file is memory-mapped, its header parsed and checked once
//! (every tensor's offsets fit its dtype and shape, the data fills the file exactly), and tensors
//! are handed out as byte slices of the map.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use openseek_common::Failure;
use safetensors::{Dtype, SafeTensors};

/// One tensor of a file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range within the file (header included), so within the map.
    pub start: usize,
    pub end: usize,
}

impl TensorInfo {
    pub fn range(&self) -> std::ops::Range<usize> {
        self.start..self.end
    }
}

/// An open safetensors file.
pub struct SafetensorsFile {
    pub path: PathBuf,
    map: Mmap,
    pub tensors: BTreeMap<String, TensorInfo>,
    /// The header's `__metadata__` (empty without one).
    pub metadata: BTreeMap<String, String>,
}

impl SafetensorsFile {
    /// Map the file and parse its header.
    pub fn open(path: &Path) -> Result<SafetensorsFile, Failure> {
        let file = File::open(path).map_err(|e| Failure::io_at(path, "cannot open", &e))?;
        // SAFETY: the map is read-only; a file rewritten under us is the caller's race.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Failure::io_at(path, "cannot memory-map", &e))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&map)
            .map_err(|e| Failure::data(format!("{}: not a valid safetensors file: {e}", path.display())))?;
        let base = 8 + header_len;
        let extra = metadata.metadata().iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect();
        let tensors = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let info = TensorInfo {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: base + info.data_offsets.0,
                    end: base + info.data_offsets.1,
                };
                (name, info)
            })
            .collect();
        Ok(SafetensorsFile { path: path.to_path_buf(), map, tensors, metadata: extra })
    }

    /// Raw bytes of the file: a tensor's little-endian data for its `TensorInfo::range`.
    pub fn bytes(&self, range: std::ops::Range<usize>) -> &[u8] {
        &self.map[range]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::{OutTensor, ShardWriter};
    use openseek_common::AtomicOutputs;

    #[test]
    fn written_files_read_back_and_truncated_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a: Vec<u8> = (0..24u8).collect();
        let b = vec![7u8; 4];
        let tensors = vec![
            OutTensor { name: "b".into(), dtype: "BF16", shape: vec![2], bytes: 4 },
            OutTensor { name: "a".into(), dtype: "F32", shape: vec![2, 3], bytes: 24 },
        ];
        let mut outputs = AtomicOutputs::new();
        let mut writer = ShardWriter::new(dir.path(), tensors, 1 << 20);
        writer.write_next(&mut outputs, &b).unwrap();
        writer.write_next(&mut outputs, &a).unwrap();
        let names = writer.finish(&mut outputs).unwrap();
        outputs.commit().unwrap();
        let path = dir.path().join(&names[0]);
        let f = SafetensorsFile::open(&path).unwrap();
        assert_eq!(f.tensors["a"].shape, vec![2, 3]);
        assert_eq!(f.tensors["b"].dtype, Dtype::BF16);
        assert_eq!(f.metadata.get("format").map(String::as_str), Some("pt"));
        assert_eq!(f.bytes(f.tensors["a"].range()), &a[..]);
        assert_eq!(f.bytes(f.tensors["b"].range()), &b[..]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let err = SafetensorsFile::open(&path).err().unwrap();
        assert!(err.message.contains("not a valid safetensors file"), "{}", err.message);
    }
}
