//! The LM head's softmax and cross entropy for a chunk of tokens in one pass over the logits (an
//! NVRTC kernel, CUDA): each row of bf16 logits is overwritten in place with the loss' gradient
//! with respect to the logits, softmax - one-hot (computed in fp32, rounded once), and the label's
//! log-probability comes out in fp32 (logit - max - log(sum exp), not the log of a rounded
//! probability). Columns from `vocab` on are padding: probability 0, written 0, never read.
//!
//! One block of 1024 threads per row: a first pass reads the row (16 bytes per access) for its
//! maximum and sum of exponentials, keeping as much of it as fits in shared memory (224 KiB of
//! a 300 KiB row on an H100); a second pass writes the probabilities, re-reading from global
//! memory (then mostly L2) only the part that did not fit, last-read first.
//!
//! Scoring needs only the log-probabilities: [`target_logprobs`] is the first pass alone (one read
//! of each row, nothing written back), in blocks of 512 threads without the shared-memory copy.

use crate::nvrtc::{self, Args, Program};
use cudarc::driver::result as cu;
use cudarc::driver::sys::CUdevice_attribute;
use tch::{Device, Kind, TchError, Tensor};


static PROGRAM: Program = Program { name: "cross_entropy", source: include_str!("../cuda/cross_entropy.cu") };

const THREADS: u32 = 1024;
/// `LOGPROB_THREADS` of the kernel source.
const LOGPROB_THREADS: u32 = 512;

/// Shared memory a block of `device` may have (the opt-in maximum), less 1 KiB for the kernel's
/// own reduction scratch.
fn shared_bytes(device: usize) -> Result<usize, TchError> {
    let attr = || {
        cu::init()?;
        let dev = cu::device::get(device as i32)?;
        // Safety: a valid device and attribute.
        unsafe { cu::device::get_attribute(dev, CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN) }
    };
    let bytes = attr().map_err(|e| TchError::Torch(format!("CUDA shared memory per block: {e:?}")))?;
    Ok((bytes as usize).saturating_sub(1024))
}

/// Overwrite `logits` ([rows, cols] bf16, contiguous, CUDA; cols a multiple of 8) with softmax -
/// one-hot of each row's target, in place, and return the targets' log-probabilities (fp32
/// [rows]). `targets` holds one int64 per row (any shape of `rows` values, contiguous), each in
/// `[0, vocab)` (the caller clamps ignored labels to a valid index and masks their loss; an index
/// outside gives a NaN log-probability and no -1 in its row). Columns from `vocab` on are padding:
/// they are not read and come out 0. The softmax is computed in fp32 and each value rounded once
/// to bf16 (the target's p - 1 too). Runs on the device's current stream.
pub fn softmax_cross_entropy(logits: &Tensor, targets: &Tensor, vocab: i64) -> Result<Tensor, TchError> {
    softmax_cross_entropy_cached(logits, targets, vocab, None)
}

/// [`softmax_cross_entropy`] with at most `cache_bytes` of a row kept in shared memory between
/// the passes (`None`: all the device allows): the GPU test's measure of what the cache gains.
#[doc(hidden)]
pub fn softmax_cross_entropy_cached(logits: &Tensor, targets: &Tensor, vocab: i64, cache_bytes: Option<usize>) -> Result<Tensor, TchError> {
    let (rows, ordinal) = check_inputs("softmax_cross_entropy", logits, targets, vocab)?;
    let logprob = Tensor::empty([rows], (Kind::Float, logits.device()));
    if rows == 0 {
        return Ok(logprob);
    }
    let row_bytes = (vocab as usize).div_ceil(8) * 16;
    let bytes = shared_bytes(ordinal)?.min(cache_bytes.unwrap_or(usize::MAX)).min(row_bytes) / 16 * 16;
    let f = nvrtc::function(&PROGRAM, "softmax_cross_entropy", ordinal)?;
    let args = Args::new().arg(logits.data_ptr()).arg(targets.data_ptr()).arg(logprob.data_ptr()).arg(logits.size()[1]).arg(vocab).arg((bytes / 16) as i32);
    // Safety: the arguments are the kernel's parameters in order; the tensors outlive the launch
    // (the caller's, and torch's allocator orders reuse of `logprob` on the stream).
    unsafe { nvrtc::launch(f, rows as u32, THREADS, bytes as u32, ordinal, args)? };
    Ok(logprob)
}

/// The targets' log-probabilities (fp32 [rows]) under each row's softmax over the first `vocab`
/// columns of `logits` ([rows, cols] bf16, contiguous, CUDA; cols a multiple of 8), reading each
/// row once and writing nothing to it: scoring's half of [`softmax_cross_entropy`], the same
/// arithmetic (fp32 running max and sum of exponentials), without the gradient pass. A target
/// outside `[0, vocab)` gives NaN. Runs on the device's current stream.
pub fn target_logprobs(logits: &Tensor, targets: &Tensor, vocab: i64) -> Result<Tensor, TchError> {
    let (rows, ordinal) = check_inputs("target_logprobs", logits, targets, vocab)?;
    let logprob = Tensor::empty([rows], (Kind::Float, logits.device()));
    if rows == 0 {
        return Ok(logprob);
    }
    let f = nvrtc::function(&PROGRAM, "target_logprob", ordinal)?;
    let args = Args::new().arg(logits.data_ptr()).arg(targets.data_ptr()).arg(logprob.data_ptr()).arg(logits.size()[1]).arg(vocab);
    // Safety: as in `softmax_cross_entropy_cached`; the kernel only reads the logits.
    unsafe { nvrtc::launch(f, rows as u32, LOGPROB_THREADS, 0, ordinal, args)? };
    Ok(logprob)
}

/// What both kernels need of their inputs: logits [rows, cols] contiguous bf16 on CUDA, 16-byte
/// aligned rows, `vocab` within the columns, one contiguous int64 target per row on the same
/// device. Returns (rows, the CUDA ordinal); errors are prefixed with `what`.
fn check_inputs(what: &str, logits: &Tensor, targets: &Tensor, vocab: i64) -> Result<(i64, usize), TchError> {
    let fail = |msg: String| Err(TchError::Shape(format!("{what}: {msg}")));
    let size = logits.size();
    let &[rows, cols] = size.as_slice() else {
        return fail(format!("logits are {size:?}; expected [rows, cols]"));
    };
    if logits.kind() != Kind::BFloat16 || !logits.is_contiguous() {
        return fail(format!("logits are {:?}{}; expected contiguous bf16", logits.kind(), if logits.is_contiguous() { "" } else { " (not contiguous)" }));
    }
    if cols % 8 != 0 {
        return fail(format!("logits have {cols} columns; the kernel reads rows 16 bytes at a time and needs a multiple of 8 (pad the head)"));
    }
    if !(1..=cols).contains(&vocab) {
        return fail(format!("vocab {vocab} outside 1..={cols} (the logits' columns)"));
    }
    if targets.kind() != Kind::Int64 || targets.numel() != rows as usize || !targets.is_contiguous() {
        return fail(format!("targets are {:?} {:?}; expected {rows} contiguous int64 values", targets.kind(), targets.size()));
    }
    let device = logits.device();
    let Device::Cuda(ordinal) = device else {
        return fail(format!("runs on CUDA; the logits are on {device:?}"));
    };
    if targets.device() != device {
        return fail(format!("targets are on {:?}, logits on {device:?}", targets.device()));
    }
    if !(logits.data_ptr() as usize).is_multiple_of(16) {
        return fail("the logits' storage is not 16-byte aligned".into());
    }
    if i32::try_from(cols / 8).is_err() || u32::try_from(rows).is_err() {
        return fail(format!("logits of {rows} x {cols} are too large"));
    }
    Ok((rows, ordinal))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel source compiles (NVRTC needs no GPU).
    #[test]
    fn kernel_compiles() {
        let code = nvrtc::compile(&PROGRAM, 90).unwrap();
        assert!(!code.is_empty());
    }

    /// Inputs the kernel cannot take are errors that say what is wrong.
    #[test]
    fn bad_inputs_are_clear_errors() {
        let t = Tensor::zeros([3], (Kind::Int64, Device::Cpu));
        let err = |logits: &Tensor, targets: &Tensor, vocab: i64| softmax_cross_entropy(logits, targets, vocab).unwrap_err().to_string();
        let bf16 = |cols: i64| Tensor::zeros([3, cols], (Kind::BFloat16, Device::Cpu));
        assert!(err(&bf16(12), &t, 10).contains("multiple of 8"));
        assert!(err(&bf16(16).to_kind(Kind::Float), &t, 10).contains("bf16"));
        assert!(err(&bf16(16), &t, 17).contains("vocab 17"));
        assert!(err(&bf16(16), &t.narrow(0, 0, 2), 10).contains("expected 3 contiguous int64"));
        assert!(err(&bf16(16), &t, 10).contains("runs on CUDA"));
        let e = target_logprobs(&bf16(12), &t, 10).unwrap_err().to_string();
        assert!(e.contains("target_logprobs: ") && e.contains("multiple of 8"), "{e}");
        assert!(target_logprobs(&bf16(16), &t, 10).unwrap_err().to_string().contains("runs on CUDA"));
    }
}
