//! The communicator the training loop holds: collectives on tch tensors for one process per
//! device. Three backends behind one API: NCCL (CUDA tensors, world > 1), the TCP store (CPU
//! tensors, world > 1: slow, for tests and CPU runs) and local (world 1: copies or nothing).
//! Results are identical on every rank (the store backend sums in rank order).

use std::time::Duration;

use cudarc::nccl::sys::{ncclDataType_t, ncclRedOp_t};
use openseek_common::{ExitCode, Failure};
use tch::{Device, Kind, Tensor};

use crate::launch::Launch;
use crate::nccl::{self, NcclComm};
use crate::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// Sum divided by the world size (floating-point tensors only).
    Avg,
    Max,
}

#[derive(Debug, Clone, Copy)]
pub struct CommOptions {
    /// Rendezvous and store operations (stop agreement, barriers).
    pub store_timeout: Duration,
    /// Any one collective, enforced by the NCCL watchdog.
    pub collective_timeout: Duration,
    /// Use NCCL on a CUDA device even at world size 1 (to check the NCCL path on one GPU).
    pub force_nccl: bool,
}

impl Default for CommOptions {
    fn default() -> Self {
        CommOptions { store_timeout: Duration::from_secs(600), collective_timeout: Duration::from_secs(600), force_nccl: false }
    }
}

/// A point in the collectives queued so far ([`Comm::mark`]): the device can wait for the
/// collectives up to it ([`Comm::wait_mark`]) without waiting for those queued after it.
pub struct Mark(Option<nccl::Event>);

enum Backend {
    Local,
    Store,
    Nccl(NcclComm),
}

pub struct Comm {
    launch: Launch,
    device: Device,
    store: Store,
    backend: Backend,
}

impl Comm {
    /// Rendezvous with every rank and set up the backend for `device` (normally
    /// [`Comm::device_for`]). NCCL's unique id travels through the store.
    pub fn init(launch: Launch, device: Device, options: CommOptions) -> Result<Comm, Failure> {
        let store = Store::connect(&launch, options.store_timeout)?;
        let backend = match device {
            Device::Cpu if launch.world == 1 => Backend::Local,
            Device::Cuda(_) if launch.world == 1 && !options.force_nccl => Backend::Local,
            Device::Cuda(index) => {
                let id = if launch.rank == 0 { nccl::unique_id()? } else { Vec::new() };
                let id = store.broadcast("nccl-unique-id", 0, &id)?;
                Backend::Nccl(NcclComm::new(&id, launch.rank, launch.world, index, launch.who(), options.collective_timeout)?)
            }
            Device::Cpu => Backend::Store,
            other => return Err(Failure::usage(format!("{}: no collectives for device {other:?}", launch.who()))),
        };
        store.barrier("comm-ready")?;
        Ok(Comm { launch, device, store, backend })
    }

    /// The GPU of this local rank when CUDA is available, else the CPU. A task that sees a single
    /// GPU (bound to it: `srun --gpus-per-task=1`, `CUDA_VISIBLE_DEVICES`) takes that one.
    pub fn device_for(launch: &Launch) -> Device {
        if tch::Cuda::is_available() {
            Device::Cuda(if tch::Cuda::device_count() == 1 { 0 } else { launch.local_rank })
        } else {
            Device::Cpu
        }
    }

    pub fn rank(&self) -> usize {
        self.launch.rank
    }

    pub fn world(&self) -> usize {
        self.launch.world
    }

    pub fn launch(&self) -> &Launch {
        &self.launch
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The rendezvous store, for agreeing on small values without the GPU.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The backend in words (for logs and run manifests).
    pub fn backend_name(&self) -> String {
        match &self.backend {
            Backend::Local => "local (world size 1)".into(),
            Backend::Store => "tcp-store (CPU)".into(),
            Backend::Nccl(_) => format!("nccl {}", nccl::version().map(|v| v.to_string()).unwrap_or_default()),
        }
    }

    /// True on every rank if `local` is true on any: call once per step with "stop requested"
    /// (USR1/TERM seen by this process) so all ranks checkpoint and exit at the same step.
    pub fn stop_agreed(&self, local: bool) -> Result<bool, Failure> {
        self.store.any("stop", local)
    }

    fn check(&self, op: &str, t: &Tensor) -> Result<(), Failure> {
        let bad = |why: String| Err(Failure::software(format!("{}: {op}: {why}", self.launch.who())));
        if !t.is_contiguous() {
            return bad("tensor is not contiguous".into());
        }
        match (&self.backend, t.device()) {
            (Backend::Nccl(_), d) if d != self.device => bad(format!("tensor on {d:?}, communicator on {:?}", self.device)),
            (Backend::Store, d) if d != Device::Cpu => bad(format!("tensor on {d:?}; the CPU backend takes CPU tensors")),
            _ => Ok(()),
        }
    }

    /// In place: every rank's `t` becomes the reduction of all ranks' `t`.
    pub fn all_reduce(&mut self, t: &mut Tensor, op: ReduceOp) -> Result<(), Failure> {
        self.check("all_reduce", t)?;
        if op == ReduceOp::Avg && !matches!(t.kind(), Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16) {
            return Err(Failure::software(format!("{}: all_reduce Avg of a {:?} tensor", self.launch.who(), t.kind())));
        }
        let n = t.numel();
        match &mut self.backend {
            Backend::Local => Ok(()),
            Backend::Nccl(c) => unsafe { c.all_reduce(t.data_ptr(), t.data_ptr(), n, nccl_type(t.kind())?, nccl_op(op)) },
            Backend::Store => {
                let parts = store_gather(&self.store, "all_reduce", t)?;
                let r = reduce(&parts, op, self.launch.world);
                t.copy_(&r.view_as(t));
                Ok(())
            }
        }
    }

    /// `input` holds `world` equal parts; rank r's `output` becomes the reduction of part r
    /// (`output` may be part r of `input` itself: in place).
    pub fn reduce_scatter(&mut self, input: &Tensor, output: &mut Tensor, op: ReduceOp) -> Result<(), Failure> {
        self.reduce_scatter_maybe_overlapped(input, output, op, false)
    }

    /// [`Comm::reduce_scatter`] overlapped with the computation that follows: on NCCL it runs on
    /// the communicator's stream after the work queued so far, and the compute stream waits for it
    /// only at [`Comm::wait`]; `input` and `output` must stay allocated and untouched until then.
    /// The other backends finish it before returning (the same numbers).
    pub fn reduce_scatter_overlapped(&mut self, input: &Tensor, output: &mut Tensor, op: ReduceOp) -> Result<(), Failure> {
        self.reduce_scatter_maybe_overlapped(input, output, op, true)
    }

    /// The compute stream waits for the overlapped collectives queued so far (NCCL; the other
    /// backends have nothing in flight).
    pub fn wait(&mut self) -> Result<(), Failure> {
        match &mut self.backend {
            Backend::Nccl(c) => c.wait(),
            _ => Ok(()),
        }
    }

    fn reduce_scatter_maybe_overlapped(&mut self, input: &Tensor, output: &mut Tensor, op: ReduceOp, overlap: bool) -> Result<(), Failure> {
        self.check("reduce_scatter", input)?;
        self.check("reduce_scatter", output)?;
        let n = output.numel();
        if input.numel() != n * self.world() || input.kind() != output.kind() {
            return Err(Failure::software(format!(
                "{}: reduce_scatter of {} {:?} elements into {} {:?} with world size {}",
                self.launch.who(),
                input.numel(),
                input.kind(),
                n,
                output.kind(),
                self.world()
            )));
        }
        match &mut self.backend {
            Backend::Local => {
                if input.data_ptr() != output.data_ptr() {
                    output.copy_(&input.view_as(output));
                }
                Ok(())
            }
            Backend::Nccl(c) => unsafe { c.reduce_scatter(input.data_ptr(), output.data_ptr(), n, nccl_type(input.kind())?, nccl_op(op), overlap) },
            Backend::Store => {
                let parts = store_gather(&self.store, "reduce_scatter", input)?;
                let r = reduce(&parts, op, self.launch.world);
                let mine = r.narrow(0, (self.launch.rank * n) as i64, n as i64);
                output.copy_(&mine.view_as(output));
                Ok(())
            }
        }
    }

    /// Every rank's `output` becomes all ranks' `input`s end to end, in rank order. `input` may be
    /// rank r's part of `output` itself (in place).
    pub fn all_gather(&mut self, input: &Tensor, output: &mut Tensor) -> Result<(), Failure> {
        self.all_gather_maybe_overlapped(input, output, false)
    }

    /// [`Comm::all_gather`] overlapped with the computation that follows (as
    /// [`Comm::reduce_scatter_overlapped`]); the device waits for it at [`Comm::wait`] or at a
    /// [`Comm::wait_mark`] of a mark taken after it.
    pub fn all_gather_overlapped(&mut self, input: &Tensor, output: &mut Tensor) -> Result<(), Failure> {
        self.all_gather_maybe_overlapped(input, output, true)
    }

    /// A mark after the collectives queued so far.
    pub fn mark(&mut self) -> Result<Mark, Failure> {
        match &mut self.backend {
            Backend::Nccl(c) => Ok(Mark(Some(c.mark()?))),
            _ => Ok(Mark(None)),
        }
    }

    /// The compute stream waits (on the device) for the collectives queued up to `mark`.
    pub fn wait_mark(&mut self, mark: Mark) -> Result<(), Failure> {
        match (&mut self.backend, mark.0) {
            (Backend::Nccl(c), Some(event)) => c.wait_event(event),
            _ => Ok(()),
        }
    }

    /// Whether collectives really run (NCCL or the TCP store), rather than the world-size-1 copies.
    pub fn is_local(&self) -> bool {
        matches!(self.backend, Backend::Local)
    }

    fn all_gather_maybe_overlapped(&mut self, input: &Tensor, output: &mut Tensor, overlap: bool) -> Result<(), Failure> {
        self.check("all_gather", input)?;
        self.check("all_gather", output)?;
        let n = input.numel();
        if output.numel() != n * self.world() || input.kind() != output.kind() {
            return Err(Failure::software(format!(
                "{}: all_gather of {} {:?} elements into {} {:?} with world size {}",
                self.launch.who(),
                n,
                input.kind(),
                output.numel(),
                output.kind(),
                self.world()
            )));
        }
        match &mut self.backend {
            Backend::Local => {
                if input.data_ptr() != output.data_ptr() {
                    output.copy_(&input.view_as(output));
                }
                Ok(())
            }
            Backend::Nccl(c) => unsafe { c.all_gather(input.data_ptr(), output.data_ptr(), n, nccl_type(input.kind())?, overlap) },
            Backend::Store => {
                let parts = store_gather(&self.store, "all_gather", input)?;
                output.copy_(&Tensor::cat(&parts, 0).view_as(output));
                Ok(())
            }
        }
    }

    /// Every rank's `t` becomes rank `root`'s.
    pub fn broadcast(&mut self, t: &mut Tensor, root: usize) -> Result<(), Failure> {
        self.check("broadcast", t)?;
        let n = t.numel();
        match &mut self.backend {
            Backend::Local => Ok(()),
            Backend::Nccl(c) => unsafe { c.broadcast(t.data_ptr(), t.data_ptr(), n, nccl_type(t.kind())?, root) },
            Backend::Store => {
                let bytes = self.store.broadcast("broadcast", root, &tensor_bytes(t))?;
                t.copy_(&Tensor::from_data_size(&bytes, &[n as i64], t.kind()).view_as(t));
                Ok(())
            }
        }
    }

    /// Reduce a few host numbers (logged metrics: loss, token counts) across ranks.
    pub fn all_reduce_f64(&mut self, values: &mut [f64], op: ReduceOp) -> Result<(), Failure> {
        let mut t = Tensor::from_slice(values).to_device(match self.backend {
            Backend::Nccl(_) => self.device,
            _ => Device::Cpu,
        });
        self.all_reduce(&mut t, op)?;
        let out = Vec::<f64>::try_from(&t.to_device(Device::Cpu)).map_err(|e| Failure::software(e.to_string()))?;
        values.copy_from_slice(&out);
        Ok(())
    }

    /// Wait for every queued collective (NCCL: with the watchdog's verdict).
    pub fn synchronize(&mut self) -> Result<(), Failure> {
        match &mut self.backend {
            Backend::Nccl(c) => c.synchronize(),
            _ => {
                if let Device::Cuda(index) = self.device {
                    tch::Cuda::synchronize(index as i64);
                }
                Ok(())
            }
        }
    }
}

fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let n = t.numel();
    let mut buf = vec![0u8; n * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut buf, n);
    buf
}

fn store_gather(store: &Store, op: &str, t: &Tensor) -> Result<Vec<Tensor>, Failure> {
    let (n, kind) = (t.numel() as i64, t.kind());
    let all = store.gather(op, &tensor_bytes(t))?;
    for (r, bytes) in all.iter().enumerate() {
        if bytes.len() != n as usize * kind.elt_size_in_bytes() {
            return Err(Failure::new(ExitCode::Software, format!("{op}: rank {r} sent {} bytes, this rank {} (shapes differ across ranks)", bytes.len(), n as usize * kind.elt_size_in_bytes())));
        }
    }
    Ok(all.iter().map(|b| Tensor::from_data_size(b, &[n], kind)).collect())
}

/// Reduce in rank order, so every rank computes the same bits.
fn reduce(parts: &[Tensor], op: ReduceOp, world: usize) -> Tensor {
    let mut acc = parts[0].copy();
    for p in &parts[1..] {
        acc = match op {
            ReduceOp::Sum | ReduceOp::Avg => acc + p,
            ReduceOp::Max => acc.maximum(p),
        };
    }
    if op == ReduceOp::Avg {
        acc /= world as f64;
    }
    acc
}

fn nccl_type(kind: Kind) -> Result<ncclDataType_t, Failure> {
    use ncclDataType_t::*;
    Ok(match kind {
        Kind::Float => ncclFloat32,
        Kind::Double => ncclFloat64,
        Kind::Half => ncclFloat16,
        Kind::BFloat16 => ncclBfloat16,
        Kind::Int => ncclInt32,
        Kind::Int64 => ncclInt64,
        Kind::Int8 => ncclInt8,
        Kind::Uint8 => ncclUint8,
        other => return Err(Failure::software(format!("no NCCL type for {other:?} tensors"))),
    })
}

fn nccl_op(op: ReduceOp) -> ncclRedOp_t {
    match op {
        ReduceOp::Sum => ncclRedOp_t::ncclSum,
        ReduceOp::Avg => ncclRedOp_t::ncclAvg,
        ReduceOp::Max => ncclRedOp_t::ncclMax,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_of_one_collectives_are_identities() {
        let mut c = Comm::init(Launch::single(), Device::Cpu, CommOptions::default()).unwrap();
        let mut t = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]);
        c.all_reduce(&mut t, ReduceOp::Avg).unwrap();
        assert_eq!(Vec::<f32>::try_from(&t).unwrap(), [1.0, 2.0, 3.0, 4.0]);
        let mut out = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        c.reduce_scatter(&t, &mut out, ReduceOp::Sum).unwrap();
        assert_eq!(Vec::<f32>::try_from(&out).unwrap(), [1.0, 2.0, 3.0, 4.0]);
        let mut out = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        c.all_gather(&t, &mut out).unwrap();
        assert_eq!(Vec::<f32>::try_from(&out).unwrap(), [1.0, 2.0, 3.0, 4.0]);
        let mut m = [1.5, 2.5];
        c.all_reduce_f64(&mut m, ReduceOp::Sum).unwrap();
        assert_eq!(m, [1.5, 2.5]);
        assert!(!c.stop_agreed(false).unwrap() && c.stop_agreed(true).unwrap());
        // Wrong sizes are refused, not silently truncated.
        let mut small = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        assert!(c.all_gather(&t, &mut small).is_err());
        let mut ints = Tensor::from_slice(&[1i64, 2]);
        assert!(c.all_reduce(&mut ints, ReduceOp::Avg).is_err());
    }

    #[test]
    fn store_backend_reduces_in_rank_order_on_threads() {
        use crate::launch::Source;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let world = 3;
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                std::thread::spawn(move || {
                    let launch = Launch {
                        rank,
                        local_rank: rank,
                        world,
                        master_addr: "127.0.0.1".into(),
                        master_port: port,
                        host: "h".into(),
                        source: Source::Torchrun,
                    };
                    let mut c = Comm::init(launch, Device::Cpu, CommOptions::default()).unwrap();
                    let r = rank as f32;
                    let mut t = Tensor::from_slice(&[r, 10.0 * r, 1.0, 2.0, 3.0, 4.0]);
                    c.all_reduce(&mut t, ReduceOp::Sum).unwrap();
                    let sum = Vec::<f32>::try_from(&t).unwrap();
                    let input = Tensor::from_slice(&[r, r + 1.0, r + 2.0, r + 3.0, r + 4.0, r + 5.0]);
                    let mut part = Tensor::zeros([2], (Kind::Float, Device::Cpu));
                    c.reduce_scatter(&input, &mut part, ReduceOp::Avg).unwrap();
                    let mut gathered = Tensor::zeros([3], (Kind::Int64, Device::Cpu));
                    c.all_gather(&Tensor::from_slice(&[rank as i64 * 7]), &mut gathered).unwrap();
                    let mut b = Tensor::from_slice(&[r; 2]);
                    c.broadcast(&mut b, 2).unwrap();
                    let mut mx = Tensor::from_slice(&[r, -r]);
                    c.all_reduce(&mut mx, ReduceOp::Max).unwrap();
                    (
                        sum,
                        Vec::<f32>::try_from(&part).unwrap(),
                        Vec::<i64>::try_from(&gathered).unwrap(),
                        Vec::<f32>::try_from(&b).unwrap(),
                        Vec::<f32>::try_from(&mx).unwrap(),
                    )
                })
            })
            .collect();
        for (rank, h) in handles.into_iter().enumerate() {
            let (sum, part, gathered, b, mx) = h.join().unwrap();
            assert_eq!(sum, [3.0, 30.0, 3.0, 6.0, 9.0, 12.0]);
            // Mean over ranks of (r + i) for i in this rank's two positions = 1 + i.
            let i = 2.0 * rank as f32;
            assert_eq!(part, [1.0 + i, 2.0 + i]);
            assert_eq!(gathered, [0, 7, 14]);
            assert_eq!(b, [2.0, 2.0]);
            assert_eq!(mx, [2.0, 0.0]);
        }
    }
}
