//! Recipes: a TOML, YAML or JSON file (by extension) naming datasets with weights or token
//! targets, the sequence length, the budget (samples or tokens), the seed and the split; or stages
//! of such blends for a curriculum. Also Megatron's `data_path` string ("W1 PREFIX1 W2 PREFIX2").
//! Both resolve to a `MixSpec`, with every entry checked and errors naming the entry at fault.

use std::path::{Path, PathBuf};

use openseek_common::Failure;
use serde::{Deserialize, Serialize};

use crate::blend;

/// Megatron's default `--seed`.
pub const DEFAULT_SEED: u64 = 1234;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: Option<String>,
    pub description: Option<String>,
    pub seq_len: Option<u32>,
    pub seed: Option<u64>,
    pub split: Option<String>,
    pub total_samples: Option<u64>,
    pub total_tokens: Option<f64>,
    pub data_root: Option<String>,
    pub source: Option<Source>,
    #[serde(default)]
    pub datasets: Vec<DatasetEntry>,
    #[serde(default)]
    pub stages: Vec<Stage>,
}

/// Where the shards come from (read by os-fetch; os-mix records it).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub repo: String,
    pub repo_type: Option<String>,
    pub revision: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetEntry {
    pub prefix: String,
    pub weight: Option<f64>,
    pub tokens: Option<f64>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub name: Option<String>,
    pub tokens: Option<f64>,
    pub samples: Option<u64>,
    pub datasets: Vec<DatasetEntry>,
}

/// One weighted input of a stage, resolved.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// How messages and reports name it: the recipe's `name`, else the prefix as written.
    pub label: String,
    /// The prefix as written in the recipe or on the command line.
    pub prefix_as_written: String,
    /// The prefix on disk (data_root applied).
    pub prefix: PathBuf,
    pub weight: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageSpec {
    pub name: String,
    pub samples: u64,
    pub entries: Vec<Entry>,
}

/// Everything a mix needs besides the shards themselves.
#[derive(Debug, Clone, Serialize)]
pub struct MixSpec {
    pub name: Option<String>,
    pub seq_len: u32,
    pub seed: u32,
    pub split: String,
    pub split_fractions: [f64; 3],
    pub stages: Vec<StageSpec>,
    pub source: Option<Source>,
}

impl MixSpec {
    pub fn total_samples(&self) -> u64 {
        self.stages.iter().map(|s| s.samples).sum()
    }
    pub fn is_curriculum(&self) -> bool {
        self.stages.len() > 1
    }
}

/// Read a recipe file; the format follows the extension.
pub fn load(path: &Path) -> Result<Recipe, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| Failure::io_at(path, "cannot read the recipe", &e))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let bad = |e: String| Failure::config(format!("{}: {e}", path.display()));
    match ext.as_str() {
        "toml" => toml::from_str(&text).map_err(|e| bad(e.to_string())),
        "yaml" | "yml" => serde_norway::from_str(&text).map_err(|e| bad(e.to_string())),
        "json" => serde_json::from_str(&text).map_err(|e| bad(e.to_string())),
        _ => Err(Failure::usage(format!(
            "{}: a recipe must end in .toml, .yaml, .yml or .json (the extension picks the format)",
            path.display()
        ))),
    }
}

/// Overrides from the command line.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub seq_len: Option<u32>,
    pub seed: Option<u64>,
    pub split: Option<String>,
    pub total_samples: Option<u64>,
    pub total_tokens: Option<f64>,
    pub data_root: Option<PathBuf>,
}

fn check_seed(seed: u64) -> Result<u32, Failure> {
    u32::try_from(seed).map_err(|_| Failure::config(format!("seed {seed} is out of range: numpy's RandomState takes 0..=4294967295")))
}

fn samples_for_tokens(tokens: f64, seq_len: u32, what: &str) -> Result<u64, Failure> {
    if !tokens.is_finite() || tokens <= 0.0 {
        return Err(Failure::config(format!("{what}: tokens = {tokens} must be a positive number")));
    }
    Ok((tokens / seq_len as f64).ceil() as u64)
}

/// One blend's entries, the sum of its token targets (when it gives targets rather than
/// weights) and its warnings.
type ResolvedEntries = (Vec<Entry>, Option<f64>, Vec<String>);

/// Resolve the entries of one blend: weights (or token targets used as weights), checked.
fn resolve_entries(list: &[DatasetEntry], root: &Path, where_: &str) -> Result<ResolvedEntries, Failure> {
    if list.is_empty() {
        return Err(Failure::config(format!("{where_}: no datasets")));
    }
    let mut entries = Vec::new();
    let mut warnings = Vec::new();
    let uses_tokens = list.iter().any(|d| d.tokens.is_some());
    let mut token_sum = 0.0;
    for (i, d) in list.iter().enumerate() {
        let label = d.name.clone().unwrap_or_else(|| d.prefix.clone());
        let at = format!("{where_}, dataset {} ({label})", i + 1);
        let value = match (d.weight, d.tokens) {
            (Some(_), Some(_)) => return Err(Failure::config(format!("{at}: give either weight or tokens, not both"))),
            (None, None) => return Err(Failure::config(format!("{at}: no weight and no tokens"))),
            (Some(_), None) if uses_tokens => {
                return Err(Failure::config(format!(
                    "{at}: has a weight while other datasets of this blend give token targets; use one kind per blend"
                )))
            }
            (Some(w), None) => w,
            (None, Some(t)) => {
                token_sum += t;
                t
            }
        };
        if value.is_nan() {
            return Err(Failure::config(format!("{at}: the {} is NaN", if uses_tokens { "token target" } else { "weight" })));
        }
        if value < 0.0 || value.is_infinite() {
            return Err(Failure::config(format!(
                "{at}: the {} {value} is not allowed; it must be a finite number >= 0",
                if uses_tokens { "token target" } else { "weight" }
            )));
        }
        if d.prefix.trim().is_empty() {
            return Err(Failure::config(format!("{at}: empty prefix")));
        }
        if value == 0.0 {
            warnings.push(format!("{at}: weight 0, left out of the blend"));
            continue;
        }
        let p = Path::new(d.prefix.trim());
        let prefix = if p.is_absolute() { p.to_path_buf() } else { root.join(p) };
        entries.push(Entry { label, prefix_as_written: d.prefix.clone(), prefix, weight: value });
    }
    if entries.is_empty() {
        return Err(Failure::config(format!("{where_}: every weight is zero; give at least one dataset a positive weight")));
    }
    Ok((entries, uses_tokens.then_some(token_sum), warnings))
}

/// Resolve a recipe (read from `recipe_path`) and overrides into a `MixSpec`; returns warnings too.
pub fn resolve(recipe: &Recipe, recipe_path: Option<&Path>, o: &Overrides) -> Result<(MixSpec, Vec<String>), Failure> {
    let seq_len = o.seq_len.or(recipe.seq_len).ok_or_else(|| Failure::config("seq_len is missing (recipe field or --seq-len)"))?;
    if seq_len < 2 {
        return Err(Failure::config(format!("seq_len {seq_len} must be at least 2")));
    }
    let seed = check_seed(o.seed.or(recipe.seed).unwrap_or(DEFAULT_SEED))?;
    let split = o.split.clone().or_else(|| recipe.split.clone()).unwrap_or_else(|| "1,0,0".to_string());
    let split_fractions = blend::parse_split(&split).map_err(Failure::config)?;
    let base = recipe_path.and_then(|p| p.parent()).map(Path::to_path_buf).unwrap_or_default();
    let root = match (&o.data_root, &recipe.data_root) {
        (Some(r), _) => r.clone(),
        (None, Some(r)) if Path::new(r).is_absolute() => PathBuf::from(r),
        (None, Some(r)) => base.join(r),
        (None, None) => base.clone(),
    };
    let total_samples = o.total_samples.or(if o.total_tokens.is_some() { None } else { recipe.total_samples });
    let total_tokens = o.total_tokens.or(if o.total_samples.is_some() { None } else { recipe.total_tokens });
    let mut warnings = Vec::new();
    let mut stages = Vec::new();
    match (recipe.datasets.is_empty(), recipe.stages.is_empty()) {
        (false, false) => return Err(Failure::config("the recipe has both [[datasets]] and [[stages]]; a curriculum puts its datasets inside the stages")),
        (true, true) => return Err(Failure::config("the recipe has no [[datasets]] and no [[stages]]")),
        (false, true) => {
            let (entries, token_sum, w) = resolve_entries(&recipe.datasets, &root, "datasets")?;
            warnings.extend(w);
            let samples = match (total_samples, total_tokens, token_sum) {
                (Some(_), Some(_), _) => return Err(Failure::config("give total_samples or total_tokens, not both")),
                (Some(n), None, _) => n,
                (None, Some(t), _) => samples_for_tokens(t, seq_len, "total_tokens")?,
                (None, None, Some(t)) => samples_for_tokens(t, seq_len, "the sum of the datasets' token targets")?,
                (None, None, None) => return Err(Failure::config("the budget is missing: give total_samples or total_tokens")),
            };
            if samples == 0 {
                return Err(Failure::config("total_samples is 0"));
            }
            stages.push(StageSpec { name: recipe.name.clone().unwrap_or_else(|| "blend".into()), samples, entries });
        }
        (true, false) => {
            let mut budgets = Vec::new();
            for (k, st) in recipe.stages.iter().enumerate() {
                let name = st.name.clone().unwrap_or_else(|| format!("stage{}", k + 1));
                let where_ = format!("stage {} ({name})", k + 1);
                let (entries, token_sum, w) = resolve_entries(&st.datasets, &root, &where_)?;
                warnings.extend(w);
                let samples = match (st.samples, st.tokens, token_sum) {
                    (Some(_), Some(_), _) => return Err(Failure::config(format!("{where_}: give samples or tokens, not both"))),
                    (Some(n), None, _) => Some(n),
                    (None, Some(t), _) => Some(samples_for_tokens(t, seq_len, &where_)?),
                    (None, None, Some(t)) => Some(samples_for_tokens(t, seq_len, &where_)?),
                    (None, None, None) => None,
                };
                budgets.push(samples);
                stages.push(StageSpec { name, samples: samples.unwrap_or(0), entries });
            }
            if budgets.iter().any(Option::is_none) {
                // Stages without budgets share the total in equal parts of what is left.
                let total = match (total_samples, total_tokens) {
                    (Some(n), None) => n,
                    (None, Some(t)) => samples_for_tokens(t, seq_len, "total_tokens")?,
                    _ => return Err(Failure::config("some stages have no budget (tokens or samples) and the recipe has no single total_samples or total_tokens to share")),
                };
                let given: u64 = budgets.iter().flatten().sum();
                let open = budgets.iter().filter(|b| b.is_none()).count() as u64;
                let left = total.checked_sub(given).filter(|l| *l >= open).ok_or_else(|| {
                    Failure::config(format!("the stages' budgets ({given} samples) leave nothing of the total ({total} samples) for the stages without one"))
                })?;
                let mut k = 0;
                for (st, b) in stages.iter_mut().zip(&budgets) {
                    if b.is_none() {
                        st.samples = left / open + u64::from(k < left % open);
                        k += 1;
                    }
                }
            }
            for (k, st) in stages.iter().enumerate() {
                if st.samples == 0 {
                    return Err(Failure::config(format!("stage {} ({}) has a budget of 0 samples", k + 1, st.name)));
                }
            }
        }
    }
    Ok((
        MixSpec { name: recipe.name.clone(), seq_len, seed, split, split_fractions, stages, source: recipe.source.clone() },
        warnings,
    ))
}

/// Megatron's `data_path` convention: "W1 PREFIX1 W2 PREFIX2 ..." (whitespace or commas between).
pub fn parse_weights(spec: &str) -> Result<Vec<DatasetEntry>, Failure> {
    let words: Vec<&str> = spec.split(|c: char| c.is_whitespace() || c == ',').filter(|w| !w.is_empty()).collect();
    if words.is_empty() {
        return Err(Failure::usage("--weights is empty; give \"W1 PREFIX1 W2 PREFIX2 ...\""));
    }
    if words.len() % 2 == 1 {
        return Err(Failure::usage(format!(
            "--weights has {} words; it must alternate weight and prefix (\"W1 PREFIX1 W2 PREFIX2 ...\")",
            words.len()
        )));
    }
    let mut out = Vec::new();
    for (i, pair) in words.chunks(2).enumerate() {
        let weight: f64 = pair[0].parse().map_err(|_| {
            Failure::usage(format!("--weights entry {} ({}): {:?} is not a number; the list alternates weight and prefix", i + 1, pair[1], pair[0]))
        })?;
        out.push(DatasetEntry { prefix: pair[1].to_string(), weight: Some(weight), tokens: None, name: None });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_string_and_errors_name_the_entry() {
        let e = parse_weights("0.3 a/b 0.7 c/d").unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].weight, Some(0.7));
        assert!(parse_weights("0.3 a 0.7").unwrap_err().message.contains("alternate"));
        let recipe = |w: &str| Recipe {
            name: None,
            description: None,
            seq_len: Some(8),
            seed: None,
            split: None,
            total_samples: Some(10),
            total_tokens: None,
            data_root: None,
            source: None,
            datasets: parse_weights(w).unwrap(),
            stages: vec![],
        };
        let err = resolve(&recipe("1 a -2 b"), None, &Overrides::default()).unwrap_err();
        assert!(err.message.contains("dataset 2 (b)") && err.message.contains("-2"), "{}", err.message);
        let err = resolve(&recipe("1 a NaN b"), None, &Overrides::default()).unwrap_err();
        assert!(err.message.contains("dataset 2 (b)") && err.message.contains("NaN"), "{}", err.message);
        let err = resolve(&recipe("0 a 0 b"), None, &Overrides::default()).unwrap_err();
        assert!(err.message.contains("every weight is zero"), "{}", err.message);
        let (spec, warnings) = resolve(&recipe("0 a 2 b"), None, &Overrides::default()).unwrap();
        assert_eq!(spec.stages[0].entries.len(), 1);
        assert_eq!(warnings.len(), 1);
        assert_eq!(spec.seed, 1234);
    }

    #[test]
    fn curriculum_recipe_in_toml() {
        let text = r#"
            seq_len = 100
            total_tokens = 1000000
            data_root = "/data"
            [[stages]]
            name = "one"
            tokens = 400000
            [[stages.datasets]]
            prefix = "x"
            weight = 1
            [[stages]]
            [[stages.datasets]]
            prefix = "/abs/y"
            weight = 2
        "#;
        let r: Recipe = toml::from_str(text).unwrap();
        let (spec, _) = resolve(&r, None, &Overrides::default()).unwrap();
        assert_eq!(spec.stages.len(), 2);
        assert_eq!(spec.stages[0].samples, 4000);
        assert_eq!(spec.stages[1].samples, 6000);
        assert_eq!(spec.stages[1].name, "stage2");
        assert_eq!(spec.stages[0].entries[0].prefix, PathBuf::from("/data/x"));
        assert_eq!(spec.stages[1].entries[0].prefix, PathBuf::from("/abs/y"));
    }
}
