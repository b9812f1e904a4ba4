//! `torch.save` archives: a zip (entries stored, not compressed) holding `<stem>/data.pkl` and one
//! raw little-endian storage per `<stem>/data/<key>`. The pickle is read at once (it is small);
//! a tensor's bytes are read (positioned reads, no memory map, so nothing but the tensor asked for
//! stays resident) only when it is asked for. The same reader serves whole `.pt` files and the
//! in-memory byte range of a `.distcp` file that holds one chunk's archive.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::os::unix::fs::FileExt;

use openseek_common::Failure;

use crate::pickle::{self, TensorRef, Value};

/// Bytes that can be read at an offset: a file, or a buffer.
pub trait ReadAt {
    fn read_at_exact(&self, offset: usize, len: usize) -> std::io::Result<Vec<u8>>;
}

impl ReadAt for [u8] {
    fn read_at_exact(&self, offset: usize, len: usize) -> std::io::Result<Vec<u8>> {
        self.get(offset..offset + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "range past the end"))
    }
}

impl ReadAt for std::fs::File {
    fn read_at_exact(&self, offset: usize, len: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read_exact_at(&mut buf, offset as u64)?;
        Ok(buf)
    }
}

/// One parsed archive: its pickle and where its storages lie in the bytes it was parsed from.
pub struct Archive {
    /// Storage key -> byte range in the archive's bytes.
    storages: HashMap<String, std::ops::Range<usize>>,
    pub root: Value,
}

impl Archive {
    /// Parse the archive `reader` holds (a `&File`, or a `Cursor` over bytes); `what` names it in
    /// errors (a path, or a path and byte range).
    pub fn parse<R: Read + Seek>(reader: R, what: &str) -> Result<Archive, Failure> {
        let bad = |m: String| Failure::data(format!("{what}: not a torch.save archive: {m}"));
        let mut zip = zip::ZipArchive::new(reader).map_err(|e| bad(e.to_string()))?;
        let mut pickle = None;
        let mut storages = HashMap::new();
                for i in 0..zip.len() {
            let mut f = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
            if f.compression() != zip::CompressionMethod::Stored {
                return Err(bad(format!("entry {} is compressed", f.name())));
            }
            let start = f.data_start() as usize;
            let range = start..start + f.size() as usize;
            let name = f.name().to_string();
            let small = |f: &mut zip::read::ZipFile| -> Result<Vec<u8>, Failure> {
                let mut v = Vec::new();
                f.read_to_end(&mut v).map_err(|e| bad(format!("{name}: {e}")))?;
                Ok(v)
            };
            if name.ends_with("/data.pkl") && name.matches('/').count() == 1 {
                pickle = Some(small(&mut f)?);
            } else if let Some((_, key)) = name.split_once("/data/") {
                storages.insert(key.to_string(), range);
            } else if name.ends_with("/byteorder") && small(&mut f)? != b"little" {
                return Err(bad("big-endian storages are not supported".into()));
            }
        }
        let pickle = pickle.ok_or_else(|| bad("no <stem>/data.pkl entry".into()))?;
        let root = pickle::loads(&pickle).map_err(|e| Failure::data(format!("{what}: data.pkl: {e}")))?;
        Ok(Archive { storages, root })
    }

    /// The tensor's elements, contiguous (row-major), as raw little-endian bytes, read from `src`
    /// (what the archive was parsed from): only the span of the storage the view covers is read.
    pub fn tensor_bytes<S: ReadAt + ?Sized>(&self, src: &S, t: &TensorRef, what: &str) -> Result<Vec<u8>, Failure> {
        let range = self
            .storages
            .get(&t.key)
            .ok_or_else(|| Failure::data(format!("{what}: storage {} is missing from the archive", t.key)))?;
        let es = t.dtype.size();
        if range.len() < t.numel * es {
            return Err(Failure::data(format!("{what}: storage {} holds {} bytes, {} expected", t.key, range.len(), t.numel * es)));
        }
        let numel: usize = t.shape.iter().product();
        if numel == 0 {
            return Ok(Vec::new());
        }
        let last = (0..t.shape.len()).map(|d| (t.shape[d] - 1) * t.stride[d]).sum::<usize>() + t.offset;
        if last >= t.numel {
            return Err(Failure::data(format!("{what}: tensor view runs past its storage {}", t.key)));
        }
        let span = src
            .read_at_exact(range.start + t.offset * es, (last + 1 - t.offset) * es)
            .map_err(|e| Failure::io(format!("{what}: cannot read storage {}: {e}", t.key)))?;
        if is_contiguous(&t.shape, &t.stride) {
            return Ok(span);
        }
        let mut out = Vec::with_capacity(numel * es);
        if let ([rows, cols], [rs, cs]) = (&t.shape[..], &t.stride[..]) {
            // Matrices (transposed views of grouped-GEMM weights): no per-element index arithmetic.
            for i in 0..*rows {
                for j in 0..*cols {
                    let e = (i * rs + j * cs) * es;
                    out.extend_from_slice(&span[e..e + es]);
                }
            }
            return Ok(out);
        }
        let mut idx = vec![0usize; t.shape.len()];
        for _ in 0..numel {
            let e = idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
            out.extend_from_slice(&span[e * es..(e + 1) * es]);
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < t.shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Ok(out)
    }
}

fn is_contiguous(shape: &[usize], stride: &[usize]) -> bool {
    let mut expect = 1;
    for (n, s) in shape.iter().zip(stride).rev() {
        if *n != 1 && *s != expect {
            return false;
        }
        expect *= n;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pickle::Dtype;
    use std::io::{Cursor, Write};

    /// A stored zip in torch.save's layout, written with the zip crate.
    pub(crate) fn archive(pkl: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opt = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
        w.start_file("archive/data.pkl", opt).unwrap();
        w.write_all(pkl).unwrap();
        w.start_file("archive/byteorder", opt).unwrap();
        w.write_all(b"little").unwrap();
        for (k, b) in storages {
            w.start_file(format!("archive/data/{k}"), opt).unwrap();
            w.write_all(b).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn reads_contiguous_and_strided_views() {
        let pkl = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00wq\x02ctorch._utils\n_rebuild_tensor_v2\nq\x03((X\x07\x00\x00\x00storageq\x04ctorch\nFloatStorage\nq\x05X\x01\x00\x00\x000q\x06X\x03\x00\x00\x00cpuq\x07K\x06tq\x08QK\x00K\x02K\x03\x86q\tK\x03K\x01\x86q\n\x89h\x00)Rq\x0btq\x0cRq\rs.";
        let bytes = archive(pkl, &[("0", f32s(&[0., 1., 2., 3., 4., 5.]))]);
        let a = Archive::parse(Cursor::new(&bytes), "t.pt").unwrap();
        // The same through a file.
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), &bytes).unwrap();
        let file = std::fs::File::open(tmp.path()).unwrap();
        let af = Archive::parse(&file, "t.pt").unwrap();
        let Value::Tensor(tf) = af.root.get("w").unwrap() else { panic!() };
        assert_eq!(af.tensor_bytes(&file, &tf, "w").unwrap(), f32s(&[0., 1., 2., 3., 4., 5.]));
        let Value::Tensor(t) = a.root.get("w").unwrap() else { panic!() };
        assert_eq!(a.tensor_bytes(&bytes[..], &t, "w").unwrap(), f32s(&[0., 1., 2., 3., 4., 5.]));
        // The transpose (3, 2) with strides (1, 3), and a view at offset 1.
        let tt = TensorRef { shape: vec![3, 2], stride: vec![1, 3], ..t.clone() };
        assert_eq!(a.tensor_bytes(&bytes[..], &tt, "w").unwrap(), f32s(&[0., 3., 1., 4., 2., 5.]));
        let v = TensorRef { offset: 1, shape: vec![2], stride: vec![2], ..t.clone() };
        assert_eq!(a.tensor_bytes(&bytes[..], &v, "w").unwrap(), f32s(&[1., 3.]));
        let past = TensorRef { offset: 4, shape: vec![3], stride: vec![1], ..t };
        assert!(a.tensor_bytes(&bytes[..], &past, "w").unwrap_err().message.contains("past its storage"));
        assert_eq!(t_dtype(&a), Dtype::F32);
    }

    fn t_dtype(a: &Archive) -> Dtype {
        match a.root.get("w").unwrap() {
            Value::Tensor(t) => t.dtype,
            _ => unreachable!(),
        }
    }

    #[test]
    fn rejects_what_is_not_an_archive() {
        let e = Archive::parse(Cursor::new(b"not a zip"), "x.pt").err().unwrap();
        assert!(e.message.starts_with("x.pt: not a torch.save archive"), "{}", e.message);
        let no_pickle = {
            let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
            w.start_file("archive/version", zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored)).unwrap();
            w.write_all(b"3").unwrap();
            w.finish().unwrap().into_inner()
        };
        let e = Archive::parse(Cursor::new(&no_pickle), "y.pt").err().unwrap();
        assert!(e.message.contains("data.pkl"), "{}", e.message);
    }
}
