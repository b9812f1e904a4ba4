//! Element types: the float dtypes os-soup merges (F64, F32, F16, BF16), their names in
//! safetensors headers and configs, and conversion of raw little-endian bytes to f32 and back.

use half::{bf16, f16};
use openseek_common::Failure;
use openseek_safetensors::Dtype;

/// A float dtype the merge math understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatType {
    F64,
    F32,
    F16,
    BF16,
}

impl FloatType {
    /// The float type of a safetensors dtype, or None for integer / bool / fp8 tensors.
    pub fn from_safetensors(dtype: Dtype) -> Option<Self> {
        match dtype {
            Dtype::F64 => Some(FloatType::F64),
            Dtype::F32 => Some(FloatType::F32),
            Dtype::F16 => Some(FloatType::F16),
            Dtype::BF16 => Some(FloatType::BF16),
            _ => None,
        }
    }

    /// Parse a dtype name as mergekit's configs and HF's `torch_dtype` spell them.
    pub fn parse(name: &str) -> Result<Self, Failure> {
        match name.trim().to_ascii_lowercase().trim_start_matches("torch.") {
            "float64" | "f64" | "fp64" | "double" => Ok(FloatType::F64),
            "float32" | "f32" | "fp32" | "float" => Ok(FloatType::F32),
            "float16" | "f16" | "fp16" | "half" => Ok(FloatType::F16),
            "bfloat16" | "bf16" => Ok(FloatType::BF16),
            other => Err(Failure::usage(format!(
                "unknown dtype {other:?}: use float32, float16, bfloat16 (or float64)"
            ))),
        }
    }

    /// The safetensors header name.
    pub fn header_name(self) -> &'static str {
        match self {
            FloatType::F64 => "F64",
            FloatType::F32 => "F32",
            FloatType::F16 => "F16",
            FloatType::BF16 => "BF16",
        }
    }

    /// The name HF configs use (`torch_dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            FloatType::F64 => "float64",
            FloatType::F32 => "float32",
            FloatType::F16 => "float16",
            FloatType::BF16 => "bfloat16",
        }
    }

    /// The smallest f32 magnitude that becomes infinite when stored in this type (round to
    /// nearest even: halfway between the largest finite value and the next power of two).
    pub fn overflow_threshold(self) -> f32 {
        match self {
            FloatType::F64 | FloatType::F32 => f32::INFINITY,
            FloatType::F16 => 65520.0,
            FloatType::BF16 => f32::from_bits(0x7F7F_8000),
        }
    }

    pub fn size(self) -> usize {
        match self {
            FloatType::F64 => 8,
            FloatType::F32 => 4,
            FloatType::F16 | FloatType::BF16 => 2,
        }
    }
}

/// Decode little-endian `bytes` of type `ty` into `out` (which must hold bytes.len() / size elements).
pub fn decode_into(ty: FloatType, bytes: &[u8], out: &mut [f32]) {
    debug_assert_eq!(bytes.len(), out.len() * ty.size());
    match ty {
        FloatType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        FloatType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        FloatType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        FloatType::F64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = f64::from_le_bytes(c.try_into().unwrap()) as f32;
            }
        }
    }
}

/// Decode a whole tensor into a new f32 vector.
pub fn decode(ty: FloatType, bytes: &[u8]) -> Vec<f32> {
    let mut out = vec![0f32; bytes.len() / ty.size()];
    decode_into(ty, bytes, &mut out);
    out
}

/// Encode f32 values as little-endian `ty` (round to nearest even, as torch's `.to()` does).
pub fn encode(ty: FloatType, values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * ty.size());
    match ty {
        FloatType::F32 => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        FloatType::BF16 => values.iter().for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes())),
        FloatType::F16 => values.iter().for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes())),
        FloatType::F64 => values.iter().for_each(|v| out.extend_from_slice(&(*v as f64).to_le_bytes())),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rounds_to_nearest_even() {
        let v = [1.0f32, -2.5, 3.140625, 0.0];
        for ty in [FloatType::F32, FloatType::BF16, FloatType::F16, FloatType::F64] {
            assert_eq!(decode(ty, &encode(ty, &v)), v.to_vec(), "{ty:?}");
        }
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even mantissa (1.0).
        let halfway = 1.0f32 + 1.0 / 256.0;
        assert_eq!(decode(FloatType::BF16, &encode(FloatType::BF16, &[halfway])), vec![1.0]);
        assert_eq!(FloatType::parse("torch.bfloat16").unwrap(), FloatType::BF16);
        assert!(FloatType::parse("int8").is_err());
    }
}
