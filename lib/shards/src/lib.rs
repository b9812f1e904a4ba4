//! Token shards: Megatron's indexed dataset (`PREFIX.bin` + `PREFIX.idx`), read zero-copy and
//! written streaming, the binary token document stream that pipes tools together, and quality
//! buckets cut from per-document scores.

pub mod docstream;
pub mod indexed;
pub mod select;
