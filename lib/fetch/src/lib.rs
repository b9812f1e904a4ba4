//! os-fetch's engine: models and datasets from the Hugging Face Hub or a mirror (`HF_ENDPOINT`),
//! listed through the tree API, downloaded with parallel range requests that resume after an
//! interruption, verified against the LFS sha256 (or git blob id), and laid out either in the
//! standard HF cache (so Python tools find the files) or in a plain `--local-dir`.

pub mod cache;
pub mod config;
pub mod download;
pub mod fetch;
pub mod glob;
pub mod http;
pub mod listing;
pub mod manifest;
#[cfg(feature = "mock-hub")]
pub mod mock_hub;
pub mod recipe;
pub mod repo;
pub mod space;

pub use config::HubConfig;
pub use fetch::{fetch, FetchReport, FetchRequest, Selection};
pub use repo::{RepoRef, RepoType};
