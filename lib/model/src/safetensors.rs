//! Safetensors files as libtorch tensors: the format itself (reading, sharded writing) is
//! `openseek_safetensors`; this module turns its byte slices into tensors of a float kind and
//! tensors back into the bytes and dtype names it writes.

use openseek_common::Failure;
pub use openseek_safetensors::SafetensorsFile;
use openseek_safetensors::{Dtype, OutTensor};
use tch::{Device, Kind, Tensor};

/// The tch kind of a safetensors dtype, for the float types a checkpoint holds.
pub fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
        Dtype::F64 => Kind::Double,
        _ => return None,
    })
}

fn dtype_name(kind: Kind) -> Result<&'static str, Failure> {
    Ok(match kind {
        Kind::Float => "F32",
        Kind::BFloat16 => "BF16",
        Kind::Half => "F16",
        Kind::Double => "F64",
        other => return Err(Failure::software(format!("cannot write tensors of kind {other:?} to safetensors"))),
    })
}

/// Read one tensor of `file` onto the CPU, converted to `kind`.
pub fn read_tensor(file: &SafetensorsFile, name: &str, kind: Kind) -> Result<Tensor, Failure> {
    let info = file.tensors.get(name).ok_or_else(|| Failure::data(format!("{}: no tensor {name}", file.path.display())))?;
    let src = kind_of(info.dtype).ok_or_else(|| {
        Failure::data(format!("{}: {name} has dtype {}; expected F32, BF16, F16 or F64", file.path.display(), info.dtype))
    })?;
    let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
    let t = Tensor::f_from_data_size(file.bytes(info.range()), &shape, src)
        .map_err(|err| Failure::data(format!("{}: {name}: {err}", file.path.display())))?;
    Ok(if src == kind { t } else { t.to_kind(kind) })
}

/// What `ShardWriter` plans for a tensor (any device, contiguous or not).
pub fn out_tensor(name: &str, t: &Tensor) -> Result<OutTensor, Failure> {
    Ok(OutTensor {
        name: name.to_string(),
        dtype: dtype_name(t.kind())?,
        shape: t.size().iter().map(|&d| d as usize).collect(),
        bytes: (t.numel() * t.kind().elt_size_in_bytes()) as u64,
    })
}

/// A tensor's data as the little-endian bytes safetensors stores.
pub fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>, Failure> {
    let t = t.to_device(Device::Cpu).contiguous();
    let mut buf = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut buf, t.numel()).map_err(|e| Failure::software(format!("copying tensor data: {e}")))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openseek_common::AtomicOutputs;
    use openseek_safetensors::ShardWriter;

    #[test]
    fn round_trip_keeps_values_dtypes_and_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let a = Tensor::arange(12, (Kind::Float, Device::Cpu)).reshape([3, 4]);
        let b = Tensor::from_slice(&[1.5f32, -2.25]).to_kind(Kind::BFloat16);
        let at = a.tr(); // not contiguous
        let tensors = [("a", &at), ("b", &b)];
        let plan = tensors.iter().map(|(n, t)| out_tensor(n, t)).collect::<Result<Vec<_>, _>>().unwrap();
        let mut outputs = AtomicOutputs::new();
        let mut writer = ShardWriter::new(dir.path(), plan, 1 << 20);
        for (_, t) in tensors {
            writer.write_next(&mut outputs, &tensor_bytes(t).unwrap()).unwrap();
        }
        let names = writer.finish(&mut outputs).unwrap();
        outputs.commit().unwrap();
        let f = SafetensorsFile::open(&dir.path().join(&names[0])).unwrap();
        assert_eq!(f.tensors["a"].shape, vec![4, 3]);
        assert_eq!(f.tensors["b"].dtype, Dtype::BF16);
        assert!(read_tensor(&f, "a", Kind::Float).unwrap().equal(&at));
        assert!(read_tensor(&f, "b", Kind::Float).unwrap().equal(&Tensor::from_slice(&[1.5f32, -2.25])));
        assert!(read_tensor(&f, "c", Kind::Float).is_err());
    }
}
