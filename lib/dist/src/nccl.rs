//! NCCL on the GPU: entry points resolved from `libnccl.so.2` (the pip NCCL that libtorch_cuda
//! already maps; cudarc 0.19's own loader only tries `libnccl.so` and `.so.{13,12,11,10,9,1}`),
//! typed with cudarc's NCCL 2.28 bindings; CUDA contexts, streams and events through cudarc's
//! driver API. Collectives run on a dedicated stream, after the work queued so far on torch's
//! current stream (an event); the current stream then waits for the collective (an event), or,
//! for a collective overlapped with computation, only at [`NcclComm::wait`]. A watchdog thread
//! polls each collective's completion event and `ncclCommGetAsyncError`, and past the timeout
//! aborts the communicator with an error naming the rank, the host and the collective.

use std::collections::VecDeque;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use cudarc::driver::result as cu;
use cudarc::driver::sys::{CUcontext, CUevent, CUevent_flags, CUevent_wait_flags, CUstream, CUresult};
use cudarc::nccl::sys::{ncclComm_t, ncclDataType_t, ncclRedOp_t, ncclUniqueId};
use openseek_common::{ExitCode, Failure};

/// The NCCL functions used, resolved once per process.
struct Api {
    _lib: libloading::Library,
    get_version: unsafe extern "C" fn(*mut c_int) -> c_int,
    get_unique_id: unsafe extern "C" fn(*mut ncclUniqueId) -> c_int,
    comm_init_rank: unsafe extern "C" fn(*mut ncclComm_t, c_int, ncclUniqueId, c_int) -> c_int,
    comm_abort: unsafe extern "C" fn(ncclComm_t) -> c_int,
    comm_destroy: unsafe extern "C" fn(ncclComm_t) -> c_int,
    comm_get_async_error: unsafe extern "C" fn(ncclComm_t, *mut c_int) -> c_int,
    get_error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    all_reduce: unsafe extern "C" fn(*const c_void, *mut c_void, usize, ncclDataType_t, ncclRedOp_t, ncclComm_t, CUstream) -> c_int,
    reduce_scatter: unsafe extern "C" fn(*const c_void, *mut c_void, usize, ncclDataType_t, ncclRedOp_t, ncclComm_t, CUstream) -> c_int,
    all_gather: unsafe extern "C" fn(*const c_void, *mut c_void, usize, ncclDataType_t, ncclComm_t, CUstream) -> c_int,
    broadcast: unsafe extern "C" fn(*const c_void, *mut c_void, usize, ncclDataType_t, c_int, ncclComm_t, CUstream) -> c_int,
}

/// Library names tried in order: the soname (found when libtorch_cuda mapped it, or on the
/// loader's path), then the pip package beside the torch this binary was built against and the
/// GPU machines' torch. `OPENSEEK_NCCL_LIBRARY` names a file explicitly.
fn candidates() -> Vec<String> {
    let mut c: Vec<String> = std::env::var("OPENSEEK_NCCL_LIBRARY").ok().into_iter().collect();
    c.push("libnccl.so.2".into());
    for torch_lib in [option_env!("OPENSEEK_TORCH_LIB"), option_env!("OPENSEEK_GPU_MACHINES_TORCH_LIB")].into_iter().flatten() {
        c.push(format!("{torch_lib}/../../nvidia/nccl/lib/libnccl.so.2"));
    }
    c
}

fn api() -> Result<&'static Api, Failure> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(|| {
        let mut tried = Vec::new();
        for name in candidates() {
            // Safety: loading NCCL runs its (trusted) initialisers only.
            match unsafe { libloading::Library::new(&name) } {
                Ok(lib) => return load(lib).map_err(|e| format!("{name}: {e}")),
                Err(e) => tried.push(format!("{name} ({e})")),
            }
        }
        Err(format!("cannot load NCCL; tried {}", tried.join(", ")))
    })
    .as_ref()
    .map_err(|e| Failure::new(ExitCode::Unavailable, e.clone()))
}

fn load(lib: libloading::Library) -> Result<Api, libloading::Error> {
    // Safety: the signatures are those of nccl.h 2.28 (cudarc's generated bindings agree).
    unsafe {
        Ok(Api {
            get_version: *lib.get(b"ncclGetVersion\0")?,
            get_unique_id: *lib.get(b"ncclGetUniqueId\0")?,
            comm_init_rank: *lib.get(b"ncclCommInitRank\0")?,
            comm_abort: *lib.get(b"ncclCommAbort\0")?,
            comm_destroy: *lib.get(b"ncclCommDestroy\0")?,
            comm_get_async_error: *lib.get(b"ncclCommGetAsyncError\0")?,
            get_error_string: *lib.get(b"ncclGetErrorString\0")?,
            all_reduce: *lib.get(b"ncclAllReduce\0")?,
            reduce_scatter: *lib.get(b"ncclReduceScatter\0")?,
            all_gather: *lib.get(b"ncclAllGather\0")?,
            broadcast: *lib.get(b"ncclBroadcast\0")?,
            _lib: lib,
        })
    }
}

const NCCL_SUCCESS: c_int = 0;
const NCCL_IN_PROGRESS: c_int = 7;

fn error_string(api: &Api, code: c_int) -> String {
    // Safety: NCCL returns a static string for any code.
    let s = unsafe { CStr::from_ptr((api.get_error_string)(code)) };
    format!("{} (NCCL error {code})", s.to_string_lossy())
}

/// NCCL's version as a number (22809 = 2.28.9).
pub fn version() -> Result<i32, Failure> {
    let api = api()?;
    let mut v = 0;
    // Safety: plain out-parameter.
    let rc = unsafe { (api.get_version)(&mut v) };
    if rc != NCCL_SUCCESS {
        return Err(Failure::new(ExitCode::Unavailable, error_string(api, rc)));
    }
    Ok(v)
}

/// A fresh unique id (rank 0 makes it, the store hands it to the others).
pub fn unique_id() -> Result<Vec<u8>, Failure> {
    let api = api()?;
    let mut id = ncclUniqueId { internal: [0; 128] };
    // Safety: plain out-parameter.
    let rc = unsafe { (api.get_unique_id)(&mut id) };
    if rc != NCCL_SUCCESS {
        return Err(Failure::new(ExitCode::Unavailable, format!("ncclGetUniqueId: {}", error_string(api, rc))));
    }
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

fn cuda(what: &str, r: Result<(), cu::DriverError>) -> Result<(), Failure> {
    r.map_err(|e| Failure::new(ExitCode::Unavailable, format!("CUDA {what}: {e:?}")))
}

/// One collective in flight, as the watchdog sees it.
/// A CUDA event recorded on a communicator's stream ([`NcclComm::mark`]).
pub struct Event(CUevent);

// Safety: an event handle may be waited on and destroyed from any thread of the process.
unsafe impl Send for Event {}

struct Inflight {
    done: CUevent,
    what: String,
    started: Instant,
}

// Safety: a CUDA event handle may be queried and destroyed from any thread of the process.
unsafe impl Send for Inflight {}

struct Watch {
    inflight: Mutex<VecDeque<Inflight>>,
    wake: Condvar,
    /// Set once; every later call fails with it.
    error: Mutex<Option<String>>,
    /// Set when the owning thread has been handed the error.
    acknowledged: Mutex<bool>,
    stop: Mutex<bool>,
}

/// After an abort, how long the owning thread has to notice the error (its next call to this
/// communicator) before the watchdog ends the process: a thread blocked elsewhere on the GPU
/// must never hang the job.
const GRACE: Duration = Duration::from_secs(30);

/// A NCCL communicator for one rank on one GPU.
pub struct NcclComm {
    api: &'static Api,
    comm: ncclComm_t,
    ctx: CUcontext,
    device: usize,
    stream: CUstream,
    who: String,
    seq: u64,
    watch: Arc<Watch>,
    watchdog: Option<thread::JoinHandle<()>>,
}

// Safety: the raw handles are used from the owning thread, and by the watchdog only through
// calls NCCL and CUDA allow from another thread (event query/destroy, async error, abort).
unsafe impl Send for NcclComm {}

/// Raw pointer wrapper to hand the communicator and context to the watchdog thread.
#[derive(Clone, Copy)]
struct Handles {
    comm: ncclComm_t,
    ctx: CUcontext,
}
unsafe impl Send for Handles {}

impl NcclComm {
    /// Join the communicator `id` as `rank` of `world` on CUDA device `device` (the caller makes
    /// sure every rank got the same id). `timeout` bounds every collective (watchdog).
    pub fn new(id: &[u8], rank: usize, world: usize, device: usize, who: String, timeout: Duration) -> Result<NcclComm, Failure> {
        let api = api()?;
        cuda("init", cu::init())?;
        let dev = cu::device::get(device as c_int).map_err(|e| Failure::new(ExitCode::Unavailable, format!("{who}: CUDA device {device}: {e:?}")))?;
        // The primary context: the one the CUDA runtime (and so libtorch) uses on this device.
        // Safety: `dev` came from device::get.
        let ctx = unsafe { cu::primary_ctx::retain(dev) }.map_err(|e| Failure::new(ExitCode::Unavailable, format!("{who}: CUDA context: {e:?}")))?;
        cuda("set context", unsafe { cu::ctx::set_current(ctx) })?;
        let stream = cu::stream::create(cu::stream::StreamKind::NonBlocking).map_err(|e| Failure::new(ExitCode::Unavailable, format!("{who}: CUDA stream: {e:?}")))?;
        let mut uid = ncclUniqueId { internal: [0; 128] };
        if id.len() != 128 {
            return Err(Failure::software(format!("{who}: NCCL unique id of {} bytes (expected 128)", id.len())));
        }
        for (d, s) in uid.internal.iter_mut().zip(id) {
            *d = *s as c_char;
        }
        let mut comm: ncclComm_t = std::ptr::null_mut();
        // Safety: out-parameter; the id is the one rank 0 created.
        let rc = unsafe { (api.comm_init_rank)(&mut comm, world as c_int, uid, rank as c_int) };
        if rc != NCCL_SUCCESS {
            return Err(Failure::new(ExitCode::Unavailable, format!("{who}: ncclCommInitRank: {}", error_string(api, rc))));
        }
        let watch = Arc::new(Watch { inflight: Mutex::new(VecDeque::new()), wake: Condvar::new(), error: Mutex::new(None), acknowledged: Mutex::new(false), stop: Mutex::new(false) });
        let handles = Handles { comm, ctx };
        let (w, name) = (watch.clone(), who.clone());
        let watchdog = thread::Builder::new()
            .name("nccl-watchdog".into())
            .spawn(move || watchdog(api, handles, &w, &name, timeout))
            .map_err(|e| Failure::software(format!("cannot start the NCCL watchdog: {e}")))?;
        Ok(NcclComm { api, comm, ctx, device, stream, who, seq: 0, watch, watchdog: Some(watchdog) })
    }

    fn check(&self) -> Result<(), Failure> {
        match &*self.watch.error.lock().unwrap() {
            Some(e) => {
                *self.watch.acknowledged.lock().unwrap() = true;
                Err(Failure::new(ExitCode::Unavailable, e.clone()))
            }
            None => Ok(()),
        }
    }

    /// torch's current stream on this device (the stream the model's kernels are queued on).
    fn compute_stream(&self) -> Result<CUstream, Failure> {
        let s = openseek_kernels::current_stream(self.device).map_err(|e| Failure::software(format!("{}: the current CUDA stream: {e}", self.who)))?;
        Ok(s.handle as CUstream)
    }

    /// `waiter` waits for the work queued so far on `on`.
    fn order(on: CUstream, waiter: CUstream) -> Result<(), Failure> {
        let ev = cu::event::create(CUevent_flags::CU_EVENT_DISABLE_TIMING).map_err(|e| Failure::software(format!("CUDA event: {e:?}")))?;
        // Safety: the event and both streams are live; a recorded event may be destroyed at once.
        unsafe {
            cuda("event record", cu::event::record(ev, on))?;
            cuda("stream wait", cu::stream::wait_event(waiter, ev, CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT))?;
            cuda("event destroy", cu::event::destroy(ev))
        }
    }

    /// Run one collective: the NCCL stream waits for the work queued so far on the compute
    /// stream, runs `launch`, and (unless `overlap`) the compute stream waits for its completion.
    fn run(&mut self, what: String, overlap: bool, launch: impl FnOnce(&Api, ncclComm_t, CUstream) -> c_int) -> Result<(), Failure> {
        self.check()?;
        self.seq += 1;
        let what = format!("{what} (collective #{})", self.seq);
        cuda("set context", unsafe { cu::ctx::set_current(self.ctx) })?;
        let compute = self.compute_stream()?;
        Self::order(compute, self.stream)?;
        let done = cu::event::create(CUevent_flags::CU_EVENT_DISABLE_TIMING).map_err(|e| Failure::software(format!("CUDA event: {e:?}")))?;
        let rc = launch(self.api, self.comm, self.stream);
        if rc != NCCL_SUCCESS && rc != NCCL_IN_PROGRESS {
            let msg = format!("{}: NCCL {what} failed: {}", self.who, error_string(self.api, rc));
            *self.watch.error.lock().unwrap() = Some(msg.clone());
            return Err(Failure::new(ExitCode::Unavailable, msg));
        }
        unsafe {
            cuda("event record", cu::event::record(done, self.stream))?;
            if !overlap {
                cuda("stream wait", cu::stream::wait_event(compute, done, CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT))?;
            }
        }
        self.watch.inflight.lock().unwrap().push_back(Inflight { done, what, started: Instant::now() });
        self.watch.wake.notify_all();
        Ok(())
    }

    /// # Safety
    /// `send`/`recv` are device buffers of `count` elements of `dtype` on this communicator's GPU.
    pub unsafe fn all_reduce(&mut self, send: *const c_void, recv: *mut c_void, count: usize, dtype: ncclDataType_t, op: ncclRedOp_t) -> Result<(), Failure> {
        self.run(format!("all_reduce {op:?} of {count} x {dtype:?}"), false, |api, comm, s| unsafe { (api.all_reduce)(send, recv, count, dtype, op, comm, s) })
    }

    /// With `overlap`, the compute stream does not wait for it (see [`NcclComm::wait`]).
    ///
    /// # Safety
    /// `send` holds `world * recv_count` elements, `recv` holds `recv_count`, on this GPU; with
    /// `overlap`, both stay allocated and untouched until [`NcclComm::wait`].
    pub unsafe fn reduce_scatter(&mut self, send: *const c_void, recv: *mut c_void, recv_count: usize, dtype: ncclDataType_t, op: ncclRedOp_t, overlap: bool) -> Result<(), Failure> {
        self.run(format!("reduce_scatter {op:?} of {recv_count} x {dtype:?} per rank"), overlap, |api, comm, s| unsafe {
            (api.reduce_scatter)(send, recv, recv_count, dtype, op, comm, s)
        })
    }

    /// With `overlap`, the compute stream does not wait for it (see [`NcclComm::wait`]).
    ///
    /// # Safety
    /// `send` holds `send_count` elements, `recv` holds `world * send_count`, on this GPU (`send`
    /// may be this rank's part of `recv`); with `overlap`, both stay allocated and untouched until
    /// the compute stream waits for it.
    pub unsafe fn all_gather(&mut self, send: *const c_void, recv: *mut c_void, send_count: usize, dtype: ncclDataType_t, overlap: bool) -> Result<(), Failure> {
        self.run(format!("all_gather of {send_count} x {dtype:?} per rank"), overlap, |api, comm, s| unsafe { (api.all_gather)(send, recv, send_count, dtype, comm, s) })
    }

    /// An event after the collectives queued so far on this communicator's stream.
    pub fn mark(&mut self) -> Result<Event, Failure> {
        self.check()?;
        cuda("set context", unsafe { cu::ctx::set_current(self.ctx) })?;
        let ev = cu::event::create(CUevent_flags::CU_EVENT_DISABLE_TIMING).map_err(|e| Failure::software(format!("CUDA event: {e:?}")))?;
        // Safety: the event and the stream are live.
        unsafe { cuda("event record", cu::event::record(ev, self.stream))? };
        Ok(Event(ev))
    }

    /// The compute stream waits (on the device) for `event`, which is then released.
    pub fn wait_event(&mut self, event: Event) -> Result<(), Failure> {
        self.check()?;
        cuda("set context", unsafe { cu::ctx::set_current(self.ctx) })?;
        let compute = self.compute_stream()?;
        // Safety: the event was recorded on this communicator's stream; a waited-on event may be destroyed at once.
        unsafe {
            cuda("stream wait", cu::stream::wait_event(compute, event.0, CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT))?;
            cuda("event destroy", cu::event::destroy(event.0))
        }
    }

    /// # Safety
    /// `send`/`recv` are device buffers of `count` elements (`send` read on the root only).
    pub unsafe fn broadcast(&mut self, send: *const c_void, recv: *mut c_void, count: usize, dtype: ncclDataType_t, root: usize) -> Result<(), Failure> {
        self.run(format!("broadcast from rank {root} of {count} x {dtype:?}"), false, |api, comm, s| unsafe {
            (api.broadcast)(send, recv, count, dtype, root as c_int, comm, s)
        })
    }

    /// The compute stream waits (on the device; the host goes on) for every collective queued so far.
    pub fn wait(&mut self) -> Result<(), Failure> {
        self.check()?;
        cuda("set context", unsafe { cu::ctx::set_current(self.ctx) })?;
        let compute = self.compute_stream()?;
        Self::order(self.stream, compute)
    }

    /// Wait until everything queued on the compute stream and every collective has finished,
    /// returning the watchdog's error if a collective failed or timed out meanwhile.
    pub fn synchronize(&mut self) -> Result<(), Failure> {
        self.wait()?;
        let ev = cu::event::create(CUevent_flags::CU_EVENT_DISABLE_TIMING).map_err(|e| Failure::software(format!("CUDA event: {e:?}")))?;
        unsafe { cuda("event record", cu::event::record(ev, self.compute_stream()?))? };
        let result = loop {
            match unsafe { cu::event::query(ev) } {
                Ok(()) => break Ok(()),
                Err(e) if e.0 == CUresult::CUDA_ERROR_NOT_READY => {}
                Err(e) => break Err(Failure::new(ExitCode::Unavailable, format!("{}: CUDA error while waiting: {e:?}", self.who))),
            }
            if let Err(e) = self.check() {
                break Err(e);
            }
            thread::sleep(Duration::from_micros(50));
        };
        unsafe { cu::event::destroy(ev).ok() };
        result.and_then(|()| self.check())
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        let failed = self.watch.error.lock().unwrap().is_some();
        if !failed {
            let _ = self.synchronize();
        }
        *self.watch.stop.lock().unwrap() = true;
        self.watch.wake.notify_all();
        if let Some(h) = self.watchdog.take() {
            let _ = h.join();
        }
        // Safety: nothing is in flight any more (or the communicator was aborted).
        unsafe {
            if !self.watch.error.lock().unwrap().is_some() {
                (self.api.comm_destroy)(self.comm);
            }
            cu::stream::destroy(self.stream).ok();
        }
    }
}

/// Poll the oldest collective in flight and the communicator's asynchronous error; abort the
/// communicator (which frees every rank stuck in it) past `timeout`.
fn watchdog(api: &'static Api, h: Handles, watch: &Watch, who: &str, timeout: Duration) {
    // Safety: the context outlives the communicator.
    if unsafe { cu::ctx::set_current(h.ctx) }.is_err() {
        *watch.error.lock().unwrap() = Some(format!("{who}: the NCCL watchdog cannot use the CUDA context"));
        return;
    }
    loop {
        let mut queue = watch.inflight.lock().unwrap();
        if *watch.stop.lock().unwrap() {
            return;
        }
        if queue.is_empty() {
            queue = watch.wake.wait_timeout(queue, Duration::from_millis(200)).unwrap().0;
        }
        let mut failure = None;
        while let Some(front) = queue.front() {
            match unsafe { cu::event::query(front.done) } {
                Ok(()) => {
                    let f = queue.pop_front().unwrap();
                    unsafe { cu::event::destroy(f.done).ok() };
                }
                Err(e) if e.0 == CUresult::CUDA_ERROR_NOT_READY => {
                    if front.started.elapsed() > timeout {
                        failure = Some(format!(
                            "{who}: NCCL {} did not complete within {} s; another rank is probably stuck, dead or in a different collective \
                             (the communicator was aborted)",
                            front.what,
                            timeout.as_secs_f64()
                        ));
                    }
                    break;
                }
                Err(e) => {
                    failure = Some(format!("{who}: CUDA error during NCCL {}: {e:?}", front.what));
                    break;
                }
            }
        }
        if failure.is_none() {
            let mut async_rc = NCCL_SUCCESS;
            // Safety: NCCL allows this call from another thread.
            let rc = unsafe { (api.comm_get_async_error)(h.comm, &mut async_rc) };
            if rc == NCCL_SUCCESS && async_rc != NCCL_SUCCESS && async_rc != NCCL_IN_PROGRESS {
                let what = queue.front().map_or("(no collective in flight)".to_string(), |f| f.what.clone());
                failure = Some(format!("{who}: NCCL reported {} during {what} (the communicator was aborted)", error_string(api, async_rc)));
            }
        }
        if let Some(msg) = failure {
            eprintln!("{msg}");
            *watch.error.lock().unwrap() = Some(msg);
            drop(queue);
            // Safety: abort is the documented way to free ranks stuck in a collective.
            unsafe { (api.comm_abort)(h.comm) };
            let deadline = Instant::now() + GRACE;
            while Instant::now() < deadline {
                if *watch.acknowledged.lock().unwrap() || *watch.stop.lock().unwrap() {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
            eprintln!("{who}: the NCCL failure above was not picked up within {} s; exiting", GRACE.as_secs());
            std::process::exit(ExitCode::Unavailable as i32);
        }
        let busy = !queue.is_empty();
        drop(queue);
        thread::sleep(if busy { Duration::from_micros(200) } else { Duration::from_millis(1) });
    }
}
