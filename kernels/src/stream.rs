//! A CUDA stream of our own beside torch's current stream, and events that order work between
//! the two: work queued on the side stream runs concurrently with torch's until an event makes
//! one wait for the other. Tensors used on the side stream must outlive that work; the caller
//! keeps them until torch's stream has waited for it (torch's allocator knows only its stream).

use cudarc::driver::result as cu;
use cudarc::driver::sys::{CUevent, CUevent_flags, CUevent_wait_flags, CUstream};
use tch::TchError;

fn driver(what: &str, e: cudarc::driver::DriverError) -> TchError {
    TchError::Torch(format!("CUDA {what}: {e:?}"))
}

/// A non-blocking stream on one device (it never waits implicitly for the legacy default stream).
pub struct SideStream {
    device: usize,
    handle: CUstream,
}

// The driver's handles may be used from any thread.
unsafe impl Send for SideStream {}

impl SideStream {
    pub fn new(device: usize) -> Result<SideStream, TchError> {
        crate::nvrtc::use_device(device)?;
        let handle = cu::stream::create(cu::stream::StreamKind::NonBlocking).map_err(|e| driver("stream", e))?;
        Ok(SideStream { device, handle })
    }

    pub fn device(&self) -> usize {
        self.device
    }

    pub(crate) fn handle(&self) -> CUstream {
        self.handle
    }

    /// Work queued here from now on waits for what torch's current stream holds so far.
    pub fn wait_for_torch(&self) -> Result<(), TchError> {
        let event = Event::record(torch_stream(self.device)?, self.device)?;
        // Safety: live stream and event.
        unsafe { cu::stream::wait_event(self.handle, event.0, CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT) }.map_err(|e| driver("stream wait", e))
    }

    /// An event marking what has been queued here so far.
    pub fn record(&self) -> Result<Event, TchError> {
        Event::record(self.handle, self.device)
    }
}

impl Drop for SideStream {
    fn drop(&mut self) {
        // Safety: our stream; queued work still completes.
        let _ = unsafe { cu::stream::destroy(self.handle) };
    }
}

fn torch_stream(device: usize) -> Result<CUstream, TchError> {
    Ok(crate::current_stream(device)?.handle as CUstream)
}

/// A point in a stream's queue.
pub struct Event(CUevent);

unsafe impl Send for Event {}

impl Event {
    fn record(stream: CUstream, device: usize) -> Result<Event, TchError> {
        crate::nvrtc::use_device(device)?;
        let event = Event(cu::event::create(CUevent_flags::CU_EVENT_DISABLE_TIMING).map_err(|e| driver("event", e))?);
        // Safety: live event and stream.
        unsafe { cu::event::record(event.0, stream) }.map_err(|e| driver("event record", e))?;
        Ok(event)
    }

    /// Work queued on torch's current stream of `device` from now on waits for this event.
    pub fn block_torch(&self, device: usize) -> Result<(), TchError> {
        // Safety: live stream and event.
        unsafe { cu::stream::wait_event(torch_stream(device)?, self.0, CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT) }.map_err(|e| driver("stream wait", e))
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // Safety: our event; the driver releases it once its work completes.
        let _ = unsafe { cu::event::destroy(self.0) };
    }
}
