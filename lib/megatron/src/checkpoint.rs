//! A Megatron checkpoint opened for conversion, whichever its format (crate::legacy and
//! crate::dcp open them): the iteration directory chosen, Megatron's `args`, and one [`Entry`]
//! per global parameter that says where its pieces lie. Nothing but pickles is read until
//! [`Checkpoint::read`] is asked for one tensor; the format's [`Tensors`] reads that tensor's
//! pieces (every rank's shard of it) and returns it whole.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use openseek_common::Failure;

use crate::archive::Archive;
use crate::mapping::Merge;
use crate::pickle::{Dtype, TensorRef, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `iter_N/mp_rank_*/model_optim_rng.pt`, one `torch.save` archive per rank.
    Torch,
    /// PyTorch Distributed Checkpoint: `.metadata`, `common.pt`, `__R_I.distcp`.
    TorchDist,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Torch => "torch",
            Format::TorchDist => "torch_dist",
        }
    }
}

/// One global parameter of the checkpoint, as it will be read.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Global Megatron key (see `mapping`).
    pub key: String,
    pub dtype: Dtype,
    /// Shape of the whole (merged) tensor.
    pub shape: Vec<usize>,
    /// The files it is read from, for messages.
    pub files: Vec<PathBuf>,
    pub(crate) src: Src,
}

#[derive(Debug, Clone)]
pub(crate) enum Src {
    /// Pieces by tensor-parallel rank: (rank file index, tensor), merged by the rule.
    Legacy { pieces: Vec<(usize, TensorRef)>, merge: Merge },
    /// The sub-tensor `fixed` (leading indices) of a DCP tensor.
    Dcp { fqn: String, fixed: Vec<usize> },
}

/// An opened checkpoint.
pub struct Checkpoint {
    pub format: Format,
    /// The iteration directory read.
    pub dir: PathBuf,
    /// The iteration (None for `release`).
    pub iteration: Option<u64>,
    pub args: Value,
    pub entries: Vec<Entry>,
    /// Keys skipped on purpose: reason -> count.
    pub ignored: BTreeMap<String, usize>,
    /// Model keys that are neither mapped nor known (with the file they came from).
    pub unknown: Vec<(String, PathBuf)>,
    /// Tensor / pipeline / expert parallel sizes seen.
    pub parallel: (usize, usize, usize),
    pub(crate) tensors: Box<dyn Tensors>,
}

/// Where a format keeps its entries' tensors (the rank files; the DCP chunks).
pub(crate) trait Tensors {
    /// The whole tensor of an entry, row-major little-endian bytes.
    fn read(&self, e: &Entry) -> Result<Vec<u8>, Failure>;
}

/// An open file; for rank files also its parsed archive.
pub(crate) struct OpenFile {
    pub path: PathBuf,
    pub file: std::fs::File,
    pub archive: Option<Archive>,
}

impl OpenFile {
    pub fn open(path: &Path) -> Result<OpenFile, Failure> {
        let file = std::fs::File::open(path).map_err(|e| Failure::io_at(path, "cannot open", &e))?;
        Ok(OpenFile { path: path.to_path_buf(), file, archive: None })
    }

    /// Open and parse a `torch.save` archive.
    pub fn archive(path: &Path) -> Result<OpenFile, Failure> {
        let mut f = OpenFile::open(path)?;
        f.archive = Some(Archive::parse(&f.file, &path.display().to_string())?);
        Ok(f)
    }
}

/// Whether the output layer shares the embedding: Megatron ties them unless
/// `--untie-embeddings-and-output-weights` was given.
pub fn tied_embeddings(args: &Value) -> bool {
    args.get("untie_embeddings_and_output_weights").and_then(|v| v.as_int()).is_none_or(|v| v == 0)
}

/// Choose the iteration directory under `load`: `--iteration` if given, else the one named in
/// `latest_checkpointed_iteration.txt`; `load` may also be an iteration directory itself.
pub fn iteration_dir(load: &Path, iteration: Option<&str>) -> Result<(PathBuf, Option<u64>), Failure> {
    if !load.is_dir() {
        return Err(Failure::no_input(format!("{}: no such checkpoint directory", load.display())));
    }
    let looks_like_iteration = |d: &Path| {
        d.join(".metadata").is_file()
            || std::fs::read_dir(d).map(|r| r.flatten().any(|e| e.file_name().to_string_lossy().starts_with("mp_rank_"))).unwrap_or(false)
    };
    let name = match iteration {
        Some(it) => it.trim().to_string(),
        None if looks_like_iteration(load) => {
            let n = load.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let it = n.strip_prefix("iter_").and_then(|s| s.parse().ok());
            return Ok((load.to_path_buf(), it));
        }
        None => {
            let tracker = load.join("latest_checkpointed_iteration.txt");
            std::fs::read_to_string(&tracker)
                .map_err(|e| Failure::io_at(&tracker, "cannot read (or pass --iteration)", &e))?
                .trim()
                .to_string()
        }
    };
    let (dir, it) = if name == "release" {
        (load.join("release"), None)
    } else {
        let n: u64 = name
            .trim_start_matches("iter_")
            .parse()
            .map_err(|_| Failure::data(format!("{}: iteration {name:?} is neither a number nor `release`", load.display())))?;
        (load.join(format!("iter_{n:07}")), Some(n))
    };
    if !dir.is_dir() {
        let mut have: Vec<String> = std::fs::read_dir(load)
            .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("iter_") || n == "release").collect())
            .unwrap_or_default();
        have.sort();
        return Err(Failure::no_input(format!(
            "{}: iteration directory missing (present: {})",
            dir.display(),
            if have.is_empty() { "none".to_string() } else { have.join(", ") }
        )));
    }
    Ok((dir, it))
}

impl Checkpoint {
    /// The whole tensor of an entry, row-major little-endian bytes.
    pub fn read(&self, e: &Entry) -> Result<Vec<u8>, Failure> {
        self.tensors.read(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iteration_choice_and_missing_directories() {
        let d = tempfile::tempdir().unwrap();
        let e = iteration_dir(d.path(), None).unwrap_err();
        assert!(e.message.contains("latest_checkpointed_iteration.txt"), "{}", e.message);
        std::fs::write(d.path().join("latest_checkpointed_iteration.txt"), "200\n").unwrap();
        std::fs::create_dir(d.path().join("iter_0000100")).unwrap();
        let e = iteration_dir(d.path(), None).unwrap_err();
        assert!(e.message.contains("iter_0000200: iteration directory missing (present: iter_0000100)"), "{}", e.message);
        assert_eq!(e.code as i32, 66);
        let (dir, it) = iteration_dir(d.path(), Some("100")).unwrap();
        assert_eq!((dir.file_name().unwrap().to_str().unwrap(), it), ("iter_0000100", Some(100)));
        assert!(iteration_dir(d.path(), Some("abc")).is_err());
        std::fs::write(d.path().join("latest_checkpointed_iteration.txt"), "release").unwrap();
        std::fs::create_dir(d.path().join("release")).unwrap();
        let (dir, it) = iteration_dir(d.path(), None).unwrap();
        assert_eq!((dir.file_name().unwrap().to_str().unwrap(), it), ("release", None));
        // An iteration directory given directly.
        std::fs::create_dir(d.path().join("iter_0000100/mp_rank_00")).unwrap();
        let (dir, it) = iteration_dir(&d.path().join("iter_0000100"), None).unwrap();
        assert_eq!((dir, it), (d.path().join("iter_0000100"), Some(100)));
    }
}
