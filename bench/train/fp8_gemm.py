"""FP8 vs bf16 for each GEMM class of an os-train micro-batch at the benchmark shape (issue 21, step 1 of
`precision = "fp8-mixed"`: measure each class and keep FP8 only where it wins).

OpenSeek-Small-v1, micro-batch 4 x 4096 = 16,384 tokens: MLA projections, the dense layer's MLP, the
shared experts, and the 64 routed experts (top-6: 98,304 routed rows, 1,536 per expert when balanced)
as grouped GEMMs; each in its forward (Y = X W^T), input-gradient (dX = dY W) and weight-gradient
(dW = dY^T X) form. bf16 is `torch.mm` / `torch._grouped_mm`; FP8 is E4M3 through `torch._scaled_mm`
with DeepSeek-V3's scaling (1x128 tiles for activations and output gradients, 128x128 blocks for
weights; the weight gradient contracts over tokens, so both of its operands are 1x128 along the
tokens) and, for the grouped GEMMs, `torch._scaled_grouped_mm` with row-wise scales (what torch offers
for grouped FP8 on Hopper). Quantisation time is measured apart (`quant`: the 1x128 cast of the
GEMM's activation operand in plain torch ops, an upper bound for a fused kernel) and its memory-bound
floor given (`quant_floor_ms`: read bf16 + write fp8 at 3 TB/s).

Prints one JSON line per GEMM: ms and TFLOP/s for bf16 and FP8, and the ratio.
  python bench/train/fp8_gemm.py [--tokens 16384]   (on the GPU machine)"""
import argparse, json, math
import torch
from torch.nn.functional import ScalingType, SwizzleType, scaled_mm

p = argparse.ArgumentParser()
p.add_argument("--tokens", type=int, default=16384)
p.add_argument("--iters", type=int, default=30)
args = p.parse_args()
dev = "cuda"
E4M3 = torch.float8_e4m3fn
FMAX = torch.finfo(E4M3).max
T = args.tokens


def timed(fn):
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(args.iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / args.iters


def quant_1x128(x):
    """x [M, K] -> (fp8 [M, K] row-major, scales [M, K/128] fp32): one scale per 128 consecutive K."""
    m, k = x.shape
    tiles = x.float().view(m, k // 128, 128)
    scale = tiles.abs().amax(-1).clamp(min=1e-12) / FMAX
    q = (tiles / scale.unsqueeze(-1)).to(E4M3).view(m, k)
    return q, scale


def quant_128x128(w):
    """w [N, K] -> (fp8 [N, K], scales [N/128, K/128])."""
    n, k = w.shape
    blocks = w.float().view(n // 128, 128, k // 128, 128)
    scale = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12) / FMAX
    q = (blocks / scale[:, None, :, None]).to(E4M3).view(n, k)
    return q, scale


def fp8_mm(a, b_nk, weight_b):
    """a [M, K] bf16, b_nk [N, K] bf16 (the second operand's rows along N); returns a callable computing
    a @ b_nk^T in FP8 with 1x128 scales on a and 1x128 (activation) or 128x128 (weight) scales on b
    (the scale layouts torch's own samples use: column-major 1x128 scales, 128x128 scales padded to 4)."""
    k = a.shape[1]
    qa, sa = quant_1x128(a)
    sa = sa.t().contiguous().t()
    if weight_b:
        qb, sb = quant_128x128(b_nk)
        l4 = -(-(k // 128) // 4) * 4
        padded = torch.ones(sb.shape[0], l4, device=dev)
        padded[:, : k // 128] = sb
        sb, recipe_b = padded.t(), ScalingType.BlockWise128x128
    else:
        qb, sb = quant_1x128(b_nk)
        sb, recipe_b = sb.t().contiguous().t(), ScalingType.BlockWise1x128
    none = SwizzleType.NO_SWIZZLE
    return lambda: scaled_mm(qa, qb.t(), [sa], [ScalingType.BlockWise1x128], [sb], [recipe_b], [none], [none], None, torch.bfloat16)


def row(name, flops, bf16_ms, fp8_ms, quant_ms, quant_bytes, note=""):
    rec = dict(gemm=name, bf16_ms=round(bf16_ms, 4), bf16_tflops=round(flops / bf16_ms / 1e9, 1))
    if fp8_ms is not None:
        rec.update(fp8_ms=round(fp8_ms, 4), fp8_tflops=round(flops / fp8_ms / 1e9, 1), quant_ms=round(quant_ms, 4),
                   quant_floor_ms=round(quant_bytes / 3e9, 4),
                   speedup_gemm=round(bf16_ms / fp8_ms, 3), speedup_with_floor_quant=round(bf16_ms / (fp8_ms + quant_bytes / 3e9), 3))
    if note:
        rec["note"] = note
    print(json.dumps(rec), flush=True)


def dense(name, m, k, n):
    """Y[m, n] = X[m, k] W[n, k]^T, dX = dY W, dW = dY^T X."""
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
    dy = torch.randn(m, n, device=dev, dtype=torch.bfloat16)
    flops = 2.0 * m * k * n
    cases = [
        ("fwd", lambda: x @ w.t(), x, w, True, m * k),
        ("dgrad", lambda: dy @ w, dy, w.t().contiguous(), True, m * n),
        ("wgrad", lambda: dy.t() @ x, dy.t().contiguous(), x.t().contiguous(), False, (m * n + m * k)),
    ]
    for form, ref, a, b, weight_b, qelems in cases:
        bf = timed(ref)
        try:
            f = fp8_mm(a, b, weight_b)
            fp = timed(f)
            qt = timed(lambda: quant_1x128(a))
            row(f"{name} {form} [{m}x{k}]x[{k}x{n}]" if form == "fwd" else f"{name} {form}", flops, bf, fp, qt, qelems * 3)
        except Exception as e:  # noqa: BLE001 - report what torch refuses and go on
            row(f"{name} {form}", flops, bf, None, None, 0, note=f"fp8 failed: {str(e)[:160]}")


def grouped(name, experts, rows_per_expert, k, n):
    """Routed experts: Y_e = X_e W_e^T for each expert (rows grouped by expert), forward only (the
    backward's grouped GEMMs have the same sizes)."""
    m = experts * rows_per_expert
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    w = torch.randn(experts, n, k, device=dev, dtype=torch.bfloat16) * 0.02
    offs = torch.arange(rows_per_expert, m + 1, rows_per_expert, device=dev, dtype=torch.int32)
    flops = 2.0 * m * k * n
    bf = timed(lambda: torch._grouped_mm(x, w.transpose(-2, -1), offs=offs))
    try:
        xs = x.float().abs().amax(-1, keepdim=True).clamp(min=1e-12) / FMAX
        qx = (x.float() / xs).to(E4M3)
        ws = w.float().abs().amax(-1).clamp(min=1e-12) / FMAX  # [E, N]: per output row
        qw = (w.float() / ws.unsqueeze(-1)).to(E4M3)
        f = lambda: torch._scaled_grouped_mm(qx, qw.transpose(-2, -1), xs.view(-1), ws, offs=offs, out_dtype=torch.bfloat16)
        fp = timed(f)
        qt = timed(lambda: (x.float() / (x.float().abs().amax(-1, keepdim=True) / FMAX)).to(E4M3))
        row(f"{name} [{experts}x{rows_per_expert}x{k}]x[{k}x{n}] rowwise", flops, bf, fp, qt, m * k * 3)
    except Exception as e:  # noqa: BLE001
        row(f"{name} rowwise", flops, bf, None, None, 0, note=f"fp8 failed: {str(e)[:160]}")


print(json.dumps(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, tokens=T)), flush=True)
H, V = 1280, 151851
dense("attn q_proj", T, H, 10 * 192)
dense("attn kv_a_proj", T, H, 512 + 64)
dense("attn kv_b_proj", T, 512, 10 * 256)
dense("attn o_proj", T, 10 * 128, H)
dense("dense mlp gate+up", T, H, 2 * 7168)
dense("dense mlp down", T, 7168, H)
dense("shared experts gate+up", T, H, 2 * 1792)
dense("shared experts down", T, 1792, H)
dense("lm head (stays bf16)", T, H, 151936)
per_expert = T * 6 // 64
grouped("routed experts gate+up", 64, per_expert, H, 2 * 896)
grouped("routed experts down", 64, per_expert, 896, H)
