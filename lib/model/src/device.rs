//! Device names as the tools take them: `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available),
//! and host values uploaded to a device without waiting for it.

use openseek_common::{ExitCode, Failure};
use tch::{Cuda, Device, Tensor};

/// `values` as a 1-D tensor on `device`. On CUDA the copy goes through pinned host memory and does
/// not wait for the device: a plain copy from pageable memory synchronizes with the stream, so
/// every index list uploaded between batches would drain the queued work; torch's pinned-memory
/// allocator keeps the buffer until the copy has run.
pub fn upload<T: tch::kind::Element>(values: &[T], device: Device) -> Tensor {
    let host = Tensor::from_slice(values);
    if !device.is_cuda() || values.is_empty() {
        return host.to_device(device);
    }
    host.internal_pin_memory(device).to_device_(device, host.kind(), true, false)
}

/// A device as users write it (`cpu`, `cuda:N`): the inverse of [`parse_device`], for messages and records.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The device `name` stands for. A name that is none of the four is a usage error; a CUDA device
/// on a machine without CUDA is "unavailable" (69).
pub fn parse_device(name: &str) -> Result<Device, Failure> {
    let cuda = |i: usize| {
        if Cuda::is_available() {
            Ok(Device::Cuda(i))
        } else {
            Err(Failure::new(ExitCode::Unavailable, format!("device {name}: CUDA is not available on this machine")))
        }
    };
    match name {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
            Some(i) => cuda(i),
            None => Err(Failure::usage(format!("device {other}: expected cpu, cuda, cuda:N or auto"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_device("gpu").unwrap_err().code, ExitCode::Usage);
        assert_eq!(parse_device("cuda:x").unwrap_err().code, ExitCode::Usage);
        if !Cuda::is_available() {
            assert_eq!(parse_device("cuda:1").unwrap_err().code, ExitCode::Unavailable);
        }
    }
}
