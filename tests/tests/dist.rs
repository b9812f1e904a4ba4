//! os-dist-check as several processes on the CPU (collectives over the TCP store): known-answer
//! collectives, a toy ZeRO-1 run with the same losses on 1, 2 and 3 ranks, resume on another
//! world size, named timeouts, and Slurm-style launch variables.

use std::process::{Command, Output, Stdio};

use openseek_tests::tool;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Run `world` ranks of os-dist-check with torchrun-style variables plus `env`; outputs by rank.
fn ranks(world: usize, args: &[&str], env: &[(&str, String)]) -> Vec<Output> {
    let port = free_port().to_string();
    let children: Vec<_> = (0..world)
        .map(|r| {
            let mut c = Command::new(tool("os-dist-check"));
            c.args(args)
                .env("RANK", r.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("LOCAL_RANK", r.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            for (k, v) in env {
                c.env(k, v);
            }
            c.spawn().expect("start os-dist-check")
        })
        .collect();
    children.into_iter().map(|c| c.wait_with_output().unwrap()).collect()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn all_ok(outs: &[Output]) {
    for (r, o) in outs.iter().enumerate() {
        assert!(o.status.success(), "rank {r} failed:\n{}", text(o));
    }
}

/// (step, loss) lines printed by rank 0 of a toy run.
fn losses(o: &Output) -> Vec<(u64, f64)> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&"step")).then(|| (f[1].parse().unwrap(), f[3].parse().unwrap()))
        })
        .collect()
}

fn final_checksum(o: &Output) -> f64 {
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out.lines().find(|l| l.contains(": final ")).unwrap_or_else(|| panic!("no final line:\n{out}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn assert_close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-5 * a.abs().max(b.abs()), "{what}: {a} vs {b}");
}

#[test]
fn known_answer_collectives_on_three_cpu_ranks() {
    let outs = ranks(3, &["--cpu", "collectives", "--elems", "1000"], &[]);
    all_ok(&outs);
    for (r, o) in outs.iter().enumerate() {
        let t = text(o);
        for name in ["all_reduce sum fp32", "all_reduce avg fp32", "all_reduce sum bf16", "int64", "reduce_scatter", "all_gather", "broadcast", "stop agreement"] {
            assert!(t.contains(&format!("rank {r}/3")) && t.contains(name), "rank {r} did not check {name}:\n{t}");
        }
    }
}

#[test]
fn zero1_losses_do_not_depend_on_the_world_size_and_resume_on_another() {
    let one = ranks(1, &["--cpu", "toy", "--steps", "30"], &[]);
    all_ok(&one);
    let reference = losses(&one[0]);
    assert_eq!(reference.len(), 30);
    assert!(reference[29].1 < reference[0].1 / 3.0, "the toy run does not learn: {reference:?}");
    for world in [2, 3] {
        let outs = ranks(world, &["--cpu", "toy", "--steps", "30"], &[]);
        all_ok(&outs);
        let got = losses(&outs[0]);
        assert_eq!(got.len(), 30);
        for ((s, a), (_, b)) in reference.iter().zip(&got) {
            assert_close(*a, *b, &format!("world {world} step {s} loss"));
        }
        for o in &outs {
            assert_close(final_checksum(&one[0]), final_checksum(o), &format!("world {world} final weights"));
        }
    }
    // Stop after step 12 on three ranks, resume on two: the same run as without the stop.
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().to_str().unwrap();
    all_ok(&ranks(3, &["--cpu", "toy", "--steps", "30", "--save-at", "12", "--state", dir], &[]));
    assert_eq!(std::fs::read_dir(state.path()).unwrap().count(), 3, "one optimizer shard per rank");
    let resumed = ranks(2, &["--cpu", "toy", "--steps", "30", "--state", dir, "--resume"], &[]);
    all_ok(&resumed);
    let got = losses(&resumed[0]);
    assert_eq!(got.first().map(|g| g.0), Some(13));
    for (s, b) in &got {
        assert_close(reference[*s as usize - 1].1, *b, &format!("resumed step {s} loss"));
    }
    assert_close(final_checksum(&one[0]), final_checksum(&resumed[1]), "resumed final weights");
}

#[test]
fn a_rank_that_skips_a_collective_gives_named_timeouts_not_a_hang() {
    let outs = ranks(3, &["--cpu", "--timeout", "2", "hang", "--skip", "1"], &[]);
    all_ok(&outs);
    for r in [0, 2] {
        let t = text(&outs[r]);
        assert!(t.contains("timed out as expected") && t.contains("waiting for rank(s) [1]") && t.contains("'all_reduce'"), "{t}");
    }
}

#[test]
fn slurm_variables_and_a_missing_rank_zero() {
    let port = free_port().to_string();
    let slurm = |rank: usize| {
        vec![
            ("SLURM_PROCID", rank.to_string()),
            ("SLURM_LOCALID", rank.to_string()),
            ("SLURM_NTASKS", "2".to_string()),
            ("SLURM_STEP_ID", "0".to_string()),
            ("SLURM_JOB_ID", "4242".to_string()),
            ("SLURM_JOB_NODELIST", "localhost,node[02-03]".to_string()),
            ("MASTER_PORT", port.clone()),
        ]
    };
    let children: Vec<_> = (0..2)
        .map(|r| {
            Command::new(tool("os-dist-check"))
                .args(["--cpu", "collectives", "--elems", "100"])
                .env_remove("RANK")
                .env_remove("WORLD_SIZE")
                .envs(slurm(r))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    all_ok(&outs);
    assert!(text(&outs[1]).contains("rank 1/2 on"), "{}", text(&outs[1]));

    // Rank 1 alone: rank 0 never listens; exit 69 with the address named.
    let out = Command::new(tool("os-dist-check"))
        .args(["--cpu", "--timeout", "1", "collectives"])
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .envs(slurm(1))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69), "{}", text(&out));
    assert!(text(&out).contains(&format!("localhost:{port}")) && text(&out).contains("rank 1/2"), "{}", text(&out));
}
