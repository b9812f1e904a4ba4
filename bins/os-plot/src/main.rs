//! os-plot: a PNG line chart of one numeric field of a JSON-lines log against its `step`
//! (os-train's `RUN/log.jsonl`: the loss curve), drawn by os-eval's chart code (no libtorch).

use std::path::PathBuf;

use clap::Parser;
use openseek_common::{output, Failure};

#[derive(Parser)]
#[command(name = "os-plot", version, about = "Chart one field of a JSON-lines log (os-train's log.jsonl) against the step, as PNG")]
struct Cli {
    /// JSON lines, one object per step with a "step" field (os-train's RUN/log.jsonl).
    log: PathBuf,
    /// The field to chart (lines where it is missing, null or not finite are left out).
    #[arg(long, default_value = "loss")]
    field: String,
    /// The PNG to write.
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// Replace an existing PNG.
    #[arg(long)]
    force: bool,
}

fn main() {
    openseek_common::exit::run_main("os-plot", || {
        let cli = openseek_common::exit::parse_args::<Cli>();
        let text = std::fs::read_to_string(&cli.log).map_err(|e| Failure::io_at(&cli.log, "cannot read", &e))?;
        let mut points = Vec::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let record: serde_json::Value =
                serde_json::from_str(line).map_err(|e| Failure::data(format!("{}: line {}: {e}", cli.log.display(), i + 1)))?;
            let step = record["step"].as_f64().ok_or_else(|| Failure::data(format!("{}: line {}: no \"step\"", cli.log.display(), i + 1)))?;
            if let Some(v) = record[&cli.field].as_f64().filter(|v| v.is_finite()) {
                points.push((step, v));
            }
        }
        if points.is_empty() {
            return Err(Failure::data(format!("{}: no line has a finite {:?} to chart", cli.log.display(), cli.field)));
        }
        output::refuse_existing(std::slice::from_ref(&cli.output), cli.force)?;
        if let Some(dir) = cli.output.parent() {
            output::create_dir(dir)?;
        }
        openseek_eval::plot::score_vs_step(&cli.output, &cli.field.to_uppercase().replace('_', " "), &points)?;
        eprintln!("os-plot: {} points of {} -> {}", points.len(), cli.field, cli.output.display());
        Ok(())
    })
}
