//! Progress for long jobs, one module for every tool: a live bar on a terminal, and plain
//! periodic lines when stderr is a file (Slurm logs), so logs stay readable and greppable.
//! `Progress` follows one stream of bytes (a corpus being read); `Transfers` follows many files
//! at once (downloads), with a total bar plus one bar per file in flight on a terminal, and in a
//! log a line every interval with total bytes, share, rate, ETA and the files in flight.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::size::human;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Bars if stderr is a terminal, else lines every `interval`.
    Auto { interval: Duration },
    Lines { interval: Duration },
    Quiet,
}

impl Mode {
    /// Whether bars are drawn (a terminal in `Auto`), and the interval of plain lines otherwise.
    fn bars_or_lines(self) -> (bool, Option<Duration>) {
        match self {
            Mode::Quiet => (false, None),
            Mode::Lines { interval } => (false, Some(interval)),
            Mode::Auto { interval } => (std::io::stderr().is_terminal(), Some(interval)),
        }
    }
}

/// A bar style from an indicatif template (the default bar if the template does not parse).
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Progress of one stream of bytes.
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
    /// `total_bytes` is the input size when known. `quiet` silences everything; otherwise a bar on
    /// a terminal, else a line every 30 s.
    pub fn new(label: &str, total_bytes: Option<u64>, quiet: bool) -> Self {
        let interval = Duration::from_secs(30);
        let mode = if quiet { Mode::Quiet } else { Mode::Auto { interval } };
        let bar = mode.bars_or_lines().0.then(|| {
            let bar = match total_bytes {
                Some(total) => ProgressBar::new(total),
                None => ProgressBar::new_spinner(),
            };
            bar.set_style(style("{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}"));
            bar.set_prefix(label.to_string());
            bar
        });
        let now = Instant::now();
        Progress { label: label.to_string(), total_bytes, bar, start: now, last_line: now, interval, quiet }
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

/// One file of a `Transfers`.
pub struct FileProgress {
    pub name: String,
    pub size: u64,
    pub done: AtomicU64,
    hub: Arc<Shared>,
}

impl FileProgress {
    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
        self.hub.done.fetch_add(n, Ordering::Relaxed);
        self.hub.transferred.fetch_add(n, Ordering::Relaxed);
    }
    /// Take back bytes counted for a try whose content was discarded (hash mismatch).
    pub fn discard(&self, n: u64) {
        self.done.fetch_sub(n.min(self.done.load(Ordering::Relaxed)), Ordering::Relaxed);
        self.hub.done.fetch_sub(n.min(self.hub.done.load(Ordering::Relaxed)), Ordering::Relaxed);
    }
}

struct Shared {
    label: String,
    total: u64,
    done: AtomicU64,
    transferred: AtomicU64,
    files_total: usize,
    files_done: AtomicUsize,
    active: Mutex<Vec<Arc<FileProgress>>>,
    messages: Mutex<Vec<String>>,
    stop: AtomicBool,
    start: Instant,
}

/// Progress of many files transferred at once (a reporter thread draws it).
pub struct Transfers {
    shared: Arc<Shared>,
    reporter: Mutex<Option<JoinHandle<()>>>,
    quiet: bool,
}

fn fmt_eta(secs: f64) -> String {
    if !secs.is_finite() || secs > 360_000.0 {
        return "?".into();
    }
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

impl Transfers {
    /// `label` starts every line (the tool's name); `already` bytes are on disk at the start
    /// (resumed): they count as done but not in the rate.
    pub fn start(label: &str, total: u64, already: u64, files_total: usize, mode: Mode) -> Arc<Transfers> {
        let shared = Arc::new(Shared {
            label: label.to_string(),
            total,
            done: AtomicU64::new(already),
            transferred: AtomicU64::new(0),
            files_total,
            files_done: AtomicUsize::new(0),
            active: Mutex::new(Vec::new()),
            messages: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            start: Instant::now(),
        });
        let (bars, interval) = mode.bars_or_lines();
        let reporter = match (bars, interval) {
            (true, _) => {
                let s = shared.clone();
                Some(std::thread::spawn(move || bar_reporter(s)))
            }
            (false, Some(interval)) => {
                let s = shared.clone();
                Some(std::thread::spawn(move || line_reporter(s, interval)))
            }
            _ => None,
        };
        Arc::new(Transfers { shared, reporter: Mutex::new(reporter), quiet: mode == Mode::Quiet })
    }

    pub fn file_started(&self, name: &str, size: u64, already: u64) -> Arc<FileProgress> {
        let f = Arc::new(FileProgress { name: name.to_string(), size, done: AtomicU64::new(already), hub: self.shared.clone() });
        self.shared.active.lock().unwrap().push(f.clone());
        f
    }

    /// A file is done (or given up): it leaves the in-flight list; `message` is printed.
    pub fn file_finished(&self, f: &Arc<FileProgress>, message: Option<String>) {
        self.shared.active.lock().unwrap().retain(|a| !Arc::ptr_eq(a, f));
        if message.is_some() {
            self.shared.files_done.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(m) = message {
            self.say(m);
        }
    }

    /// A line for the log (shown above the bars on a terminal).
    pub fn say(&self, line: String) {
        if self.quiet {
            return;
        }
        if self.reporter.lock().unwrap().is_some() {
            self.shared.messages.lock().unwrap().push(line);
        } else {
            eprintln!("{line}");
        }
    }

    /// Bytes received over the network in this run.
    pub fn transferred(&self) -> u64 {
        self.shared.transferred.load(Ordering::Relaxed)
    }

    pub fn finish(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.reporter.lock().unwrap().take() {
            let _ = h.join();
        }
        for m in self.shared.messages.lock().unwrap().drain(..) {
            eprintln!("{m}");
        }
    }
}

fn status_line(s: &Shared) -> String {
    let done = s.done.load(Ordering::Relaxed);
    let secs = s.start.elapsed().as_secs_f64().max(1e-3);
    let rate = s.transferred.load(Ordering::Relaxed) as f64 / secs;
    let share = if s.total > 0 { 100.0 * done as f64 / s.total as f64 } else { 100.0 };
    let eta = if rate > 0.0 { fmt_eta(s.total.saturating_sub(done) as f64 / rate) } else { "?".into() };
    let active = s.active.lock().unwrap();
    let mut flight: Vec<String> = active
        .iter()
        .take(4)
        .map(|f| format!("{} {:.0}%", f.name, 100.0 * f.done.load(Ordering::Relaxed) as f64 / f.size.max(1) as f64))
        .collect();
    if active.len() > 4 {
        flight.push(format!("+{} more", active.len() - 4));
    }
    format!(
        "{}: {} / {} ({share:.1}%), {}/s, ETA {eta}, files {}/{}{}",
        s.label,
        human(done),
        human(s.total),
        human(rate as u64),
        s.files_done.load(Ordering::Relaxed),
        s.files_total,
        if flight.is_empty() { String::new() } else { format!(", in flight: {}", flight.join(", ")) }
    )
}

fn line_reporter(s: Arc<Shared>, interval: Duration) {
    let mut last = Instant::now();
    while !s.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        for m in s.messages.lock().unwrap().drain(..) {
            eprintln!("{m}");
        }
        if last.elapsed() >= interval {
            last = Instant::now();
            eprintln!("{}", status_line(&s));
        }
    }
    for m in s.messages.lock().unwrap().drain(..) {
        eprintln!("{m}");
    }
    eprintln!("{}", status_line(&s));
}

fn bar_reporter(s: Arc<Shared>) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
    let total = multi.add(ProgressBar::new(s.total));
    total.set_style(style("{prefix:>12} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}"));
    total.set_prefix("total");
    total.set_position(s.done.load(Ordering::Relaxed));
    total.reset_eta();
    let file_style = style("{prefix:>12} {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}");
    let mut bars: Vec<(Arc<FileProgress>, ProgressBar)> = Vec::new();
    loop {
        let stopping = s.stop.load(Ordering::Relaxed);
        for m in s.messages.lock().unwrap().drain(..) {
            let _ = multi.println(m);
        }
        let active: Vec<Arc<FileProgress>> = s.active.lock().unwrap().clone();
        bars.retain(|(f, bar)| {
            let keep = active.iter().any(|a| Arc::ptr_eq(a, f));
            if !keep {
                bar.finish_and_clear();
                multi.remove(bar);
            }
            keep
        });
        for f in &active {
            if !bars.iter().any(|(b, _)| Arc::ptr_eq(b, f)) {
                let bar = multi.add(ProgressBar::new(f.size));
                bar.set_style(file_style.clone());
                bar.set_prefix("file");
                bar.set_message(f.name.clone());
                bar.set_position(f.done.load(Ordering::Relaxed));
                bar.reset_eta();
                bars.push((f.clone(), bar));
            }
        }
        for (f, bar) in &bars {
            bar.set_position(f.done.load(Ordering::Relaxed));
        }
        total.set_position(s.done.load(Ordering::Relaxed));
        total.set_message(format!("files {}/{}", s.files_done.load(Ordering::Relaxed), s.files_total));
        if stopping {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for (_, bar) in bars {
        bar.finish_and_clear();
    }
    total.finish_and_clear();
    eprintln!("{}", status_line(&s));
}
