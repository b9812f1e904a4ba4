//! Renderings of shard facts for people and tools: the `info` table, token dumps as JSON lines,
//! and the manifest written beside a merge.

use std::io::Write;
use std::path::Path;

use openseek_common::provenance::Provenance;

use super::dtype::Tokens;
use super::writer::MergeReport;
use super::ShardSummary;

/// Totals over several shards.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub shards: u64,
    pub sequences: u64,
    pub documents: u64,
    pub tokens: u64,
    pub bin_bytes: u64,
    pub idx_bytes: u64,
}

impl Totals {
    pub fn of(shards: &[ShardSummary]) -> Totals {
        shards.iter().fold(Totals::default(), |t, s| Totals {
            shards: t.shards + 1,
            sequences: t.sequences + s.sequences,
            documents: t.documents + s.documents,
            tokens: t.tokens + s.tokens,
            bin_bytes: t.bin_bytes + s.bin_bytes,
            idx_bytes: t.idx_bytes + s.idx_bytes,
        })
    }
}

/// `info` as an aligned text table with a total line.
pub fn info_table(shards: &[ShardSummary]) -> String {
    let totals = Totals::of(shards);
    let mut rows: Vec<[String; 6]> = vec![["prefix", "dtype", "sequences", "documents", "tokens", "bytes"].map(String::from)];
    for s in shards {
        rows.push([
            s.prefix.display().to_string(),
            s.dtype.name().to_string(),
            s.sequences.to_string(),
            s.documents.to_string(),
            s.tokens.to_string(),
            (s.bin_bytes + s.idx_bytes).to_string(),
        ]);
    }
    rows.push([
        format!("total ({} shard{})", totals.shards, if totals.shards == 1 { "" } else { "s" }),
        String::new(),
        totals.sequences.to_string(),
        totals.documents.to_string(),
        totals.tokens.to_string(),
        (totals.bin_bytes + totals.idx_bytes).to_string(),
    ]);
    let widths: Vec<usize> = (0..6).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap()).collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = format!("{:<w0$}  {:<w1$}", row[0], row[1], w0 = widths[0], w1 = widths[1]);
        for c in 2..6 {
            line.push_str(&format!("  {:>w$}", row[c], w = widths[c]));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `info --json`.
pub fn info_json(shards: &[ShardSummary]) -> serde_json::Value {
    serde_json::json!({ "shards": shards, "total": Totals::of(shards) })
}

/// Write the tokens as a JSON array (integers, or numbers for the float dtypes).
pub fn write_tokens_json(out: &mut impl Write, tokens: &Tokens<'_>) -> std::io::Result<()> {
    out.write_all(b"[")?;
    for i in 0..tokens.len() {
        if i > 0 {
            out.write_all(b",")?;
        }
        match tokens {
            Tokens::F32(s) => write!(out, "{}", serde_json::Value::from(s[i] as f64))?,
            Tokens::F64(s) => write!(out, "{}", serde_json::Value::from(s[i]))?,
            _ => write!(out, "{}", tokens.get(i))?,
        }
    }
    out.write_all(b"]")
}

/// One dump line: `{"sequence":I,"document":D,"length":N,"tokens":[...]}`.
pub fn write_dump_line(out: &mut impl Write, sequence: usize, document: usize, tokens: &Tokens<'_>) -> std::io::Result<()> {
    write!(out, "{{\"sequence\":{sequence},\"document\":{document},\"length\":{},\"tokens\":", tokens.len())?;
    write_tokens_json(out, tokens)?;
    out.write_all(b"}\n")
}

/// The manifest written beside a merge (`PREFIX.json`).
pub fn merge_manifest(output: &Path, report: &MergeReport, provenance: &Provenance) -> serde_json::Value {
    serde_json::json!({
        "kind": "megatron-indexed-dataset",
        "provenance": provenance,
        "output": {
            "prefix": output,
            "dtype": report.output.dtype,
            "sequences": report.output.sequences,
            "documents": report.output.documents,
            "tokens": report.output.tokens,
            "bin_bytes": report.output.bin_bytes,
        },
        "inputs": report.inputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::indexed::DType;
    use std::path::PathBuf;

    fn summary(prefix: &str, sequences: u64) -> ShardSummary {
        ShardSummary { prefix: PathBuf::from(prefix), dtype: DType::U16, sequences, documents: 1, tokens: 10, bin_bytes: 20, idx_bytes: 60 }
    }

    #[test]
    fn table_has_a_total_line() {
        let t = info_table(&[summary("a", 2), summary("bb", 3)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("prefix"));
        assert!(lines[1].starts_with("a ") && lines[1].contains("uint16"));
        assert!(lines[3].starts_with("total (2 shards)") && lines[3].ends_with("160"), "{t}");
        let j = info_json(&[summary("a", 2), summary("bb", 3)]);
        assert_eq!(j["total"]["sequences"], 5);
        assert_eq!(j["shards"][1]["dtype"], "uint16");
    }

    #[test]
    fn dump_lines_are_json() {
        let mut out = Vec::new();
        write_dump_line(&mut out, 3, 1, &Tokens::I32(&[5, -1])).unwrap();
        write_dump_line(&mut out, 4, 1, &Tokens::F32(&[2.0, 0.5])).unwrap();
        write_dump_line(&mut out, 5, 2, &Tokens::U8(&[])).unwrap();
        let lines: Vec<serde_json::Value> = out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
        assert_eq!(lines[0], serde_json::json!({"sequence": 3, "document": 1, "length": 2, "tokens": [5, -1]}));
        assert_eq!(lines[1]["tokens"], serde_json::json!([2.0, 0.5]));
        assert_eq!(lines[2]["tokens"], serde_json::json!([]));
    }
}
