//! From raw text corpora to token documents: which input files to read (globs, directories,
//! Slurm array shards), how to read each format as a stream of records, and the parallel,
//! order-preserving tokenize pipeline behind `os-tokenize`. With the `demo` feature (os-demo-data,
//! the tests), the synthetic demo corpus and the demo's benchmark files.

#[cfg(feature = "demo")]
pub mod demo_tasks;
pub mod inputs;
pub mod json_text;
pub mod options;
pub mod pipeline;
pub mod records;
#[cfg(feature = "demo")]
pub mod synthetic;
