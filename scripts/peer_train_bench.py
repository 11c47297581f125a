#!/usr/bin/env python3
"""Times training steps of the seed's language model built in PyTorch around the peer's attention
modules (DarcStar-Solutions-Tech/dilated-attention-pytorch), for comparison with dilated_train in
the same run on the same card, or on the same CPU cores with --device cpu
(scripts/train_vs_peer.sh).

The model is the one docs/training.md describes, written here in plain PyTorch: token embedding
tied with the head, L pre-LN blocks, final LayerNorm, mean cross-entropy; the seed's two blocks
(its docs/feasibility/multihead-variants-comparison.md):
  standard: x + MHA(LN1(x)), MHA = the peer's MultiheadDilatedAttention (original) or
            ImprovedMultiheadDilatedAttention (improved); then x + FFN(LN2(x))
  custom:   q, k, v = Linear(LN1(x)), x + out_proj(the peer's DilatedAttention or
            ImprovedDilatedAttention(q, k, v)); then x + FFN(LN2(x))
with causal attention. On CUDA PyTorch's own mixed precision (autocast fp16, fp32 parameters,
GradScaler) and fused AdamW; on the CPU fp32 throughout (as dilated_train --dtype float on the host)
and PyTorch's default (foreach) AdamW; betas 0.9/0.95, weight decay 0.1, clipping at 1.0; optional
per-block activation checkpointing (torch.utils.checkpoint). Random byte ids: a timing, not a
training run. Peak memory: the CUDA caching allocator's peak on the GPU; on the CPU the process's
peak resident set (ru_maxrss), which includes the interpreter and libraries.

The peer's source is not part of this repository: --peer DIR holds its package folder.
"""
import argparse
import importlib
import json
import os
import statistics
import sys
import types


def load_peer(folder):
    package = types.ModuleType("dilated_attention_pytorch")
    package.__path__ = [f"{folder}/dilated_attention_pytorch"]
    sys.modules["dilated_attention_pytorch"] = package
    names = {"dilated_attention": "DilatedAttention",
             "improved_dilated_attention": "ImprovedDilatedAttention",
             "multihead_dilated_attention": "MultiheadDilatedAttention",
             "improved_multihead_dilated_attention": "ImprovedMultiheadDilatedAttention"}
    return {cls: getattr(importlib.import_module(f"dilated_attention_pytorch.{mod}"), cls)
            for mod, cls in names.items()}


def build(torch, peer, args):
    nn = torch.nn
    F = torch.nn.functional
    E, H = args.embed, args.heads
    segments = [int(x) for x in args.segments.split(",")]
    dilations = [int(x) for x in args.dilations.split(",")]

    def ffn():
        return nn.Sequential(nn.Linear(E, 4 * E), nn.GELU(), nn.Linear(4 * E, E))

    class Standard(nn.Module):
        def __init__(self):
            super().__init__()
            cls = peer["ImprovedMultiheadDilatedAttention" if args.policy == "improved"
                       else "MultiheadDilatedAttention"]
            self.norm1, self.norm2 = nn.LayerNorm(E), nn.LayerNorm(E)
            self.attention = cls(E, H, dilation_rates=dilations, segment_lengths=segments)
            self.ffn = ffn()

        def forward(self, x):
            n = self.norm1(x)
            a = self.attention(n, n, n, is_causal=True)
            x = x + (a[0] if isinstance(a, tuple) else a)
            return x + self.ffn(self.norm2(x))

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            cls = peer["ImprovedDilatedAttention" if args.policy == "improved"
                       else "DilatedAttention"]
            self.norm1, self.norm2 = nn.LayerNorm(E), nn.LayerNorm(E)
            self.q_proj, self.k_proj = nn.Linear(E, E), nn.Linear(E, E)
            self.v_proj, self.out_proj = nn.Linear(E, E), nn.Linear(E, E)
            self.attention = cls(segments, dilations)
            self.ffn = ffn()

        def forward(self, x):
            b, n, _ = x.shape
            h = self.norm1(x)
            q = self.q_proj(h).view(b, n, H, E // H)
            k = self.k_proj(h).view(b, n, H, E // H)
            v = self.v_proj(h).view(b, n, H, E // H)
            a = self.attention(q, k, v, is_causal=True).reshape(b, n, E)
            x = x + self.out_proj(a)
            return x + self.ffn(self.norm2(x))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(args.vocab, E)
            self.blocks = nn.ModuleList(
                [(Standard if args.block == "standard" else Custom)() for _ in range(args.layers)])
            self.norm = nn.LayerNorm(E)

        def forward(self, ids, targets):
            x = self.embedding(ids)
            for block in self.blocks:
                if args.checkpointing:
                    x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
            logits = F.linear(self.norm(x), self.embedding.weight)
            return F.cross_entropy(logits.float().view(-1, args.vocab), targets.view(-1))

    return Model().to(args.device)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", required=True)
    parser.add_argument("--block", choices=["standard", "custom"], default="standard")
    parser.add_argument("--policy", choices=["improved", "original"], default="improved")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--embed", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--length", type=int, default=65536)
    parser.add_argument("--segments", default="2048,4096,8192,16384")
    parser.add_argument("--dilations", default="1,2,4,8")
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 3 untimed)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import resource
    import time

    import torch

    peer = load_peer(args.peer)
    torch.manual_seed(0)
    cuda = args.device == "cuda"
    if not cuda and "OMP_NUM_THREADS" in os.environ:  # the cores our side is given
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    entry = {"block": args.block, "policy": args.policy, "length": args.length,
             "checkpointing": args.checkpointing, "torch": torch.__version__,
             "device": torch.cuda.get_device_name() if cuda else "cpu",
             "threads": torch.get_num_threads()}
    try:
        model = build(torch, peer, args)
        entry["parameters"] = sum(p.numel() for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                **({"fused": True} if cuda else {}))
        scaler = torch.amp.GradScaler("cuda") if cuda else None
        ids = torch.randint(0, args.vocab, (1, args.length + 1), device=args.device)
        x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

        def step():
            if cuda:
                with torch.autocast("cuda", dtype=torch.float16):
                    loss = model(x, y)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss = model(x, y)
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if cuda:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for _ in range(3):
            step()
        if cuda:
            torch.cuda.synchronize()
        times = []
        for _ in range(args.steps):
            if cuda:
                start = torch.cuda.Event(enable_timing=True)
                stop = torch.cuda.Event(enable_timing=True)
                start.record()
                loss = step()
                stop.record()
                stop.synchronize()
                times.append(start.elapsed_time(stop) / 1000)
            else:
                begin = time.perf_counter()
                loss = step()
                times.append(time.perf_counter() - begin)
        entry.update(step_seconds=statistics.fmean(times), median_seconds=statistics.median(times),
                     tokens_per_second=args.length / statistics.fmean(times), loss=float(loss))
        if cuda:
            entry["peak_bytes"] = torch.cuda.max_memory_allocated()
        else:
            entry["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except torch.cuda.OutOfMemoryError as error:
        entry["error"] = str(error).splitlines()[0]
    except Exception as error:  # the peer's failure is a result, written down
        entry["error"] = f"{type(error).__name__}: {error}"
    print(json.dumps(entry), flush=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump(entry, f, indent=1)
    os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
