//! The run's log: one JSON line per step in `RUN_DIR/log.jsonl`, echoed on stdout, and TensorBoard
//! scalars. A step's record is finished with the parameter norm once the step's update has run:
//! nothing waits for the update on the host (the next step's work queues behind it on the GPU),
//! so the norm is read at the next step's synchronisation point, before a checkpoint, or at the end.
//! A closed stdout (`os-train … | head`) stops the echo, never the training.

use crate::tensorboard::EventWriter;
use openseek_common::Failure;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A step's record waiting for its parameter norm.
pub struct PendingRecord {
    pub record: Value,
    /// TensorBoard scalars beyond the record's top-level numbers.
    pub scalars: Vec<(String, f32)>,
}

/// The top-level numbers of a record that also go to TensorBoard as `train/NAME`.
const SCALARS: [&str; 13] = [
    "loss", "mtp_loss", "seq_aux_loss", "z_loss", "lr", "grad_norm", "param_norm", "tokens_per_s", "tflops", "mfu", "step_time_s", "data_wait_s", "peak_memory_gib",
];

/// Where records go (rank 0 only; other ranks hold none).
pub struct RunLog {
    path: PathBuf,
    file: std::fs::File,
    tensorboard: Option<EventWriter>,
    /// Echo each line on stdout (until stdout is closed).
    echo: bool,
}

impl RunLog {
    /// Open `RUN_DIR/log.jsonl` for appending. A line cut short by a kill is removed first, and on
    /// a resume from step `resumed_at` the lines of later steps (written after that checkpoint by
    /// the run that died) too, so that every step appears once.
    pub fn open(run_dir: &Path, resumed_at: u64, tensorboard: bool) -> Result<RunLog, Failure> {
        let path = run_dir.join("log.jsonl");
        if let Ok(bytes) = std::fs::read(&path) {
            let keep = kept_prefix(&bytes, resumed_at);
            if keep < bytes.len() {
                let f = std::fs::OpenOptions::new().write(true).open(&path).map_err(|e| Failure::io_at(&path, "cannot open", &e))?;
                f.set_len(keep as u64).map_err(|e| Failure::io_at(&path, "cannot truncate", &e))?;
            }
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Failure::io_at(&path, "cannot open", &e))?;
        let tensorboard = if tensorboard { Some(EventWriter::create(&run_dir.join("tensorboard"))?) } else { None };
        Ok(RunLog { path, file, tensorboard, echo: true })
    }

    /// Write `pending` with the parameter norm `param_norm`.
    pub fn emit(&mut self, pending: PendingRecord, param_norm: f64) -> Result<(), Failure> {
        let PendingRecord { mut record, mut scalars } = pending;
        record["param_norm"] = json!(param_norm);
        let line = serde_json::to_string(&record).unwrap();
        if self.echo {
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                self.echo = false;
                eprintln!("os-train: stdout is closed; the log goes on in {}", self.path.display());
            }
        }
        writeln!(self.file, "{line}").map_err(|e| Failure::io_at(&self.path, "cannot write", &e))?;
        if let Some(tb) = &mut self.tensorboard {
            for key in SCALARS {
                if let Some(v) = record[key].as_f64() {
                    scalars.push((format!("train/{key}"), v as f32));
                }
            }
            let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
            tb.scalars(record["step"].as_i64().unwrap_or_default(), wall, &scalars)?;
            tb.flush()?;
        }
        Ok(())
    }
}

/// The length of the log's complete lines of steps up to `step` (a line that is not a step record
/// is kept; the first line past `step` or cut short ends what is kept).
fn kept_prefix(bytes: &[u8], step: u64) -> usize {
    let mut keep = 0;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        if line.last() != Some(&b'\n') {
            break;
        }
        let later = serde_json::from_slice::<Value>(line).ok().and_then(|v| v["step"].as_u64()).is_some_and(|s| s > step);
        if later {
            break;
        }
        keep += line.len();
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_keeps_the_lines_up_to_its_checkpoint() {
        let log = b"{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n{\"step\":4}\n{\"step\":5";
        assert_eq!(kept_prefix(log, 2), 22);
        assert_eq!(kept_prefix(log, 9), 44, "the cut line goes");
        assert_eq!(kept_prefix(log, 0), 0);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("log.jsonl"), log).unwrap();
        let mut run_log = RunLog::open(dir.path(), 3, false).unwrap();
        run_log.emit(PendingRecord { record: json!({"step": 4}), scalars: vec![] }, 1.5).unwrap();
        let text = std::fs::read_to_string(dir.path().join("log.jsonl")).unwrap();
        let steps: Vec<u64> = text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, [1, 2, 3, 4]);
    }
}
