//! Rule filtering of raw text corpora, as OpenSeek cleaned its data (data-juicer-style rules) and
//! datatrove computes Gopher's: a TOML recipe of filters applied in one streaming pass, with
//! per-filter counts and sampled dropped documents in the manifest.

pub mod data_juicer;
pub mod decontaminate;
pub mod fasttext;
pub mod gopher;
pub mod language;
pub mod pass;
pub mod recipe;
