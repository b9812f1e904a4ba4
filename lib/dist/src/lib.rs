//! Data parallelism for os-train: rendezvous from Slurm or torchrun variables, a TCP store,
//! NCCL collectives on tch tensors (with a watchdog), a ZeRO-1 sharded AdamW whose fp32 gradient
//! buckets are reduced as the backward pass completes them, and optimizer state that reloads on
//! any number of GPUs.

pub mod check;
pub mod comm;
pub mod dp;
pub mod hostlist;
pub mod launch;
pub mod layout;
pub mod nccl;
pub mod reshard;
pub mod store;

pub use comm::{Comm, CommOptions, Mark, ReduceOp};
pub use dp::{AdamWConfig, NamedParam, Zero1};

pub use launch::Launch;
pub use layout::{FlatLayout, Param};
pub use store::Store;
