"""The routed experts' grouped GEMMs of one os-train micro-batch, each form timed alone (issue 21): where do
the ~20 ms per micro-batch go that the trace gives `_grouped_mm` in training, when the forward alone runs at
~650 TFLOP/s?

OpenSeek-Small-v1: 16,384 tokens x top-6 = 98,304 expert rows over 64 experts, hidden 1280, expert
intermediate 896 (gate+up 1792). Weights as os-train holds them ([E, out, in], passed transposed). Forms:
forward (Y = X W^T), input gradient (dX = dY W), weight gradient (dW = dY^T X, grouped along the rows), for
balanced routing and for a skewed one; then the same through autograd (what training runs), and the
weight gradient by alternative layouts. Last, weight gradients summed into fp32 across micro-batches: a bf16
GEMM then an add, against one fp32-output GEMM adding into the gradient (dense shapes and the grouped one).

  python bench/train/grouped_gemm.py   (on the GPU machine; prints one JSON line per form)"""
import json
import torch

dev, bf = "cuda", torch.bfloat16
E, H, I, T, K = 64, 1280, 896, 16384, 6
M = T * K


def timed(fn, iters=20):
    for _ in range(3):
        fn()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    a.record()
    for _ in range(iters):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / iters


def offsets(skew):
    if skew == 0:
        counts = torch.full((E,), M // E)
    else:
        g = torch.Generator().manual_seed(0)
        w = torch.rand(E, generator=g) ** skew
        counts = (w / w.sum() * M).floor().long()
        counts[0] += M - counts.sum()
    return counts.cumsum(0).to(torch.int32).to(dev), counts


def out(name, flops, ms, **kw):
    print(json.dumps(dict(form=name, ms=round(ms, 4), tflops=round(flops / ms / 1e9, 1), **kw)), flush=True)


print(json.dumps(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=M, experts=E)), flush=True)
for skew in (0, 3):
    offs, counts = offsets(skew)
    tag = "balanced" if skew == 0 else f"skewed (max {int(counts.max())} rows, min {int(counts.min())})"
    for name, kin, nout in (("gate+up", H, 2 * I), ("down", I, H)):
        x = torch.randn(M, kin, device=dev, dtype=bf)
        w = torch.randn(E, nout, kin, device=dev, dtype=bf) * 0.02
        dy = torch.randn(M, nout, device=dev, dtype=bf)
        f = 2.0 * M * kin * nout
        out(f"{name} fwd", f, timed(lambda: torch._grouped_mm(x, w.transpose(1, 2), offs=offs)), routing=tag)
        out(f"{name} dgrad", f, timed(lambda: torch._grouped_mm(dy, w, offs=offs)), routing=tag)
        out(f"{name} wgrad dY^T X", f, timed(lambda: torch._grouped_mm(dy.t(), x, offs=offs)), routing=tag)
        if skew == 0:  # contiguous transposed operands need every group's rows a multiple of 8 (a device assert)
            dyt = dy.t().contiguous()
            out(f"{name} wgrad dY^T X (dY^T contiguous)", f, timed(lambda: torch._grouped_mm(dyt, x, offs=offs)), routing=tag)
            xt = x.t().contiguous()
            out(f"{name} wgrad (X^T dY)^T", f, timed(lambda: torch._grouped_mm(xt, dy, offs=offs)), routing=tag)
            out(f"{name} wgrad copies dY^T", M * nout * 4 / 1e3, timed(lambda: dy.t().contiguous()), note="tflops column = GB/s")
        # Through autograd, as training runs it: forward, then backward of both operands.
        xl = x.clone().requires_grad_(True)
        wl = w.clone().requires_grad_(True)

        def fb():
            xl.grad = wl.grad = None
            y = torch._grouped_mm(xl, wl.transpose(1, 2), offs=offs)
            y.backward(dy)
        out(f"{name} autograd fwd+bwd", 3 * f, timed(fb), routing=tag)
        if skew == 0:  # what autograd's backward launches besides its two GEMMs; the weight gradient as a loop and a bmm
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                fb()
                torch.cuda.synchronize()
            for e in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:8]:
                print(json.dumps(dict(form=f"{name} autograd kernel", kernel=e.key[:90], ms=round(e.device_time_total / 1e3, 4), calls=e.count)), flush=True)

            def loop():
                for e in range(E):
                    s = slice(e * (M // E), (e + 1) * (M // E))
                    torch.mm(dy[s].t(), x[s])
            out(f"{name} wgrad per-expert mm loop", f, timed(loop), routing=tag)
            xe = x.view(E, M // E, kin)
            dye = dy.view(E, M // E, nout)
            out(f"{name} wgrad bmm (balanced only)", f, timed(lambda: torch.bmm(dye.transpose(1, 2), xe)), routing=tag)

# Weight gradients summed into fp32 across micro-batches: a bf16 GEMM then a separate add (what os-train
# does at accumulation > 1, its `accumulate_grad` kernel standing in for the add here) against one GEMM
# that adds its fp32 output into the fp32 gradient (`addmm(..., out_dtype=float32)`, Megatron's
# gradient-accumulation fusion).
for name, n, k in (("q_proj", 1920, 1280), ("dense gate+up", 14336, 1280), ("shared down", 1280, 1792), ("lm head", 151936, 1280)):
    dy = torch.randn(T, n, device=dev, dtype=bf)
    x = torch.randn(T, k, device=dev, dtype=bf)
    g32 = torch.zeros(n, k, device=dev, dtype=torch.float32)
    f = 2.0 * T * n * k
    out(f"{name} wgrad bf16 mm", f, timed(lambda: torch.mm(dy.t(), x)))
    out(f"{name} wgrad bf16 mm + fp32 add_", f, timed(lambda: g32.add_(torch.mm(dy.t(), x))))
    try:
        out(f"{name} wgrad addmm out_dtype fp32 into fp32", f,
            timed(lambda: torch.addmm(g32, dy.t(), x, out_dtype=torch.float32, out=g32)))
    except Exception as e:  # noqa: BLE001 - report what torch refuses
        print(json.dumps(dict(form=f"{name} addmm out_dtype", error=str(e)[:200])), flush=True)
offs, _ = offsets(0)
for name, kin, nout in (("experts gate+up", H, 2 * I), ("experts down", I, H)):
    x = torch.randn(M, kin, device=dev, dtype=bf)
    dy = torch.randn(M, nout, device=dev, dtype=bf)
    g32 = torch.zeros(E, nout, kin, device=dev, dtype=torch.float32)
    f = 2.0 * M * kin * nout
    try:
        out(f"{name} grouped wgrad out_dtype fp32", f, timed(lambda: torch._grouped_mm(dy.t(), x, offs=offs, out_dtype=torch.float32)))
    except Exception as e:  # noqa: BLE001
        print(json.dumps(dict(form=f"{name} grouped out_dtype", error=str(e)[:200])), flush=True)
