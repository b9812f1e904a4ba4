//! Progress for long jobs: a live bar on a terminal, and plain periodic lines when stderr is a
//! file (Slurm logs), so logs stay readable and greppable.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    label: String,
    total_bytes: Option<u64>,
    bar: Option<ProgressBar>,
    start: Instant,
    last_line: Instant,
    interval: Duration,
    quiet: bool,
}

impl Progress {
    /// `total_bytes` is the input size when known. `quiet` silences everything.
    pub fn new(label: &str, total_bytes: Option<u64>, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = match total_bytes {
                Some(total) => ProgressBar::new(total),
                None => ProgressBar::new_spinner(),
            };
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(label.to_string());
            bar
        });
        let now = Instant::now();
        Progress {
            label: label.to_string(),
            total_bytes,
            bar,
            start: now,
            last_line: now,
            interval: Duration::from_secs(30),
            quiet,
        }
    }

    /// Report `bytes` processed so far and a short status message.
    pub fn update(&mut self, bytes: u64, message: impl FnOnce() -> String) {
        if self.quiet {
            return;
        }
        if let Some(bar) = &self.bar {
            bar.set_position(bytes);
            bar.set_message(message());
            return;
        }
        if self.last_line.elapsed() >= self.interval {
            self.last_line = Instant::now();
            let secs = self.start.elapsed().as_secs_f64().max(1e-9);
            let rate = bytes as f64 / secs / 1e6;
            let share = self
                .total_bytes
                .filter(|t| *t > 0)
                .map(|t| format!(" ({:.1}%)", 100.0 * bytes as f64 / t as f64))
                .unwrap_or_default();
            eprintln!("{}: {:.1} MB{share} in {secs:.0}s, {rate:.1} MB/s, {}", self.label, bytes as f64 / 1e6, message());
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
