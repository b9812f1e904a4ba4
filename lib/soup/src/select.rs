//! Choosing checkpoints from a run directory: subdirectories named like `checkpoint-1000`,
//! `iter_0000720`, `global_step500`, `step_20` or `step-0000040` (os-train's) are ordered by
//! their step number (not by name), and the latest N are taken. An os-train run directory
//! (`RUN/checkpoints/step-N`) is looked into.

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

/// The latest `n` checkpoints of `run_dir` (or of `run_dir/checkpoints`, an os-train run),
/// oldest first: all of them when there are fewer than `n` but at least two (a run that keeps
/// fewer checkpoints than a soup asks for still makes one; the caller says so).
pub fn latest(run_dir: &Path, n: usize) -> Result<Vec<PathBuf>, Failure> {
    if n == 0 {
        return Err(Failure::usage("--latest must be at least 1"));
    }
    let mut all = checkpoints_by_step(run_dir)?;
    let nested = run_dir.join("checkpoints");
    if all.is_empty() && nested.is_dir() {
        all = checkpoints_by_step(&nested)?;
    }
    if all.len() < n.min(2) {
        return Err(Failure::no_input(format!(
            "{}: asked for the latest {n} checkpoints but found {} (directories named like checkpoint-1000, iter_0000720 \
             or step-0000040, in the directory or its checkpoints/)",
            run_dir.display(),
            all.len()
        )));
    }
    let take = n.min(all.len());
    Ok(all[all.len() - take..].iter().map(|(_, p)| p.clone()).collect())
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
        assert_eq!(latest(dir.path(), 5).unwrap().len(), 4, "fewer than asked: all of them");
        let one = tempfile::tempdir().unwrap();
        std::fs::create_dir(one.path().join("checkpoint-7")).unwrap();
        assert_eq!(latest(one.path(), 3).unwrap_err().code, openseek_common::ExitCode::NoInput, "one checkpoint is no soup");
    }

    #[test]
    fn an_os_train_run_directory_is_looked_into() {
        let run = tempfile::tempdir().unwrap();
        for name in ["checkpoints/step-0000040", "checkpoints/step-0000120", "checkpoints/step-0000080", "tensorboard"] {
            std::fs::create_dir_all(run.path().join(name)).unwrap();
        }
        std::fs::write(run.path().join("log.jsonl"), "").unwrap();
        let got = latest(run.path(), 2).unwrap();
        assert_eq!(got, [run.path().join("checkpoints/step-0000080"), run.path().join("checkpoints/step-0000120")]);
    }
}
