//! Atomic multi-file outputs: every file is written under a temporary name beside its final
//! path and renamed into place only on `commit`. Dropped without commit (an error, a panic),
//! the temporaries are removed, so a failed run never leaves something that looks complete.
//! Files are renamed in the order they were added: put the file that marks completion
//! (a manifest, an index) last. JSON records (manifests, configs, reports) are written pretty
//! with a final newline through `write_json` (one file of a set) or `write_json_file` (alone).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::output::cannot_create;
use crate::Failure;

pub struct AtomicOutputs {
    /// (temporary path, final path), in commit order.
    files: Vec<(PathBuf, PathBuf)>,
    committed: bool,
}

impl AtomicOutputs {
    pub fn new() -> Self {
        AtomicOutputs { files: Vec::new(), committed: false }
    }

    /// Temporary path for `final_path`: same directory (so the rename is atomic), hidden, tagged
    /// with the process id.
    pub fn temp_path_for(final_path: &Path) -> PathBuf {
        let name = final_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        final_path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
    }

    /// Remove the temporaries of `final_path` that an earlier run left behind when it was killed
    /// outright (SIGKILL, a lost node): `.NAME.tmp-PID` files whose process no longer runs here.
    /// Returns each removed file with its size.
    pub fn remove_stale_temporaries(final_path: &Path) -> Vec<(PathBuf, u64)> {
        let Some(name) = final_path.file_name().and_then(|n| n.to_str()) else { return Vec::new() };
        let dir = match final_path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let prefix = format!(".{name}.tmp-");
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(pid) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)).and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            let running = pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists();
            if running {
                continue;
            }
            let path = entry.path();
            let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
            if std::fs::remove_file(&path).is_ok() {
                removed.push((path, bytes));
            }
        }
        removed
    }

    /// Create the temporary file for `final_path` and register it for commit.
    pub fn create(&mut self, final_path: &Path) -> Result<File, Failure> {
        if let Some(dir) = final_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(cannot_create(final_path, format!("its directory {} does not exist; create it first", dir.display())));
            }
        }
        let temp = Self::temp_path_for(final_path);
        let file = File::create(&temp).map_err(|e| cannot_create(final_path, format!("{}: {e}", temp.display())))?;
        self.files.push((temp, final_path.to_path_buf()));
        Ok(file)
    }

    /// Add `path` to the set holding `value` as pretty-printed JSON with a final newline.
    pub fn write_json(&mut self, path: &Path, value: &impl Serialize) -> Result<(), Failure> {
        let mut f = BufWriter::new(self.create(path)?);
        serde_json::to_writer_pretty(&mut f, value).map_err(|e| Failure::io(format!("{}: cannot write: {e}", path.display())))?;
        f.write_all(b"\n").and_then(|()| f.flush()).map_err(|e| Failure::io_at(path, "cannot write", &e))
    }

    /// Flush every temporary to disk and rename each into place, in the order added.
    pub fn commit(mut self) -> Result<(), Failure> {
        for (temp, _) in &self.files {
            File::open(temp)
                .and_then(|f| f.sync_all())
                .map_err(|e| Failure::io_at(temp, "cannot sync", &e))?;
        }
        for (temp, final_path) in &self.files {
            std::fs::rename(temp, final_path).map_err(|e| cannot_create(final_path, format!("cannot rename into place: {e}")))?;
        }
        if let Some(dir) = self.files.last().and_then(|(_, p)| p.parent()) {
            let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        self.committed = true;
        Ok(())
    }
}

/// Write one JSON file atomically (temp + rename), pretty-printed with a final newline.
pub fn write_json_file(path: &Path, value: &impl Serialize) -> Result<(), Failure> {
    let mut out = AtomicOutputs::new();
    out.write_json(path, value)?;
    out.commit()
}

impl Default for AtomicOutputs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for AtomicOutputs {
    fn drop(&mut self) {
        if !self.committed {
            for (temp, _) in &self.files {
                let _ = std::fs::remove_file(temp);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn commit_renames_in_order_and_drop_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("x.bin");
        let b = dir.path().join("x.json");
        {
            let mut out = AtomicOutputs::new();
            out.create(&a).unwrap().write_all(b"data").unwrap();
            out.create(&b).unwrap().write_all(b"{}").unwrap();
            // dropped without commit
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "temporaries must be removed");
        let mut out = AtomicOutputs::new();
        out.create(&a).unwrap().write_all(b"data").unwrap();
        out.create(&b).unwrap().write_all(b"{}").unwrap();
        assert!(!a.exists());
        out.commit().unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"data");
        assert_eq!(std::fs::read(&b).unwrap(), b"{}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("part_0.bin");
        // A pid that cannot be running (above the kernel's pid_max limit of 2^22).
        let dead = dir.path().join(".part_0.bin.tmp-4194999");
        std::fs::write(&dead, b"12345").unwrap();
        let mine = AtomicOutputs::temp_path_for(&out);
        std::fs::write(&mine, b"x").unwrap();
        let other_output = dir.path().join(".part_1.bin.tmp-4194999");
        std::fs::write(&other_output, b"x").unwrap();
        let removed = AtomicOutputs::remove_stale_temporaries(&out);
        assert_eq!(removed, vec![(dead.clone(), 5)]);
        assert!(!dead.exists() && mine.exists() && other_output.exists());
    }

    #[test]
    fn json_is_pretty_with_a_final_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let value = serde_json::json!({"a": [1, 2], "b": "x"});
        write_json_file(&path, &value).unwrap();
        let expected = serde_json::to_string_pretty(&value).unwrap() + "\n";
        assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary left");
    }

    #[test]
    fn missing_output_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = AtomicOutputs::new();
        let err = out.create(&dir.path().join("nope/x.bin")).unwrap_err();
        assert_eq!(err.code, crate::ExitCode::CantCreat);
        assert!(err.message.contains("does not exist"), "{}", err.message);
    }
}
