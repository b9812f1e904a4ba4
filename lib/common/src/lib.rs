//! Plumbing every openseek tool shares: sysexits-style failures, atomic multi-file outputs,
//! provenance for manifests, hashing, and progress reporting that suits terminals and Slurm logs.

pub mod atomic;
pub mod exit;
pub mod hash;
pub mod lock;
pub mod output;
pub mod progress;
pub mod provenance;
pub mod rng;
pub mod signals;
pub mod size;

pub use atomic::{write_json_file, AtomicOutputs};
pub use exit::{ExitCode, Failure};
