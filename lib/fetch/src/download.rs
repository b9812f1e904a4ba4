//! The download engine. Each file is cut into ranges of `chunk_size`; a pool of `connections`
//! worker threads fetches ranges of up to `max_files` files at once with `Range` requests,
//! writing them in place (`pwrite`) into the file's `.incomplete` temporary. What is on disk is
//! journalled in `<incomplete>.parts` (ranges, each fsynced before it is recorded), so a later
//! run resumes exactly; an `.incomplete` without a journal (left by huggingface_hub) counts as a
//! contiguous prefix. A dropped connection, a truncated body, 429 or 5xx retries the rest of the
//! range with backoff. A finished file is checked (size, sha256 of LFS files, git blob id of the
//! others) and only then renamed to its final name; a mismatch discards it and downloads it
//! once more before failing.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use openseek_common::{ExitCode, Failure};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::cache::{append_line, Placement};
use openseek_common::lock::FileLock;
use crate::http::{response_header, Client, Problem};
use openseek_common::progress::{FileProgress, Transfers};
use crate::space::human;

/// What the content must hash to.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    pub sha256: Option<String>,
    pub git_oid: Option<String>,
}

#[derive(Debug, Clone)]
pub struct FileJob {
    /// For messages: `dataset org/name, file a/b.bin`.
    pub label: String,
    pub repo_path: String,
    pub size: u64,
    /// Where the bytes are (the CDN location, or the resolve URL).
    pub url: String,
    pub expect: Expect,
    pub placement: Placement,
}

#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Bytes received in this run.
    pub downloaded: u64,
    /// Bytes that were already on disk from an earlier run.
    pub resumed: u64,
    pub sha256: Option<String>,
    pub git_oid: Option<String>,
}

#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub chunk_size: u64,
    pub connections: usize,
    pub max_files: usize,
}

/// The resume journal beside an incomplete file.
pub fn journal_path(incomplete: &Path) -> PathBuf {
    let mut name = incomplete.as_os_str().to_owned();
    name.push(".parts");
    PathBuf::from(name)
}

fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.retain(|(s, e)| e > s);
    ranges.sort();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Ranges of `[0, size)` not covered by `done` (merged).
pub fn missing(done: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = 0;
    for &(s, e) in done {
        if s > pos {
            out.push((pos, s.min(size)));
        }
        pos = pos.max(e);
    }
    if pos < size {
        out.push((pos, size));
    }
    out.retain(|(s, e)| e > s);
    out
}

/// What a previous run left: the ranges of the incomplete file known to be written.
pub fn load_resume_state(incomplete: &Path, size: u64) -> Vec<(u64, u64)> {
    let journal = journal_path(incomplete);
    let Ok(meta) = fs::metadata(incomplete) else {
        let _ = fs::remove_file(&journal);
        return Vec::new();
    };
    let len = meta.len();
    match fs::read_to_string(&journal) {
        Ok(text) => {
            let mut lines = text.lines();
            if lines.next() != Some(&format!("os-fetch parts v1 size={size}")) {
                return Vec::new();
            }
            let ranges = lines
                .filter_map(|l| {
                    let (s, e) = l.split_once(' ')?;
                    Some((s.parse::<u64>().ok()?, e.parse::<u64>().ok()?))
                })
                .map(|(s, e)| (s, e.min(len).min(size)))
                .collect();
            merge(ranges)
        }
        // Written sequentially by someone else (huggingface_hub): a contiguous prefix.
        Err(_) => merge(vec![(0, len.min(size))]),
    }
}

struct Active {
    job: usize,
    file: Arc<File>,
    pending: VecDeque<(u64, u64)>,
    outstanding: usize,
    progress: Arc<FileProgress>,
    resumed: u64,
    tries: u32,
    _lock: FileLock,
}

struct Sched {
    queue: VecDeque<usize>,
    active: Vec<Active>,
    activating: usize,
    error: Option<Failure>,
    outcomes: Vec<Option<Outcome>>,
}

struct Engine<'a> {
    client: &'a Client,
    jobs: &'a [FileJob],
    opts: &'a EngineOptions,
    progress: &'a Transfers,
    on_done: &'a (dyn Fn(&FileJob) -> Result<(), Failure> + Sync),
    sched: Mutex<Sched>,
    wake: Condvar,
}

/// Download every job; `on_done` runs after each file is verified and in place (link the
/// snapshot, write metadata). Returns per-job outcomes in job order.
pub fn run(
    client: &Client,
    jobs: &[FileJob],
    opts: &EngineOptions,
    progress: &Transfers,
    on_done: &(dyn Fn(&FileJob) -> Result<(), Failure> + Sync),
) -> Result<Vec<Outcome>, Failure> {
    let engine = Engine {
        client,
        jobs,
        opts,
        progress,
        on_done,
        sched: Mutex::new(Sched {
            queue: (0..jobs.len()).collect(),
            active: Vec::new(),
            activating: 0,
            error: None,
            outcomes: vec![None; jobs.len()],
        }),
        wake: Condvar::new(),
    };
    std::thread::scope(|scope| {
        for _ in 0..opts.connections.max(1) {
            scope.spawn(|| engine.worker());
        }
    });
    let mut sched = engine.sched.into_inner().unwrap();
    if let Some(e) = sched.error.take() {
        return Err(e);
    }
    Ok(sched.outcomes.into_iter().map(|o| o.unwrap_or_default()).collect())
}

enum Task {
    Chunk { job: usize, file: Arc<File>, range: (u64, u64), progress: Arc<FileProgress> },
    Activate(usize),
    Finalize(Active),
}

impl Engine<'_> {
    fn worker(&self) {
        loop {
            let task = {
                let mut s = self.sched.lock().unwrap();
                loop {
                    if s.error.is_some() {
                        return;
                    }
                    if let Some(i) = s.active.iter().position(|a| a.pending.is_empty() && a.outstanding == 0) {
                        break Task::Finalize(s.active.swap_remove(i));
                    }
                    if let Some(a) = s.active.iter_mut().find(|a| !a.pending.is_empty()) {
                        let range = a.pending.pop_front().unwrap();
                        a.outstanding += 1;
                        break Task::Chunk { job: a.job, file: a.file.clone(), range, progress: a.progress.clone() };
                    }
                    if s.active.len() + s.activating < self.opts.max_files.max(1) {
                        if let Some(job) = s.queue.pop_front() {
                            s.activating += 1;
                            break Task::Activate(job);
                        }
                    }
                    if s.active.is_empty() && s.queue.is_empty() && s.activating == 0 {
                        return;
                    }
                    s = self.wake.wait(s).unwrap();
                }
            };
            match task {
                Task::Activate(job) => {
                    let result = self.activate(job, 0);
                    let mut s = self.sched.lock().unwrap();
                    s.activating -= 1;
                    match result {
                        Ok(a) => s.active.push(a),
                        Err(e) => {
                            s.error.get_or_insert(e);
                        }
                    }
                    self.wake.notify_all();
                }
                Task::Chunk { job, file, range, progress } => {
                    let result = self.fetch_range(&self.jobs[job], &file, range, &progress);
                    let mut s = self.sched.lock().unwrap();
                    if let Some(a) = s.active.iter_mut().find(|a| a.job == job) {
                        a.outstanding -= 1;
                    }
                    if let Err(e) = result {
                        s.error.get_or_insert(e);
                    }
                    self.wake.notify_all();
                }
                Task::Finalize(active) => {
                    let job = active.job;
                    let result = self.finalize(active);
                    let mut s = self.sched.lock().unwrap();
                    match result {
                        Ok(Ok(outcome)) => s.outcomes[job] = Some(outcome),
                        Ok(Err(again)) => s.active.push(again),
                        Err(e) => {
                            s.error.get_or_insert(e);
                        }
                    }
                    self.wake.notify_all();
                }
            }
        }
    }

    /// Lock the file, read what an earlier run left, plan the missing ranges.
    fn activate(&self, job_idx: usize, tries: u32) -> Result<Active, Failure> {
        let job = &self.jobs[job_idx];
        // One process fills a blob at a time (Python's filelock takes the same lock).
        let lock = FileLock::acquire(&job.placement.lock, || {
            eprintln!("os-fetch: waiting for {} (another process is downloading this file)", job.placement.lock.display())
        })?;
        let inc = &job.placement.incomplete;
        if let Some(dir) = inc.parent() {
            openseek_common::output::create_dir(dir)?;
        }
        let done = load_resume_state(inc, job.size);
        let journal = journal_path(inc);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(inc)
            .map_err(|e| Failure::io_at(inc, "cannot open for writing", &e))?;
        // Journal first, so a file that has one is never mistaken for a sequential prefix.
        let mut journal_text = format!("os-fetch parts v1 size={}\n", job.size);
        for (s, e) in &done {
            journal_text.push_str(&format!("{s} {e}\n"));
        }
        fs::write(&journal, journal_text).map_err(|e| Failure::io_at(&journal, "cannot write", &e))?;
        let resumed: u64 = done.iter().map(|(s, e)| e - s).sum();
        if resumed > 0 {
            self.progress.say(format!("os-fetch: resuming {} ({} of {} already on disk)", job.repo_path, human(resumed), human(job.size)));
        }
        let chunk = self.opts.chunk_size.max(1);
        let mut pending = VecDeque::new();
        for (s, e) in missing(&done, job.size) {
            let mut p = s;
            while p < e {
                let q = (p + chunk).min(e);
                pending.push_back((p, q));
                p = q;
            }
        }
        let progress = self.progress.file_started(&job.repo_path, job.size, resumed);
        Ok(Active { job: job_idx, file: Arc::new(file), pending, outstanding: 0, progress, resumed, tries, _lock: lock })
    }

    /// Fetch `[start, end)` into `file`, retrying what is left after each failure.
    fn fetch_range(&self, job: &FileJob, file: &File, (start, end): (u64, u64), fp: &FileProgress) -> Result<(), Failure> {
        let journal = journal_path(&job.placement.incomplete);
        let policy = &self.client.retry;
        let mut pos = start;
        let mut retry = 0u32;
        while pos < end {
            let (written, result) = self.try_range(job, file, pos, end, fp);
            if written > 0 {
                file.sync_data().map_err(|e| Failure::io_at(&job.placement.incomplete, "cannot sync", &e))?;
                append_line(&journal, &format!("{pos} {}\n", pos + written))
                    .map_err(|e| Failure::io_at(&journal, "cannot append", &e))?;
                pos += written;
                retry = 0;
            }
            match result {
                Ok(()) => {}
                Err(Problem::Fatal(f)) => return Err(f.context(&job.label)),
                Err(Problem::Transient { reason, retry_after }) => {
                    if retry + 1 >= policy.attempts {
                        return Err(Failure::new(
                            ExitCode::TempFail,
                            format!(
                                "{}: gave up after {} tries without progress at byte {pos}; last error: {reason}; \
                                 run again to resume from what is on disk",
                                job.label, policy.attempts
                            ),
                        ));
                    }
                    let wait = policy.delay(retry, retry_after);
                    crate::http::log_retry(&job.label, &reason, wait, retry + 1, policy.attempts);
                    std::thread::sleep(wait);
                    retry += 1;
                }
            }
        }
        Ok(())
    }

    /// One GET of `bytes=pos-(end-1)`; returns how many bytes were written, and how it ended.
    fn try_range(&self, job: &FileJob, file: &File, pos: u64, end: u64, fp: &FileProgress) -> (u64, Result<(), Problem>) {
        let headers = [("Range", format!("bytes={pos}-{}", end - 1)), ("Accept-Encoding", "identity".to_string())];
        let (url, resp) = match self.client.send_following("GET", &job.url, &headers) {
            Ok(r) => r,
            Err(p) => return (0, Err(p)),
        };
        let status = resp.status().as_u16();
        let (mut skip, avail_end) = if status == 206 {
            let cr = response_header(&resp, "content-range").unwrap_or_default();
            match parse_content_range(&cr) {
                Some((a, b)) if a == pos => (0, (b + 1).min(end)),
                _ => {
                    return (
                        0,
                        Err(Problem::Fatal(Failure::data(format!(
                            "{url} answered Content-Range `{cr}` to a request for bytes {pos}-{}",
                            end - 1
                        )))),
                    )
                }
            }
        } else {
            // 200: the server ignored Range and sends the whole file.
            (pos, end)
        };
        let mut reader = resp.into_body().into_reader();
        let mut buf = vec![0u8; 256 << 10];
        let mut off = pos;
        while off < avail_end {
            let want = if skip > 0 { skip.min(buf.len() as u64) } else { (avail_end - off).min(buf.len() as u64) } as usize;
            let n = match reader.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => return (off - pos, Err(Problem::transient(format!("{url}: connection dropped after {} bytes: {e}", off - pos)))),
            };
            if skip > 0 {
                skip -= n as u64;
                continue;
            }
            if let Err(e) = file.write_all_at(&buf[..n], off) {
                let f = Failure::io_at(&job.placement.incomplete, "cannot write", &e);
                return (off - pos, Err(Problem::Fatal(f)));
            }
            fp.add(n as u64);
            off += n as u64;
        }
        if off < end {
            return (off - pos, Err(Problem::transient(format!("{url}: body ended early (got {} of {} bytes)", off - pos, end - pos))));
        }
        (off - pos, Ok(()))
    }

    /// Verify and move into place. `Ok(Err(active))` asks for another full try.
    fn finalize(&self, active: Active) -> Result<Result<Outcome, Active>, Failure> {
        let job = &self.jobs[active.job];
        let inc = &job.placement.incomplete;
        let len = active.file.metadata().map_err(|e| Failure::io_at(inc, "cannot stat", &e))?.len();
        let verdict = if len != job.size {
            Err(format!("{} bytes on disk, expected {}", len, job.size))
        } else {
            verify(inc, job)
        };
        match verdict {
            Ok((sha256, git_oid)) => {
                active.file.sync_all().map_err(|e| Failure::io_at(inc, "cannot sync", &e))?;
                if let Some(dir) = job.placement.complete.parent() {
                    openseek_common::output::create_dir(dir)?;
                }
                fs::rename(inc, &job.placement.complete)
                    .map_err(|e| openseek_common::output::cannot_create(&job.placement.complete, format!("cannot rename into place: {e}")))?;
                let _ = fs::remove_file(journal_path(inc));
                (self.on_done)(job)?;
                let downloaded = active.progress.done.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(active.resumed);
                self.progress.file_finished(
                    &active.progress,
                    Some(format!(
                        "os-fetch: fetched {} ({}{}, {})",
                        job.repo_path,
                        human(job.size),
                        if active.resumed > 0 { format!(", {} resumed", human(active.resumed)) } else { String::new() },
                        match (&sha256, &git_oid) {
                            (Some(_), _) => "sha256 verified",
                            (None, Some(_)) => "git blob id verified",
                            _ => "size checked",
                        }
                    )),
                );
                Ok(Ok(Outcome { downloaded, resumed: active.resumed, sha256, git_oid }))
            }
            Err(why) => {
                // Never keep bytes that failed verification: the next try starts from zero.
                drop(active.file);
                let _ = fs::remove_file(inc);
                let _ = fs::remove_file(journal_path(inc));
                active.progress.discard(job.size);
                self.progress.file_finished(&active.progress, None);
                if active.tries == 0 {
                    self.progress.say(format!("os-fetch: {}: {why}; discarded, downloading it again", job.label));
                    let tries = active.tries + 1;
                    drop(active._lock);
                    return Ok(Err(self.activate(active.job, tries)?));
                }
                Err(Failure::data(format!(
                    "{}: {why} (twice); nothing was kept: the Hub or mirror serves bytes that do not match the listing. \
                     Check HF_ENDPOINT, then run again",
                    job.label
                )))
            }
        }
    }
}

/// `bytes a-b/total` → `(a, b)`.
pub fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let rest = v.trim().strip_prefix("bytes")?.trim();
    let (range, _) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// Hash the finished file; `Err` says what does not match.
fn verify(path: &Path, job: &FileJob) -> Result<(Option<String>, Option<String>), String> {
    let want_sha = job.expect.sha256.as_deref();
    let want_git = if want_sha.is_none() { job.expect.git_oid.as_deref().filter(|o| o.len() == 40) } else { None };
    if want_sha.is_none() && want_git.is_none() {
        return Ok((None, None));
    }
    let mut f = File::open(path).map_err(|e| format!("cannot reopen {}: {e}", path.display()))?;
    let mut sha = Sha256::new();
    let mut git = Sha1::new();
    if want_git.is_some() {
        git.update(format!("blob {}\0", job.size).as_bytes());
    }
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        if want_sha.is_some() {
            sha.update(&buf[..n]);
        } else {
            git.update(&buf[..n]);
        }
    }
    if let Some(want) = want_sha {
        let got = hex::encode(sha.finalize());
        if !got.eq_ignore_ascii_case(want) {
            return Err(format!("sha256 mismatch: got {got}, the listing says {want}"));
        }
        return Ok((Some(got), None));
    }
    let want = want_git.unwrap();
    let got = hex::encode(git.finalize());
    if !got.eq_ignore_ascii_case(want) {
        return Err(format!("git blob id mismatch: got {got}, the listing says {want}"));
    }
    Ok((None, Some(got)))
}

/// Git's blob id of `data` (sha1 of `blob {len}\0{data}`).
pub fn git_blob_id(data: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", data.len()).as_bytes());
    h.update(data);
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(merge(vec![(5, 10), (0, 3), (3, 5), (20, 20)]), vec![(0, 10)]);
        assert_eq!(missing(&[(0, 10), (20, 30)], 40), vec![(10, 20), (30, 40)]);
        assert_eq!(missing(&[], 7), vec![(0, 7)]);
        assert_eq!(missing(&[(0, 7)], 7), vec![]);
        assert_eq!(parse_content_range("bytes 10-19/100"), Some((10, 19)));
        assert_eq!(git_blob_id(b""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
    }

    #[test]
    fn resume_state_from_journal_or_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let inc = dir.path().join("x.incomplete");
        assert!(load_resume_state(&inc, 100).is_empty());
        fs::write(&inc, vec![0u8; 60]).unwrap();
        assert_eq!(load_resume_state(&inc, 100), vec![(0, 60)]);
        fs::write(journal_path(&inc), "os-fetch parts v1 size=100\n0 10\n40 70\n10 20\n").unwrap();
        // Clipped to what the file holds.
        assert_eq!(load_resume_state(&inc, 100), vec![(0, 20), (40, 60)]);
        fs::write(journal_path(&inc), "os-fetch parts v1 size=99\n0 10\n").unwrap();
        assert!(load_resume_state(&inc, 100).is_empty());
    }
}
