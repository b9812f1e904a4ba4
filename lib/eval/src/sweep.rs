//! Checkpoint sweeps, safe to start from cron: find the checkpoints (Hugging Face model folders
//! such as `RUN/checkpoints/step-0000720`, the layout os-train writes), evaluate each one not yet
//! in the results table, and append its row. A lock file keeps two sweeps from running at once
//! (the second exits at once); a killed sweep resumes at the task where it stopped (each
//! checkpoint's run keeps per-task records); a finished checkpoint is never evaluated again for
//! the same tasks and options.
//!
//! A checkpoint that fails to load is either still being written — a file in it changed within
//! the settle time, a temporary file in it, or the run's `checkpoints/latest` not yet naming it or
//! a later step — and left for the next sweep, or corrupt: recorded in `results.jsonl` as failed
//! with the reason (`"status": "failed"`) and not tried again (delete that row to retry it).
//!
//! Output folder: `results.jsonl` (one row per checkpoint, appended), `results.md` (the same as a
//! Markdown table, rewritten), `plots/<column>.png` (each table column and the mean against the
//! training step), `runs/<checkpoint>/` (each checkpoint's `results.json`, `details.h5`, task
//! records) and `.sweep.lock`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use openseek_common::lock::FileLock;
use openseek_common::{AtomicOutputs, ExitCode, Failure};
use serde_json::{json, Value};

use crate::run::RunSummary;
use crate::table::COLUMNS;

/// One checkpoint folder and the training step its name gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub name: String,
    pub step: Option<u64>,
    pub path: PathBuf,
}

/// The training step in a checkpoint name: the last run of digits (`step-0000720` → 720,
/// `iter_0003600` → 3600, `checkpoint-500` → 500).
pub fn step_of(name: &str) -> Option<u64> {
    let end = name.rfind(|c: char| c.is_ascii_digit())? + 1;
    let start = name[..end].rfind(|c: char| !c.is_ascii_digit()).map_or(0, |i| i + 1);
    name[start..end].parse().ok()
}

fn is_model_dir(p: &Path) -> bool {
    p.join("config.json").is_file()
}

/// A temporary name: os-train's `.tmp-step-N`, an AtomicOutputs `x.tmp-PID`, rsync's `.x.AbCdEf`.
fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') || name.contains(".tmp")
}

/// Why a checkpoint folder looks still being written, if it does: a file in it modified less
/// than `settle` ago, a temporary file in it, or `latest` beside it naming an earlier step.
pub fn still_being_written(ck: &Checkpoint, settle: std::time::Duration) -> Option<String> {
    let now = std::time::SystemTime::now();
    let entries = std::fs::read_dir(&ck.path).ok()?;
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if is_temp_name(&name) {
            return Some(format!("{} holds the temporary file {name}", ck.path.display()));
        }
        let age = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| now.duration_since(t).ok());
        if age.is_none_or(|a| a < settle) {
            return Some(format!("{name} in {} changed less than {} s ago", ck.path.display(), settle.as_secs()));
        }
    }
    let latest = ck.path.parent()?.join("latest");
    let named = std::fs::read_to_string(&latest).ok()?;
    match (step_of(named.trim()), ck.step) {
        (Some(l), Some(s)) if l < s => Some(format!("{} names step {l}, before this checkpoint's", latest.display())),
        _ => None,
    }
}

/// The checkpoints under each of `roots`: a root that is itself a model folder, else its
/// sub-folders that are (directly, or under `checkpoints/`). Sorted by step, then name.
pub fn find_checkpoints(roots: &[PathBuf]) -> Result<Vec<Checkpoint>, Failure> {
    let mut out = Vec::new();
    for root in roots {
        if !root.is_dir() {
            return Err(Failure::no_input(format!("{}: --checkpoints: no such directory", root.display())));
        }
        let mut dirs = vec![root.clone()];
        if !is_model_dir(root) {
            dirs.clear();
            for base in [root.clone(), root.join("checkpoints")] {
                if let Ok(entries) = std::fs::read_dir(&base) {
                    dirs.extend(entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_model_dir(p)));
                }
            }
        }
        for d in dirs {
            let name = d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if d != *root && is_temp_name(&name) {
                continue;
            }
            out.push(Checkpoint { step: step_of(&name), name, path: d });
        }
    }
    out.sort_by(|a, b| (a.step, &a.name).cmp(&(b.step, &b.name)));
    out.dedup_by(|a, b| a.path == b.path);
    Ok(out)
}

/// The sweep's lock: an exclusive `flock` on `.sweep.lock`, released when dropped or when the
/// process dies (so a killed sweep never leaves a stale lock).
pub struct SweepLock {
    _lock: FileLock,
}

impl SweepLock {
    /// Take the lock or fail with exit 75 (another sweep holds it; cron tries again later).
    pub fn acquire(output: &Path) -> Result<SweepLock, Failure> {
        std::fs::create_dir_all(output).map_err(|e| Failure::io_at(output, "cannot create", &e))?;
        let path = output.join(".sweep.lock");
        match FileLock::try_acquire(&path)? {
            Some(lock) => {
                let mut file = lock.file();
                let _ = file.write_all(format!("{}\n", std::process::id()).as_bytes());
                Ok(SweepLock { _lock: lock })
            }
            None => Err(Failure::new(ExitCode::TempFail, format!("{}: another sweep is running (lock held); nothing done", path.display()))),
        }
    }
}

/// The rows of `results.jsonl` (a torn last line, from a kill during the append, is ignored).
pub fn read_rows(path: &Path) -> Result<Vec<Value>, Failure> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(Failure::io_at(path, "cannot read", &e)),
    }
}

/// What decides whether a stored row is for the same evaluation: tasks, data and options.
pub type SweepKey = Value;

/// Outcome of a sweep.
#[derive(Debug, Default)]
pub struct SweepReport {
    pub evaluated: Vec<String>,
    /// Already in results.jsonl (evaluated or recorded as failed).
    pub skipped_done: Vec<String>,
    /// Corrupt checkpoints found by this sweep (recorded as failed), with the reason.
    pub failed: Vec<(String, String)>,
    /// Checkpoints still being written (left for the next sweep), with the reason.
    pub pending: Vec<(String, String)>,
}

/// Evaluate each checkpoint not yet in `output/results.jsonl` for `key`, in step order:
/// `evaluate(checkpoint, run_dir)` runs one (reusing task records in `run_dir`). After each, its
/// row is appended and the Markdown table and plots are redrawn. A checkpoint that fails to load
/// (exit 65, 66 or 78) is left for the next sweep when [`still_being_written`] within `settle`,
/// else recorded as failed; a stop request (exit 75) or any other error ends the sweep at once.
pub fn sweep(
    checkpoints: &[Checkpoint],
    output: &Path,
    key: &SweepKey,
    settle: std::time::Duration,
    evaluate: &mut dyn FnMut(&Checkpoint, &Path) -> Result<RunSummary, Failure>,
    verbose: bool,
) -> Result<SweepReport, Failure> {
    let _lock = SweepLock::acquire(output)?;
    let jsonl = output.join("results.jsonl");
    let done: Vec<String> = read_rows(&jsonl)?
        .into_iter()
        .filter(|r| &r["key"] == key)
        .filter_map(|r| r["checkpoint"].as_str().map(str::to_string))
        .collect();
    let mut report = SweepReport::default();
    for ck in checkpoints {
        if done.contains(&ck.name) {
            report.skipped_done.push(ck.name.clone());
            continue;
        }
        if verbose {
            eprintln!("os-eval sweep: evaluating {} ({})", ck.name, ck.path.display());
        }
        let run_dir = output.join("runs").join(&ck.name);
        match evaluate(ck, &run_dir) {
            Ok(summary) => {
                append_row(&jsonl, &row(ck, key, &summary))?;
                report.evaluated.push(ck.name.clone());
                redraw(output, key)?;
            }
            Err(e) if !matches!(e.code, ExitCode::DataErr | ExitCode::NoInput | ExitCode::Config) => return Err(e),
            Err(e) => match still_being_written(ck, settle) {
                Some(why) => {
                    eprintln!("os-eval sweep: {}: {e}; still being written ({why}): left for the next sweep", ck.name);
                    report.pending.push((ck.name.clone(), e.to_string()));
                }
                None => {
                    eprintln!("os-eval sweep: {}: {e}; recorded as failed (delete its row in results.jsonl to retry)", ck.name);
                    append_row(&jsonl, &failed_row(ck, key, &e))?;
                    report.failed.push((ck.name.clone(), e.to_string()));
                }
            },
        }
    }
    redraw(output, key)?;
    Ok(report)
}

fn row(ck: &Checkpoint, key: &SweepKey, s: &RunSummary) -> Value {
    let r = &s.results;
    let tasks: serde_json::Map<String, Value> = s.records.iter().map(|t| (t.task.clone(), json!(t.value))).collect();
    let table: serde_json::Map<String, Value> = s.table.columns.iter().map(|(n, v, _, _)| (n.to_string(), json!(v))).collect();
    json!({
        "checkpoint": ck.name,
        "step": ck.step,
        "path": ck.path.display().to_string(),
        "model_sha256": r["model"]["sha256"],
        "key": key,
        "table": table,
        "mean": s.table.mean,
        "tasks": tasks,
        "seconds": r["timings"]["total_seconds"],
        "finished_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    })
}

fn failed_row(ck: &Checkpoint, key: &SweepKey, e: &Failure) -> Value {
    json!({
        "checkpoint": ck.name,
        "step": ck.step,
        "path": ck.path.display().to_string(),
        "key": key,
        "status": "failed",
        "reason": e.to_string(),
        "exit_code": e.code as i32,
        "finished_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    })
}

/// Append one line and sync, so that a row is either whole or (torn by a kill) ignored.
fn append_row(path: &Path, row: &Value) -> Result<(), Failure> {
    let mut f = OpenOptions::new().create(true).append(true).open(path).map_err(|e| Failure::io_at(path, "cannot open", &e))?;
    f.write_all(format!("{row}\n").as_bytes()).and_then(|_| f.sync_all()).map_err(|e| Failure::io_at(path, "cannot append", &e))
}

/// Rewrite `results.md` and `plots/*.png` from the rows of `results.jsonl` for `key`.
fn redraw(output: &Path, key: &SweepKey) -> Result<(), Failure> {
    let mut rows: Vec<Value> = read_rows(&output.join("results.jsonl"))?.into_iter().filter(|r| &r["key"] == key && r["status"] != "failed").collect();
    rows.sort_by_key(|r| r["step"].as_u64().unwrap_or(u64::MAX));
    let cols: Vec<&str> = COLUMNS.iter().copied().filter(|c| rows.iter().any(|r| r["table"][*c].is_number())).collect();
    let cell = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.2}"));
    let mut md = format!("| checkpoint | step | {} | Mean |\n", cols.join(" | "));
    md.push_str(&format!("| --- | ---: |{} ---: |\n", " ---: |".repeat(cols.len())));
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r["checkpoint"].as_str().unwrap_or(""),
            r["step"].as_u64().map_or("-".into(), |s| s.to_string()),
            cols.iter().map(|c| cell(&r["table"][*c])).collect::<Vec<_>>().join(" | "),
            cell(&r["mean"])
        ));
    }
    let md_path = output.join("results.md");
    let mut out = AtomicOutputs::new();
    out.create(&md_path)?.write_all(md.as_bytes()).map_err(|e| Failure::io_at(&md_path, "cannot write", &e))?;
    out.commit()?;
    let plots = output.join("plots");
    std::fs::create_dir_all(&plots).map_err(|e| Failure::io_at(&plots, "cannot create", &e))?;
    let mut series: Vec<(String, Vec<(f64, f64)>)> = cols
        .iter()
        .map(|c| (c.to_string(), rows.iter().filter_map(|r| Some((r["step"].as_f64()?, r["table"][*c].as_f64()?))).collect()))
        .collect();
    series.push(("Mean".to_string(), rows.iter().filter_map(|r| Some((r["step"].as_f64()?, r["mean"].as_f64()?))).collect()));
    for (name, points) in series.iter().filter(|s| !s.1.is_empty()) {
        let file: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        crate::plot::score_vs_step(&plots.join(format!("{file}.png")), name, points)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_from_names() {
        assert_eq!(step_of("step-0000720"), Some(720));
        assert_eq!(step_of("iter_0003600"), Some(3600));
        assert_eq!(step_of("checkpoint-500"), Some(500));
        assert_eq!(step_of("final"), None);
        assert_eq!(step_of("v2-step-10-hf"), Some(10));
    }

    #[test]
    fn finds_checkpoints_in_step_order() {
        let d = tempfile::tempdir().unwrap();
        for s in ["step-0000200", "step-0000010", "step-0001000"] {
            let p = d.path().join("checkpoints").join(s);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("config.json"), "{}").unwrap();
        }
        std::fs::create_dir_all(d.path().join("checkpoints/step-0000300")).unwrap(); // no config: not yet a checkpoint
        let found = find_checkpoints(&[d.path().to_path_buf()]).unwrap();
        assert_eq!(found.iter().map(|c| c.step.unwrap()).collect::<Vec<_>>(), vec![10, 200, 1000]);
        let one = find_checkpoints(&[d.path().join("checkpoints/step-0000200")]).unwrap();
        assert_eq!(one.len(), 1);
        assert!(find_checkpoints(&[d.path().join("nope")]).is_err());
    }

    #[test]
    fn second_lock_is_refused_until_released() {
        let d = tempfile::tempdir().unwrap();
        let a = SweepLock::acquire(d.path()).unwrap();
        let e = SweepLock::acquire(d.path()).err().unwrap();
        assert_eq!(e.code, ExitCode::TempFail);
        drop(a);
        SweepLock::acquire(d.path()).unwrap();
    }
}
