#!/usr/bin/env python3
"""Times the PyTorch peer's attention modules (DarcStar-Solutions-Tech/dilated-attention-pytorch:
DilatedAttention and ImprovedDilatedAttention, on (b, n, h, d) q, k, v) and a dense bound on the
GPU, for comparison with our dilated_bench_attention in the same run on the same card
(scripts/attention_vs_peer.sh); with `--device cpu`, on the CPU with `--threads` threads (the
same cores as ours in the same run; DEVICE=cpu in attention_vs_peer.sh).

The peer's source is not part of this repository: pass the folder that holds its package
(`--peer DIR`, DIR/dilated_attention_pytorch/...). Its package __init__ imports unrelated
variants, so the two modules are imported directly under an empty package.

The dense bound ("dense_bound") is torch.nn.functional.scaled_dot_product_attention on the same
dilated work already gathered into contiguous chunks: for each branch i (segment w_i, dilation
r_i, the heads the grouped semantics give it: H split into len(segments) groups as evenly as
possible, earlier groups getting the extra head), the kept rows of every segment (offset = branch
index % r_i, every r_i-th row) are gathered once, before timing, into (n / w_i, heads_i,
w_i / r_i, D) tensors; only the SDPA calls (one per branch) are timed, so it has none of the
gather, scatter and sum that a dilated attention needs.

Each configuration (implementation, n, causal, pass): b = 1, 3 untimed calls, then `--repeat`
calls timed one by one with CUDA events; the JSON holds every time, their median and mean,
TFLOP/s from the useful attention FLOPs (as our benchmark counts them: 4 m^2 D per segment and
head of every branch, m (m + 1) / 2 pairs instead of m^2 when causal, forward+backward 3.5x the
forward) and the peak memory PyTorch allocated beyond the inputs (q, k, v, dout, and the dense
bound's gathered chunks; torch.cuda's counters, reset per configuration). That peak includes the
call's own results (out, and dq, dk, dv in forward+backward: `results_MiB`), which our
benchmark's extra_MiB leaves out. After the forward timings of a peer module, one more call's
output is compared with the dense bound's attention scattered back and divided by the number of
branches (`max_abs_diff_vs_dense`; `--no-check` skips it): a check that the peer is called as
meant and computes the same attention. A configuration that fails (out of memory or any
exception) is recorded with "error" and the others still run. `--dry-run` prints the
configurations and their FLOP counts without torch.

On the CPU (`--device cpu`): times from time.perf_counter around each call (the calls are
synchronous), no per-configuration memory (the JSON's context holds the process's peak resident
set instead), and where PyTorch has no scaled_dot_product_attention (Debian's 1.13) the check's
dense reference computes softmax(q k^T / sqrt(D)) v per chunk with matmul; the dense bound then
is not run by default (`--impls` may still ask for it: it times that matmul version).
"""
import argparse
import gc
import importlib
import json
import os
import statistics
import sys
import time
import types

# The peers' timing loop (3 untimed calls, then CUDA events per call), shared with the layer script.
from peer_layer_bench import time_calls

IMPLS = ("DilatedAttention", "ImprovedDilatedAttention", "dense_bound")


def time_calls_cpu(fn, repeat, warmup):
    """time_calls on the CPU: `warmup` untimed calls, then `repeat` calls timed one by one (ms)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def attention_math(torch, q, k, v, is_causal=False):
    """scaled_dot_product_attention(q, k, v, is_causal) where PyTorch has it, else the same from
    matmul and softmax ((..., m, D) inputs)."""
    sdpa = getattr(torch.nn.functional, "scaled_dot_product_attention", None)
    if sdpa is not None:
        return sdpa(q, k, v, is_causal=is_causal)
    s = torch.matmul(q, k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if is_causal:
        m = s.shape[-1]
        mask = torch.ones((m, m), dtype=torch.bool, device=s.device).triu(1)
        s = s.masked_fill(mask, float("-inf"))
    return torch.matmul(torch.softmax(s, dim=-1), v)


def load_peer(folder):
    package = types.ModuleType("dilated_attention_pytorch")
    package.__path__ = [f"{folder}/dilated_attention_pytorch"]
    sys.modules["dilated_attention_pytorch"] = package
    original = importlib.import_module("dilated_attention_pytorch.dilated_attention")
    improved = importlib.import_module("dilated_attention_pytorch.improved_dilated_attention")
    return {
        "DilatedAttention": original.DilatedAttention,
        "ImprovedDilatedAttention": improved.ImprovedDilatedAttention,
    }


def branches(n, heads, segments, dilations):
    """The grouped semantics' branches: segment w, dilation r, offset (branch index % r), the
    head range [hmin, hmax) (H split into len(segments) groups, earlier groups getting the extra
    head), the number of segments and m, the rows each segment keeps."""
    count = len(segments)
    out, start = [], 0
    for i, (w, r) in enumerate(zip(segments, dilations)):
        size = heads // count + (1 if i < heads % count else 0)
        offset = i % r
        out.append({"branch": i, "w": w, "r": r, "offset": offset, "hmin": start,
                    "hmax": start + size, "heads": size, "segments": n // w,
                    "m": len(range(offset, w, r))})
        start += size
    return out


def forward_flops(n, heads, dim, segments, dilations, causal):
    """Useful attention FLOPs of one forward (b = 1): 4 * pairs * D, pairs = m^2 per segment and
    head of every branch, m (m + 1) / 2 when causal."""
    flops = 0.0
    for br in branches(n, heads, segments, dilations):
        m = br["m"]
        pairs = m * (m + 1) / 2 if causal else float(m) * m
        flops += 4.0 * pairs * dim * br["heads"] * br["segments"]
    return flops


def check_length(n, segments):
    bad = [w for w in segments if n % w]
    if bad:
        raise ValueError(f"n = {n} is not a multiple of the segment lengths {bad}")


def gather_dense(torch, x, dim, plan):
    """x (1, n, H, D) -> per branch a new contiguous (n / w, heads_i, m, D) tensor: the kept rows
    of every segment for the branch's heads."""
    chunks = []
    for br in plan:
        part = x[0, :, br["hmin"]:br["hmax"], :].reshape(br["segments"], br["w"], br["heads"], dim)
        part = part[:, br["offset"]::br["r"]]  # (n / w, m, heads_i, D)
        chunk = torch.empty((br["segments"], br["heads"], br["m"], dim), dtype=x.dtype,
                            device=x.device)
        chunks.append(chunk.copy_(part.permute(0, 2, 1, 3)))
    return chunks


def dense_reference(torch, q, k, v, plan, causal):
    """The dilated attention of q, k, v (1, n, H, D) as the grouped semantics define it, from SDPA
    on the gathered chunks, scattered back and divided by the number of branches, in float."""
    dim = q.shape[-1]
    ref = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    chunks = zip(*(gather_dense(torch, x, dim, plan) for x in (q, k, v)))
    for br, (qc, kc, vc) in zip(plan, chunks):
        o = attention_math(torch, qc, kc, vc, is_causal=causal)
        rows = ref[0, :, br["hmin"]:br["hmax"], :].view(br["segments"], br["w"], br["heads"], dim)
        rows[:, br["offset"]::br["r"]] += o.permute(0, 2, 1, 3).float()
    return ref.div_(len(plan))


def make_call(torch, impl, module, inputs, causal, with_backward):
    """The timed step of one configuration."""
    def sdpa(q, k, v, is_causal):
        return attention_math(torch, q, k, v, is_causal=is_causal)

    if impl == "dense_bound":
        qs, ks, vs, douts = inputs

        def forward():
            return [sdpa(q, k, v, is_causal=causal) for q, k, v in zip(qs, ks, vs)]

        if not with_backward:
            def call():
                with torch.no_grad():
                    forward()
        else:
            def call():
                torch.autograd.backward(forward(), douts)
                for t in (*qs, *ks, *vs):
                    t.grad = None
        return call

    q, k, v, dout = inputs
    if not with_backward:
        def call():
            with torch.no_grad():
                module(q, k, v, is_causal=causal)
    else:
        def call():
            out = module(q, k, v, is_causal=causal)
            out = out[0] if isinstance(out, tuple) else out
            out.backward(dout)
            q.grad = k.grad = v.grad = None
    return call


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", help="folder holding dilated_attention_pytorch/ (needed for "
                                       "the peer's two modules)")
    parser.add_argument("--lengths", default="16384,65536,262144,1048576")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--segments", default="2048,4096,8192")
    parser.add_argument("--dilations", default="1,2,4")
    parser.add_argument("--causal", choices=["both", "false", "true"], default="both")
    parser.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    parser.add_argument("--passes", default="fwd,fwd_bwd")
    parser.add_argument("--impls", help="comma-separated, of " + ", ".join(IMPLS)
                        + " (default: all on cuda, DilatedAttention on cpu)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--warmup", type=int, default=3, help="cpu: untimed calls before the "
                        "timed ones (cuda: always 3)")
    parser.add_argument("--threads", type=int, help="cpu: torch.set_num_threads (default: "
                        "PyTorch's own choice)")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--out", help="JSON file to write")
    parser.add_argument("--no-check", action="store_true",
                        help="skip comparing each peer module's forward output with the dense "
                             "bound's (scattered back): max_abs_diff_vs_dense in the JSON")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the configurations and FLOP counts; no torch, no GPU")
    args = parser.parse_args()

    lengths = [int(x) for x in args.lengths.split(",") if x]
    segments = [int(x) for x in args.segments.split(",") if x]
    dilations = [int(x) for x in args.dilations.split(",") if x]
    masks = {"both": [False, True], "false": [False], "true": [True]}[args.causal]
    passes = [p for p in args.passes.split(",") if p]
    if args.impls is None:
        args.impls = ",".join(IMPLS) if args.device == "cuda" else "DilatedAttention"
    impls = [x for x in args.impls.split(",") if x]
    if len(segments) != len(dilations):
        parser.error("--segments and --dilations differ in length")
    if args.heads < len(segments):
        parser.error("fewer heads than branches")
    for name, given, known in (("--passes", passes, ("fwd", "fwd_bwd")), ("--impls", impls, IMPLS)):
        if not set(given) <= set(known):
            parser.error(f"{name}: unknown {sorted(set(given) - set(known))} "
                         f"(known: {', '.join(known)})")
    if not args.dry_run and not args.out:
        parser.error("--out is required (unless --dry-run)")
    peer_impls = [x for x in impls if x != "dense_bound"]
    if not args.dry_run and peer_impls and not args.peer:
        parser.error("--peer is required for " + ", ".join(peer_impls))

    def entry_for(impl, n, causal, pass_name):
        fwd = forward_flops(n, args.heads, args.dim, segments, dilations, causal)
        flops = 3.5 * fwd if pass_name == "fwd_bwd" else fwd
        mask = "causal" if causal else "full"
        return {"name": f"{impl}/{args.dtype}/h:{args.heads}/d:{args.dim}/{pass_name}/{mask}/"
                        f"n:{n}",
                "impl": impl, "n": n, "causal": causal, "mask": mask, "pass": pass_name,
                "useful_GFLOP": flops * 1e-9}

    context = {"warmup": args.warmup if args.device == "cpu" else 3, "segments": segments, "dilations": dilations, "heads": args.heads,
               "dim": args.dim, "batch": 1, "dtype": args.dtype, "repeat": args.repeat,
               "branches": [{k: br[k] for k in ("w", "r", "offset", "hmin", "hmax", "heads")}
                            for br in branches(0, args.heads, segments, dilations)]}
    if args.dry_run:
        results = []
        for n in lengths:
            for impl in impls:
                for causal in masks:
                    for pass_name in passes:
                        entry = entry_for(impl, n, causal, pass_name)
                        try:
                            check_length(n, segments)
                        except ValueError as error:
                            entry["error"] = str(error)
                        results.append(entry)
                        print(f"{entry['name']}: {entry['useful_GFLOP']:.3f} GFLOP"
                              + (f" ({entry['error']})" if "error" in entry else ""))
        for br in branches(lengths[0] if lengths else 0, args.heads, segments, dilations):
            print(f"branch {br['branch']}: w {br['w']} r {br['r']} offset {br['offset']} "
                  f"heads [{br['hmin']}, {br['hmax']}) m {br['m']}")
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"context": dict(context, dry_run=True), "benchmarks": results}, f,
                          indent=1)
        return

    import torch

    cuda = args.device == "cuda"
    if not cuda and args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    modules = {}
    if peer_impls:
        classes = load_peer(args.peer)
        for impl in peer_impls:
            # Dropout 0 (the default): training or eval mode computes the same.
            modules[impl] = classes[impl](segment_lengths=segments, dilation_rates=dilations)
    elem = torch.tensor([], dtype=dtype).element_size()
    results = []

    def measure(entry, impl, n, causal, with_backward):
        """Fills entry with the timings of one configuration. Its tensors are locals: they go
        when it returns or raises."""
        check_length(n, segments)
        plan = branches(n, args.heads, segments, dilations)
        torch.manual_seed(n)
        q, k, v = (torch.rand((1, n, args.heads, args.dim), device=args.device, dtype=dtype) * 2
                   - 1 for _ in range(3))
        if impl == "dense_bound":
            qs, ks, vs = (gather_dense(torch, x, args.dim, plan) for x in (q, k, v))
            del q, k, v
            douts = [torch.rand_like(x) * 2 - 1 for x in qs] if with_backward else None
            for x in (*qs, *ks, *vs):
                x.requires_grad_(with_backward)
            inputs = (qs, ks, vs, douts)
            count = sum(x.numel() for x in qs)
        else:
            dout = torch.rand_like(q) * 2 - 1 if with_backward else None
            for x in (q, k, v):
                x.requires_grad_(with_backward)
            inputs = (q, k, v, dout)
            count = q.numel()
        # What the call's results take: out (+ dq, dk, dv).
        entry["results_MiB"] = (4 if with_backward else 1) * count * elem / 2**20
        call = make_call(torch, impl, modules.get(impl), inputs, causal, with_backward)
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            times = time_calls(torch, call, args.repeat)
        else:
            times = time_calls_cpu(call, args.repeat, args.warmup)
        median = statistics.median(times)
        entry.update(times_ms=times, median_ms=median, mean_ms=statistics.fmean(times),
                     TFLOP_per_s=entry["useful_GFLOP"] / median,  # GFLOP per ms
                     GFLOP_per_s=entry["useful_GFLOP"] / median * 1e3)
        if cuda:
            entry["extra_MiB"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        if impl != "dense_bound" and not with_backward and not args.no_check:
            # That the peer is called as meant (layout, is_causal): its output against the
            # same attention from the dense bound's SDPA calls.
            try:
                with torch.no_grad():
                    got = modules[impl](q, k, v, is_causal=causal)
                    ref = dense_reference(torch, q, k, v, plan, causal)
                    entry["max_abs_diff_vs_dense"] = (got.float() - ref).abs().max().item()
            except Exception as error:
                entry["check_error"] = f"{type(error).__name__}: {str(error).strip()[:200]}"

    for n in lengths:
        for impl in impls:
            for causal in masks:
                for pass_name in passes:
                    entry = entry_for(impl, n, causal, pass_name)
                    try:
                        measure(entry, impl, n, causal, pass_name == "fwd_bwd")
                    except Exception as error:  # out of memory or anything else: skip it
                        text = (str(error).strip().splitlines() or [""])[0][:200]
                        entry["error"] = f"{type(error).__name__}: {text}"
                    gc.collect()
                    if cuda:
                        torch.cuda.empty_cache()
                    results.append(entry)
                    print(f"{entry['name']}: " + (
                        f"median {entry['median_ms']:.3f} ms, {entry['TFLOP_per_s']:.3f} TFLOP/s"
                        + (f", extra {entry['extra_MiB']:.0f} MiB" if "extra_MiB" in entry else "")
                        if "median_ms" in entry
                        else entry["error"])
                        + (f", vs dense {entry['max_abs_diff_vs_dense']:.3g}"
                           if "max_abs_diff_vs_dense" in entry else ""), flush=True)
    context.update(torch=torch.__version__, peer=os.path.abspath(args.peer) if args.peer else None)
    if cuda:
        context.update(device=torch.cuda.get_device_name(),
                       sdpa_flash=torch.backends.cuda.flash_sdp_enabled())
    else:
        import platform
        import resource
        context.update(device="cpu", cpu=platform.processor() or platform.machine(),
                       threads=torch.get_num_threads(),
                       peak_rss_MiB=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                       blas=torch.__config__.show().strip().splitlines())
    with open(args.out + ".tmp", "w") as f:
        json.dump({"context": context, "benchmarks": results}, f, indent=1)
    os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
