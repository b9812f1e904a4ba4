//! Resolve the input arguments of a tokenize run into an ordered list of files: globs and
//! directories expanded, formats detected from names, and a deterministic part picked for Slurm
//! job arrays (`--shard-index i --num-shards n`).

use std::path::{Path, PathBuf};

use openseek_common::Failure;

/// How the records of one input are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One JSON object per line; a `.json` file whose first byte is `{` is read this way too.
    JsonLines,
    /// A `.json` file holding one array of objects.
    JsonArray,
    /// Apache Parquet; one record per row.
    Parquet,
    /// Plain text; the whole file is one document.
    Text,
}

/// Transparent decompression applied before the layout is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// `-` means standard input (JSON lines).
    pub path: PathBuf,
    pub layout: Layout,
    pub compression: Compression,
    /// Size on disk in bytes (0 for stdin).
    pub bytes: u64,
}

impl Input {
    pub fn is_stdin(&self) -> bool {
        self.path.as_os_str() == "-"
    }
    pub fn display(&self) -> String {
        if self.is_stdin() {
            "<stdin>".to_string()
        } else {
            self.path.display().to_string()
        }
    }
}

/// Extensions read, for error messages and directory walks.
pub const SUPPORTED: &str = ".jsonl, .ndjson, .json (lines or array), .parquet, .txt, each optionally .gz or .zst";

/// Classify a file by name. `.json` is refined by [`sniff_json`] when the file is opened.
pub fn classify(path: &Path) -> Option<(Layout, Compression)> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    let (stem, compression) = if let Some(s) = name.strip_suffix(".gz") {
        (s, Compression::Gzip)
    } else if let Some(s) = name.strip_suffix(".zst").or_else(|| name.strip_suffix(".zstd")) {
        (s, Compression::Zstd)
    } else {
        (name.as_str(), Compression::None)
    };
    let layout = if stem.ends_with(".jsonl") || stem.ends_with(".ndjson") {
        Layout::JsonLines
    } else if stem.ends_with(".json") {
        Layout::JsonArray
    } else if stem.ends_with(".parquet") && compression == Compression::None {
        Layout::Parquet
    } else if stem.ends_with(".txt") {
        Layout::Text
    } else {
        return None;
    };
    Some((layout, compression))
}

/// Expand arguments into inputs, in argument order; each glob and directory sorted by path.
/// Duplicates (the same file named twice) are an error: they would silently double the data.
pub fn resolve(args: &[String]) -> Result<Vec<Input>, Failure> {
    if args.is_empty() {
        return Err(Failure::usage(format!("no inputs given; pass files, globs or directories ({SUPPORTED}), or - for JSON lines on stdin")));
    }
    let mut inputs = Vec::new();
    for arg in args {
        if arg == "-" {
            inputs.push(Input { path: PathBuf::from("-"), layout: Layout::JsonLines, compression: Compression::None, bytes: 0 });
            continue;
        }
        let mut paths = Vec::new();
        if arg.contains(['*', '?', '[']) {
            let entries = glob::glob(arg).map_err(|e| Failure::usage(format!("bad glob pattern {arg:?}: {e}")))?;
            for entry in entries {
                let path = entry.map_err(|e| Failure::no_input(format!("while expanding {arg:?}: {e}")))?;
                if path.is_file() {
                    paths.push(path);
                }
            }
            if paths.is_empty() {
                return Err(Failure::no_input(format!("the pattern {arg:?} matched no files")));
            }
            paths.sort();
            for path in paths {
                inputs.push(classified(path, arg)?);
            }
        } else {
            let path = PathBuf::from(arg);
            let meta = std::fs::metadata(&path).map_err(|e| Failure::io_at(&path, "cannot read input", &e))?;
            if meta.is_dir() {
                walk_dir(&path, &mut paths)?;
                if paths.is_empty() {
                    return Err(Failure::no_input(format!("{}: the directory holds no input files ({SUPPORTED})", path.display())));
                }
                paths.sort();
                inputs.extend(paths.into_iter().map(|p| classified(p, arg)).collect::<Result<Vec<_>, _>>()?);
            } else {
                inputs.push(classified(path, arg)?);
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for input in &inputs {
        if !input.is_stdin() {
            let key = input.path.canonicalize().unwrap_or_else(|_| input.path.clone());
            if !seen.insert(key) {
                return Err(Failure::usage(format!("{} is given more than once; each input must appear once", input.display())));
            }
        } else if inputs.iter().filter(|i| i.is_stdin()).count() > 1 {
            return Err(Failure::usage("- (stdin) is given more than once"));
        }
    }
    Ok(inputs)
}

fn classified(path: PathBuf, arg: &str) -> Result<Input, Failure> {
    let (layout, compression) = classify(&path).ok_or_else(|| {
        Failure::usage(format!("{}: unknown input type (from {arg:?}); supported: {SUPPORTED}", path.display()))
    })?;
    let bytes = std::fs::metadata(&path).map_err(|e| Failure::io_at(&path, "cannot read input", &e))?.len();
    Ok(Input { path, layout, compression, bytes })
}

fn walk_dir(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Failure> {
    let entries = std::fs::read_dir(dir).map_err(|e| Failure::io_at(dir, "cannot list directory", &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Failure::io_at(dir, "cannot list directory", &e))?;
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            walk_dir(&path, out)?;
        } else if classify(&path).is_some() {
            out.push(path);
        }
    }
    Ok(())
}

/// The part of `inputs` that shard `index` of `count` handles: files are dealt round-robin in
/// their resolved order, so every array task gets a fixed, disjoint set and together they cover all.
pub fn select_shard(inputs: Vec<Input>, index: usize, count: usize) -> Result<Vec<Input>, Failure> {
    if count == 0 || index >= count {
        return Err(Failure::usage(format!("--shard-index {index} must be below --num-shards {count} (and --num-shards at least 1)")));
    }
    if count > 1 && inputs.iter().any(Input::is_stdin) {
        return Err(Failure::usage("stdin (-) cannot be split with --num-shards; name files instead"));
    }
    let picked: Vec<Input> = inputs.into_iter().enumerate().filter(|(i, _)| i % count == index).map(|(_, x)| x).collect();
    if picked.is_empty() {
        return Err(Failure::usage(format!("shard {index} of {count} has no inputs: there are fewer input files than shards")));
    }
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_names() {
        assert_eq!(classify(Path::new("a/b.jsonl")), Some((Layout::JsonLines, Compression::None)));
        assert_eq!(classify(Path::new("b.JSONL.ZST")), Some((Layout::JsonLines, Compression::Zstd)));
        assert_eq!(classify(Path::new("b.json.gz")), Some((Layout::JsonArray, Compression::Gzip)));
        assert_eq!(classify(Path::new("train-00001.parquet")), Some((Layout::Parquet, Compression::None)));
        assert_eq!(classify(Path::new("book.txt.gz")), Some((Layout::Text, Compression::Gzip)));
        assert_eq!(classify(Path::new("x.csv")), None);
        assert_eq!(classify(Path::new("x.parquet.gz")), None);
    }

    #[test]
    fn resolve_globs_dirs_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.jsonl", "a.jsonl", "sub/c.txt", "skip.csv"] {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "{}").unwrap();
        }
        let d = dir.path().to_string_lossy().to_string();
        let got = resolve(&[format!("{d}/*.jsonl")]).unwrap();
        let names: Vec<_> = got.iter().map(|i| i.path.file_name().unwrap().to_string_lossy().to_string()).collect();
        assert_eq!(names, ["a.jsonl", "b.jsonl"]);
        let all = resolve(std::slice::from_ref(&d)).unwrap();
        assert_eq!(all.len(), 3, "directory walk takes supported files only");
        assert_eq!(resolve(&[format!("{d}/*.parquet")]).unwrap_err().code, openseek_common::ExitCode::NoInput);
        assert_eq!(resolve(&[format!("{d}/missing.jsonl")]).unwrap_err().code, openseek_common::ExitCode::NoInput);
        assert_eq!(resolve(&[format!("{d}/skip.csv")]).unwrap_err().code, openseek_common::ExitCode::Usage);
        let twice = resolve(&[format!("{d}/a.jsonl"), format!("{d}/*.jsonl")]).unwrap_err();
        assert!(twice.message.contains("more than once"), "{}", twice.message);
    }

    #[test]
    fn shards_are_disjoint_and_cover_everything() {
        let inputs: Vec<Input> = (0..7)
            .map(|i| Input { path: PathBuf::from(format!("{i}.jsonl")), layout: Layout::JsonLines, compression: Compression::None, bytes: 1 })
            .collect();
        let mut seen = Vec::new();
        for k in 0..3 {
            seen.extend(select_shard(inputs.clone(), k, 3).unwrap());
        }
        seen.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(seen, inputs);
        assert!(select_shard(inputs.clone(), 3, 3).is_err());
        assert!(select_shard(inputs[..2].to_vec(), 2, 3).is_err());
    }
}
