//! One input checkpoint: a Hugging Face model directory whose safetensors files (one
//! `model.safetensors`, or the shards an index names, or every `*.safetensors` there) are
//! memory-mapped; their headers are parsed once and tensors are read as byte slices on demand.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use openseek_common::Failure;
use openseek_safetensors::{Dtype, SafetensorsFile};

/// Where one tensor lives.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub file: usize,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range within the file.
    pub start: usize,
    pub end: usize,
}

/// A memory-mapped checkpoint.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    opened: Vec<SafetensorsFile>,
    pub tensors: BTreeMap<String, TensorEntry>,
}

impl Checkpoint {
    /// Open `dir`: map its safetensors files and index their tensors.
    pub fn open(dir: &Path) -> Result<Self, Failure> {
        if !dir.is_dir() {
            return Err(Failure::no_input(format!("{}: checkpoint directory does not exist", dir.display())));
        }
        let files = safetensors_files(dir)?;
        let mut opened = Vec::new();
        let mut tensors = BTreeMap::new();
        for (index, path) in files.iter().enumerate() {
            let file = SafetensorsFile::open(path)?;
            for (name, info) in &file.tensors {
                let entry = TensorEntry { file: index, dtype: info.dtype, shape: info.shape.clone(), start: info.start, end: info.end };
                if let Some(previous) = tensors.insert(name.clone(), entry) {
                    return Err(Failure::data(format!(
                        "{}: tensor {name} appears in both {} and {}",
                        dir.display(),
                        files[previous.file].display(),
                        path.display()
                    )));
                }
            }
            opened.push(file);
        }
        Ok(Checkpoint { dir: dir.to_path_buf(), files, opened, tensors })
    }

    /// The raw bytes of a tensor.
    pub fn bytes(&self, entry: &TensorEntry) -> &[u8] {
        self.opened[entry.file].bytes(entry.start..entry.end)
    }
}

/// The safetensors files of a checkpoint directory: the shards `model.safetensors.index.json`
/// names, else `model.safetensors`, else every `*.safetensors` file, sorted.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| Failure::io_at(&index, "cannot read", &e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Failure::data(format!("{}: invalid JSON: {e}", index.display())))?;
        let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| {
            Failure::data(format!("{}: no \"weight_map\" object", index.display()))
        })?;
        let mut names: Vec<String> = map.values().filter_map(|v| v.as_str().map(str::to_string)).collect();
        names.sort();
        names.dedup();
        let files: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
        for f in &files {
            if !f.is_file() {
                return Err(Failure::no_input(format!(
                    "{}: shard {} named by {} is missing",
                    dir.display(),
                    f.display(),
                    index.display()
                )));
            }
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Failure::io_at(dir, "cannot list", &e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Failure::no_input(format!(
            "{}: no safetensors weights (model.safetensors, an index, or *.safetensors); \
             convert Megatron checkpoints with os-megatron2hf first",
            dir.display()
        )));
    }
    Ok(files)
}
