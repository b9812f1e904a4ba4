//! os-train's library: training OpenSeek-Small-v1 (DeepSeek-V3) on libtorch through tch from a
//! sample store, with exact resume, atomic checkpoints, JSON-line and TensorBoard logs.

pub mod checkpoint;
pub mod config;
pub mod fault;
pub mod init;
pub mod loss;
pub mod metrics;
pub mod microbatch;
pub mod moe_stats;
pub mod mtp;
pub mod optim;
pub mod run_log;
pub mod schedule;
pub mod setup;
pub mod tensorboard;
pub mod tokenizer_source;
pub mod train_step;
pub mod trainer;

pub use config::TrainConfig;
pub use checkpoint::RunInfo;
pub use trainer::{leave_job, train};
