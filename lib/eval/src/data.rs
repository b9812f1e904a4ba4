//! Reading benchmark rows as users have them: JSON lines, Hugging Face parquet (one file or
//! `split-00000-of-0000N.parquet` shards), Hugging Face Arrow (`datasets.save_to_disk`: a split
//! folder of `data-0000N-of-0000M.arrow` IPC streams), and the original CMMLU / C-Eval CSVs
//! (RFC 4180 quoting). Every row becomes a JSON object; accessors name the file, row and column on error.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use openseek_common::Failure;
use serde_json::{Map, Value};

/// One benchmark row: column name → value.
pub type Row = Map<String, Value>;

/// Rows read from one split, remembering where they came from for error messages.
#[derive(Debug, Clone)]
pub struct Rows {
    pub source: String,
    pub rows: Vec<Row>,
}

impl Rows {
    pub fn len(&self) -> usize {
        self.rows.len()
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
    pub fn get<'a>(&'a self, index: usize) -> RowRef<'a> {
        RowRef { source: &self.source, index, row: &self.rows[index] }
    }
}

/// A row with its location, for accessors whose errors say where the problem is.
#[derive(Clone, Copy)]
pub struct RowRef<'a> {
    pub source: &'a str,
    pub index: usize,
    pub row: &'a Row,
}

impl<'a> RowRef<'a> {
    fn missing(&self, key: &str) -> Failure {
        let cols: Vec<&str> = self.row.keys().map(|k| k.as_str()).collect();
        Failure::data(format!(
            "{}: row {}: no column {key:?} (columns: {}); the file does not have the schema this task reads",
            self.source,
            self.index,
            cols.join(", ")
        ))
    }

    fn wrong(&self, key: &str, want: &str) -> Failure {
        Failure::data(format!(
            "{}: row {}: column {key:?} should be {want}, found {}",
            self.source,
            self.index,
            self.row.get(key).map(|v| v.to_string()).unwrap_or_default()
        ))
    }

    pub fn value(&self, key: &str) -> Result<&'a Value, Failure> {
        self.row.get(key).ok_or_else(|| self.missing(key))
    }

    pub fn has(&self, key: &str) -> bool {
        self.row.get(key).is_some_and(|v| !v.is_null())
    }

    pub fn str(&self, key: &str) -> Result<&'a str, Failure> {
        self.value(key)?.as_str().ok_or_else(|| self.wrong(key, "a string"))
    }

    /// A string column that may also hold an integer or a boolean (labels are stored both ways).
    pub fn label(&self, key: &str) -> Result<String, Failure> {
        match self.value(key)? {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => Err(self.wrong(key, "a string or an integer")),
        }
    }

    pub fn int(&self, key: &str) -> Result<i64, Failure> {
        match self.value(key)? {
            Value::Number(n) => n.as_i64().ok_or_else(|| self.wrong(key, "an integer")),
            Value::String(s) => s.trim().parse().map_err(|_| self.wrong(key, "an integer")),
            _ => Err(self.wrong(key, "an integer")),
        }
    }

    pub fn bool(&self, key: &str) -> Result<bool, Failure> {
        match self.value(key)? {
            Value::Bool(b) => Ok(*b),
            Value::Number(n) if n.as_i64() == Some(0) || n.as_i64() == Some(1) => Ok(n.as_i64() == Some(1)),
            Value::String(s) if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") => {
                Ok(s.eq_ignore_ascii_case("true"))
            }
            _ => Err(self.wrong(key, "a boolean")),
        }
    }

    pub fn str_list(&self, key: &str) -> Result<Vec<String>, Failure> {
        let v = self.value(key)?;
        let arr = v.as_array().ok_or_else(|| self.wrong(key, "a list of strings"))?;
        arr.iter().map(|x| x.as_str().map(str::to_string).ok_or_else(|| self.wrong(key, "a list of strings"))).collect()
    }

    /// A nested struct column (`choices`, `answer` ...) as a row of its own.
    pub fn object(&self, key: &str) -> Result<RowRef<'a>, Failure> {
        let obj = self.value(key)?.as_object().ok_or_else(|| self.wrong(key, "a struct"))?;
        Ok(RowRef { source: self.source, index: self.index, row: obj })
    }
}

/// The files holding split `stem` in `dir`: `{stem}.jsonl`, `{stem}.parquet`, the shards
/// `{stem}-*.parquet` (sorted), `{stem}.arrow`, or a `datasets.save_to_disk` folder
/// `{stem}/data-*.arrow`. A missing split is an error listing what the folder holds.
pub fn find_split(dir: &Path, stems: &[&str]) -> Result<Vec<PathBuf>, Failure> {
    let sorted_matching = |d: &Path, prefix: &str, suffix: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix)))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    for stem in stems {
        for ext in ["jsonl", "parquet", "arrow"] {
            let p = dir.join(format!("{stem}.{ext}"));
            if p.is_file() {
                return Ok(vec![p]);
            }
        }
        let shards = sorted_matching(dir, &format!("{stem}-"), ".parquet");
        if !shards.is_empty() {
            return Ok(shards);
        }
        let saved = sorted_matching(&dir.join(stem), "data-", ".arrow");
        if !saved.is_empty() {
            return Ok(saved);
        }
    }
    Err(missing_split(dir, stems, &["jsonl", "parquet", "arrow"]))
}

/// The error for a split that is not there: what was looked for, and what the folder holds.
pub fn missing_split(dir: &Path, stems: &[&str], exts: &[&str]) -> Failure {
    let tried: Vec<String> = stems
        .iter()
        .flat_map(|s| exts.iter().map(move |e| format!("{s}.{e}")))
        .collect();
    let holds = match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut names: Vec<String> = entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            if names.is_empty() {
                "it is empty".to_string()
            } else {
                format!("it holds: {}", names.join(", "))
            }
        }
        Err(_) => "the folder does not exist".to_string(),
    };
    Failure::no_input(format!(
        "{}: split not found: looked for {} (or parquet shards `<split>-*.parquet`, or a datasets.save_to_disk folder `<split>/data-*.arrow`); {holds}. See the data layout in openseek_eval's docs (README: os-eval)",
        dir.display(),
        tried.join(", ")
    ))
}

/// Read all rows of the given files (JSON lines or parquet, by extension), in order.
pub fn read_rows(files: &[PathBuf]) -> Result<Rows, Failure> {
    let mut rows = Vec::new();
    for f in files {
        let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
        match ext {
            "parquet" => rows.extend(read_parquet(f)?),
            "arrow" => rows.extend(read_arrow(f)?),
            "jsonl" | "json" | "ndjson" => rows.extend(read_jsonl(f)?),
            "csv" => {
                let (header, records) = read_csv(f)?;
                rows.extend(csv_rows(&header, records));
            }
            _ => return Err(Failure::data(format!("{}: unknown format (expected .jsonl, .parquet, .arrow or .csv)", f.display()))),
        }
    }
    let source = files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" + ");
    Ok(Rows { source, rows })
}

/// JSON lines: one object per non-blank line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Row>, Failure> {
    let file = File::open(path).map_err(|e| Failure::io_at(path, "cannot open", &e))?;
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Failure::io_at(path, "cannot read", &e))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| Failure::data(format!("{}: line {}: not JSON: {e}", path.display(), i + 1)))?;
        match v {
            Value::Object(m) => rows.push(m),
            _ => return Err(Failure::data(format!("{}: line {}: expected a JSON object", path.display(), i + 1))),
        }
    }
    Ok(rows)
}

/// A CSV file (RFC 4180, read with the `csv` crate: quoted fields may hold commas, newlines and
/// doubled quotes; a UTF-8 BOM is skipped; CRLF or LF). Returns the header and the records, each
/// with as many fields as the header.
pub fn read_csv(path: &Path) -> Result<(Vec<String>, Vec<Vec<String>>), Failure> {
    let bytes = std::fs::read(path).map_err(|e| Failure::io_at(path, "cannot read", &e))?;
    parse_csv(&bytes).map_err(|e| Failure::data(format!("{}: {e}", path.display())))
}

fn csv_rows(header: &[String], records: Vec<Vec<String>>) -> Vec<Row> {
    records
        .into_iter()
        .map(|r| header.iter().cloned().zip(r.into_iter().map(Value::String)).collect())
        .collect()
}

/// Parse CSV bytes into the header and the records.
pub fn parse_csv(bytes: &[u8]) -> Result<(Vec<String>, Vec<Vec<String>>), String> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(bytes);
    let header: Vec<String> = reader.headers().map_err(|e| e.to_string())?.iter().map(String::from).collect();
    if header.is_empty() {
        return Err("empty CSV (no header)".into());
    }
    let records = reader.records().map(|r| r.map(|r| r.iter().map(String::from).collect()).map_err(|e| e.to_string())).collect::<Result<Vec<Vec<String>>, String>>()?;
    Ok((header, records))
}

/// A parquet file's rows as JSON objects (nested structs and lists kept).
pub fn read_parquet(path: &Path) -> Result<Vec<Row>, Failure> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = File::open(path).map_err(|e| Failure::io_at(path, "cannot open", &e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| Failure::data(format!("{}: not a readable Parquet file: {e}", path.display())))?;
    let iter = reader
        .get_row_iter(None)
        .map_err(|e| Failure::data(format!("{}: cannot read rows: {e}", path.display())))?;
    let mut rows = Vec::new();
    for (i, row) in iter.enumerate() {
        let row = row.map_err(|e| Failure::data(format!("{}: row {i}: {e}", path.display())))?;
        rows.push(parquet_row(&row));
    }
    Ok(rows)
}

fn parquet_row(row: &parquet::record::Row) -> Row {
    row.get_column_iter().map(|(k, f)| (k.clone(), parquet_field(f))).collect()
}

fn parquet_field(f: &parquet::record::Field) -> Value {
    use parquet::record::Field as F;
    match f {
        F::Null => Value::Null,
        F::Bool(b) => Value::Bool(*b),
        F::Byte(x) => Value::from(*x),
        F::Short(x) => Value::from(*x),
        F::Int(x) => Value::from(*x),
        F::Long(x) => Value::from(*x),
        F::UByte(x) => Value::from(*x),
        F::UShort(x) => Value::from(*x),
        F::UInt(x) => Value::from(*x),
        F::ULong(x) => Value::from(*x),
        F::Float(x) => Value::from(*x as f64),
        F::Double(x) => Value::from(*x),
        F::Str(s) => Value::String(s.clone()),
        F::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => Value::String(format!("{b:?}")),
        },
        F::Group(r) => Value::Object(parquet_row(r)),
        F::ListInternal(l) => Value::Array(l.elements().iter().map(parquet_field).collect()),
        F::MapInternal(m) => Value::Array(
            m.entries()
                .iter()
                .map(|(k, v)| Value::Array(vec![parquet_field(k), parquet_field(v)]))
                .collect(),
        ),
        other => Value::String(other.to_string()),
    }
}


/// An Arrow IPC file (`datasets` writes the stream format; the file format is read too) as
/// JSON objects.
pub fn read_arrow(path: &Path) -> Result<Vec<Row>, Failure> {
    use arrow_array::RecordBatch;
    let bytes = std::fs::read(path).map_err(|e| Failure::io_at(path, "cannot read", &e))?;
    let bad = |e: arrow_schema::ArrowError| Failure::data(format!("{}: not a readable Arrow IPC file: {e}", path.display()));
    let batches: Vec<RecordBatch> = if bytes.starts_with(b"ARROW1") {
        arrow_ipc::reader::FileReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(bad)?
            .collect::<Result<_, _>>()
            .map_err(bad)?
    } else {
        arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(bad)?
            .collect::<Result<_, _>>()
            .map_err(bad)?
    };
    let mut rows = Vec::new();
    for batch in &batches {
        let schema = batch.schema();
        for r in 0..batch.num_rows() {
            let mut row = Row::new();
            for (field, col) in schema.fields().iter().zip(batch.columns()) {
                let v = arrow_value(col.as_ref(), r).map_err(|e| Failure::data(format!("{}: column {:?}: {e}", path.display(), field.name())))?;
                row.insert(field.name().clone(), v);
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

fn arrow_value(col: &dyn arrow_array::Array, i: usize) -> Result<Value, String> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    use arrow_schema::DataType as D;
    if col.is_null(i) {
        return Ok(Value::Null);
    }
    Ok(match col.data_type() {
        D::Null => Value::Null,
        D::Boolean => Value::Bool(col.as_boolean().value(i)),
        D::Int8 => Value::from(col.as_primitive::<Int8Type>().value(i)),
        D::Int16 => Value::from(col.as_primitive::<Int16Type>().value(i)),
        D::Int32 => Value::from(col.as_primitive::<Int32Type>().value(i)),
        D::Int64 => Value::from(col.as_primitive::<Int64Type>().value(i)),
        D::UInt8 => Value::from(col.as_primitive::<UInt8Type>().value(i)),
        D::UInt16 => Value::from(col.as_primitive::<UInt16Type>().value(i)),
        D::UInt32 => Value::from(col.as_primitive::<UInt32Type>().value(i)),
        D::UInt64 => Value::from(col.as_primitive::<UInt64Type>().value(i)),
        D::Float32 => Value::from(col.as_primitive::<Float32Type>().value(i) as f64),
        D::Float64 => Value::from(col.as_primitive::<Float64Type>().value(i)),
        D::Utf8 => Value::String(col.as_string::<i32>().value(i).to_string()),
        D::LargeUtf8 => Value::String(col.as_string::<i64>().value(i).to_string()),
        D::Utf8View => Value::String(col.as_string_view().value(i).to_string()),
        D::List(_) => list_value(col.as_list::<i32>().value(i).as_ref())?,
        D::LargeList(_) => list_value(col.as_list::<i64>().value(i).as_ref())?,
        D::FixedSizeList(_, _) => list_value(col.as_fixed_size_list().value(i).as_ref())?,
        D::Struct(fields) => {
            let s = col.as_struct();
            let mut m = Row::new();
            for (f, c) in fields.iter().zip(s.columns()) {
                m.insert(f.name().clone(), arrow_value(c.as_ref(), i)?);
            }
            Value::Object(m)
        }
        other => return Err(format!("unsupported Arrow type {other}")),
    })
}

fn list_value(values: &dyn arrow_array::Array) -> Result<Value, String> {
    (0..values.len()).map(|j| arrow_value(values, j)).collect::<Result<Vec<_>, _>>().map(Value::Array)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_commas_newlines() {
        let (header, r) = parse_csv(b"\xef\xbb\xbfa,b,c\r\n1,\"x, y\",\"say \"\"hi\"\"\nnext\"\n2,,\n").unwrap();
        assert_eq!(header, vec!["a", "b", "c"]);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], vec!["1", "x, y", "say \"hi\"\nnext"]);
        assert_eq!(r[1], vec!["2", "", ""]);
        // A record with another number of fields than the header, an empty file.
        assert!(parse_csv(b"a,b,c\n1,2\n").unwrap_err().contains("2 fields"));
        assert!(parse_csv(b"").is_err());
        // no trailing newline
        assert_eq!(parse_csv(b"a,b\n1,2").unwrap().1[0], vec!["1", "2"]);
    }

    #[test]
    fn missing_split_names_what_is_there() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("train.jsonl"), "{}\n").unwrap();
        let e = find_split(d.path(), &["validation"]).unwrap_err();
        assert_eq!(e.code, openseek_common::ExitCode::NoInput);
        assert!(e.message.contains("validation.jsonl") && e.message.contains("it holds: train.jsonl"), "{}", e.message);
    }

    #[test]
    fn missing_column_names_columns() {
        let rows = Rows { source: "x.jsonl".into(), rows: vec![serde_json::from_str(r#"{"a": 1}"#).unwrap()] };
        let e = rows.get(0).str("question").unwrap_err();
        assert!(e.message.contains("no column \"question\"") && e.message.contains("columns: a"), "{}", e.message);
        assert!(rows.get(0).str("a").unwrap_err().message.contains("should be a string"));
    }
}
