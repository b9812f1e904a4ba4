//! The options every raw-text tool shares (os-tokenize, os-dedup, os-filter), as one clap block
//! each binary flattens into its arguments: the field holding the text, the worker threads, and
//! what to do with a bad record.

use serde::Serialize;

/// What to do with a bad record (invalid JSON or UTF-8, missing text; when tokenizing, an empty
/// document too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Stop at the first bad record; nothing is written.
    Fail,
    /// Drop bad records (they are not in the output) and count them in the manifest.
    Skip,
}

/// `--text-key`, `--workers` and `--on-error`.
#[derive(Debug, Clone, clap::Args)]
pub struct RecordOptions {
    /// JSON field or Parquet column holding the text.
    #[arg(long, default_value = "text")]
    pub text_key: String,
    /// Worker threads [default: $SLURM_CPUS_PER_TASK, else all cores]. The output is the same for any value.
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub workers: Option<usize>,
    /// What to do with a bad record (invalid JSON or UTF-8, missing text; when tokenizing, an
    /// empty document too): stop, or drop it and count it in the manifest.
    #[arg(long, value_enum, default_value_t = OnError::Fail)]
    pub on_error: OnError,
}

impl RecordOptions {
    /// `--workers`, else `$SLURM_CPUS_PER_TASK`, else every core.
    pub fn workers(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::env::var("SLURM_CPUS_PER_TASK")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&n: &usize| n > 0)
                .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        records: RecordOptions,
    }

    #[test]
    fn defaults_and_values() {
        let cli = Cli::try_parse_from(["t"]).unwrap();
        assert_eq!((cli.records.text_key.as_str(), cli.records.workers, cli.records.on_error), ("text", None, OnError::Fail));
        let cli = Cli::try_parse_from(["t", "--text-key", "content", "--workers", "3", "--on-error", "skip"]).unwrap();
        assert_eq!((cli.records.text_key.as_str(), cli.records.workers(), cli.records.on_error), ("content", 3, OnError::Skip));
        assert!(Cli::try_parse_from(["t", "--workers", "0"]).is_err());
        assert!(Cli::try_parse_from(["t", "--on-error", "ignore"]).is_err());
    }
}
