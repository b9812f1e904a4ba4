//! Token shards: Megatron's indexed dataset (`PREFIX.bin` + `PREFIX.idx`), read zero-copy and
//! written streaming, and the binary token document stream that pipes tools together.

pub mod docstream;
pub mod indexed;
