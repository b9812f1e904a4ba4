//! Sharded safetensors output: tensors are assigned to shards of at most `max_shard_bytes`
//! (HF's `model-00001-of-0000N.safetensors` names) before any data is computed, so each shard's
//! header is written first and its tensors are streamed after it one at a time; every file goes
//! through `AtomicOutputs`, and `model.safetensors.index.json` (written last) maps tensors to
//! shards. Headers are written here rather than by the `safetensors` crate, whose writer needs
//! every tensor in memory at once: `{"__metadata__": {"format": "pt"}, NAME: {dtype, shape,
//! data_offsets}}` with keys sorted, padded with spaces to 8 bytes, data in the order given.
//! Small files held whole in memory with metadata of their own (the optimizer shards) are laid out
//! by the crate, with the metadata in a fixed order ([`serialize`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use openseek_common::{AtomicOutputs, Failure};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// One output tensor, as planned.
#[derive(Debug, Clone)]
pub struct OutTensor {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub bytes: u64,
}

/// Split tensors (in order) into shards of at most `max` bytes (a bigger tensor gets its own shard).
pub fn plan_shards(tensors: &[OutTensor], max: u64) -> Vec<std::ops::Range<usize>> {
    let mut shards = Vec::new();
    let mut start = 0;
    let mut size = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        if i > start && size + t.bytes > max {
            shards.push(start..i);
            start = i;
            size = 0;
        }
        size += t.bytes;
    }
    if start < tensors.len() || tensors.is_empty() {
        shards.push(start..tensors.len());
    }
    shards
}

/// The safetensors header (length prefix included) for tensors laid out in the given order.
pub fn header(tensors: &[OutTensor]) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    let mut metadata = serde_json::Map::new();
    metadata.insert("format".into(), "pt".into());
    map.insert("__metadata__".into(), serde_json::Value::Object(metadata));
    let mut offset = 0u64;
    for t in tensors {
        map.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.bytes]}),
        );
        offset += t.bytes;
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(map)).expect("JSON of plain values");
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out
}

pub fn shard_name(index: usize, count: usize) -> String {
    format!("model-{:05}-of-{:05}.safetensors", index + 1, count)
}

/// Streams tensors into their planned shards, in plan order.
pub struct ShardWriter<'a> {
    dir: &'a Path,
    tensors: Vec<OutTensor>,
    shards: Vec<std::ops::Range<usize>>,
    next: usize,
    current: Option<(usize, BufWriter<File>)>,
}

impl<'a> ShardWriter<'a> {
    pub fn new(dir: &'a Path, tensors: Vec<OutTensor>, max_shard_bytes: u64) -> Self {
        let shards = plan_shards(&tensors, max_shard_bytes);
        ShardWriter { dir, tensors, shards, next: 0, current: None }
    }

    /// Write the data of the next planned tensor (must be exactly its planned size).
    pub fn write_next(&mut self, outputs: &mut AtomicOutputs, data: &[u8]) -> Result<(), Failure> {
        let i = self.next;
        let t = &self.tensors[i];
        if data.len() as u64 != t.bytes {
            return Err(Failure::software(format!("{}: {} bytes computed, {} planned", t.name, data.len(), t.bytes)));
        }
        let shard = self.shards.iter().position(|r| r.contains(&i)).expect("every tensor is in a shard");
        if self.current.as_ref().map(|(s, _)| *s) != Some(shard) {
            self.finish_current()?;
            let path = self.dir.join(shard_name(shard, self.shards.len()));
            let mut w = BufWriter::with_capacity(8 << 20, outputs.create(&path)?);
            w.write_all(&header(&self.tensors[self.shards[shard].clone()]))
                .map_err(|e| Failure::io_at(&path, "cannot write", &e))?;
            self.current = Some((shard, w));
        }
        let (_, w) = self.current.as_mut().unwrap();
        w.write_all(data).map_err(|e| Failure::io(format!("{}: cannot write shard: {e}", self.dir.display())))?;
        self.next += 1;
        Ok(())
    }

    fn finish_current(&mut self) -> Result<(), Failure> {
        if let Some((_, mut w)) = self.current.take() {
            w.flush().map_err(|e| Failure::io(format!("{}: cannot write shard: {e}", self.dir.display())))?;
        }
        Ok(())
    }

    /// Close the last shard and write `model.safetensors.index.json`.
    pub fn finish(mut self, outputs: &mut AtomicOutputs) -> Result<Vec<String>, Failure> {
        if self.next != self.tensors.len() {
            return Err(Failure::software(format!("{} of {} tensors written", self.next, self.tensors.len())));
        }
        self.finish_current()?;
        let names: Vec<String> = (0..self.shards.len()).map(|s| shard_name(s, self.shards.len())).collect();
        let mut weight_map = BTreeMap::new();
        let mut total = 0u64;
        for (s, range) in self.shards.iter().enumerate() {
            for t in &self.tensors[range.clone()] {
                weight_map.insert(t.name.clone(), names[s].clone());
                total += t.bytes;
            }
        }
        let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        outputs.write_json(&self.dir.join("model.safetensors.index.json"), &index)?;
        Ok(names)
    }
}

/// A whole file in memory, laid out by the `safetensors` crate (tensors by descending dtype
/// alignment, then name), with `metadata` first and its keys sorted, so that identical contents
/// make identical bytes (the crate writes metadata from a `HashMap`, in another order every run).
/// The header is the crate's with the metadata put first (tensor offsets are relative to the
/// data, so they are unchanged), padded with spaces to 8 bytes as the crate pads.
pub fn serialize(tensors: &[(&str, Dtype, &[usize], &[u8])], metadata: &BTreeMap<String, String>) -> Result<Vec<u8>, String> {
    let views = tensors
        .iter()
        .map(|&(name, dtype, shape, data)| Ok((name.to_string(), TensorView::new(dtype, shape.to_vec(), data).map_err(|e| format!("{name}: {e}"))?)))
        .collect::<Result<Vec<_>, String>>()?;
    let plain = safetensors::serialize(views, None).map_err(|e| e.to_string())?;
    let n = u64::from_le_bytes(plain[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&plain[8..8 + n]).map_err(|e| e.to_string())?.trim_end();
    let entries = header.strip_prefix('{').ok_or("the safetensors header is not a JSON object")?;
    let metadata = serde_json::to_string(metadata).map_err(|e| e.to_string())?;
    let separator = if entries == "}" { "" } else { "," };
    let mut header = format!("{{\"__metadata__\":{metadata}{separator}{entries}").into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + header.len() + plain.len() - 8 - n);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&plain[8 + n..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, bytes: u64) -> OutTensor {
        OutTensor { name: name.into(), dtype: "F32", shape: vec![bytes as usize / 4], bytes }
    }

    #[test]
    fn shards_respect_the_limit_and_headers_are_aligned() {
        let ts = vec![t("a", 40), t("b", 40), t("c", 100), t("d", 8)];
        assert_eq!(plan_shards(&ts, 80), vec![0..2, 2..3, 3..4]);
        assert_eq!(plan_shards(&ts, 1000), vec![0..4]);
        let h = header(&ts);
        assert_eq!((h.len() - 8) % 8, 0);
        let n = u64::from_le_bytes(h[..8].try_into().unwrap()) as usize;
        assert_eq!(n, h.len() - 8);
        let mut bytes = h.clone();
        bytes.extend(std::iter::repeat_n(0u8, 188));
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("c").unwrap().data().len(), 100);
    }

    #[test]
    fn serialized_metadata_comes_first_sorted_and_reads_back() {
        let meta: BTreeMap<String, String> = [("z", "1"), ("a", "2")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let (x, y) = ([1u8; 8], [2u8; 4]);
        let bytes = serialize(&[("x", Dtype::F32, &[2], &x), ("w", Dtype::BF16, &[2], &y)], &meta).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
        assert!(header.starts_with(r#"{"__metadata__":{"a":"2","z":"1"},"x":{"dtype":"F32","#), "{header}");
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!((st.tensor("x").unwrap().data(), st.tensor("w").unwrap().data()), (&x[..], &y[..]));
        assert_eq!(safetensors::SafeTensors::read_metadata(&bytes).unwrap().1.metadata().as_ref().unwrap()["z"], "1");
        let empty = serialize(&[], &meta).unwrap();
        assert!(std::str::from_utf8(&empty[8..]).unwrap().starts_with(r#"{"__metadata__":{"a":"2","z":"1"}}"#));
        assert!(serialize(&[("x", Dtype::F32, &[3], &x)], &meta).is_err());
    }
}
