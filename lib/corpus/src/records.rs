//! Read inputs as a stream of records (one per document), in batches, with memory bounded by the
//! batch size whatever the file size. JSON lines are passed on raw so workers parse them in
//! parallel; the other layouts are read here. Every input is hashed while it is read.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openseek_common::Failure;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::inputs::{Compression, Input, Layout};
use crate::json_text::{Field, TextField};

/// Why a record yields no document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    InvalidJson(String),
    InvalidUtf8 { valid_up_to: usize },
    MissingKey(String),
    NotAString { key: String, found: &'static str },
    EmptyDocument,
}

impl Problem {
    /// Short name used to count skipped records in the manifest.
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::InvalidJson(_) => "invalid_json",
            Problem::InvalidUtf8 { .. } => "invalid_utf8",
            Problem::MissingKey(_) => "missing_key",
            Problem::NotAString { .. } => "not_a_string",
            Problem::EmptyDocument => "empty_document",
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::InvalidJson(e) => write!(f, "not valid JSON: {e}"),
            Problem::InvalidUtf8 { valid_up_to } => write!(f, "invalid UTF-8 after byte {valid_up_to} of the record"),
            Problem::MissingKey(k) => write!(f, "no {k:?} field (choose the field with --text-key)"),
            Problem::NotAString { key, found } => write!(f, "the {key:?} field is {found}, not a string"),
            Problem::EmptyDocument => write!(f, "empty document"),
        }
    }
}

#[derive(Debug)]
pub enum Payload {
    /// One raw line of a JSON lines input, without its line terminator.
    JsonLine(Vec<u8>),
    /// Text already extracted.
    Text(String),
    Bad(Problem),
}

#[derive(Debug)]
pub struct Record {
    /// Index of the input in the run's input list.
    pub input: usize,
    /// 1-based line (JSON lines), element (JSON array), row (Parquet); 1 for a text file.
    pub location: u64,
    /// How the input was read (a `.json` file may turn out to be JSON lines): names `location`.
    pub layout: Layout,
    pub payload: Payload,
}

/// The text of a record, or why it has none; `key` names the field of a JSON lines record.
pub fn record_text<'r>(record: &'r Record, key: &str) -> Result<std::borrow::Cow<'r, str>, Problem> {
    match &record.payload {
        Payload::Bad(problem) => Err(problem.clone()),
        Payload::Text(text) => Ok(std::borrow::Cow::Borrowed(text)),
        Payload::JsonLine(bytes) => {
            let line = std::str::from_utf8(bytes).map_err(|e| Problem::InvalidUtf8 { valid_up_to: e.valid_up_to() })?;
            match crate::json_text::extract_from_line(line, key) {
                Ok(crate::json_text::Field::Text(text)) => Ok(std::borrow::Cow::Owned(text)),
                Ok(crate::json_text::Field::Missing) => Err(Problem::MissingKey(key.to_string())),
                Ok(crate::json_text::Field::NotAString(found)) => Err(Problem::NotAString { key: key.to_string(), found }),
                Err(e) => Err(Problem::InvalidJson(crate::json_text::describe_error(Some(line), &e))),
            }
        }
    }
}

/// What was read from one input, for the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct InputStats {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
    pub records: u64,
}

/// How a location is named in messages, per layout.
pub fn location_name(layout: Layout) -> &'static str {
    match layout {
        Layout::JsonLines => "line",
        Layout::JsonArray => "element",
        Layout::Parquet => "row",
        Layout::Text => "document",
    }
}

/// Reads all inputs in order and hands batches of records to `send`; stops early when `send`
/// returns false (the consumer has stopped). `bytes_read` tracks on-disk bytes for progress.
pub struct RecordReader<'a> {
    pub inputs: &'a [Input],
    pub text_key: &'a str,
    /// A batch is sent once its payloads reach this many bytes.
    pub batch_bytes: usize,
    pub bytes_read: Arc<AtomicU64>,
}

struct Batcher<'s> {
    records: Vec<Record>,
    bytes: usize,
    limit: usize,
    send: &'s mut dyn FnMut(Vec<Record>) -> bool,
    stopped: bool,
}

impl Batcher<'_> {
    fn push(&mut self, record: Record, bytes: usize) {
        self.records.push(record);
        self.bytes += bytes + 64;
        if self.bytes >= self.limit {
            self.flush();
        }
    }
    fn flush(&mut self) {
        if !self.records.is_empty() && !self.stopped {
            let batch = std::mem::take(&mut self.records);
            self.stopped = !(self.send)(batch);
        }
        self.records.clear();
        self.bytes = 0;
    }
}

/// A file reader that hashes and counts what passes through it (shared state, so the count and
/// hash can be read after decompressors that own the reader are dropped).
struct Tap<R> {
    inner: R,
    hash: Arc<Mutex<(Sha256, u64)>>,
    progress: Arc<AtomicU64>,
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut state = self.hash.lock().unwrap();
        state.0.update(&buf[..n]);
        state.1 += n as u64;
        self.progress.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl RecordReader<'_> {
    pub fn run(&self, send: &mut dyn FnMut(Vec<Record>) -> bool) -> Result<Vec<InputStats>, Failure> {
        let mut batcher = Batcher { records: Vec::new(), bytes: 0, limit: self.batch_bytes, send, stopped: false };
        let mut stats = Vec::with_capacity(self.inputs.len());
        for (index, input) in self.inputs.iter().enumerate() {
            if batcher.stopped {
                break;
            }
            let hash = Arc::new(Mutex::new((Sha256::new(), 0u64)));
            let records = match input.layout {
                Layout::Parquet => self.read_parquet(index, input, &mut batcher)?,
                _ => {
                    let raw: Box<dyn Read> = if input.is_stdin() {
                        Box::new(io::stdin())
                    } else {
                        Box::new(File::open(&input.path).map_err(|e| Failure::io_at(&input.path, "cannot open input", &e))?)
                    };
                    let tap = Tap { inner: raw, hash: hash.clone(), progress: self.bytes_read.clone() };
                    let reader: Box<dyn Read> = match input.compression {
                        Compression::None => Box::new(tap),
                        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, tap))),
                        Compression::Zstd => Box::new(
                            zstd::Decoder::new(tap).map_err(|e| Failure::io(format!("{}: cannot start zstd decoding: {e}", input.display())))?,
                        ),
                    };
                    let mut reader = BufReader::with_capacity(1 << 20, reader);
                    let layout = if input.layout == Layout::JsonArray { sniff_json(&mut reader, input)? } else { input.layout };
                    match layout {
                        Layout::JsonLines => read_json_lines(index, input, reader, &mut batcher)?,
                        Layout::JsonArray => read_json_array(index, input, reader, self.text_key, &mut batcher)?,
                        Layout::Text => read_text(index, input, reader, &mut batcher)?,
                        Layout::Parquet => unreachable!("parquet is read above"),
                    }
                }
            };
            let (sha256, bytes) = if input.layout == Layout::Parquet {
                let sha = openseek_common::hash::sha256_file(&input.path).map_err(|e| Failure::io_at(&input.path, "cannot hash input", &e))?;
                (sha, input.bytes)
            } else {
                let state = std::mem::replace(&mut *hash.lock().unwrap(), (Sha256::new(), 0));
                (hex_digest(state.0), state.1)
            };
            stats.push(InputStats { path: input.display(), bytes, sha256, records });
        }
        batcher.flush();
        Ok(stats)
    }

    fn read_parquet(&self, index: usize, input: &Input, batcher: &mut Batcher) -> Result<u64, Failure> {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        use parquet::record::RowAccessor;
        use parquet::schema::types::Type;

        let name = input.display();
        let file = File::open(&input.path).map_err(|e| Failure::io_at(&input.path, "cannot open input", &e))?;
        let reader = SerializedFileReader::new(file).map_err(|e| Failure::data(format!("{name}: not a readable Parquet file: {e}")))?;
        let root = reader.metadata().file_metadata().schema();
        let field = root.get_fields().iter().find(|f| f.name() == self.text_key).cloned().ok_or_else(|| {
            let columns: Vec<&str> = root.get_fields().iter().map(|f| f.name()).collect();
            Failure::data(format!("{name}: no column {:?} (columns: {}); choose one with --text-key", self.text_key, columns.join(", ")))
        })?;
        let projection = Type::group_type_builder(root.name())
            .with_fields(vec![field])
            .build()
            .map_err(|e| Failure::software(format!("{name}: cannot project column: {e}")))?;
        let rows = reader.get_row_iter(Some(projection)).map_err(|e| Failure::data(format!("{name}: cannot read rows: {e}")))?;
        let mut count = 0u64;
        let mut last_progress = 0u64;
        for row in rows {
            if batcher.stopped {
                break;
            }
            count += 1;
            let row = row.map_err(|e| Failure::data(format!("{name}: row {count}: {e}")))?;
            let payload = match row.get_string(0) {
                Ok(text) => Payload::Text(text.clone()),
                Err(_) => Payload::Bad(Problem::NotAString { key: self.text_key.to_string(), found: "null or not a string" }),
            };
            let bytes = if let Payload::Text(t) = &payload { t.len() } else { 0 };
            batcher.push(Record { input: index, location: count, layout: Layout::Parquet, payload }, bytes);
            // Parquet is decoded in row groups; credit progress proportionally to rows read.
            let rows_total = reader.metadata().file_metadata().num_rows().max(1) as u64;
            let done = input.bytes * count.min(rows_total) / rows_total;
            self.bytes_read.fetch_add(done - last_progress, Ordering::Relaxed);
            last_progress = done;
        }
        Ok(count)
    }
}

fn hex_digest(hasher: Sha256) -> String {
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A `.json` file holds either one array (`[`) or JSON lines (`{`); look at its first byte.
fn sniff_json(reader: &mut impl BufRead, input: &Input) -> Result<Layout, Failure> {
    loop {
        let buf = reader.fill_buf().map_err(|e| Failure::io(format!("{}: cannot read: {e}", input.display())))?;
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => {
                let first = buf[i];
                reader.consume(i);
                return Ok(if first == b'[' { Layout::JsonArray } else { Layout::JsonLines });
            }
            None if buf.is_empty() => return Ok(Layout::JsonLines),
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}

fn read_error(input: &Input, location: &str, e: io::Error) -> Failure {
    Failure::data(format!("{}: {location}: cannot read (corrupt or truncated compressed file?): {e}", input.display()))
}

fn read_json_lines(index: usize, input: &Input, mut reader: impl BufRead, batcher: &mut Batcher) -> Result<u64, Failure> {
    let mut line_number = 0u64;
    let mut records = 0u64;
    loop {
        if batcher.stopped {
            break;
        }
        let mut line = Vec::new();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| read_error(input, &format!("line {}", line_number + 1), e))?;
        if n == 0 {
            break;
        }
        line_number += 1;
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue; // blank lines carry no record
        }
        records += 1;
        let bytes = line.len();
        batcher.push(Record { input: index, location: line_number, layout: Layout::JsonLines, payload: Payload::JsonLine(line) }, bytes);
    }
    Ok(records)
}

fn read_text(index: usize, input: &Input, mut reader: impl Read, batcher: &mut Batcher) -> Result<u64, Failure> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).map_err(|e| read_error(input, "document 1", e))?;
    let payload = match String::from_utf8(bytes) {
        Ok(text) => Payload::Text(text),
        Err(e) => Payload::Bad(Problem::InvalidUtf8 { valid_up_to: e.utf8_error().valid_up_to() }),
    };
    let n = if let Payload::Text(t) = &payload { t.len() } else { 0 };
    batcher.push(Record { input: index, location: 1, layout: Layout::Text, payload }, n);
    Ok(1)
}

/// Stream the elements of a top-level JSON array, extracting the text field of each.
fn read_json_array(index: usize, input: &Input, reader: impl Read, key: &str, batcher: &mut Batcher) -> Result<u64, Failure> {
    use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};

    struct Elements<'b, 'c> {
        index: usize,
        key: &'b str,
        batcher: &'b mut Batcher<'c>,
        count: u64,
    }
    impl<'de> Visitor<'de> for &mut Elements<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array of objects")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            loop {
                if self.batcher.stopped {
                    return Ok(());
                }
                let location = self.count + 1;
                let payload = match seq.next_element_seed(TextField { key: self.key })? {
                    None => return Ok(()),
                    Some(Field::Text(t)) => Payload::Text(t),
                    Some(Field::Missing) => Payload::Bad(Problem::MissingKey(self.key.to_string())),
                    Some(Field::NotAString(found)) => Payload::Bad(Problem::NotAString { key: self.key.to_string(), found }),
                };
                self.count = location;
                let n = if let Payload::Text(t) = &payload { t.len() } else { 0 };
                self.batcher.push(Record { input: self.index, location, layout: Layout::JsonArray, payload }, n);
            }
        }
    }
    struct Seed<'x, 'b, 'c>(&'x mut Elements<'b, 'c>);
    impl<'de> DeserializeSeed<'de> for Seed<'_, '_, '_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self.0)
        }
    }

    let mut elements = Elements { index, key, batcher, count: 0 };
    let mut de = serde_json::Deserializer::from_reader(reader);
    let result = Seed(&mut elements).deserialize(&mut de).and_then(|_| if elements.batcher.stopped { Ok(()) } else { de.end() });
    let count = elements.count;
    result.map_err(|e| {
        Failure::data(format!("{}: element {}: the JSON array is malformed ({}); the file cannot be read past this point", input.display(), count + 1, crate::json_text::describe_error(None, &e)))
    })?;
    Ok(count)
}
