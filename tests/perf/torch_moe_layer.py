#!/usr/bin/python3
"""PyTorch eager CPU fp32 baseline: one DeepSeekMoE layer, forward + backward.

The comparison point for `moerun bench moe-layer` (DESIGN.md, Performance conventions: "the
whole MoE layer vs the same layer in PyTorch eager, same threads, same shapes").  The layer is
written the way Megatron-Core (SequentialMLP + token permutation) and torchtitan (for-loop
grouped experts) write it on CPU, so it is a fair, production-style baseline, not a strawman:

    scores   = softmax(x @ gate^T)                      (T, E)
    g, idx   = topk(scores, K)                          weights use the unbiased scores
    order    = stable sort of idx.flatten()             tokens sorted by expert ONCE
    xs       = x[order // K]                            one gather -> (T*K, H)
    per expert e over its contiguous segment of xs:
        a, b = chunk(seg @ w13[e]^T, 2)                 gate_proj and up_proj fused, (2F, H)
        out  = (silu(a) * b) @ w2[e]^T                  down_proj (H, F)
    y        = shared(x) ; y.index_add_(0, order // K, out * g[order])
    shared   = one SwiGLU of width S*F, gate+up fused as (2*S*F, H)

No (T, E, H) tensor is ever formed.  The residual is not added (moerun's MoELayer leaves it to
the block, layers/moe.h).  Loss = (y * dy).sum() with a fixed random dy; backward by autograd,
computing dx and every weight gradient (router included, through g).

Threads: torch.set_num_threads(--threads) and set_num_interop_threads(1).  Debian's torch runs
its matmuls in OpenBLAS (pthreads build), whose thread count torch.set_num_threads does not
change, so OPENBLAS_NUM_THREADS is set to --threads before torch is imported (always: an
inherited value, e.g. the 1 used for MPI ranks, would silently starve the baseline).  OMP_WAIT_POLICY=PASSIVE is also set before the import (unless already set): torch's
elementwise ops run on libgomp threads, which by default spin after each parallel region and
then compete for the same cores with OpenBLAS's own threads; passive waiting removes that
self-inflicted contention, so the baseline is not handicapped by it.

Allocator: glibc malloc serves blocks over its mmap threshold (at most 32 MiB) with fresh mmap
and returns them on free, so every iteration page-faults its ~200 MB activations back in.  The
PyTorch CPU tuning guides fix this with jemalloc/tcmalloc; neither is installed here, so by
default the script raises M_MMAP_THRESHOLD and M_TRIM_THRESHOLD with mallopt() (same effect:
freed memory is reused).  --no-malloc-tuning keeps the glibc defaults (slower baseline).

OpenBLAS core: Debian's DYNAMIC_ARCH OpenBLAS 0.3.21 falls back to its generic "Prescott" (SSE3)
kernels on CPUs it does not know (e.g. Emerald Rapids, family 6 model 207), several times slower
than the AVX-512 ones.  The script does not override it; export OPENBLAS_CORETYPE (SkylakeX,
Haswell) to choose.  The core in use is printed in the table and the JSON ("blas_core").

FLOPs counted: 2*M*N*K for every matmul of the forward (router, expert gate+up, expert down,
shared gate+up, shared down); backward counts twice that (dX and dW).

Usage:
    /usr/bin/python3 tests/perf/torch_moe_layer.py [--tokens 8192 ...] [--json]
    /usr/bin/python3 tests/perf/torch_moe_layer.py --check     # correctness vs float64 loop
"""

import argparse
import json
import os
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=8192, help="tokens T (default 8192)")
    p.add_argument("--hidden", type=int, default=1024, help="hidden size H (default 1024)")
    p.add_argument("--ffn", type=int, default=256, help="expert width F (default 256)")
    p.add_argument("--experts", type=int, default=64, help="routed experts E (default 64)")
    p.add_argument("--topk", type=int, default=6, help="experts per token K (default 6)")
    p.add_argument("--shared", type=int, default=2,
                   help="shared experts S, fused as one SwiGLU of width S*F (default 2)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations (default 2)")
    p.add_argument("--iters", type=int, default=5, help="timed iterations (default 5)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    p.add_argument("--no-malloc-tuning", dest="malloc_tuning", action="store_false",
                   help="keep glibc malloc's default mmap/trim thresholds")
    p.add_argument("--check", action="store_true",
                   help="compare against a naive float64 reference on T=64,H=16,F=8,E=8,K=2,S=1")
    return p.parse_args(argv)


ARGS = parse_args()
# Must happen before torch (and its OpenMP / OpenBLAS runtimes) is loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["OPENBLAS_NUM_THREADS"] = str(ARGS.threads)

import torch  # noqa: E402
import torch.nn.functional as Fn  # noqa: E402

torch.set_num_interop_threads(1)
torch.set_num_threads(ARGS.threads)


def tune_malloc():
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
                    and libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))
    except (OSError, AttributeError):
        return False


def blas_core():
    import ctypes
    try:
        lib = ctypes.CDLL("libopenblas.so.0")
        lib.openblas_get_corename.restype = ctypes.c_char_p
        return lib.openblas_get_corename().decode()
    except (OSError, AttributeError):
        return "unknown"


class MoELayer:
    """Weights are leaf tensors; forward builds the autograd graph."""

    def __init__(self, H, F, E, K, S, std=0.02, dtype=torch.float32, seed=0):
        g = torch.Generator().manual_seed(seed)

        def w(*shape):
            return (torch.randn(*shape, generator=g, dtype=dtype) * std).requires_grad_()

        self.H, self.F, self.E, self.K, self.S = H, F, E, K, S
        self.gate = w(E, H)               # router
        self.w13 = w(E, 2 * F, H)         # rows [0,F) gate_proj, [F,2F) up_proj
        self.w2 = w(E, H, F)              # down_proj
        self.shared_w13 = w(2 * S * F, H) if S > 0 else None
        self.shared_w2 = w(H, S * F) if S > 0 else None

    def params(self):
        return [p for p in (self.gate, self.w13, self.w2, self.shared_w13, self.shared_w2)
                if p is not None]

    def forward(self, x):
        T, K, E = x.shape[0], self.K, self.E
        # Router: softmax scores, top-K, weights from the unbiased scores (no renormalisation).
        scores = torch.softmax(x @ self.gate.t(), dim=-1)            # (T, E)
        topk_w, topk_idx = torch.topk(scores, K, dim=-1)             # (T, K)

        # Permute once: (token, k) pairs sorted by expert, stable.
        flat_idx = topk_idx.reshape(-1)
        _, order = torch.sort(flat_idx, stable=True)
        token_of = torch.div(order, K, rounding_mode="floor")
        xs = x.index_select(0, token_of)                             # (T*K, H)
        ws = topk_w.reshape(-1).index_select(0, order)               # (T*K,)
        counts = torch.bincount(flat_idx, minlength=E).tolist()

        # Experts over contiguous segments.  unbind() once instead of w13[e] per expert: its
        # backward stacks the E gradients into one buffer instead of E full-size zero tensors.
        w13s, w2s = self.w13.unbind(0), self.w2.unbind(0)
        outs = []
        for e, seg in enumerate(torch.split(xs, counts, dim=0)):
            if counts[e] == 0:
                continue
            a, b = torch.chunk(seg @ w13s[e].t(), 2, dim=-1)
            outs.append((Fn.silu(a) * b) @ w2s[e].t())
        routed = torch.cat(outs, dim=0) * ws.unsqueeze(1)            # (T*K, H)

        if self.S > 0:
            a, b = torch.chunk(x @ self.shared_w13.t(), 2, dim=-1)
            y = (Fn.silu(a) * b) @ self.shared_w2.t()
        else:
            y = torch.zeros_like(x)
        return y.index_add_(0, token_of, routed)                     # combine


def layer_flops(T, H, F, E, K, S):
    """Forward + backward matmul FLOPs: 2*M*N*K per forward matmul, twice that for backward."""
    fwd = 2 * T * H * E                          # router
    fwd += 2 * (T * K) * H * (2 * F)             # expert gate+up
    fwd += 2 * (T * K) * F * H                   # expert down
    fwd += 2 * T * H * (2 * S * F)               # shared gate+up
    fwd += 2 * T * (S * F) * H                   # shared down
    return 3 * fwd


def reference_forward(layer, x):
    """Naive dense definition in float64: loop over tokens and their K experts."""
    d = torch.float64
    gate = layer.gate.detach().to(d).requires_grad_()
    w13 = layer.w13.detach().to(d).requires_grad_()
    w2 = layer.w2.detach().to(d).requires_grad_()
    sw13 = layer.shared_w13.detach().to(d).requires_grad_() if layer.S > 0 else None
    sw2 = layer.shared_w2.detach().to(d).requires_grad_() if layer.S > 0 else None
    xr = x.detach().to(d).requires_grad_()
    F, SF = layer.F, layer.S * layer.F

    def swiglu(v, w_13, w_2, width):
        h = w_13 @ v
        return w_2 @ (Fn.silu(h[:width]) * h[width:])

    rows = []
    for t in range(xr.shape[0]):
        u = xr[t]
        s = torch.softmax(gate @ u, dim=0)
        sel = sorted(range(layer.E), key=lambda i: -float(s[i]))[:layer.K]
        h = swiglu(u, sw13, sw2, SF) if layer.S > 0 else torch.zeros_like(u)
        for i in sel:
            h = h + s[i] * swiglu(u, w13[i], w2[i], F)
        rows.append(h)
    params = [p for p in (gate, w13, w2, sw13, sw2) if p is not None]
    return torch.stack(rows), xr, params


def check():
    T, H, F, E, K, S = 64, 16, 8, 8, 2, 1
    torch.manual_seed(0)
    # std 0.25 (not 0.02) so y and dx are O(1) and 1e-5 absolute is a real test of fp32 math
    # (at std 0.02, y would be ~1e-4 and any error would pass).  Weight gradients sum over all
    # T tokens and are larger, so each tensor's tolerance is 1e-5 * max(1, max|ref|).
    layer = MoELayer(H, F, E, K, S, std=0.25, seed=1)
    x = torch.randn(T, H).requires_grad_()
    dy = torch.randn(T, H)
    y = layer.forward(x)
    (y * dy).sum().backward()

    y_ref, x_ref, p_ref = reference_forward(layer, x)
    (y_ref * dy.to(torch.float64)).sum().backward()

    names = ["y", "dx", "dgate", "dw13", "dw2", "dshared_w13", "dshared_w2"]
    ours = [y, x.grad] + [p.grad for p in layer.params()]
    refs = [y_ref, x_ref.grad] + [p.grad for p in p_ref]
    ok = True
    for name, a, b in zip(names, ours, refs):
        if a is None or b is None:
            ok = False
            print(f"{name:12s} missing gradient  MISMATCH")
            continue
        err = (a.double() - b).abs().max().item()
        scale = b.abs().max().item()
        good = err <= 1e-5 * max(1.0, scale)
        ok &= good
        print(f"{name:12s} max abs err {err:.3e}  (max |ref| {scale:.3e})  {'ok' if good else 'MISMATCH'}")
    print("check: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


def bench(a):
    malloc_tuned = tune_malloc() if a.malloc_tuning else False
    core = blas_core()
    T, H, F, E, K, S = a.tokens, a.hidden, a.ffn, a.experts, a.topk, a.shared
    layer = MoELayer(H, F, E, K, S, std=0.02, seed=a.seed)
    g = torch.Generator().manual_seed(a.seed + 1)
    x = torch.randn(T, H, generator=g).requires_grad_()
    dy = torch.randn(T, H, generator=g)
    params = layer.params()

    times = []
    for it in range(a.warmup + a.iters):
        for p in params:
            p.grad = None
        x.grad = None
        t0 = time.perf_counter()
        y = layer.forward(x)
        (y * dy).sum().backward()
        t1 = time.perf_counter()
        if it >= a.warmup:
            times.append(t1 - t0)
        del y

    best, mean = min(times), sum(times) / len(times)
    flops = layer_flops(T, H, F, E, K, S)
    res = {"bench": "torch-moe-layer", "tokens": T, "hidden": H, "ffn": F, "experts": E,
           "topk": K, "shared": S, "threads": a.threads, "fwd_bwd_s": best,
           "tokens_per_s": T / best, "gflops": flops / best / 1e9, "fwd_bwd_mean_s": mean,
           "blas_core": core, "malloc_tuned": malloc_tuned}
    if not a.json:
        print(f"torch {torch.__version__} eager CPU fp32, DeepSeekMoE layer fwd+bwd "
              f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
              f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')})")
        print(f"  blas core       {core}"
              + ("   (generic fallback: try OPENBLAS_CORETYPE=SkylakeX)" if core == "Prescott"
                 else ""))
        print(f"  malloc tuned    {'yes' if malloc_tuned else 'no'}")
        print(f"  tokens          {T}")
        print(f"  shape           H={H} F={F} E={E} K={K} S={S}")
        print(f"  threads         {a.threads}")
        print(f"  iters           {a.iters} (+{a.warmup} warmup)")
        print(f"  fwd+bwd mean    {mean:.4f} s")
        print(f"  fwd+bwd min     {best:.4f} s")
        print(f"  tokens/s        {T / best:.1f}")
        print(f"  matmul GFLOP    {flops / 1e9:.2f} per fwd+bwd")
        print(f"  GFLOP/s         {flops / best / 1e9:.2f}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(check() if ARGS.check else bench(ARGS))
