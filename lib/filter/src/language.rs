//! Language identification as datatrove 0.10.1's `LanguageFilter` decides it, with any fastText
//! classifier (`lid.176.bin`/`.ftz`, GlotLID...): the text's newlines become spaces, every label
//! is predicted, and a document is kept when one of the wanted languages (or, without a list, the
//! best one) scores above the threshold.

use std::path::Path;

use openseek_common::Failure;

use crate::fasttext::FastTextModel;

pub struct LanguageFilter {
    pub model: FastTextModel,
    pub source: String,
    /// Languages to keep (labels without `__label__`); None keeps any language.
    pub keep: Option<Vec<String>>,
    pub min_score: f64,
}

/// What the model says of a document.
#[derive(Debug, Clone, PartialEq)]
pub struct Identified {
    /// The most probable language ("" when the text has nothing the model knows).
    pub language: String,
    pub score: f64,
    pub accepted: bool,
}

impl Identified {
    /// The drop reason of a document that was not accepted (`language_<best>` when the best
    /// language is not wanted, `below_min_score` when it is but scores too low).
    pub fn reason(&self, filter: &LanguageFilter) -> String {
        if self.language.is_empty() {
            "no_language".into()
        } else if filter.keep.as_ref().is_none_or(|keep| keep.contains(&self.language)) {
            format!("below_min_score:{}={:.4}", self.language, self.score)
        } else {
            format!("language_{}:{:.4}", self.language, self.score)
        }
    }
}

impl LanguageFilter {
    pub fn load(model: &Path, keep: Option<Vec<String>>, min_score: f64) -> Result<Self, Failure> {
        let model_file = FastTextModel::load(model)?;
        if let Some(unknown) = keep.iter().flatten().find(|l| !model_file.labels.iter().any(|m| language_of(m) == l.as_str())) {
            let known: Vec<&str> = model_file.labels.iter().map(|l| language_of(l)).take(20).collect();
            return Err(Failure::config(format!("{}: no label {unknown:?} in the model (it has {}...)", model.display(), known.join(", "))));
        }
        Ok(LanguageFilter { model: model_file, source: model.display().to_string(), keep, min_score })
    }

    pub fn identify(&self, text: &str) -> Identified {
        let predictions = self.model.predict(text, None);
        let score_of = |language: &str| predictions.iter().find(|p| language_of(p.label) == language).map_or(0.0, |p| p.probability as f64);
        let (language, score) = predictions.first().map_or((String::new(), 0.0), |p| (language_of(p.label).to_string(), p.probability as f64));
        let accepted = match &self.keep {
            Some(keep) => keep.iter().any(|l| score_of(l) > self.min_score),
            None => !language.is_empty() && score > self.min_score,
        };
        Identified { language, score, accepted }
    }
}

/// A label without fastText's `__label__` prefix.
pub fn language_of(label: &str) -> &str {
    label.strip_prefix("__label__").unwrap_or(label)
}
