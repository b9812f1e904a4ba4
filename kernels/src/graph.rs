//! CUDA graphs through ATen's `CUDAGraph` (the shim's `oskern_graph_*`): the kernels that a piece of
//! work launches on a device, captured once and replayed with one launch, for work of fixed shapes
//! that runs many times (a decoding step) and would otherwise spend most of its time launching
//! hundreds of small kernels. A replay reads and writes the same memory the capture did: inputs go
//! into tensors made before the capture, outputs come from tensors the capture made (kept with
//! the graph, in its own pool of the caching allocator).

use std::ffi::{c_char, c_void};
use tch::TchError;

extern "C" {
    fn oskern_graph_new(device: i32, out: *mut *mut c_void) -> *mut c_char;
    fn oskern_graph_capture_begin(g: *mut c_void) -> *mut c_char;
    fn oskern_graph_capture_end(g: *mut c_void) -> *mut c_char;
    fn oskern_graph_replay(g: *mut c_void) -> *mut c_char;
    fn oskern_graph_free(g: *mut c_void);
}

/// A captured CUDA graph; dropping it frees the graph and its memory pool.
pub struct CudaGraph {
    raw: *mut c_void,
}

impl CudaGraph {
    /// Capture the CUDA work of `run` on `device`. `run` is called twice on a side stream: once
    /// eagerly (a warm-up: libraries' handles and workspaces, kernels loaded; its work is done when
    /// this returns), then under capture (nothing runs: its kernels are recorded, and the tensors it
    /// returns are the ones each replay writes). Returns the graph, the warm-up's result and the
    /// captured call's result. `run` must not synchronise with the host or copy from host memory
    /// (CUDA refuses both during capture: an error here).
    pub fn capture<T>(device: usize, mut run: impl FnMut() -> T) -> Result<(CudaGraph, T, T), TchError> {
        let mut raw = std::ptr::null_mut();
        crate::check(unsafe { oskern_graph_new(device as i32, &mut raw) })?;
        let graph = CudaGraph { raw };
        let warm = run();
        crate::synchronize(device)?;
        crate::check(unsafe { oskern_graph_capture_begin(graph.raw) })?;
        let captured = run();
        crate::check(unsafe { oskern_graph_capture_end(graph.raw) })?;
        Ok((graph, warm, captured))
    }

    /// Run the captured work again on the current stream (asynchronously, as any kernel).
    pub fn replay(&self) -> Result<(), TchError> {
        crate::check(unsafe { oskern_graph_replay(self.raw) })
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        unsafe { oskern_graph_free(self.raw) }
    }
}
