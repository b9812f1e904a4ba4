//! The Slurm templates (`slurm/`) on a real Slurm: `tests/slurm/start-cluster.sh` installs Debian's
//! slurmctld, slurmd and munge when missing and starts a one-node cluster on localhost (2 CPUs, a
//! `cpu` partition); the tests submit the demo pipeline through `slurm/chain` and the sbatch
//! templates with small settings and read the outcome back from `scontrol show job`.
//! They need root (as CI has); without it, or without apt to install Slurm, they fail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use openseek_tests::{root, run_tool, tool};

/// Options for the test cluster's one node: no GPUs, little memory, 1-CPU steps so that two jobs
/// run side by side.
const CPU_ARGS: &str = "--cpus-per-task=1 --mem=400M --time=10:00";
const GPU_ARGS: &str = "--ntasks-per-node=1 --gpus-per-node=0 --cpus-per-task=1 --mem=1500M --time=10:00";

/// Start the cluster once per test process; returns its slurm.conf.
fn cluster() -> &'static Path {
    static CONF: OnceLock<PathBuf> = OnceLock::new();
    CONF.get_or_init(|| {
        let out = Command::new("bash").arg(root().join("tests/slurm/start-cluster.sh")).output().expect("cannot run bash");
        assert!(
            out.status.success(),
            "tests/slurm/start-cluster.sh failed (it needs root, and apt-get when Slurm is not installed):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = std::env::var_os("OPENSEEK_SLURM_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp/openseek-slurm"));
        dir.join("slurm.conf")
    })
}

/// A Slurm command (or one of ours that calls sbatch) against the test cluster, from `cwd`, with
/// the built tools on OPENSEEK_BIN_DIR.
fn slurm_command(program: impl AsRef<std::ffi::OsStr>, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd)
        .env("SLURM_CONF", cluster())
        .env("OPENSEEK_BIN_DIR", tool("os-tokenize").parent().unwrap());
    cmd
}

fn checked(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed ({}):\n{}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn scontrol(args: &[&str]) -> String {
    checked(slurm_command("scontrol", Path::new("/")).args(args).output().unwrap(), &format!("scontrol {args:?}"))
}

/// One line of `scontrol show job -o`: its fields.
type Job = BTreeMap<String, String>;

fn show_job(id: &str) -> Vec<Job> {
    scontrol(&["show", "job", "-o", id])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            line.split_whitespace()
                .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                .collect()
        })
        .collect()
}

const DONE: [&str; 9] =
    ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY"];

/// Cancels the jobs it holds when dropped, so that a failing test leaves nothing running.
struct Jobs(Vec<(String, String)>);

impl Drop for Jobs {
    fn drop(&mut self) {
        let ids: Vec<&str> = self.0.iter().map(|(_, id)| id.as_str()).collect();
        let _ = slurm_command("scancel", Path::new("/")).args(&ids).output();
    }
}

impl Jobs {

    /// Wait until every job (every task of an array) has ended; returns step -> its jobs' lines.
    fn wait(&self, timeout: Duration) -> BTreeMap<String, Vec<Job>> {
        let start = Instant::now();
        loop {
            let all: BTreeMap<String, Vec<Job>> = self.0.iter().map(|(step, id)| (step.clone(), show_job(id))).collect();
            let ended = all.values().flatten().all(|j| DONE.contains(&j["JobState"].as_str()));
            if ended {
                return all;
            }
            assert!(start.elapsed() < timeout, "jobs still running after {timeout:?}:\n{}", summary(&all));
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn summary(all: &BTreeMap<String, Vec<Job>>) -> String {
    let mut s = String::new();
    for (step, jobs) in all {
        for j in jobs {
            s += &format!("{step:>16} {} {} {} exit {} restarts {}\n", j["JobId"], j["JobState"], j["Reason"], j["ExitCode"], j["Restarts"]);
        }
    }
    s
}

fn states(all: &BTreeMap<String, Vec<Job>>, step: &str) -> Vec<String> {
    all[step].iter().map(|j| j["JobState"].clone()).collect()
}

fn logs(dir: &Path) -> String {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    names.sort();
    names.iter().map(|p| format!("==> {} <==\n{}\n", p.display(), std::fs::read_to_string(p).unwrap_or_default())).collect()
}

/// Submit `slurm/chain` with `args` from `cwd`; returns its jobs.
fn chain(cwd: &Path, args: &[&str]) -> Jobs {
    let stdout = checked(slurm_command(root().join("slurm/chain"), cwd).args(args).output().unwrap(), "slurm/chain");
    Jobs(
        stdout
            .lines()
            .map(|l| {
                let (step, id) = l.split_once(' ').unwrap_or_else(|| panic!("slurm/chain printed {l:?}"));
                (step.to_string(), id.to_string())
            })
            .collect(),
    )
}

/// A file of `recipes/`, as an argument.
fn recipe(name: &str) -> String {
    root().join("recipes").join(name).to_str().unwrap().to_string()
}

/// The demo corpus and tokenizer (os-demo-data) under `dir`.
fn demo_data(dir: &Path, documents: &str) {
    checked(run_tool("os-demo-data", &["--output", dir.to_str().unwrap(), "--documents", documents]), "os-demo-data");
}

#[test]
fn a_failed_step_cancels_its_dependents() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    demo_data(d, "300");
    // a second file with a line that is not JSON: its array task fails (exit 65)
    std::fs::write(d.join("corpus/part-9.jsonl"), "{\"text\": \"fine\"}\n{\"text\": broken\n").unwrap();
    let jobs = chain(
        d,
        &[
            "--name", "broken", "--run-dir", "run",
            "--raw", "corpus/*.jsonl", "--tokenizer", "tokenizer",
            "--recipe", &recipe("demo.toml"),
            "--train-config", &recipe("train-demo.toml"),
            "--cpu-args", CPU_ARGS, "--gpu-args", GPU_ARGS,
        ],
    );
    let all = jobs.wait(Duration::from_secs(120));
    let report = format!("{}\n{}", summary(&all), logs(&d.join("run/logs")));
    let mut tokenize = states(&all, "tokenize");
    tokenize.sort();
    assert_eq!(tokenize, ["COMPLETED", "FAILED"], "{report}");
    let failed = all["tokenize"].iter().find(|j| j["JobState"] == "FAILED").unwrap();
    assert_eq!(failed["ExitCode"], "65:0", "os-tokenize's bad-data exit: {report}");
    for step in ["merge", "mix", "train", "soup", "eval"] {
        assert_eq!(states(&all, step), ["CANCELLED"], "{step} depends on the failed array: {report}");
        assert_eq!(all[step][0]["Reason"], "DependencyNeverSatisfied", "{report}");
    }
    // the afterany sweep runs whatever happened, and finds nothing to evaluate
    assert_eq!(states(&all, "eval-checkpoints"), ["COMPLETED"], "{report}");
    assert!(report.contains("no checkpoints and no soup yet; nothing to do"), "{report}");
    assert!(!d.join("run/data/corpus.bin").exists() && !d.join("run/mix").exists() && !d.join("run/checkpoints").exists());
    // the task that succeeded left its part and its marker; the failed one neither
    let parts: Vec<bool> = (0..2).map(|i| d.join(format!("run/data/part_0000{i}.done")).exists()).collect();
    assert_eq!(parts, [true, false], "{report}");
}

/// Steps logged in a run's log.jsonl, in order.
fn logged_steps(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("log.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect()
}

/// The checkpoints in a run's sweep results (RUN/eval/results.jsonl), sorted.
fn evaluated(run: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_to_string(run.join("eval/results.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["checkpoint"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn the_demo_chain_completes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    demo_data(d, "6000");
    let args = [
        "--name", "demo", "--run-dir", "run",
        "--raw", "corpus/*", "--tokenizer", "tokenizer", "--array-width", "2",
        "--recipe", &recipe("demo.toml"),
        "--train-config", &recipe("train-demo.toml"),
        "--train-args", "--train-iters 4 --warmup-iters 1 --save-interval 2 --micro-batch-size 4 --global-batch-size 4",
        "--eval-args", "--data eval-data --tasks openbookqa,commonsense_qa --limit 4 --tokenizer tokenizer --device cpu",
        "--cpu-args", CPU_ARGS, "--gpu-args", GPU_ARGS,
    ];
    let jobs = chain(d, &args);
    let all = jobs.wait(Duration::from_secs(300));
    let report = format!("{}\n{}", summary(&all), logs(&d.join("run/logs")));
    assert_eq!(states(&all, "tokenize"), ["COMPLETED"; 3], "one array task per corpus file: {report}");
    for step in ["merge", "mix", "train", "eval-checkpoints", "soup", "eval"] {
        assert_eq!(states(&all, step), ["COMPLETED"], "{step}: {report}");
    }

    // the array's merged parts equal the corpus tokenized in one go
    let whole = d.join("whole");
    checked(
        run_tool("os-tokenize", &["--tokenizer", d.join("tokenizer").to_str().unwrap(), "--wrap-docs", "-q", "--output", whole.to_str().unwrap(), d.join("corpus/*").to_str().unwrap()]),
        "os-tokenize",
    );
    for ext in ["bin", "idx"] {
        let merged = std::fs::read(d.join(format!("run/data/corpus.{ext}"))).unwrap();
        assert!(merged == std::fs::read(whole.with_extension(ext)).unwrap(), "run/data/corpus.{ext} differs from one os-tokenize run");
    }
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("run/mix/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["num_samples"], 2000, "{manifest}");
    assert_eq!(logged_steps(&d.join("run")), [1, 2, 3, 4], "{report}");
    for step in ["step-0000002", "step-0000004"] {
        assert!(d.join("run/checkpoints").join(step).join("config.json").is_file(), "{step}: {report}");
    }
    let info = std::fs::read_to_string(d.join("run/soup/merge_info.json")).unwrap();
    assert!(info.contains("step-0000002") && info.contains("step-0000004"), "the soup averages the last two checkpoints: {info}");
    // the chain's default soup of 3 takes the 2 checkpoints train-demo.toml keeps, and says so
    assert!(report.contains("--latest 3 but") && report.contains("averaging those 2"), "{report}");
    // the two sweeps evaluated each checkpoint and the soup once
    assert_eq!(evaluated(&d.join("run")), ["soup", "step-0000002", "step-0000004"], "{report}");

    // submitted again, the chain redoes nothing: markers skip the tokenize tasks and the merge,
    // training finds the run complete, the soup is kept
    let bin_time = std::fs::metadata(d.join("run/data/part_00000.bin")).unwrap().modified().unwrap();
    let again = chain(d, &args);
    let all = again.wait(Duration::from_secs(300));
    let report = format!("{}\n{}", summary(&all), logs(&d.join("run/logs")));
    for step in ["tokenize", "merge", "mix", "train", "eval-checkpoints", "soup", "eval"] {
        assert!(states(&all, step).iter().all(|s| s == "COMPLETED"), "{step}: {report}");
    }
    assert_eq!(report.matches("is complete; nothing to do").count(), 4, "three parts and the merge skipped: {report}");
    assert!(report.contains("the run is complete (4 of 4 steps); nothing to do"), "{report}");
    assert_eq!(std::fs::metadata(d.join("run/data/part_00000.bin")).unwrap().modified().unwrap(), bin_time);
    assert_eq!(logged_steps(&d.join("run")), [1, 2, 3, 4]);
    assert_eq!(evaluated(&d.join("run")), ["soup", "step-0000002", "step-0000004"], "nothing evaluated twice: {report}");
}

/// The step a "stopped by SIGUSR1 after step K" message names, for each such message in `log`.
fn stops(log: &str) -> Vec<u64> {
    log.split("stopped by SIGUSR1 after step ").skip(1).map(|s| s.split(';').next().unwrap().parse().unwrap()).collect()
}

#[test]
fn usr1_checkpoints_exits_75_and_the_requeued_job_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    demo_data(d, "6000");
    let (shard, mix) = (d.join("all"), d.join("mix"));
    checked(
        run_tool("os-tokenize", &["--tokenizer", d.join("tokenizer").to_str().unwrap(), "--wrap-docs", "-q", "--output", shard.to_str().unwrap(), d.join("corpus/*").to_str().unwrap()]),
        "os-tokenize",
    );
    let weights = format!("1 {}", shard.display());
    checked(run_tool("os-mix", &["--weights", &weights, "--seq-len", "256", "--samples", "2000", "--output", mix.to_str().unwrap()]), "os-mix");

    let run = d.join("run");
    let total: u64 = 16;
    let mut sbatch = slurm_command("sbatch", d);
    sbatch.args(["--parsable", "--output=train.out"]).args(GPU_ARGS.split(' ')).arg(root().join("slurm/train.sbatch"));
    sbatch.args([&recipe("train-demo.toml"), run.to_str().unwrap(), "--data", mix.to_str().unwrap()]);
    sbatch.args(["--micro-batch-size", "4", "--global-batch-size", "4", "--warmup-iters", "2", "--save-interval", "1000"]);
    sbatch.args(["--train-iters", &total.to_string()]);
    let id = checked(sbatch.output().unwrap(), "sbatch train.sbatch").trim().to_string();
    let mut jobs = Jobs(vec![("train".into(), id.clone())]);
    let log = || std::fs::read_to_string(d.join("train.out")).unwrap_or_default();
    // dependents of the training job, which must wait through the requeues: each lists the
    // checkpoints when it starts
    for kind in ["afterok", "afterany"] {
        let mut sbatch = slurm_command("sbatch", d);
        sbatch.args(["--parsable", &format!("--dependency={kind}:{id}"), "--output=/dev/null"]).args(CPU_ARGS.split(' '));
        sbatch.args(["--wrap", &format!("ls {} > {kind}.txt", run.join("checkpoints").display())]);
        jobs.0.push((kind.into(), checked(sbatch.output().unwrap(), "sbatch --dependency").trim().to_string()));
    }

    // Twice, once training is under way, the time-limit warning: SIGUSR1 first to the batch script
    // alone (which passes it on), then as `--signal=USR1@120` sends it, to the job's steps.
    let mut stopped = Vec::new();
    for how in ["batch script", "steps"] {
        let under_way = stopped.last().copied().unwrap_or(0) as usize + 2;
        let start = Instant::now();
        while logged_steps(&run).len() < under_way {
            assert!(start.elapsed() < Duration::from_secs(180), "training not under way after 180 s:\n{}", log());
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut scancel = slurm_command("scancel", d);
        scancel.arg("--signal=USR1");
        if how == "batch script" {
            scancel.arg("--batch");
        }
        checked(scancel.arg(&id).output().unwrap(), "scancel --signal=USR1");
        // the stop is logged before the job is requeued
        let start = Instant::now();
        while stops(&log()).len() == stopped.len() {
            assert!(start.elapsed() < Duration::from_secs(60), "no stop after USR1 ({how}):\n{}", log());
            std::thread::sleep(Duration::from_millis(200));
        }
        stopped = stops(&log());
    }

    let all = jobs.wait(Duration::from_secs(300));
    let log = log();
    let report = format!("{}\n{log}", summary(&all));
    let job = &all["train"][0];
    assert_eq!((job["JobState"].as_str(), job["ExitCode"].as_str(), job["Restarts"].as_str()), ("COMPLETED", "0:0", "2"), "{report}");
    assert_eq!(stopped.len(), 2, "{report}");
    assert!(stopped[0] >= 2 && stopped[0] < stopped[1] && stopped[1] < total, "{report}");
    // each start but the last checkpointed where it stopped and exited 75; the next resumed from there
    for (k, &step) in stopped.iter().enumerate() {
        let checkpoint = run.join("checkpoints").join(format!("step-{step:07}"));
        for expected in [
            format!("os-train: saved {}", checkpoint.display()),
            format!("job {id} start {}", k + 2),
            format!("os-train: resuming from {} (step {step},", checkpoint.display()),
        ] {
            assert!(log.contains(&expected), "missing {expected:?} in the job's log:\n{report}");
        }
    }
    assert_eq!(log.matches("os-train exited 75").count(), 2, "{report}");
    assert_eq!(log.matches(&format!("requeueing job {id}")).count(), 2, "{report}");
    assert!(log.contains(&format!("os-train: done: {total} steps")) && log.contains("os-train exited 0"), "{report}");
    // each step ran once: every start went on after the checkpoint, none started over
    assert_eq!(logged_steps(&run), (1..=total).collect::<Vec<_>>(), "{report}");
    assert!(run.join(format!("checkpoints/step-{total:07}/config.json")).is_file());
    for kind in ["afterok", "afterany"] {
        assert_eq!(states(&all, kind), ["COMPLETED"], "{report}");
        let listing = std::fs::read_to_string(d.join(format!("{kind}.txt"))).unwrap();
        assert!(listing.contains(&format!("step-{total:07}")), "{kind} started before training ended (checkpoints: {listing}):\n{report}");
    }
}

/// Stand-ins for `srun` and `scontrol` in `dir/fake-slurm`, so that the sbatch templates run as a
/// batch step would run them, without a cluster: srun logs its arguments to `$FAKE_SLURM_LOG` and
/// runs the command after its options; scontrol answers `show hostnames` with one node.
fn fake_slurm(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("fake-slurm");
    std::fs::create_dir_all(&bin).unwrap();
    let scripts = [
        ("srun", "#!/usr/bin/env bash\necho \"srun $*\" >> \"$FAKE_SLURM_LOG\"\nwhile [ $# -gt 0 ] && [ \"${1#-}\" != \"$1\" ]; do shift; done\nexec \"$@\"\n"),
        ("scontrol", "#!/usr/bin/env bash\nif [ \"$1 $2\" = 'show hostnames' ]; then echo node1; else echo \"scontrol $*\" >> \"$FAKE_SLURM_LOG\"; fi\n"),
        ("os-train", "#!/usr/bin/env bash\nexit 0\n"),
    ];
    for (name, text) in scripts {
        std::fs::write(bin.join(name), text).unwrap();
        std::fs::set_permissions(bin.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

/// A template run with bash under the fake Slurm: (exit code, stdout + stderr, srun's log).
fn run_template(dir: &Path, script: &str, args: &[&str], env: &[(&str, &str)], with_tools: bool) -> (i32, String, String) {
    let bin = fake_slurm(dir);
    let log = dir.join("srun.log");
    let _ = std::fs::remove_file(&log);
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("slurm").join(script)).args(args).current_dir(dir);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SLURM_") || k == "CUDA_VISIBLE_DEVICES") {
        cmd.env_remove(k);
    }
    let tools = if with_tools { format!("{}:", tool("os-tokenize").parent().unwrap().display()) } else { String::new() };
    cmd.env_remove("OPENSEEK_BIN_DIR").env("PATH", format!("{}:{tools}{}", bin.display(), std::env::var("PATH").unwrap())).env("FAKE_SLURM_LOG", &log);
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text, std::fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn train_sbatch_takes_the_gpu_count_from_the_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let job = [("SLURM_JOB_ID", "7"), ("SLURM_JOB_NODELIST", "node[1-2]"), ("SLURM_NNODES", "2"), ("SLURM_NTASKS", "16"), ("SLURM_NTASKS_PER_NODE", "8(x2)")];
    let with = |extra: &[(&'static str, &'static str)]| job.iter().chain(extra).copied().collect::<Vec<_>>();
    // 4 GPUs per node allocated (sbatch --gpus-per-node=4): 4 tasks per node, 8 in all.
    let (rc, text, srun) = run_template(d, "train.sbatch", &["cfg.toml", "run"], &with(&[("SLURM_GPUS_ON_NODE", "4")]), false);
    assert_eq!(rc, 0, "{text}");
    assert!(srun.contains("srun --kill-on-bad-exit=1 --ntasks-per-node=4 --ntasks=8 os-train --config cfg.toml --run-dir run"), "{srun}\n{text}");
    assert!(text.contains("8 tasks (4 GPUs per node)"), "{text}");
    // The GPUs of CUDA_VISIBLE_DEVICES when Slurm does not say.
    let (_, _, srun) = run_template(d, "train.sbatch", &["cfg.toml", "run"], &with(&[("CUDA_VISIBLE_DEVICES", "0,1")]), false);
    assert!(srun.contains("--ntasks-per-node=2 --ntasks=4 "), "{srun}");
    // More GPUs than tasks per node: say how to submit.
    let (rc, text, _) = run_template(d, "train.sbatch", &["cfg.toml", "run"], &with(&[("SLURM_GPUS_ON_NODE", "16")]), false);
    assert_eq!(rc, 64, "{text}");
    assert!(text.contains("--ntasks-per-node=16"), "{text}");
    // No GPUs (CPU training): the allocation's tasks as they are.
    let (rc, text, srun) = run_template(d, "train.sbatch", &["cfg.toml", "run"], &job, false);
    assert_eq!(rc, 0, "{text}");
    assert!(srun.contains("srun --kill-on-bad-exit=1 os-train"), "{srun}");
}

#[test]
fn tokenize_array_handles_any_range_step_and_more_tasks_than_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for i in 0..3 {
        let lines: String = (0..20).map(|k| format!("{{\"text\": \"document {k} of file {i}: some words to tokenize\"}}\n")).collect();
        std::fs::write(d.join(format!("raw-{i}.jsonl")), lines).unwrap();
    }
    let tok = openseek_tests::shared("tokenizers/openseek");
    let (raw, out) = (d.join("raw-*.jsonl"), d.join("tok"));
    let args = [raw.to_str().unwrap(), out.to_str().unwrap(), tok.to_str().unwrap()];
    // --array=1-7:2: four tasks (ids 1, 3, 5, 7) over three files; the fourth has none.
    let array = [("SLURM_ARRAY_JOB_ID", "9"), ("SLURM_JOB_ID", "9"), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_MAX", "7"), ("SLURM_ARRAY_TASK_STEP", "2"), ("SLURM_ARRAY_TASK_COUNT", "4")];
    for id in ["1", "3", "5", "7"] {
        let env: Vec<(&str, &str)> = array.iter().copied().chain([("SLURM_ARRAY_TASK_ID", id)]).collect();
        let (rc, text, _) = run_template(d, "tokenize-array.sbatch", &args, &env, true);
        assert_eq!(rc, 0, "task {id}: {text}");
    }
    assert!(std::fs::read_to_string(out.join("part_00003.done")).unwrap().starts_with("empty "));
    let merged = d.join("merged");
    let (rc, text, _) = run_template(d, "tokenize-array.sbatch", &["--merge", out.to_str().unwrap(), "4", merged.to_str().unwrap()], &[], true);
    assert_eq!(rc, 0, "{text}");
    // The parts merged equal the files tokenized in one go.
    let whole = d.join("whole");
    checked(run_tool("os-tokenize", &["--tokenizer", tok.to_str().unwrap(), "--wrap-docs", "-q", "-o", whole.to_str().unwrap(), raw.to_str().unwrap()]), "os-tokenize");
    for ext in ["bin", "idx"] {
        assert!(std::fs::read(merged.with_extension(ext)).unwrap() == std::fs::read(whole.with_extension(ext)).unwrap(), "merged .{ext} differs");
    }
    // Submitted again, every task, the empty one too, has nothing to do.
    let env: Vec<(&str, &str)> = array.iter().copied().chain([("SLURM_ARRAY_TASK_ID", "7")]).collect();
    let (rc, text, _) = run_template(d, "tokenize-array.sbatch", &args, &env, true);
    assert!(rc == 0 && text.contains("is complete; nothing to do"), "{text}");
}

/// `slurm/eval-sweep.sbatch`'s exit handling, run by bash with `srun` and `scontrol` stood in by
/// scripts on PATH (no cluster): exit 75 is requeued until SLURM_RESTART_COUNT reaches
/// MAX_REQUEUES, then the job ends; any other exit (65: a corrupt checkpoint) is never requeued;
/// the log never claims a signal it cannot know of.
#[test]
fn eval_sweep_template_caps_requeues() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = tmp.path().join("calls");
    for (name, body) in [("srun", "exit \"$SWEEP_EXIT\""), ("scontrol", "echo \"scontrol $*\" >> \"$CALLS\"")] {
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/usr/bin/env bash\n{body}\n")).unwrap();
        Command::new("chmod").args(["+x", p.to_str().unwrap()]).status().unwrap();
    }
    let run = tmp.path().join("run");
    std::fs::create_dir_all(run.join("checkpoints")).unwrap();
    let job = |exit: &str, restarts: &str| -> (Option<i32>, String, String) {
        let _ = std::fs::remove_file(&calls);
        let out = Command::new("bash")
            .arg(root().join("slurm/eval-sweep.sbatch"))
            .arg(&run)
            .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()))
            .env_remove("OPENSEEK_BIN_DIR")
            .env("SWEEP_EXIT", exit)
            .env("CALLS", &calls)
            .env("SLURM_JOB_ID", "42")
            .env("SLURM_RESTART_COUNT", restarts)
            .env("MAX_REQUEUES", "2")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), std::fs::read_to_string(&calls).unwrap_or_default())
    };
    let (code, log, calls_made) = job("75", "1");
    assert_eq!(code, Some(75));
    assert_eq!(calls_made, "scontrol requeue 42\n", "{log}");
    assert!(!log.contains("stopped by a signal"), "{log}");
    let (code, log, calls_made) = job("75", "2");
    assert_eq!(code, Some(75));
    assert_eq!(calls_made, "", "requeued past the cap: {log}");
    assert!(log.contains("not requeueing"), "{log}");
    let (code, _, calls_made) = job("65", "0");
    assert_eq!(code, Some(65));
    assert_eq!(calls_made, "");
}

/// Every template that requeues itself on exit 75 caps its requeues (SLURM_RESTART_COUNT against
/// MAX_REQUEUES), checked before the requeue, so that a job failing the same way forever stops.
#[test]
fn every_requeueing_template_caps_its_requeues() {
    let mut requeueing = 0;
    for entry in std::fs::read_dir(root().join("slurm")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let Some(requeue) = text.find("scontrol requeue") else { continue };
        requeueing += 1;
        let cap = text.find("-ge \"${MAX_REQUEUES").unwrap_or_else(|| panic!("{}: requeues without a cap", path.display()));
        assert!(cap < requeue, "{}: the cap is checked after the requeue", path.display());
        assert!(text[..requeue].contains("SLURM_RESTART_COUNT"), "{}", path.display());
    }
    assert!(requeueing >= 5, "templates that requeue: {requeueing}");
}
