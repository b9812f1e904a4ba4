//! Deduplication of raw text corpora: MinHash near-duplicate removal that reproduces datatrove's
//! (text normalisation, English word splitting, signatures, bands, clusters) in stages that scale
//! out as Slurm arrays, and exact deduplication of documents and of repeated substrings.

pub mod documents;
pub mod exact;
pub mod minhash;
pub mod minhash_stages;
pub mod normalize;
pub mod words;
