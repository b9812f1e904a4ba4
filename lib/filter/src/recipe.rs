//! The filter recipe (TOML): an ordered list of `[[filter]]` tables, each with a `kind` and its
//! parameters; paths are relative to the recipe. Loading compiles every filter (word lists,
//! benchmark index, score table, OpenCC tables), so a bad recipe fails before any input is read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aho_corasick::AhoCorasick;
use openseek_common::Failure;
use serde::Deserialize;

use crate::data_juicer::{AverageLineLength, SpecialCharacters, WordRepetition};
use crate::decontaminate::BenchmarkIndex;
use crate::gopher::{GopherQuality, GopherRepetition};
use crate::language::LanguageFilter;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeFile {
    #[serde(default)]
    filter: Vec<FilterSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Drop the document.
    #[default]
    Drop,
    /// Keep it, adding `"<filter name>": <what was found>` to its record.
    Flag,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Missing {
    #[default]
    Keep,
    Drop,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum FilterSpec {
    /// Characters (code points) in [min, max].
    CharLength {
        min: Option<usize>,
        max: Option<usize>,
    },
    /// Mean characters per sentence in [min, max] (sentences end at . ! ? 。！？ ; ； or a newline).
    MeanSentenceLength {
        min: Option<f64>,
        max: Option<f64>,
    },
    /// Share of characters that are punctuation or symbols at most `max`.
    SymbolRatio {
        max: f64,
    },
    GopherQuality(GopherQuality),
    GopherRepetition(GopherRepetition),
    /// data-juicer's `average_line_length_filter` (`min_len` 10, `max_len` unbounded).
    AverageLineLength(AverageLineLength),
    /// data-juicer's `special_characters_filter` (`min_ratio` 0, `max_ratio` 0.25).
    SpecialCharacters(SpecialCharacters),
    /// data-juicer's `word_repetition_filter` (`rep_len` 10, `min_ratio` 0, `max_ratio` 0.5).
    WordRepetition(WordRepetition),
    /// Language identification with a fastText classifier (`lid.176.bin`/`.ftz`), as datatrove's
    /// `LanguageFilter`: keep documents scoring above `min_score` for one of `keep` (or, without
    /// `keep`, for their most probable language).
    Language {
        model: PathBuf,
        keep: Option<Vec<String>>,
        #[serde(default = "language_threshold")]
        min_score: f64,
        #[serde(default)]
        action: Action,
    },
    /// Traditional to simplified Chinese with OpenCC's t2s tables (changes the text, drops nothing).
    TraditionalToSimplified {},
    /// Documents with more than `max_hits` occurrences of the listed words (one per line, # comments).
    WordList {
        path: PathBuf,
        #[serde(default)]
        max_hits: usize,
        #[serde(default)]
        action: Action,
    },
    /// Documents sharing an n-gram with any benchmark text under `data` (os-eval's data directory).
    Decontaminate {
        data: PathBuf,
        #[serde(default = "thirteen")]
        n: usize,
        #[serde(default)]
        action: Action,
    },
    /// A per-document score joined by id (JSON lines {id_key, score_key}); keep scores in [min, max].
    /// `score_key = "perplexity"` computes exp(-mean) of a `token_logprobs` list (os-eval score's output).
    Score {
        path: PathBuf,
        #[serde(default = "id_key")]
        id_key: String,
        #[serde(default = "score_key")]
        score_key: String,
        min: Option<f64>,
        max: Option<f64>,
        #[serde(default)]
        missing: Missing,
    },
}

fn thirteen() -> usize {
    13
}
fn language_threshold() -> f64 {
    0.65
}
fn id_key() -> String {
    "id".into()
}
fn score_key() -> String {
    "score".into()
}

/// A compiled filter.
pub enum Filter {
    CharLength { min: Option<usize>, max: Option<usize> },
    MeanSentenceLength { min: Option<f64>, max: Option<f64> },
    SymbolRatio { max: f64 },
    GopherQuality(GopherQuality),
    GopherRepetition(GopherRepetition),
    AverageLineLength(AverageLineLength),
    SpecialCharacters(SpecialCharacters),
    WordRepetition(WordRepetition),
    Language { lid: Box<LanguageFilter>, action: Action },
    TraditionalToSimplified(Box<ferrous_opencc::OpenCC>),
    WordList { words: AhoCorasick, count: usize, source: String, max_hits: usize, action: Action },
    Decontaminate { index: BenchmarkIndex, action: Action },
    Score { scores: HashMap<String, f64>, id_key: String, source: String, min: Option<f64>, max: Option<f64>, missing: Missing },
}

impl Filter {
    /// The name counts and flags are reported under.
    pub fn name(&self) -> &'static str {
        match self {
            Filter::CharLength { .. } => "char_length",
            Filter::MeanSentenceLength { .. } => "mean_sentence_length",
            Filter::SymbolRatio { .. } => "symbol_ratio",
            Filter::GopherQuality(_) => "gopher_quality",
            Filter::GopherRepetition(_) => "gopher_repetition",
            Filter::AverageLineLength(_) => "average_line_length",
            Filter::SpecialCharacters(_) => "special_characters",
            Filter::WordRepetition(_) => "word_repetition",
            Filter::Language { .. } => "language",
            Filter::TraditionalToSimplified(_) => "traditional_to_simplified",
            Filter::WordList { .. } => "word_list",
            Filter::Decontaminate { .. } => "decontaminate",
            Filter::Score { .. } => "score",
        }
    }

    /// What the filter was built from, for the manifest.
    pub fn describe(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Filter::CharLength { min, max } => json!({ "min": min, "max": max }),
            Filter::MeanSentenceLength { min, max } => json!({ "min": min, "max": max }),
            Filter::SymbolRatio { max } => json!({ "max": max }),
            Filter::GopherQuality(q) => json!(format!("{q:?}")),
            Filter::GopherRepetition(r) => json!(format!("{r:?}")),
            Filter::AverageLineLength(r) => json!({ "min_len": r.min_len, "max_len": r.max_len.is_finite().then_some(r.max_len) }),
            Filter::SpecialCharacters(r) => json!({ "min_ratio": r.min_ratio, "max_ratio": r.max_ratio }),
            Filter::WordRepetition(r) => json!({ "rep_len": r.rep_len, "min_ratio": r.min_ratio, "max_ratio": r.max_ratio }),
            Filter::Language { lid, action } => json!({
                "model": lid.source, "labels": lid.model.labels.len(), "dim": lid.model.dim, "loss": format!("{:?}", lid.model.loss),
                "quantized": lid.model.quantized, "keep": lid.keep, "min_score": lid.min_score, "flag": *action == Action::Flag,
            }),
            Filter::TraditionalToSimplified(c) => json!({ "opencc": c.name() }),
            Filter::WordList { count, source, max_hits, action, .. } => json!({ "path": source, "words": count, "max_hits": max_hits, "flag": *action == Action::Flag }),
            Filter::Decontaminate { index, action } => json!({
                "n": index.n, "ngrams": index.ngrams(), "flag": *action == Action::Flag,
                "sources": index.sources.iter().zip(&index.strings).map(|(s, n)| json!({ "file": s, "strings": n })).collect::<Vec<_>>(),
            }),
            Filter::Score { scores, source, min, max, missing, .. } => json!({ "path": source, "scores": scores.len(), "min": min, "max": max, "missing_dropped": *missing == Missing::Drop }),
        }
    }
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

fn load_scores(path: &Path, id_key: &str, score_key: &str) -> Result<HashMap<String, f64>, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| Failure::io_at(path, "cannot read score file", &e))?;
    let mut scores = HashMap::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = || format!("{}: line {}", path.display(), i + 1);
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| Failure::data(format!("{}: not valid JSON: {e}", at())))?;
        let id = match &value[id_key] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => return Err(Failure::data(format!("{}: no {id_key:?} field (set id_key)", at()))),
        };
        let score = if score_key == "perplexity" && value.get("perplexity").is_none() {
            let logprobs = value["token_logprobs"].as_array().ok_or_else(|| Failure::data(format!("{}: no token_logprobs list to compute a perplexity from", at())))?;
            let sum: f64 = logprobs.iter().filter_map(|v| v.as_f64()).sum();
            (-sum / logprobs.len().max(1) as f64).exp()
        } else {
            value[score_key].as_f64().ok_or_else(|| Failure::data(format!("{}: no number in {score_key:?} (set score_key)", at())))?
        };
        scores.insert(id, score);
    }
    Ok(scores)
}

/// Load and compile a recipe.
pub fn load(path: &Path) -> Result<Vec<Filter>, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| Failure::io_at(path, "cannot read recipe", &e))?;
    let file: RecipeFile = toml::from_str(&text).map_err(|e| Failure::config(format!("{}: {e}", path.display())))?;
    if file.filter.is_empty() {
        return Err(Failure::config(format!("{}: no [[filter]] tables", path.display())));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let config_err = |e: Failure| e.context(format!("{}", path.display()));
    file.filter
        .into_iter()
        .map(|spec| {
            Ok(match spec {
                FilterSpec::CharLength { min, max } => Filter::CharLength { min, max },
                FilterSpec::MeanSentenceLength { min, max } => Filter::MeanSentenceLength { min, max },
                FilterSpec::SymbolRatio { max } => Filter::SymbolRatio { max },
                FilterSpec::GopherQuality(q) => Filter::GopherQuality(q),
                FilterSpec::GopherRepetition(r) => Filter::GopherRepetition(r),
                FilterSpec::AverageLineLength(r) => Filter::AverageLineLength(r),
                FilterSpec::SpecialCharacters(r) => Filter::SpecialCharacters(r),
                FilterSpec::WordRepetition(r) if r.rep_len == 0 => return Err(Failure::config(format!("{}: word_repetition: rep_len must be at least 1", path.display()))),
                FilterSpec::WordRepetition(r) => Filter::WordRepetition(r),
                FilterSpec::Language { model, keep, min_score, action } => {
                    Filter::Language { lid: Box::new(LanguageFilter::load(&resolve(base, &model), keep, min_score)?), action }
                }
                FilterSpec::TraditionalToSimplified {} => Filter::TraditionalToSimplified(Box::new(
                    ferrous_opencc::OpenCC::from_config(ferrous_opencc::config::BuiltinConfig::T2s)
                        .map_err(|e| Failure::software(format!("cannot load OpenCC's t2s tables: {e}")))?,
                )),
                FilterSpec::WordList { path: list, max_hits, action } => {
                    let list = resolve(base, &list);
                    let text = std::fs::read_to_string(&list).map_err(|e| Failure::io_at(&list, "cannot read word list", &e))?;
                    let words: Vec<String> =
                        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_lowercase).collect();
                    if words.is_empty() {
                        return Err(Failure::config(format!("{}: the word list is empty", list.display())));
                    }
                    let matcher = AhoCorasick::builder()
                        .ascii_case_insensitive(true)
                        .build(&words)
                        .map_err(|e| Failure::config(format!("{}: {e}", list.display())))?;
                    Filter::WordList { words: matcher, count: words.len(), source: list.display().to_string(), max_hits, action }
                }
                FilterSpec::Decontaminate { data, n, action } => Filter::Decontaminate { index: BenchmarkIndex::build(&resolve(base, &data), n).map_err(config_err)?, action },
                FilterSpec::Score { path: file, id_key, score_key, min, max, missing } => {
                    let file = resolve(base, &file);
                    Filter::Score { scores: load_scores(&file, &id_key, &score_key)?, id_key, source: file.display().to_string(), min, max, missing }
                }
            })
        })
        .collect()
}
