//! The OpenSeek-Small-v1 model (DeepSeek-V3 architecture) on libtorch through tch:
//! config.json, the forward pass, Hugging Face checkpoints in and out, and scoring.

pub mod attention;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod documents;
pub mod fast_paths;
pub mod generate;
pub mod layer;
pub mod layers;
pub mod model;
pub mod moe;
pub mod mtp;
pub mod packed;
pub mod rope;
pub mod safetensors;
pub mod score;
pub mod shapes;
pub mod token_groups;
pub mod weights;

pub use checkpoint::{load, save};
pub use config::Config;
pub use device::{device_name, parse_device};
pub use documents::{document_attention, DocumentSegments};
pub use fast_paths::FastPaths;
pub use model::DeepseekV3;
pub use tch;
