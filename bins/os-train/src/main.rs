//! os-train: train OpenSeek-Small-v1 (DeepSeek-V3) from a sample store, resuming from the newest
//! checkpoint in the run directory; one process per device (ranks from `srun` or torchrun-style
//! variables). Exit 0 when training is done, 75 after a checkpoint on SIGUSR1/SIGTERM/SIGINT to
//! any rank (rerun to resume).

use clap::{CommandFactory, Parser};
use openseek_common::Failure;
use openseek_train::{config, RunInfo, TrainConfig};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "os-train",
    version,
    about = "Train OpenSeek-Small-v1 (DeepSeek-V3), one process per device; resumes from the newest checkpoint in --run-dir"
)]
struct Cli {
    /// Training config (TOML, YAML or JSON).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run directory: checkpoints, logs, TensorBoard events and the resolved config.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Print the resolved config as JSON and exit.
    #[arg(long)]
    print_config: bool,
    /// Resume even if the sample store differs from the one the run's checkpoint was trained on
    /// (the change is logged; the sample order after the cursor is the new store's).
    #[arg(long)]
    allow_data_change: bool,
    /// Config options as flags: --name value ...
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    options: Vec<String>,
}

fn main() {
    openseek_common::exit::run_main("os-train", || {
        let result = run();
        if let Err(failure) = &result {
            openseek_train::leave_job(failure);
        }
        result
    })
}

fn run() -> Result<(), Failure> {
    // --help lists every config option with its default (generated from TrainConfig).
    let mut cli = openseek_common::exit::parse_args_with::<Cli>(Cli::command().after_help(config::options_help()));
    // os-train's own flags may also come after config options (which clap leaves together).
    let options = own_flags(&mut cli)?;
    let mut map = match &cli.config {
        Some(path) => config::read_file(path)?,
        None => serde_json::Map::new(),
    };
    config::apply_flags(&mut map, &options)?;
    let cfg = TrainConfig::from_map(map)?;
    if cli.print_config {
        println!("{}", serde_json::to_string_pretty(&cfg).unwrap());
        return Ok(());
    }
    let run_dir = cli.run_dir.ok_or_else(|| Failure::usage("--run-dir is required"))?;
    let info = RunInfo {
        tool: "os-train".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        git_commit: env!("OS_TRAIN_GIT_COMMIT").into(),
    };
    let stop = openseek_common::signals::watch();
    openseek_train::train(&cfg, &run_dir, &info, &stop, cli.allow_data_change)
}

/// Take `--run-dir`, `--config`, `--print-config` and `--allow-data-change` out of the trailing
/// config options into `cli`; the rest are config options.
fn own_flags(cli: &mut Cli) -> Result<Vec<String>, Failure> {
    let mut rest = vec![];
    let mut args = std::mem::take(&mut cli.options).into_iter();
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = |name: &str| inline.clone().or_else(|| args.next()).ok_or_else(|| Failure::usage(format!("{name} needs a value")));
        match name.as_str() {
            "--run-dir" | "--run_dir" => cli.run_dir = Some(PathBuf::from(value("--run-dir")?)),
            "--config" => cli.config = Some(PathBuf::from(value("--config")?)),
            "--print-config" => cli.print_config = true,
            "--allow-data-change" => cli.allow_data_change = true,
            _ => rest.push(arg),
        }
    }
    Ok(rest)
}
