//! openseek-soup: merge Hugging Face checkpoints tensor by tensor over memory maps: uniform,
//! weighted, latest-N and EMA averages, and mergekit's linear, slerp, task_arithmetic, ties,
//! dare_linear and dare_ties, configured by flags or a mergekit-style YAML file.

pub mod checkpoint;
pub mod config;
pub mod dtype;
pub mod merge;
pub mod methods;
pub mod select;

pub use config::{Method, MergePlan};
pub use merge::{run_merge, MergeOptions, MergeReport};
