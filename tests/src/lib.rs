//! Helpers for the end-to-end tests: where the built tools, the project venv's Python and
//! `../shared` are. A missing prerequisite fails the test with what to do; nothing is skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root (parent of this crate).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A built tool: `$OPENSEEK_BIN_DIR/<name>`, else `target/release/<name>`, else `target/debug/<name>`.
pub fn tool(name: &str) -> PathBuf {
    let candidates: Vec<PathBuf> = match std::env::var_os("OPENSEEK_BIN_DIR") {
        Some(dir) => vec![PathBuf::from(dir).join(name)],
        None => vec![root().join("target/release").join(name), root().join("target/debug").join(name)],
    };
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!("{name} is not built (looked at {candidates:?}); run `make test`, which builds the tools first")
    })
}

/// Run a tool with arguments; returns its output (never panics on a non-zero exit).
pub fn run_tool(name: &str, args: &[&str]) -> Output {
    Command::new(tool(name)).args(args).output().unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
}

/// The project venv's Python (`$OPENSEEK_PYTHON`, else `.venv/bin/python`).
pub fn python() -> PathBuf {
    let path = std::env::var_os("OPENSEEK_PYTHON").map(PathBuf::from).unwrap_or_else(|| root().join(".venv/bin/python"));
    assert!(path.is_file(), "the project venv's Python is missing at {}; run `make venv` (make test does it)", path.display());
    path
}

/// Run a script from `tests/python/` with the venv's Python; panics with its stderr if it fails.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(root().join("tests/python").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python {script}: {e}"));
    assert!(
        out.status.success(),
        "python {script} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("python printed non-UTF-8")
}

/// A path under `../shared`; panics naming the missing file if it is absent.
pub fn shared(rel: &str) -> PathBuf {
    let path = root().parent().unwrap().join("shared").join(rel);
    assert!(
        path.exists(),
        "{} is missing: these tests read the shared reference files; put the `shared` directory beside the project",
        path.display()
    );
    path
}

/// The demo corpus (os-demo-data) tokenized with its own tokenizer and blended into a sample store
/// of `samples` samples of `seq_len` tokens under `dir/mix`; the tokenizer is in `dir/demo/tokenizer`.
pub fn demo_store(dir: &Path, seq_len: usize, samples: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let d = |p: &str| dir.join(p).to_str().unwrap().to_string();
    let ok = |o: Output, what: &str| assert!(o.status.success(), "{what}: {}", String::from_utf8_lossy(&o.stderr));
    ok(run_tool("os-demo-data", &["--output", &d("demo")]), "os-demo-data");
    ok(
        run_tool("os-tokenize", &["--tokenizer", &d("demo/tokenizer"), "--wrap-docs", "--quiet", "--output", &d("shards/part-0"), &d("demo/corpus/part-0.jsonl")]),
        "os-tokenize",
    );
    let (seq_len, samples) = (seq_len.to_string(), samples.to_string());
    ok(run_tool("os-mix", &["--weights", &format!("1.0 {}", d("shards/part-0")), "--seq-len", &seq_len, "--samples", &samples, "--output", &d("mix")]), "os-mix");
    dir.join("mix")
}

/// Wait until `child` catches SIGTERM (its stop handlers are installed: the SigCgt mask in
/// /proc/PID/status), so that a test's signal reaches the handler instead of killing the process
/// by default, however slowly it starts on a loaded machine. Panics if it ends first or after 120 s.
pub fn wait_until_it_catches_sigterm(child: &mut std::process::Child) {
    let pid = child.id();
    let catches = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:")).and_then(|m| u64::from_str_radix(m.trim(), 16).ok());
        mask.unwrap_or(0) & (1 << (15 - 1)) != 0
    };
    let start = std::time::Instant::now();
    while !catches() {
        assert!(child.try_wait().unwrap().is_none(), "the process ended before it caught SIGTERM");
        assert!(start.elapsed().as_secs() < 120, "the process did not install its signal handlers within 120 s");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
