//! The checks behind `os-dist-check`: run as one process per rank (Slurm, torchrun variables or
//! by hand), on GPUs (NCCL) or CPU (TCP store). Known-answer collectives, a toy ZeRO-1 training run
//! whose losses must not depend on the world size (and that resumes on another world size), an
//! all-reduce bandwidth figure, and the watchdog's error when a rank skips a collective.

use std::path::Path;
use std::time::{Duration, Instant};

use openseek_common::Failure;
use tch::{Device, Kind, Tensor};

use crate::comm::{Comm, CommOptions, ReduceOp};
use crate::dp::{AdamWConfig, NamedParam, Zero1};
use crate::launch::Launch;
use crate::layout::{self, split_evenly};

/// Rendezvous and build the communicator (`cpu` forces the CPU even where CUDA is present).
pub fn setup(cpu: bool, force_nccl: bool, timeout: Duration) -> Result<Comm, Failure> {
    let launch = Launch::from_env()?;
    let device = if cpu { Device::Cpu } else { Comm::device_for(&launch) };
    Comm::init(launch, device, CommOptions { store_timeout: timeout, collective_timeout: timeout, force_nccl })
}

fn values<T: tch::kind::Element>(t: &Tensor) -> Vec<T> {
    let t = t.to_device(Device::Cpu).to_kind(T::KIND);
    let mut v = vec![T::ZERO; t.numel()];
    t.copy_data(&mut v, t.numel());
    v
}

/// Known-answer collectives; an error names the first that gave a wrong result.
pub fn collectives(comm: &mut Comm, elems: usize) -> Result<(), Failure> {
    let (w, r, dev) = (comm.world() as i64, comm.rank() as i64, comm.device());
    let n = elems as i64;
    let f32s = (Kind::Float, dev);
    let who = comm.launch().who();
    let expect = |name: &str, ok: bool| -> Result<(), Failure> {
        if ok {
            println!("{who}: ok {name}");
            Ok(())
        } else {
            Err(Failure::software(format!("{who}: {name} gave a wrong result")))
        }
    };
    let close = |a: &Tensor, b: &Tensor| a.allclose(b, 1e-6, 1e-6, false);

    let base = Tensor::arange(n, f32s);
    let mut t = &base * (r + 1) as f64;
    comm.all_reduce(&mut t, ReduceOp::Sum)?;
    expect("all_reduce sum fp32", close(&t, &(&base * (w * (w + 1) / 2) as f64)))?;

    let mut t = &base * (r + 1) as f64;
    comm.all_reduce(&mut t, ReduceOp::Avg)?;
    expect("all_reduce avg fp32", close(&t, &(&base * ((w + 1) as f64 / 2.0))))?;

    let mut t = Tensor::ones([n], (Kind::BFloat16, dev));
    comm.all_reduce(&mut t, ReduceOp::Sum)?;
    expect("all_reduce sum bf16", values::<f32>(&t.to_kind(Kind::Float)).iter().all(|&x| x == w as f32))?;

    let mut counts = Tensor::arange(64, (Kind::Int64, dev)) + r;
    comm.all_reduce(&mut counts, ReduceOp::Sum)?;
    let want: Vec<i64> = (0..64).map(|e| w * e + w * (w - 1) / 2).collect();
    expect("all_reduce sum int64 (tokens per expert)", values::<i64>(&counts) == want)?;

    let k = (n + w - 1) / w;
    let input = Tensor::arange(w * k, f32s) + r as f64;
    let mut out = Tensor::zeros([k], f32s);
    comm.reduce_scatter(&input, &mut out, ReduceOp::Sum)?;
    let want = (Tensor::arange(k, f32s) + (r * k) as f64) * w as f64 + (w * (w - 1) / 2) as f64;
    expect("reduce_scatter sum fp32", close(&out, &want))?;

    let mut gathered = Tensor::zeros([w * k], f32s);
    comm.all_gather(&Tensor::full([k], r as f64, f32s), &mut gathered)?;
    let want = Tensor::arange(w, f32s).repeat_interleave_self_int(k, 0, None);
    expect("all_gather fp32", close(&gathered, &want))?;

    let mut b = Tensor::full([n], r as f64, f32s);
    comm.broadcast(&mut b, (w - 1) as usize)?;
    expect("broadcast from the last rank", close(&b, &Tensor::full([n], (w - 1) as f64, f32s)))?;

    let mut metrics = [r as f64, 1.0];
    comm.all_reduce_f64(&mut metrics, ReduceOp::Sum)?;
    expect("all_reduce of host metrics", metrics == [(w * (w - 1) / 2) as f64, w as f64])?;

    expect("stop agreement", comm.stop_agreed(r == w - 1)? && !comm.stop_agreed(false)?)?;
    comm.synchronize()
}

/// Toy ZeRO-1 training: linear regression, global batch of 24 rows split over the ranks; the data
/// of step s depends only on s, so every world size should print the same losses.
/// Prints `step <s> loss <global loss>` (rank 0) and `final <checksum>`.
pub fn toy(comm: &mut Comm, steps: u64, save_at: Option<u64>, state: Option<&Path>, resume: bool) -> Result<(), Failure> {
    const BATCH: i64 = 24;
    let dev = comm.device();
    tch::manual_seed(0);
    let w_true = Tensor::randn([16, 4], (Kind::Float, Device::Cpu));
    let w = (Tensor::randn([16, 4], (Kind::Float, Device::Cpu)) * 0.1).to_device(dev).set_requires_grad(true);
    let b = Tensor::zeros([4], (Kind::Float, dev)).set_requires_grad(true);
    let params = vec![
        NamedParam { name: "w".into(), tensor: w.shallow_clone(), decay: true, bucket: 0, leaf_kind: Kind::Float },
        NamedParam { name: "b".into(), tensor: b.shallow_clone(), decay: false, bucket: 1, leaf_kind: Kind::Float },
    ];
    Zero1::broadcast_params(&params, comm)?;
    let adam = AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, moments: Kind::Float };
    let mut opt = Zero1::new(params, comm, adam)?;
    if resume {
        let dir = state.ok_or_else(|| Failure::usage("--resume needs --state DIR"))?;
        opt.load(dir)?;
        opt.gather_params(comm, false)?;
    }
    let rows = split_evenly(BATCH as usize, comm.world(), comm.rank());
    for step in opt.steps() + 1..=steps {
        tch::manual_seed(1000 + step as i64);
        let x = Tensor::randn([BATCH, 16], (Kind::Float, Device::Cpu));
        let y = x.matmul(&w_true) + Tensor::randn([BATCH, 4], (Kind::Float, Device::Cpu)) * 0.1;
        let (x, y) = (x.narrow(0, rows.start as i64, rows.len() as i64).to_device(dev), y.narrow(0, rows.start as i64, rows.len() as i64).to_device(dev));
        for t in [&w, &b] {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let per_row = (x.matmul(&w) + &b - &y).square().mean_dim(1, false, Kind::Float);
        let local_sum = per_row.sum(Kind::Float);
        (&local_sum * (comm.world() as f64 / BATCH as f64)).backward();
        // As os-train: a bucket's reduction started as soon as its gradient is complete (b's
        // here), the rest and the wait at the end.
        opt.grads_ready(1, comm)?;
        opt.reduce_grads(comm)?;
        let norm = opt.clip_grads(comm, 1.0)?;
        opt.step(0.05, 1.0);
        opt.gather_params(comm, false)?;
        let mut loss = [local_sum.double_value(&[]) / BATCH as f64];
        comm.all_reduce_f64(&mut loss, ReduceOp::Sum)?;
        if comm.rank() == 0 {
            println!("step {step} loss {:.9e} grad_norm {norm:.9e}", loss[0]);
        }
        if Some(step) == save_at {
            let dir = state.ok_or_else(|| Failure::usage("--save-at needs --state DIR"))?;
            opt.save(dir)?;
            comm.store().barrier("saved")?;
            println!("{}: saved step {step}", comm.launch().who());
            return Ok(());
        }
    }
    let checksum = (w.abs().sum(Kind::Double) + b.abs().sum(Kind::Double)).double_value(&[]);
    println!("{}: final {checksum:.9e}", comm.launch().who());
    Ok(())
}

/// All-reduce bandwidth: `elems` fp32 elements in buckets of `bucket` (Avg), `iters` timed passes;
/// then the ZeRO-1 pattern (reduce-scatter + all-gather of the whole buffer); on CUDA, the
/// reduce-scatter overlapped with matrix products on the compute stream (as during the backward
/// pass): `overlap` = (compute + comm - both) / the shorter of the two, 1 when fully hidden, 0
/// when serialised. Rank 0 prints JSON.
pub fn bench(comm: &mut Comm, elems: usize, bucket: usize, iters: usize) -> Result<(), Failure> {
    let dev = comm.device();
    let buf = Tensor::ones([elems as i64], (Kind::Float, dev));
    let buckets = layout::chunks(elems, bucket);
    let world = comm.world();
    let shard = elems / world;
    let mut out = Tensor::zeros([shard as i64], (Kind::Float, dev));
    let time = |comm: &mut Comm, f: &mut dyn FnMut(&mut Comm) -> Result<(), Failure>| -> Result<f64, Failure> {
        f(comm)?; // warm-up
        comm.synchronize()?;
        comm.store().barrier("bench")?;
        let t0 = Instant::now();
        for _ in 0..iters {
            f(comm)?;
        }
        comm.synchronize()?;
        Ok(t0.elapsed().as_secs_f64() / iters as f64)
    };
    let t_ar = time(comm, &mut |c| {
        for b in &buckets {
            c.all_reduce(&mut buf.narrow(0, b.start as i64, b.len() as i64), ReduceOp::Avg)?;
        }
        Ok(())
    })?;
    let full = buf.narrow(0, 0, (shard * world) as i64);
    let t_rs = time(comm, &mut |c| c.reduce_scatter(&full, &mut out, ReduceOp::Avg))?;
    let mut gathered = full.shallow_clone();
    let t_ag = time(comm, &mut |c| c.all_gather(&out, &mut gathered))?;
    let overlap = match dev {
        Device::Cuda(_) => {
            let a = Tensor::randn([8192, 8192], (Kind::BFloat16, dev));
            let one = time(comm, &mut |_| {
                let _ = a.mm(&a);
                Ok(())
            })?;
            let k = ((t_rs / one).ceil() as usize).clamp(1, 2000);
            let t_mm = time(comm, &mut |_| {
                (0..k).for_each(|_| drop(a.mm(&a)));
                Ok(())
            })?;
            let t_both = time(comm, &mut |c| {
                c.reduce_scatter_overlapped(&full, &mut out, ReduceOp::Avg)?;
                (0..k).for_each(|_| drop(a.mm(&a)));
                c.wait()
            })?;
            format!(
                ", \"overlap_matmuls\": {k}, \"overlap_compute_s\": {t_mm:.4}, \"overlap_both_s\": {t_both:.4}, \"overlap\": {:.2}",
                (t_mm + t_rs - t_both) / t_mm.min(t_rs)
            )
        }
        _ => String::new(),
    };
    let bytes = (elems * 4) as f64;
    let bus = 2.0 * (world as f64 - 1.0) / world as f64;
    let ok = buf.narrow(0, 0, 1000).eq(1.0).all().int64_value(&[]) == 1;
    if comm.rank() == 0 {
        println!(
            "{{\"world\": {world}, \"backend\": \"{}\", \"elems\": {elems}, \"bucket_elems\": {bucket}, \"buckets\": {}, \"iters\": {iters}, \
             \"all_reduce_s\": {t_ar:.4}, \"all_reduce_algbw_GBps\": {:.1}, \"all_reduce_busbw_GBps\": {:.1}, \
             \"reduce_scatter_s\": {t_rs:.4}, \"all_gather_s\": {t_ag:.4}, \"zero1_comm_s\": {:.4}{overlap}, \"values_ok\": {ok}}}",
            comm.backend_name(),
            buckets.len(),
            bytes / t_ar / 1e9,
            bytes / t_ar / 1e9 * bus,
            t_rs + t_ag
        );
    }
    if !ok {
        return Err(Failure::software("averaging ones did not give ones"));
    }
    Ok(())
}

/// Rank `skip` leaves out one all-reduce; every other rank must get an error (watchdog or store
/// timeout) naming its rank, host and the collective, instead of hanging. Alone on a GPU (world
/// size 1, NCCL forced), the collective is held back instead by matrix products queued before
/// it on the default stream for about three timeouts.
pub fn hang(comm: &mut Comm, skip: usize, timeout: Duration) -> Result<(), Failure> {
    let dev = comm.device();
    let mut t = Tensor::ones([1024], (Kind::Float, dev));
    comm.all_reduce(&mut t, ReduceOp::Sum)?;
    comm.synchronize()?;
    if comm.world() == 1 {
        let a = Tensor::randn([8192, 8192], (Kind::Float, dev));
        let _ = a.mm(&a); // warm-up (cuBLAS set-up), then time a few
        comm.synchronize()?;
        let t0 = Instant::now();
        for _ in 0..10 {
            let _ = a.mm(&a);
        }
        comm.synchronize()?;
        let per = (t0.elapsed().as_secs_f64() / 10.0).max(1e-4);
        let n = ((3.0 * timeout.as_secs_f64() / per) as usize).clamp(1, 20_000);
        for _ in 0..n {
            let _ = a.mm(&a);
        }
        println!("{}: queued {n} matrix products (~{:.1} s) ahead of the all_reduce", comm.launch().who(), n as f64 * per);
    } else if comm.rank() == skip {
        std::thread::sleep(timeout + Duration::from_secs(3));
        println!("{}: skipped the collective", comm.launch().who());
        // Leave without tearing down a communicator whose peers aborted it.
        std::process::exit(0);
    }
    let t0 = Instant::now();
    let result = comm.all_reduce(&mut t, ReduceOp::Sum).and_then(|()| comm.synchronize());
    match result {
        Err(e) if e.message.contains(&comm.launch().who()) && e.message.contains("all_reduce") => {
            println!("{}: timed out as expected after {:.1} s: {}", comm.launch().who(), t0.elapsed().as_secs_f64(), e.message);
            Ok(())
        }
        Err(e) => Err(Failure::software(format!("the timeout error does not name rank, host and collective: {}", e.message))),
        Ok(()) => Err(Failure::software(format!("the all_reduce completed although rank {skip} skipped it"))),
    }
}
