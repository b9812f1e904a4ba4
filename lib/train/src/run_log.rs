//! The run's log: one JSON line per step in `RUN_DIR/log.jsonl`, echoed on stdout, and TensorBoard
//! scalars. A step's record is finished with the parameter norm once the step's update has run:
//! nothing waits for the update on the host (the next step's work queues behind it on the GPU),
//! so the norm is read at the next step's synchronisation point, before a checkpoint, or at the end.
//! A closed stdout (`os-train … | head`) stops the echo, never the training. When stderr is a
//! terminal, each step also prints a line for people there: step, loss, learning rate, tokens/s
//! and the time left at the mean step time so far.

use crate::tensorboard::EventWriter;
use openseek_common::Failure;
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
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
    /// The progress line on stderr (a terminal only).
    progress: Option<Progress>,
}

/// What the progress line needs beyond a record.
struct Progress {
    total_steps: u64,
    /// Wall seconds and steps recorded by this process (the ETA's mean step time).
    seconds: f64,
    steps: u64,
}

impl Progress {
    /// `step 12/120  loss 3.4567  lr 5.97e-3  12.3k tokens/s  ETA 0:02:31` for a record.
    fn line(&mut self, record: &Value) -> String {
        let step = record["step"].as_u64().unwrap_or_default();
        self.seconds += record["step_time_s"].as_f64().unwrap_or_default();
        self.steps += 1;
        let left = (self.seconds / self.steps as f64 * self.total_steps.saturating_sub(step) as f64).round() as u64;
        let number = |key: &str| record[key].as_f64().unwrap_or(f64::NAN);
        format!(
            "step {step}/{}  loss {:.4}  lr {:.3e}  {:.1}k tokens/s  ETA {}:{:02}:{:02}{}",
            self.total_steps,
            number("loss"),
            number("lr"),
            number("tokens_per_s") / 1e3,
            left / 3600,
            left / 60 % 60,
            left % 60,
            if record["skipped"] == json!(true) { "  (update skipped)" } else { "" }
        )
    }
}

impl RunLog {
    /// Open `RUN_DIR/log.jsonl` for appending. A line cut short by a kill is removed first, and on
    /// a resume from step `resumed_at` the lines of later steps (written after that checkpoint by
    /// the run that died) too, so that every step appears once.
    /// The progress line goes on stderr when it is a terminal (of a run of `total_steps`).
    pub fn open(run_dir: &Path, resumed_at: u64, total_steps: u64, tensorboard: bool) -> Result<RunLog, Failure> {
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
        let progress = std::io::stderr().is_terminal().then_some(Progress { total_steps, seconds: 0.0, steps: 0 });
        Ok(RunLog { path, file, tensorboard, echo: true, progress })
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
        if let Some(p) = &mut self.progress {
            eprintln!("os-train: {}", p.line(&record));
        }
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
    fn the_progress_line_says_step_loss_rate_speed_and_time_left() {
        let mut p = Progress { total_steps: 100, seconds: 0.0, steps: 0 };
        let r = json!({"step": 41, "loss": 3.14172, "lr": 0.000597, "tokens_per_s": 12345.0, "step_time_s": 2.0, "skipped": false});
        assert_eq!(p.line(&r), "step 41/100  loss 3.1417  lr 5.970e-4  12.3k tokens/s  ETA 0:01:58");
        let r = json!({"step": 42, "loss": null, "lr": 0.0006, "tokens_per_s": 1000.0, "step_time_s": 4.0, "skipped": true});
        assert_eq!(p.line(&r), "step 42/100  loss NaN  lr 6.000e-4  1.0k tokens/s  ETA 0:02:54  (update skipped)");
    }

    #[test]
    fn a_resume_keeps_the_lines_up_to_its_checkpoint() {
        let log = b"{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n{\"step\":4}\n{\"step\":5";
        assert_eq!(kept_prefix(log, 2), 22);
        assert_eq!(kept_prefix(log, 9), 44, "the cut line goes");
        assert_eq!(kept_prefix(log, 0), 0);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("log.jsonl"), log).unwrap();
        let mut run_log = RunLog::open(dir.path(), 3, 9, false).unwrap();
        run_log.emit(PendingRecord { record: json!({"step": 4}), scalars: vec![] }, 1.5).unwrap();
        let text = std::fs::read_to_string(dir.path().join("log.jsonl")).unwrap();
        let steps: Vec<u64> = text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, [1, 2, 3, 4]);
    }
}
