#!/usr/bin/env python3
"""Times the PyTorch peer's multihead layers (DarcStar-Solutions-Tech/dilated-attention-pytorch:
MultiheadDilatedAttention and ImprovedMultiheadDilatedAttention) on the GPU, for comparison with
our dilated_bench_layer in the same run on the same card (scripts/layer_vs_peer.sh).

The peer's source is not part of this repository: pass the folder that holds its package
(`--peer DIR`, DIR/dilated_attention_pytorch/...). Its package __init__ imports unrelated
variants, so the two modules are imported directly under an empty package.

Each configuration: self-attention on random (b, n, E) input, 3 untimed calls, then `--repeat`
calls timed one by one with CUDA events; the JSON holds every time, their median and mean, and
the peak memory PyTorch allocated beyond the input, output and dout (torch.cuda's counters).
"""
import argparse
import importlib
import json
import statistics
import sys
import types


def load_peer(folder):
    package = types.ModuleType("dilated_attention_pytorch")
    package.__path__ = [f"{folder}/dilated_attention_pytorch"]
    sys.modules["dilated_attention_pytorch"] = package
    multihead = importlib.import_module("dilated_attention_pytorch.multihead_dilated_attention")
    improved = importlib.import_module(
        "dilated_attention_pytorch.improved_multihead_dilated_attention")
    return {
        "MultiheadDilatedAttention": multihead.MultiheadDilatedAttention,
        "ImprovedMultiheadDilatedAttention": improved.ImprovedMultiheadDilatedAttention,
    }


def time_calls(torch, fn, repeat):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", required=True, help="folder holding dilated_attention_pytorch/")
    parser.add_argument("--lengths", default="16384,65536,131072")
    parser.add_argument("--embed", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--segments", default="2048,4096,8192")
    parser.add_argument("--dilations", default="1,2,4")
    parser.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    parser.add_argument("--passes", default="fwd,fwd_bwd")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args()

    import torch

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    layers = load_peer(args.peer)
    segments = [int(x) for x in args.segments.split(",")]
    dilations = [int(x) for x in args.dilations.split(",")]
    results = []
    for name, cls in layers.items():
        layer = cls(args.embed, args.heads, dilation_rates=dilations, segment_lengths=segments,
                    device="cuda", dtype=dtype)
        for n in [int(x) for x in args.lengths.split(",")]:
            x = torch.rand(1, n, args.embed, device="cuda", dtype=dtype) * 2 - 1
            dout = torch.rand_like(x) * 2 - 1
            for pass_name in args.passes.split(","):
                xin = x.detach().requires_grad_(pass_name == "fwd_bwd")

                def call():
                    if pass_name == "fwd":
                        with torch.no_grad():
                            layer(xin, xin, xin)
                    else:
                        out = layer(xin, xin, xin)
                        out = out[0] if isinstance(out, tuple) else out
                        out.backward(dout)
                        xin.grad = None
                        layer.zero_grad(set_to_none=True)

                entry = {"name": f"{name}/{args.dtype}/E:{args.embed}/h:{args.heads}/"
                                 f"{pass_name}/n:{n}",
                         "layer": name, "pass": pass_name, "n": n}
                try:
                    torch.cuda.synchronize()
                    base = torch.cuda.memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                    times = time_calls(torch, call, args.repeat)
                    entry.update(times_ms=times, median_ms=statistics.median(times),
                                 mean_ms=statistics.fmean(times),
                                 extra_MiB=(torch.cuda.max_memory_allocated() - base) / 2**20)
                except torch.cuda.OutOfMemoryError as error:
                    entry["error"] = str(error).splitlines()[0]
                    torch.cuda.empty_cache()
                results.append(entry)
                print(f"{entry['name']}: " + (f"median {entry['median_ms']:.3f} ms"
                                              if "median_ms" in entry else entry["error"]),
                      flush=True)
    context = {"torch": torch.__version__, "device": torch.cuda.get_device_name(),
               "segments": segments, "dilations": dilations, "dtype": args.dtype,
               "repeat": args.repeat}
    with open(args.out + ".tmp", "w") as f:
        json.dump({"context": context, "benchmarks": results}, f, indent=1)
    import os
    os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
