//! os-dist-check: run one process per rank to check the data-parallel layer (collectives, a toy
//! ZeRO-1 run, bandwidth, timeouts). Ranks come from Slurm or torchrun-style variables.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use openseek_dist::check;

#[derive(Parser)]
#[command(version, about = "Check openseek-dist's collectives across processes (one per GPU, or CPU)")]
struct Cli {
    /// Use the CPU (TCP-store collectives) even where CUDA is available.
    #[arg(long, global = true)]
    cpu: bool,
    /// Seconds before a rendezvous, store operation or collective counts as hung.
    #[arg(long, global = true, default_value_t = 120)]
    timeout: u64,
    /// Use NCCL even at world size 1 (checks the NCCL path on a single GPU).
    #[arg(long, global = true)]
    force_nccl: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Known-answer all-reduce (sum/avg, fp32/bf16/int64), reduce-scatter, all-gather, broadcast.
    Collectives {
        #[arg(long, default_value_t = 1 << 20)]
        elems: usize,
    },
    /// Toy ZeRO-1 run: prints the global loss per step (equal for every world size).
    Toy {
        #[arg(long, default_value_t = 30)]
        steps: u64,
        /// Save the optimizer shards after this step into --state and stop.
        #[arg(long)]
        save_at: Option<u64>,
        #[arg(long)]
        state: Option<PathBuf>,
        /// Resume from the shards in --state (saved on any world size).
        #[arg(long)]
        resume: bool,
    },
    /// All-reduce bandwidth over fp32 buckets, and the ZeRO-1 reduce-scatter + all-gather.
    Bench {
        #[arg(long, default_value_t = 1_400_000_000)]
        elems: usize,
        #[arg(long, default_value_t = 40_000_000)]
        bucket: usize,
        #[arg(long, default_value_t = 5)]
        iters: usize,
    },
    /// One rank skips an all-reduce: the others must fail with a named timeout.
    Hang {
        #[arg(long, default_value_t = 1)]
        skip: usize,
    },
}

fn main() {
    let cli = openseek_common::exit::parse_args::<Cli>();
    openseek_common::exit::run_main("os-dist-check", || {
        let timeout = Duration::from_secs(cli.timeout);
        let mut comm = check::setup(cli.cpu, cli.force_nccl, timeout)?;
        match cli.command {
            Command::Collectives { elems } => check::collectives(&mut comm, elems),
            Command::Toy { steps, save_at, state, resume } => check::toy(&mut comm, steps, save_at, state.as_deref(), resume),
            Command::Bench { elems, bucket, iters } => check::bench(&mut comm, elems, bucket, iters),
            Command::Hang { skip } => check::hang(&mut comm, skip, timeout),
        }
    })
}
