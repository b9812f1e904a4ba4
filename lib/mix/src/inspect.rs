//! `os-mix inspect`: print samples of a store — which dataset and documents they come from, their
//! token ids, and their text when a tokenizer is given — as text or one JSON object per line.

use std::io::Write;
use std::path::Path;

use openseek_common::Failure;

use crate::store::SampleStore;

/// Turns token ids into text.
pub type Decoder = Box<dyn Fn(&[u32]) -> Result<String, Failure>>;

/// Parse "A:B", "A:", ":B" or "A" against `len` samples.
pub fn parse_range(range: &str, len: u64) -> Result<std::ops::Range<u64>, Failure> {
    let bad = || Failure::usage(format!("--range {range:?}: expected A:B, A:, :B or A with sample numbers"));
    let num = |s: &str, default: u64| -> Result<u64, Failure> {
        if s.trim().is_empty() {
            Ok(default)
        } else {
            s.trim().parse().map_err(|_| bad())
        }
    };
    let (a, b) = match range.split_once(':') {
        Some((a, b)) => (num(a, 0)?, num(b, len)?),
        None => {
            let a = num(range, 0)?;
            (a, a + 1)
        }
    };
    if a > b || b > len {
        return Err(Failure::usage(format!("--range {range:?} is outside the store's {len} samples (0..{len})")));
    }
    Ok(a..b)
}

pub fn inspect(dir: &Path, range: &str, json: bool, decode: Option<&Decoder>, out: &mut impl Write) -> Result<(), Failure> {
    let store = SampleStore::open(dir)?;
    let r = parse_range(range, store.len())?;
    let io = |e: std::io::Error| Failure::io(format!("stdout: {e}"));
    for i in r {
        let (tokens, src) = store.sample(i);
        let label = &store.manifest().datasets[src.dataset as usize].label;
        let stage = store.manifest().stages.iter().find(|s| s.start <= i && i < s.end).map(|s| s.name.clone());
        let text = match decode {
            Some(d) => Some(d(&tokens[..tokens.len() - src.padding as usize])?),
            None => None,
        };
        if json {
            let v = serde_json::json!({
                "sample": i,
                "stage": stage,
                "dataset": src.dataset,
                "dataset_label": label,
                "dataset_sample": src.dataset_sample,
                "documents": src.pieces.iter().map(|p| p.sequence).collect::<Vec<_>>(),
                "pieces": src.pieces,
                "padding": src.padding,
                "tokens": tokens,
                "text": text,
            });
            writeln!(out, "{v}").map_err(io)?;
        } else {
            writeln!(
                out,
                "sample {i}{}: dataset {} ({label}) sample {}, documents {:?}, padding {}",
                stage.map(|s| format!(" [stage {s}]")).unwrap_or_default(),
                src.dataset,
                src.dataset_sample,
                src.pieces.iter().map(|p| (p.sequence, p.offset, p.len)).collect::<Vec<_>>(),
                src.padding
            )
            .map_err(io)?;
            writeln!(out, "  tokens: {tokens:?}").map_err(io)?;
            if let Some(t) = text {
                writeln!(out, "  text: {t:?}").map_err(io)?;
            }
        }
    }
    out.flush().map_err(io)
}
