//! os-fetch: download a model or dataset repo (or just the shards a recipe names) from the
//! Hugging Face Hub or a mirror into the HF cache or a local directory. Thin CLI over
//! `openseek_fetch`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use openseek_common::{exit::run_main, Failure};
use openseek_fetch::download::EngineOptions;
use openseek_fetch::http::RetryPolicy;
use openseek_common::progress::Mode;
use openseek_fetch::{fetch, recipe, FetchRequest, HubConfig, RepoRef, RepoType, Selection};

/// Fetch a Hub repo, resumable and verified. Without --local-dir the files go to the HF cache
/// ($HF_HUB_CACHE or $HF_HOME/hub) where Python tools find them. Honours HF_ENDPOINT, HF_TOKEN /
/// HF_TOKEN_PATH, HF_HOME and HF_HUB_OFFLINE. Prints the snapshot folder (or local dir) on stdout.
#[derive(Parser, Debug)]
#[command(name = "os-fetch", version)]
struct Args {
    /// Repo id, `org/name` (optional with --recipe, which names its source).
    repo: Option<String>,
    /// The repo is a dataset (default: a model).
    #[arg(long)]
    dataset: bool,
    /// Branch, tag or commit (default: main, or the recipe's source.revision).
    #[arg(long)]
    revision: Option<String>,
    /// Only files matching this pattern (fnmatch; `*` crosses `/`; `dir/` = everything under dir). Repeatable.
    #[arg(long = "include", value_name = "GLOB")]
    include: Vec<String>,
    /// Skip files matching this pattern. Repeatable.
    #[arg(long = "exclude", value_name = "GLOB")]
    exclude: Vec<String>,
    /// Write real files under DIR (with .cache/huggingface metadata) instead of the HF cache.
    #[arg(long, short = 'o', value_name = "DIR", visible_alias = "output")]
    local_dir: Option<PathBuf>,
    /// Fetch exactly the `<prefix>.bin` + `<prefix>.idx` shards an os-mix recipe names, into
    /// --local-dir (default: the recipe's data_root).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["include", "exclude"])]
    recipe: Option<PathBuf>,
    /// Where to write the JSON manifest (default: <snapshot repo>/os-fetch/<commit>.json, or
    /// <local-dir>/.cache/os-fetch/manifest.json).
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// Parallel connections in all.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Files downloaded at once.
    #[arg(long, default_value_t = 4)]
    max_files: usize,
    /// Range size per request, in bytes (suffixes k, M, G accepted).
    #[arg(long, default_value = "32M", value_parser = parse_size)]
    chunk_size: u64,
    /// Tries per request before giving up on 429 / 5xx / dropped connections.
    #[arg(long, default_value_t = 10)]
    retries: u32,
    /// First backoff wait in milliseconds (doubles each retry, capped at 60 s).
    #[arg(long, default_value_t = 1000)]
    retry_wait_ms: u64,
    /// Seconds between progress lines when stderr is not a terminal (Slurm logs).
    #[arg(long, default_value_t = 30.0)]
    progress_interval: f64,
    /// Plain progress lines even on a terminal.
    #[arg(long)]
    plain_progress: bool,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&s[..s.len() - 1], 1 << 20),
        Some('g' | 'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size (e.g. 4096, 64k, 32M)"))?;
    let v = n.checked_mul(mult).ok_or_else(|| format!("`{s}` is too large"))?;
    if v == 0 {
        return Err("the chunk size must be positive".into());
    }
    Ok(v)
}

fn main() {
    let args = openseek_common::exit::parse_args::<Args>();
    run_main("os-fetch", || run(args));
}

fn run(args: Args) -> Result<(), Failure> {
    let cfg = HubConfig::from_env();
    let mut kind = if args.dataset { RepoType::Dataset } else { RepoType::Model };
    let mut revision = args.revision.clone();
    let mut local_dir = args.local_dir.clone();
    let (repo_id, selection) = match &args.recipe {
        Some(path) => {
            let needs = recipe::load(path)?;
            let repo_id = match (&args.repo, &needs.source) {
                (Some(r), _) => r.clone(),
                (None, Some((src, rev))) => {
                    kind = src.kind;
                    revision = revision.or(Some(rev.clone()));
                    src.id.clone()
                }
                (None, None) => {
                    return Err(Failure::usage(format!(
                        "{} has no [source] repo; add one or name the repo on the command line",
                        path.display()
                    )))
                }
            };
            if local_dir.is_none() {
                local_dir = needs.data_root.clone();
            }
            if local_dir.is_none() {
                return Err(Failure::usage(format!(
                    "{} has no data_root; pass --local-dir DIR to say where the shards go",
                    path.display()
                )));
            }
            (repo_id, Selection::Exact(needs.files))
        }
        None => {
            let repo = args.repo.clone().ok_or_else(|| Failure::usage("name a repo (org/name) or pass --recipe FILE"))?;
            (repo, Selection::Patterns { include: args.include.clone(), exclude: args.exclude.clone() })
        }
    };
    if args.connections == 0 || args.max_files == 0 || args.retries == 0 {
        return Err(Failure::usage("--connections, --max-files and --retries must be at least 1"));
    }
    let interval = Duration::from_secs_f64(args.progress_interval.max(0.05));
    let progress = if args.quiet {
        Mode::Quiet
    } else if args.plain_progress {
        Mode::Lines { interval }
    } else {
        Mode::Auto { interval }
    };
    let req = FetchRequest {
        repo: RepoRef::new(&repo_id, kind)?,
        revision: revision.unwrap_or_else(|| "main".into()),
        selection,
        local_dir,
        manifest: args.manifest.clone(),
        engine: EngineOptions { chunk_size: args.chunk_size, connections: args.connections, max_files: args.max_files },
        retry: RetryPolicy { attempts: args.retries, base: Duration::from_millis(args.retry_wait_ms), cap: Duration::from_secs(60) },
        progress,
    };
    let report = fetch(&cfg, &req)?;
    let m = &report.manifest;
    if !args.quiet {
        eprintln!(
            "os-fetch: {} {} at {} ({}): {} files, {} bytes ({} downloaded in {:.1}s); manifest {}",
            m.repo_type,
            m.repo,
            m.revision,
            if m.commit.is_empty() { "?" } else { &m.commit },
            m.files.len(),
            m.total_bytes,
            m.downloaded_bytes,
            m.seconds,
            report.manifest_path.display()
        );
    }
    println!("{}", report.root.display());
    Ok(())
}
