//! CUDA kernels compiled at run time. Each [`Program`] is CUDA C source in this crate; on first use
//! on a device, NVRTC (the `libnvrtc.so.13` that the torch wheel brings, so no CUDA toolkit is
//! needed to build or run) compiles it to machine code for that device's architecture, the driver
//! API loads it, and [`launch`] runs a kernel on torch's current stream of the device. Modules are
//! cached per process.
//!
//! The sources (`kernels/cuda/*.cu`, built into the binary with `include_str!`) include no CUDA
//! headers: bf16 values travel as `unsigned short`, converted by `cuda/bf16.cuh`'s helpers (round
//! to nearest even, as torch casts), which NVRTC receives as a named header. Kernel arguments are
//! collected with [`Args`].

use cudarc::driver::result as cu;
use cudarc::driver::sys::{CUdevice_attribute, CUfunction, CUmodule, CUstream};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::{Mutex, OnceLock};
use tch::TchError;

/// CUDA C source with its kernels (`extern "C" __global__`).
pub struct Program {
    /// Names the program in compile errors and the module cache.
    pub name: &'static str,
    pub source: &'static str,
}

/// The header every program includes (`#include "bf16.cuh"`): bf16 <-> fp32 as torch converts.
const BF16_HEADER: (&str, &str) = ("bf16.cuh", include_str!("../cuda/bf16.cuh"));

type NvrtcProgram = *mut c_void;

/// The NVRTC functions used, resolved once per process.
struct Nvrtc {
    _lib: libloading::Library,
    _builtins: Vec<libloading::Library>,
    create: unsafe extern "C" fn(*mut NvrtcProgram, *const c_char, *const c_char, c_int, *const *const c_char, *const *const c_char) -> c_int,
    compile: unsafe extern "C" fn(NvrtcProgram, c_int, *const *const c_char) -> c_int,
    log_size: unsafe extern "C" fn(NvrtcProgram, *mut usize) -> c_int,
    log: unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> c_int,
    cubin_size: unsafe extern "C" fn(NvrtcProgram, *mut usize) -> c_int,
    cubin: unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> c_int,
    destroy: unsafe extern "C" fn(*mut NvrtcProgram) -> c_int,
    error_string: unsafe extern "C" fn(c_int) -> *const c_char,
}

/// Library names tried in order: `OPENSEEK_NVRTC_LIBRARY`, the soname (found when already mapped
/// or on the loader's path), then the pip package beside the torch this binary was built against
/// and the GPU machines' torch.
fn candidates() -> Vec<String> {
    let mut c: Vec<String> = std::env::var("OPENSEEK_NVRTC_LIBRARY").ok().into_iter().collect();
    c.push("libnvrtc.so.13".into());
    for torch_lib in [option_env!("OPENSEEK_TORCH_LIB"), option_env!("OPENSEEK_GPU_MACHINES_TORCH_LIB")].into_iter().flatten() {
        c.push(format!("{torch_lib}/../../nvidia/cu13/lib/libnvrtc.so.13"));
    }
    c
}

fn nvrtc() -> Result<&'static Nvrtc, TchError> {
    static API: OnceLock<Result<Nvrtc, String>> = OnceLock::new();
    API.get_or_init(|| {
        let mut tried = Vec::new();
        for name in candidates() {
            // Safety: loading NVRTC runs its (trusted) initialisers only.
            match unsafe { libloading::Library::new(&name) } {
                Ok(lib) => return load(lib, builtins_beside(&name)).map_err(|e| format!("{name}: {e}")),
                Err(e) => tried.push(format!("{name} ({e})")),
            }
        }
        Err(format!("cannot load NVRTC (set OPENSEEK_NVRTC_LIBRARY to libnvrtc.so.13); tried {}", tried.join(", ")))
    })
    .as_ref()
    .map_err(|e| TchError::Torch(e.clone()))
}

/// NVRTC opens its builtins library (`libnvrtc-builtins.so.13.0`) by soname when compiling; a
/// pip install's directory is not on the loader's path, so the one beside a `libnvrtc` opened by
/// path is mapped first, and NVRTC's lookup then finds it by its soname.
fn builtins_beside(nvrtc_path: &str) -> Vec<libloading::Library> {
    let Some(dir) = std::path::Path::new(nvrtc_path).parent().filter(|d| !d.as_os_str().is_empty()) else { return vec![] };
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libnvrtc-builtins.so.")))
        // Safety: NVRTC's own support library; its initialisers are trusted.
        .filter_map(|p| unsafe { libloading::Library::new(&p) }.ok())
        .collect()
}

fn load(lib: libloading::Library, builtins: Vec<libloading::Library>) -> Result<Nvrtc, libloading::Error> {
    // Safety: the signatures are those of nvrtc.h (CUDA 13).
    unsafe {
        Ok(Nvrtc {
            create: *lib.get(b"nvrtcCreateProgram\0")?,
            compile: *lib.get(b"nvrtcCompileProgram\0")?,
            log_size: *lib.get(b"nvrtcGetProgramLogSize\0")?,
            log: *lib.get(b"nvrtcGetProgramLog\0")?,
            cubin_size: *lib.get(b"nvrtcGetCUBINSize\0")?,
            cubin: *lib.get(b"nvrtcGetCUBIN\0")?,
            destroy: *lib.get(b"nvrtcDestroyProgram\0")?,
            error_string: *lib.get(b"nvrtcGetErrorString\0")?,
            _lib: lib,
            _builtins: builtins,
        })
    }
}

/// Machine code of `program` for compute capability `arch` (90 = sm_90).
pub fn compile(program: &Program, arch: i32) -> Result<Vec<u8>, TchError> {
    let api = nvrtc()?;
    let fail = |what: &str, rc: c_int| {
        // Safety: NVRTC returns a static string for any code.
        let msg = unsafe { CStr::from_ptr((api.error_string)(rc)) }.to_string_lossy().into_owned();
        TchError::Torch(format!("NVRTC {what} of {}: {msg}", program.name))
    };
    let source = CString::new(program.source).expect("kernel sources hold no NUL");
    let name = CString::new(format!("{}.cu", program.name)).unwrap();
    let (header_name, header) = (CString::new(BF16_HEADER.0).unwrap(), CString::new(BF16_HEADER.1).unwrap());
    let options: Vec<CString> =
        [format!("--gpu-architecture=sm_{arch}"), "-std=c++17".into(), "-default-device".into()].into_iter().map(|o| CString::new(o).unwrap()).collect();
    let option_ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
    let mut prog: NvrtcProgram = std::ptr::null_mut();
    // Safety: valid C strings that outlive the calls; the program is destroyed below.
    unsafe {
        let rc = (api.create)(&mut prog, source.as_ptr(), name.as_ptr(), 1, &header.as_ptr(), &header_name.as_ptr());
        if rc != 0 {
            return Err(fail("create", rc));
        }
        let rc = (api.compile)(prog, option_ptrs.len() as c_int, option_ptrs.as_ptr());
        let result = if rc != 0 {
            let mut n = 0usize;
            (api.log_size)(prog, &mut n);
            let mut log = vec![0u8; n.max(1)];
            (api.log)(prog, log.as_mut_ptr().cast());
            let log = String::from_utf8_lossy(&log).trim_end_matches('\0').trim().to_string();
            Err(TchError::Torch(format!("NVRTC could not compile {} for sm_{arch}:\n{log}", program.name)))
        } else {
            let mut n = 0usize;
            match (api.cubin_size)(prog, &mut n) {
                0 => {
                    let mut code = vec![0u8; n];
                    match (api.cubin)(prog, code.as_mut_ptr().cast()) {
                        0 => Ok(code),
                        rc => Err(fail("machine code", rc)),
                    }
                }
                rc => Err(fail("machine code size", rc)),
            }
        };
        (api.destroy)(&mut prog);
        result
    }
}

/// A loaded module (driver handles are plain pointers, used under the cache's lock only to look
/// functions up; the driver API itself is thread-safe).
struct Module {
    module: CUmodule,
    functions: HashMap<String, Function>,
}
unsafe impl Send for Module {}

/// A kernel of a loaded program.
#[derive(Clone, Copy)]
pub struct Function(CUfunction);
unsafe impl Send for Function {}

fn driver(what: &str, e: cudarc::driver::DriverError) -> TchError {
    TchError::Torch(format!("CUDA {what}: {e:?}"))
}

/// Make the device's primary context (the one the CUDA runtime, so libtorch, uses) current on
/// this thread; retained once per device.
fn use_device(device: usize) -> Result<(), TchError> {
    struct Ctx(cudarc::driver::sys::CUcontext);
    unsafe impl Send for Ctx {}
    static CONTEXTS: OnceLock<Mutex<HashMap<usize, Ctx>>> = OnceLock::new();
    let mut contexts = CONTEXTS.get_or_init(Default::default).lock().unwrap();
    if let Entry::Vacant(slot) = contexts.entry(device) {
        cu::init().map_err(|e| driver("init", e))?;
        let dev = cu::device::get(device as c_int).map_err(|e| driver("device", e))?;
        // Safety: the primary context of a valid device, retained for the life of the process.
        let ctx = unsafe { cu::primary_ctx::retain(dev) }.map_err(|e| driver("context", e))?;
        slot.insert(Ctx(ctx));
    }
    // Safety: a retained context.
    unsafe { cu::ctx::set_current(contexts[&device].0) }.map_err(|e| driver("set context", e))
}

/// The compute capability of `device` as a number (90 for 9.0).
pub fn arch(device: usize) -> Result<i32, TchError> {
    cu::init().map_err(|e| driver("init", e))?;
    let dev = cu::device::get(device as c_int).map_err(|e| driver("device", e))?;
    // Safety: a valid device and attributes.
    let (major, minor) = unsafe {
        (
            cu::device::get_attribute(dev, CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR).map_err(|e| driver("attribute", e))?,
            cu::device::get_attribute(dev, CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR).map_err(|e| driver("attribute", e))?,
        )
    };
    Ok(major * 10 + minor)
}

/// The kernel `kernel` of `program` on `device`, compiled and loaded on first use.
pub fn function(program: &Program, kernel: &str, device: usize) -> Result<Function, TchError> {
    static CACHE: OnceLock<Mutex<HashMap<(&'static str, usize), Module>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap();
    let m = match cache.entry((program.name, device)) {
        Entry::Occupied(loaded) => loaded.into_mut(),
        Entry::Vacant(slot) => {
            let code = compile(program, arch(device)?)?;
            use_device(device)?;
            // Safety: machine code NVRTC just produced for this device.
            let module = unsafe { cu::module::load_data(code.as_ptr().cast()) }.map_err(|e| driver(&format!("loading {}", program.name), e))?;
            slot.insert(Module { module, functions: HashMap::new() })
        }
    };
    if let Some(f) = m.functions.get(kernel) {
        return Ok(*f);
    }
    // Safety: a loaded module.
    let f = unsafe { cu::module::get_function(m.module, CString::new(kernel).unwrap()) }
        .map_err(|e| driver(&format!("kernel {kernel} of {}", program.name), e))?;
    m.functions.insert(kernel.to_string(), Function(f));
    Ok(Function(f))
}

/// A kernel's arguments, in the order of its parameters, for [`launch`]: each value is copied into
/// a slot of its own, so the pointers the driver reads stay valid until the launch (candle's
/// `barg!` builder as a type). `Args::new().arg(ptr).arg(n as i64)`: the types must be the
/// kernel's parameter types (`*mut c_void` / `*const c_void` for pointers, `i64` for `long long`).
#[derive(Default)]
pub struct Args {
    slots: Vec<Box<dyn std::any::Any>>,
    pointers: Vec<*mut c_void>,
}

impl Args {
    pub fn new() -> Args {
        Args::default()
    }

    /// The next argument.
    pub fn arg<T: Copy + 'static>(mut self, value: T) -> Args {
        let mut slot = Box::new(value);
        self.pointers.push((&mut *slot as *mut T).cast());
        self.slots.push(slot);
        self
    }
}

/// Run `f` on torch's current stream of `device` with `grid` x `block` threads and `shared` bytes
/// of dynamic shared memory per block (beyond 48 KiB the kernel is first allowed that much, as the
/// driver requires).
///
/// # Safety
/// `args` must hold values whose types are the kernel's parameters, in order, and the device
/// pointers among them must stay valid until the kernel has run (tensors kept alive by the caller;
/// torch's stream-ordered allocator makes that hold for tensors dropped after the launch).
pub unsafe fn launch(f: Function, grid: u32, block: u32, shared: u32, device: usize, mut args: Args) -> Result<(), TchError> {
    let stream = crate::current_stream(device)?;
    use_device(device)?;
    if shared > 48 * 1024 {
        let attr = cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        unsafe { cu::function::set_function_attribute(f.0, attr, shared as i32) }.map_err(|e| driver("shared memory size", e))?;
    }
    unsafe { cu::launch_kernel(f.0, (grid, 1, 1), (block, 1, 1), shared, stream.handle as CUstream, &mut args.pointers) }.map_err(|e| driver("launch", e))
}

/// The body of a launcher that the C++ shim calls through a function pointer: runs `launch`,
/// returns 0, or 1 with its error (or a panic, named by `what`) written into `err` (`cap` bytes,
/// NUL-terminated): no unwinding crosses into C++.
///
/// # Safety
/// `err` must point at `cap` writable bytes (`cap` >= 1).
pub(crate) unsafe fn shim_launcher(what: &str, err: *mut c_char, cap: usize, launch: impl FnOnce() -> Result<(), TchError> + std::panic::UnwindSafe) -> c_int {
    let result = std::panic::catch_unwind(launch).unwrap_or_else(|_| Err(TchError::Torch(format!("{what} launcher panicked"))));
    match result {
        Ok(()) => 0,
        Err(e) => {
            let msg = e.to_string();
            let n = msg.len().min(cap.saturating_sub(1));
            unsafe {
                std::ptr::copy_nonoverlapping(msg.as_ptr(), err.cast::<u8>(), n);
                *err.add(n) = 0;
            }
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVRTC compiles without a GPU: a program's syntax errors come back with the compiler's log.
    #[test]
    fn compiles_for_hopper_and_reports_errors() {
        let good = Program { name: "probe", source: "extern \"C\" __global__ void probe(float* x) { x[threadIdx.x] *= 2.0f; }" };
        let code = compile(&good, 90).unwrap();
        assert!(code.starts_with(b"\x7fELF"), "CUBIN is an ELF image");
        let bad = Program { name: "broken", source: "extern \"C\" __global__ void broken(float* x) { x[0] = undefined_name; }" };
        let err = compile(&bad, 90).unwrap_err().to_string();
        assert!(err.contains("broken") && err.contains("undefined_name"), "{err}");
        let with_header = Program { name: "header", source: "#include \"bf16.cuh\"\nextern \"C\" __global__ void h(bf16* x) { x[0] = f32_to_bf16(1.0f); }" };
        assert!(compile(&with_header, 90).is_ok(), "the bf16 header is found by name");
    }

    /// Each argument's pointer reads back the value given, in order.
    #[test]
    fn args_point_at_their_values() {
        let p = 0x1234usize as *mut c_void;
        let args = Args::new().arg(p).arg(7i64).arg(3i32).arg(2.5f32);
        let ptrs = &args.pointers;
        unsafe {
            assert_eq!(*ptrs[0].cast::<*mut c_void>(), p);
            assert_eq!(*ptrs[1].cast::<i64>(), 7);
            assert_eq!(*ptrs[2].cast::<i32>(), 3);
            assert_eq!(*ptrs[3].cast::<f32>(), 2.5);
        }
    }
}
