//! openseek-megatron: read Megatron / FlagScale checkpoints (the legacy `torch` format and
//! `torch_dist`) without libtorch, merge their tensor / pipeline / expert parallel shards and write
//! a Hugging Face DeepSeek-V3 checkpoint, tensor by tensor.

pub mod archive;
pub mod checkpoint;
pub mod convert;
pub mod dcp;
pub mod hf;
pub mod legacy;
pub mod mapping;
pub mod pickle;
pub use convert::{convert, Options, Report};
