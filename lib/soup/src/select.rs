//! Choosing checkpoints from a run directory: subdirectories named like `checkpoint-1000`,
//! `iter_0000720`, `global_step500` or `step_20` are ordered by their step number (not by name),
//! and the latest N are taken.

use std::path::{Path, PathBuf};

use openseek_common::Failure;

/// The step number a checkpoint directory name ends with (`checkpoint-1000` -> 1000,
/// `iter_0000720` -> 720); None when the name does not end in digits after a letter, `-` or `_`.
pub fn step_of(name: &str) -> Option<u64> {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 || digits == name.len() {
        return None;
    }
    name[name.len() - digits..].parse().ok()
}

/// Every checkpoint subdirectory of `run_dir`, ordered by step.
pub fn checkpoints_by_step(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>, Failure> {
    let entries = std::fs::read_dir(run_dir).map_err(|e| Failure::io_at(run_dir, "cannot list run directory", &e))?;
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if let Some(step) = path.file_name().and_then(|n| n.to_str()).and_then(step_of) {
            found.push((step, path));
        }
    }
    found.sort();
    for pair in found.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(Failure::data(format!(
                "{}: {} and {} have the same step {}; keep one",
                run_dir.display(),
                pair[0].1.display(),
                pair[1].1.display(),
                pair[0].0
            )));
        }
    }
    Ok(found)
}

/// The latest `n` checkpoints of `run_dir`, oldest first.
pub fn latest(run_dir: &Path, n: usize) -> Result<Vec<PathBuf>, Failure> {
    if n == 0 {
        return Err(Failure::usage("--latest must be at least 1"));
    }
    let all = checkpoints_by_step(run_dir)?;
    if all.len() < n {
        return Err(Failure::no_input(format!(
            "{}: asked for the latest {n} checkpoints but found {} (directories named like checkpoint-1000 or iter_0000720)",
            run_dir.display(),
            all.len()
        )));
    }
    Ok(all[all.len() - n..].iter().map(|(_, p)| p.clone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_sort_numerically() {
        assert_eq!(step_of("checkpoint-1000"), Some(1000));
        assert_eq!(step_of("iter_0000720"), Some(720));
        assert_eq!(step_of("global_step5"), Some(5));
        assert_eq!(step_of("final"), None);
        assert_eq!(step_of("1234"), None);
        let dir = tempfile::tempdir().unwrap();
        for name in ["checkpoint-900", "checkpoint-1000", "checkpoint-100", "runs", "checkpoint-20"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        let got = latest(dir.path(), 3).unwrap();
        let names: Vec<_> = got.iter().map(|p| p.file_name().unwrap().to_str().unwrap().to_string()).collect();
        assert_eq!(names, ["checkpoint-100", "checkpoint-900", "checkpoint-1000"]);
        assert!(latest(dir.path(), 5).is_err());
    }
}
