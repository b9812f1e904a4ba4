//! openseek-megatron: read Megatron / FlagScale checkpoints (the legacy `torch` format and
//! `torch_dist`) without libtorch, merge their tensor / pipeline / expert parallel shards and write
//! a Hugging Face DeepSeek-V3 checkpoint, tensor by tensor.

pub mod archive;
pub mod pickle;
