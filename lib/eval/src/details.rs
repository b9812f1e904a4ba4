//! Per-item details in HDF5 (`details.h5`), one group per task, readable with h5py or any
//! HDF5 tool. Root attributes: `model_path`, `model_sha256`, `tool`, `tool_version`, `harness`.
//! Each task group has attributes `metric`, `value`, `stderr`, `n` and datasets (n items, m
//! choices in all, zlib-compressed):
//!
//! | dataset | shape | meaning |
//! | --- | --- | --- |
//! | `doc_index` | n | the document's row in its split |
//! | `query` | n | the prompt (generative: the whole few-shot context) |
//! | multiple choice: `gold`, `prediction`, `prediction_norm` | n | gold index; argmax of raw / normalised log-probs |
//! | multiple choice: `acc`, `acc_norm` | n | per-item metrics |
//! | multiple choice: `choice_offsets` | n + 1 | item i's choices are `choices[offsets[i]..offsets[i+1]]` |
//! | multiple choice: `choices`, `logprobs`, `norm_chars` | m | choice text, summed log-prob, acc_norm length |
//! | generative: `generated`, `quasi_exact_match` | n | the prediction (cut at stop strings), its score |
//! | generative: `gold_offsets` (n + 1), `golds` | | the gold answers, as for choices |
//!
//! The file is written beside its final name and renamed into place.

use std::path::Path;

use hdf5_metno as hdf5;
use hdf5::types::VarLenUnicode;
use openseek_common::{AtomicOutputs, Failure};

use crate::record::{ItemRecord, TaskRecord};

fn h5err(path: &Path, e: hdf5::Error) -> Failure {
    Failure::io(format!("{}: cannot write HDF5: {e}", path.display()))
}

fn vstr(s: &str) -> VarLenUnicode {
    // VarLenUnicode cannot hold NUL; benchmark text has none, but never fail on it.
    s.replace('\0', "\u{FFFD}").parse().expect("a string without NUL parses")
}

fn dataset<T: hdf5::H5Type>(g: &hdf5::Group, name: &str, data: &[T]) -> hdf5::Result<()> {
    let b = g.new_dataset_builder();
    if data.is_empty() {
        b.empty::<T>().shape(0).create(name)?;
    } else {
        b.with_data(data).chunk(data.len().min(1 << 16)).deflate(4).create(name)?;
    }
    Ok(())
}

fn strings<'a>(g: &hdf5::Group, name: &str, data: impl Iterator<Item = &'a str>) -> hdf5::Result<()> {
    let v: Vec<VarLenUnicode> = data.map(vstr).collect();
    dataset(g, name, &v)
}

fn attr_str(loc: &hdf5::Location, name: &str, value: &str) -> hdf5::Result<()> {
    loc.new_attr::<VarLenUnicode>().create(name)?.write_scalar(&vstr(value))
}

fn attr_f64(loc: &hdf5::Location, name: &str, value: f64) -> hdf5::Result<()> {
    loc.new_attr::<f64>().create(name)?.write_scalar(&value)
}

fn offsets(lens: impl Iterator<Item = usize>) -> Vec<i64> {
    let mut v = vec![0i64];
    for l in lens {
        v.push(v.last().unwrap() + l as i64);
    }
    v
}

fn write_task(file: &hdf5::File, r: &TaskRecord) -> hdf5::Result<()> {
    let g = file.create_group(&r.task)?;
    attr_str(&g, "metric", &r.metric)?;
    attr_f64(&g, "value", r.value)?;
    attr_f64(&g, "stderr", r.stderr)?;
    g.new_attr::<u64>().create("n")?.write_scalar(&(r.n as u64))?;
    let items = &r.items;
    dataset(&g, "doc_index", &items.iter().map(|i| i.doc_index as i64).collect::<Vec<_>>())?;
    strings(&g, "query", items.iter().map(|i| i.query.as_str()))?;
    let metric = |name: &str| -> Vec<f64> { items.iter().map(|i| i.metrics.get(name).copied().unwrap_or(f64::NAN)).collect() };
    let generative = items.iter().any(|i| i.generated.is_some());
    if generative {
        strings(&g, "generated", items.iter().map(|i| i.generated.as_deref().unwrap_or("")))?;
        dataset(&g, "quasi_exact_match", &metric("quasi_exact_match"))?;
        dataset(&g, "gold_offsets", &offsets(items.iter().map(|i| i.golds.len())))?;
        strings(&g, "golds", items.iter().flat_map(|i| i.golds.iter().map(String::as_str)))?;
    } else {
        let idx = |f: &dyn Fn(&ItemRecord) -> Option<usize>| -> Vec<i64> { items.iter().map(|i| f(i).map_or(-1, |x| x as i64)).collect() };
        dataset(&g, "gold", &idx(&|i| i.gold.first().copied()))?;
        dataset(&g, "prediction", &idx(&|i| i.prediction))?;
        dataset(&g, "prediction_norm", &idx(&|i| i.prediction_norm))?;
        dataset(&g, "acc", &metric("acc"))?;
        dataset(&g, "acc_norm", &metric("acc_norm"))?;
        dataset(&g, "choice_offsets", &offsets(items.iter().map(|i| i.choices.len())))?;
        strings(&g, "choices", items.iter().flat_map(|i| i.choices.iter().map(String::as_str)))?;
        dataset(&g, "logprobs", &items.iter().flat_map(|i| i.logprobs.iter().copied()).collect::<Vec<_>>())?;
        dataset(&g, "norm_chars", &items.iter().flat_map(|i| i.norm_chars.iter().map(|&x| x as i64)).collect::<Vec<_>>())?;
    }
    Ok(())
}

/// Write `details.h5` for the records of a run, with the file attributes `attrs` (model path and
/// hash, tool, version, harness).
pub fn write(path: &Path, attrs: &[(&str, String)], records: &[TaskRecord]) -> Result<(), Failure> {
    let temp = AtomicOutputs::temp_path_for(path);
    let result = (|| -> hdf5::Result<()> {
        let file = hdf5::File::create(&temp)?;
        for (name, value) in attrs {
            attr_str(&file, name, value)?;
        }
        for r in records {
            write_task(&file, r)?;
        }
        file.close()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(h5err(path, e));
    }
    std::fs::rename(&temp, path).map_err(|e| Failure::io_at(path, "cannot rename into place", &e))
}
