//! Training samples from token shards: numpy-identical randomness, Megatron's GPT sample index and
//! weighted blend (bit-identical to megatron-core), curricula, recipes, packing strategies, the
//! memory-mapped sample store, and the reader that feeds os-train.

pub mod array;
pub mod blend;
pub mod gpt;
pub mod inspect;
pub mod rng;
pub mod mix;
pub mod pack;
pub mod reader;
pub mod recipe;
pub mod store;
