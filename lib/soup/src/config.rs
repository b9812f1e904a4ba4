//! What to merge and how: the merge method, the inputs with their per-model parameters, global
//! parameters, dtypes and seed; read from a mergekit-style YAML config (`merge_method`,
//! `base_model`, `models: [{model, parameters}]`, `parameters`, `dtype`, `out_dtype`) or built
//! from command-line flags. Parameters resolve per tensor: the model's own value, else the
//! global one, else the method's default; a value may be a number, a bool, or a list of
//! `{filter, value}` where the first entry whose filter is a substring of the tensor name (or
//! that has no filter) applies, as in mergekit.

use std::collections::BTreeMap;
use std::path::PathBuf;

use openseek_common::Failure;
use serde::Serialize;
use serde_norway::Value;

use crate::dtype::FloatType;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Weighted sum of the models (uniform and weighted averages are this with normalize).
    Linear,
    /// Exponential moving average over the models in the given order.
    Ema,
    Slerp,
    TaskArithmetic,
    Ties,
    DareLinear,
    DareTies,
}

impl Method {
    pub fn parse(name: &str) -> Result<Self, Failure> {
        Ok(match name {
            "linear" | "average" | "weighted" => Method::Linear,
            "ema" => Method::Ema,
            "slerp" => Method::Slerp,
            "task_arithmetic" => Method::TaskArithmetic,
            "ties" => Method::Ties,
            "dare_linear" => Method::DareLinear,
            "dare_ties" => Method::DareTies,
            other => {
                return Err(Failure::usage(format!(
                    "unknown merge method {other:?}: use average, weighted, ema, linear, slerp, task_arithmetic, ties, dare_linear or dare_ties"
                )))
            }
        })
    }

    pub fn needs_base(self) -> bool {
        matches!(self, Method::Slerp | Method::TaskArithmetic | Method::Ties | Method::DareLinear | Method::DareTies)
    }
}

/// A parameter value as written in a config.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Param {
    Number(f64),
    Bool(bool),
    /// `(filter, value)`: the first matching entry applies.
    Conditional(Vec<(Option<String>, f64)>),
}

impl Param {
    fn from_yaml(name: &str, v: &Value) -> Result<Self, Failure> {
        match v {
            Value::Bool(b) => Ok(Param::Bool(*b)),
            Value::Number(n) => Ok(Param::Number(n.as_f64().unwrap_or(f64::NAN))),
            Value::Sequence(items) => {
                let mut out = Vec::new();
                for item in items {
                    let filter = item.get("filter").and_then(|f| f.as_str()).map(str::to_string);
                    let value = item.get("value").and_then(|v| v.as_f64()).ok_or_else(|| {
                        Failure::config(format!(
                            "parameter {name}: each list entry needs a numeric \"value\" (and optionally a \"filter\"); \
                             gradients (a list of values interpolated over layers) are not supported"
                        ))
                    })?;
                    out.push((filter, value));
                }
                Ok(Param::Conditional(out))
            }
            other => Err(Failure::config(format!("parameter {name}: unsupported value {other:?}"))),
        }
    }

    /// The numeric value for a tensor (bools read as 0 / 1); None when no conditional entry matches.
    pub fn number_for(&self, tensor: &str) -> Option<f64> {
        match self {
            Param::Number(n) => Some(*n),
            Param::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Param::Conditional(entries) => entries
                .iter()
                .find(|(f, _)| f.as_deref().is_none_or(|f| tensor.contains(f)))
                .map(|(_, v)| *v),
        }
    }
}

pub type Params = BTreeMap<String, Param>;

#[derive(Debug, Clone, Serialize)]
pub struct ModelSpec {
    pub path: PathBuf,
    pub parameters: Params,
}

/// A complete description of one merge.
#[derive(Debug, Clone, Serialize)]
pub struct MergePlan {
    pub method: Method,
    /// As the user named it (average, weighted, linear, ...).
    pub method_name: String,
    pub base: Option<PathBuf>,
    /// Inputs in order (the base is not repeated here even when a config lists it).
    pub models: Vec<ModelSpec>,
    pub parameters: Params,
    /// Compute-and-output dtype (mergekit's `dtype`); None keeps each tensor's input dtype.
    pub dtype: Option<String>,
    pub out_dtype: Option<String>,
    pub seed: u64,
}

fn params_from(name: &str, v: Option<&Value>) -> Result<Params, Failure> {
    let mut out = Params::new();
    let Some(v) = v else { return Ok(out) };
    if v.is_null() {
        return Ok(out);
    }
    let map = v.as_mapping().ok_or_else(|| Failure::config(format!("{name}: \"parameters\" must be a mapping")))?;
    for (k, val) in map {
        let key = k.as_str().ok_or_else(|| Failure::config(format!("{name}: parameter names must be strings")))?;
        out.insert(key.to_string(), Param::from_yaml(key, val)?);
    }
    Ok(out)
}

fn model_path(v: &Value, what: &str) -> Result<PathBuf, Failure> {
    match v {
        Value::String(s) => Ok(PathBuf::from(s)),
        _ => Err(Failure::config(format!("{what}: a model must be a local checkpoint directory path (a string)"))),
    }
}

impl MergePlan {
    /// Parse a mergekit-style YAML config.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, Failure> {
        let doc: Value =
            serde_norway::from_str(text).map_err(|e| Failure::config(format!("{origin}: invalid YAML: {e}")))?;
        for key in ["slices", "modules"] {
            if doc.get(key).is_some() {
                return Err(Failure::config(format!(
                    "{origin}: \"{key}\" configs (layer slicing, frankenmerges) are not supported; list whole models under \"models\""
                )));
            }
        }
        let method_name = doc
            .get("merge_method")
            .and_then(|m| m.as_str())
            .ok_or_else(|| Failure::config(format!("{origin}: missing \"merge_method\"")))?
            .to_string();
        let method = Method::parse(&method_name).map_err(|f| Failure::config(format!("{origin}: {}", f.message)))?;
        let base = match doc.get("base_model") {
            None | Some(Value::Null) => None,
            Some(v) => Some(model_path(v, origin)?),
        };
        let list = doc
            .get("models")
            .and_then(|m| m.as_sequence())
            .ok_or_else(|| Failure::config(format!("{origin}: missing \"models\" list")))?;
        let mut models = Vec::new();
        for (i, item) in list.iter().enumerate() {
            let what = format!("{origin}: models[{i}]");
            let path = model_path(
                item.get("model").ok_or_else(|| Failure::config(format!("{what}: missing \"model\"")))?,
                &what,
            )?;
            let parameters = params_from(&what, item.get("parameters"))?;
            models.push(ModelSpec { path, parameters });
        }
        let parameters = params_from(origin, doc.get("parameters"))?;
        let get_str = |k: &str| doc.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let seed = doc.get("seed").and_then(|v| v.as_u64()).unwrap_or(0);
        let mut plan = MergePlan {
            method,
            method_name,
            base,
            models,
            parameters,
            dtype: get_str("dtype"),
            out_dtype: get_str("out_dtype"),
            seed,
        };
        plan.normalize_base();
        plan.validate()?;
        Ok(plan)
    }

    /// Drop the base from the model list when a config lists it there too (as mergekit configs do).
    /// Only for methods that take a base; linear and EMA keep every listed model as an input.
    pub fn normalize_base(&mut self) {
        if !self.method.needs_base() {
            return;
        }
        if let Some(base) = &self.base {
            let same = |p: &PathBuf| p == base || (p.canonicalize().ok().is_some() && p.canonicalize().ok() == base.canonicalize().ok());
            self.models.retain(|m| !same(&m.path));
        }
    }

    pub fn validate(&self) -> Result<(), Failure> {
        if self.models.is_empty() {
            return Err(Failure::usage("nothing to merge: give at least one model besides the base"));
        }
        if self.method.needs_base() && self.base.is_none() {
            return Err(Failure::usage(format!("{} needs a base model (base_model / --base)", self.method_name)));
        }
        if self.method == Method::Slerp && self.models.len() != 1 {
            return Err(Failure::usage(format!(
                "slerp merges exactly two models: the base and one other (got {} besides the base)",
                self.models.len()
            )));
        }
        if matches!(self.method, Method::Linear | Method::Ema) && self.models.len() < 2 && self.base.is_none() {
            return Err(Failure::usage("averaging needs at least two checkpoints"));
        }
        for d in [&self.dtype, &self.out_dtype].into_iter().flatten() {
            FloatType::parse(d)?;
        }
        self.validate_numbers()
    }

    /// Every parameter a finite number; weights not negative in averages (average, weighted,
    /// ema: mergekit's linear and the task-arithmetic family allow them); densities in [0, 1];
    /// a normalised linear merge's weights summing to more than zero. Exit 78 naming the parameter.
    fn validate_numbers(&self) -> Result<(), Failure> {
        let owners = std::iter::once(("parameters".to_string(), &self.parameters))
            .chain(self.models.iter().map(|m| (m.path.display().to_string(), &m.parameters)));
        let averaging = matches!(self.method_name.as_str(), "average" | "weighted" | "ema");
        for (owner, params) in owners {
            for (name, param) in params {
                let values: Vec<f64> = match param {
                    Param::Number(v) => vec![*v],
                    Param::Bool(_) => vec![],
                    Param::Conditional(entries) => entries.iter().map(|e| e.1).collect(),
                };
                for v in values {
                    let bad = if !v.is_finite() {
                        Some("parameters must be finite numbers")
                    } else if v.abs() > f32::MAX as f64 {
                        Some("beyond float32, in which the merge computes")
                    } else if name == "weight" && averaging && v < 0.0 {
                        Some("an average takes no negative weights (mergekit's linear or task_arithmetic take them)")
                    } else if name == "density" && !(0.0..=1.0).contains(&v) {
                        Some("a density is a fraction in [0, 1]")
                    } else {
                        None
                    };
                    if let Some(why) = bad {
                        return Err(Failure::config(format!("{}: {owner}: {name} = {v}: {why}", self.method_name)));
                    }
                }
            }
        }
        if self.method == Method::Linear && self.global_bool("normalize", "", true) {
            let weights: Option<Vec<f64>> = (0..self.models.len()).map(|m| match self.models[m].parameters.get("weight").or(self.parameters.get("weight")) {
                None => Some(1.0),
                Some(Param::Number(v)) => Some(*v),
                Some(_) => None,
            }).collect();
            if let Some(sum) = weights.map(|w| w.iter().sum::<f64>()).filter(|s| *s <= 0.0) {
                return Err(Failure::config(format!(
                    "{}: the weights sum to {sum}; normalising divides by the sum, which must be positive (or --normalize false)",
                    self.method_name
                )));
            }
        }
        Ok(())
    }

    /// A parameter of model `index` for `tensor`: the model's value, else the global one.
    pub fn model_param(&self, index: usize, name: &str, tensor: &str) -> Option<f64> {
        self.models[index]
            .parameters
            .get(name)
            .and_then(|p| p.number_for(tensor))
            .or_else(|| self.global_param(name, tensor))
    }

    pub fn global_param(&self, name: &str, tensor: &str) -> Option<f64> {
        self.parameters.get(name).and_then(|p| p.number_for(tensor))
    }

    pub fn global_bool(&self, name: &str, tensor: &str, default: bool) -> bool {
        self.global_param(name, tensor).map(|v| v != 0.0).unwrap_or(default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_mergekit_ties_config() {
        let yaml = r#"
merge_method: ties
base_model: /m/base
models:
  - model: /m/base
  - model: /m/a
    parameters: {weight: 0.7, density: 0.5}
  - model: /m/b
    parameters:
      weight: [{filter: mlp, value: 0.2}, {value: 0.4}]
parameters:
  normalize: false
  density: 0.9
dtype: float32
"#;
        let plan = MergePlan::from_yaml(yaml, "t.yaml").unwrap();
        assert_eq!(plan.method, Method::Ties);
        assert_eq!(plan.models.len(), 2, "the base is not an input");
        assert_eq!(plan.model_param(0, "density", "x"), Some(0.5));
        assert_eq!(plan.model_param(1, "density", "x"), Some(0.9), "global default");
        assert_eq!(plan.model_param(1, "weight", "layers.0.mlp.up_proj.weight"), Some(0.2));
        assert_eq!(plan.model_param(1, "weight", "layers.0.self_attn.q_proj.weight"), Some(0.4));
        assert!(!plan.global_bool("normalize", "x", true));
        assert_eq!(plan.dtype.as_deref(), Some("float32"));
        assert!(MergePlan::from_yaml("merge_method: ties\nmodels: [{model: a}]\n", "x").is_err(), "ties needs a base");
        assert!(MergePlan::from_yaml("merge_method: frob\nmodels: []\n", "x").is_err());
    }
}
