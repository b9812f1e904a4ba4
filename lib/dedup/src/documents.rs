//! Documents of one input file, read with the corpus readers (every format os-tokenize reads), in
//! batches with their position in the file; and the writer of the documents a tool keeps, in the
//! input's own lines for JSON lines inputs (compression kept) and as `{"text": ...}` JSON lines
//! for the other layouts.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use openseek_common::signals::StopSignal;
use openseek_common::{AtomicOutputs, Failure};
use openseek_corpus::inputs::{Compression, Input, Layout};
use openseek_corpus::records::{location_name, InputStats, Payload, Problem, Record, RecordReader};
use serde::{Deserialize, Serialize};

/// A bad record, kept as an example in manifests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BadRecord {
    pub input: String,
    pub location: String,
    pub problem: String,
}

/// Where a record is, for messages: `file: line 12`.
pub fn describe(input: &Input, record: &Record) -> String {
    format!("{}: {} {}", input.display(), location_name(record.layout), record.location)
}

/// Turn a bad record into the failure `--on-error fail` reports.
pub fn bad_record_failure(input: &Input, record: &Record, problem: &Problem) -> Failure {
    Failure::data(format!("{}: {problem}; fix the input or pass --on-error skip to drop such records", describe(input, record)))
}

/// Read `input` in batches of records; `handle` gets each batch and the file's index of its first
/// record (records are numbered from 0 in file order, bad ones included). Stops on a signal.
pub fn read_batches(
    input: &Input,
    text_key: &str,
    batch_bytes: usize,
    stop: &StopSignal,
    handle: &mut dyn FnMut(Vec<Record>, u32) -> Result<(), Failure>,
) -> Result<InputStats, Failure> {
    let inputs = std::slice::from_ref(input);
    let reader = RecordReader { inputs, text_key, batch_bytes, bytes_read: Arc::new(AtomicU64::new(0)) };
    let mut next_index: u64 = 0;
    let mut outcome: Result<(), Failure> = Ok(());
    let stats = reader.run(&mut |batch| {
        if let Err(stopped) = stop.check("nothing of this part was written; run the same command again to redo it") {
            outcome = Err(stopped);
            return false;
        }
        let first = next_index;
        next_index += batch.len() as u64;
        if next_index > u32::MAX as u64 {
            outcome = Err(Failure::data(format!("{}: more than 2^32 records in one file; split it", input.display())));
            return false;
        }
        match handle(batch, first as u32) {
            Ok(()) => true,
            Err(e) => {
                outcome = Err(e);
                false
            }
        }
    })?;
    outcome?;
    Ok(stats.into_iter().next().unwrap_or(InputStats { path: input.display(), bytes: 0, sha256: String::new(), records: 0 }))
}

/// The output file name for an input: its own name for JSON lines, else the stem with `.jsonl`;
/// the compression suffix kept.
pub fn output_name(input: &Input) -> String {
    let name = input.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "stdin.jsonl".into());
    let (stem, suffix) = match input.compression {
        Compression::None => (name.as_str(), ""),
        Compression::Gzip => (&name[..name.len() - 3], ".gz"),
        Compression::Zstd => {
            let cut = if name.to_ascii_lowercase().ends_with(".zstd") { 5 } else { 4 };
            (&name[..name.len() - cut], ".zst")
        }
    };
    if input.layout == Layout::JsonLines {
        return name;
    }
    let base = stem.rsplit_once('.').map(|(b, _)| b).unwrap_or(stem);
    format!("{base}.jsonl{suffix}")
}

/// Refuse inputs that would be written under the same output name.
pub fn check_output_names(inputs: &[Input]) -> Result<(), Failure> {
    let mut names = std::collections::HashMap::new();
    for input in inputs {
        if let Some(other) = names.insert(output_name(input), input.display()) {
            return Err(Failure::usage(format!("{other} and {} would both be written as {}; rename one", input.display(), output_name(input))));
        }
    }
    Ok(())
}

enum Sink {
    Plain(BufWriter<std::fs::File>),
    Gzip(flate2::write::GzEncoder<BufWriter<std::fs::File>>),
    Zstd(zstd::Encoder<'static, BufWriter<std::fs::File>>),
}

/// Writes kept documents into one output file (registered with the run's atomic outputs).
pub struct DocWriter {
    sink: Sink,
    path: std::path::PathBuf,
    text_key: String,
    line: Vec<u8>,
}

impl DocWriter {
    pub fn create(path: &Path, compression: Compression, text_key: &str, outputs: &mut AtomicOutputs) -> Result<Self, Failure> {
        let file = BufWriter::with_capacity(1 << 20, outputs.create(path)?);
        let sink = match compression {
            Compression::None => Sink::Plain(file),
            // Fixed header (no name, no time): the same input gives the same bytes.
            Compression::Gzip => Sink::Gzip(flate2::GzBuilder::new().mtime(0).write(file, flate2::Compression::new(6))),
            Compression::Zstd => Sink::Zstd(zstd::Encoder::new(file, 3).map_err(|e| Failure::io_at(path, "cannot start zstd", &e))?),
        };
        Ok(DocWriter { sink, path: path.to_path_buf(), text_key: text_key.to_string(), line: Vec::new() })
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        let result = match &mut self.sink {
            Sink::Plain(w) => w.write_all(bytes),
            Sink::Gzip(w) => w.write_all(bytes),
            Sink::Zstd(w) => w.write_all(bytes),
        };
        result.map_err(|e| Failure::io_at(&self.path, "cannot write", &e))
    }

    /// Write one kept record: its own line for JSON lines, else `{"<text key>": text}`.
    pub fn write(&mut self, record: &Record, text: &str) -> Result<(), Failure> {
        self.line.clear();
        match &record.payload {
            Payload::JsonLine(raw) => self.line.extend_from_slice(raw),
            _ => {
                let mut object = serde_json::Map::new();
                object.insert(self.text_key.clone(), serde_json::Value::String(text.to_string()));
                serde_json::to_writer(&mut self.line, &object).map_err(|e| Failure::software(format!("cannot encode a record: {e}")))?;
            }
        }
        self.line.push(b'\n');
        let line = std::mem::take(&mut self.line);
        let result = self.write_all(&line);
        self.line = line;
        result
    }

    /// Write a record with its text replaced and fields added (`extra`), its other fields kept.
    pub fn write_edited(&mut self, record: &Record, text: &str, extra: &[(String, serde_json::Value)]) -> Result<(), Failure> {
        self.line.clear();
        let mut object = match &record.payload {
            Payload::JsonLine(raw) => match serde_json::from_slice::<serde_json::Value>(raw) {
                Ok(serde_json::Value::Object(map)) => map,
                _ => serde_json::Map::new(),
            },
            _ => serde_json::Map::new(),
        };
        object.insert(self.text_key.clone(), serde_json::Value::String(text.to_string()));
        for (key, value) in extra {
            object.insert(key.clone(), value.clone());
        }
        serde_json::to_writer(&mut self.line, &object).map_err(|e| Failure::software(format!("cannot encode a record: {e}")))?;
        self.line.push(b'\n');
        let line = std::mem::take(&mut self.line);
        let result = self.write_all(&line);
        self.line = line;
        result
    }

    pub fn finish(self) -> Result<(), Failure> {
        let path = self.path;
        let result = match self.sink {
            Sink::Plain(mut w) => w.flush(),
            Sink::Gzip(w) => w.finish().and_then(|mut w| w.flush()),
            Sink::Zstd(w) => w.finish().and_then(|mut w| w.flush()),
        };
        result.map_err(|e| Failure::io_at(&path, "cannot write", &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn input(name: &str) -> Input {
        let (layout, compression) = openseek_corpus::inputs::classify(Path::new(name)).unwrap();
        Input { path: PathBuf::from(name), layout, compression, bytes: 0 }
    }

    #[test]
    fn output_names_keep_json_lines_and_compression() {
        assert_eq!(output_name(&input("a/b.jsonl.zst")), "b.jsonl.zst");
        assert_eq!(output_name(&input("b.jsonl")), "b.jsonl");
        assert_eq!(output_name(&input("c.json.gz")), "c.jsonl.gz");
        assert_eq!(output_name(&input("d.parquet")), "d.jsonl");
        assert_eq!(output_name(&input("e.txt.zstd")), "e.jsonl.zst");
    }
}
