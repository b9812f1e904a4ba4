//! The safetensors format, one implementation for every crate that reads or writes it (os-soup,
//! os-megatron2hf, the model's checkpoints, the optimizer shards): files are read through a memory
//! map with the header parsed and validated by the `safetensors` crate (the reference
//! implementation), and written tensor by tensor into Hugging Face's sharded layout, so no output
//! is held whole in memory (small files with metadata of their own: whole, with the metadata in a
//! fixed order).
//! Tensors stay bytes here; the model crate turns them into libtorch tensors, so this crate does
//! not link libtorch.

pub mod read;
pub mod write;

pub use read::{SafetensorsFile, TensorInfo};
pub use safetensors::Dtype;
pub use write::{serialize, OutTensor, ShardWriter};
