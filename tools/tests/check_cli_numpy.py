"""The dilated-attention tool against NumPy: writes float16 / float64 q, k, v with numpy.save, runs
the tool, reads its output and log-sum-exp with numpy.load and compares them with an independent
NumPy implementation of the grouped semantics (the seed's PyTorch peers' algorithm: heads split
into one group per branch, attention among each segment's kept positions, output divided by the
number of groups); then the backward (--dout: dq, dk, dv against the NumPy gradients of the same
function) and --out-dtype float16 (exactly NumPy's rounding of the float32 output).
Usage: check_cli_numpy.py TOOL WORKDIR; exit status 0 when everything agrees.
"""
import os
import subprocess
import sys

import numpy as np

SEGMENTS, DILATIONS = [16, 32], [1, 2]


def grouped_items(n, h):
    """(kept rows, head) of every (segment, head) item of the grouped semantics: heads split
    over the branches in order, branch i keeping rows offset i % r of each segment."""
    groups = len(SEGMENTS)
    base, extra = divmod(h, groups)
    begin = 0
    for i, (s, r) in enumerate(zip(SEGMENTS, DILATIONS)):
        end = begin + base + (1 if i < extra else 0)
        offset = i % r
        for start in range(0, n, s):
            rows = np.arange(start + offset, min(start + s, n), r)
            for head in range(begin, end):
                yield rows, head
        begin = end


def item_scores(qs, ks, causal):
    """scale q k^T of one item in float64, -inf above the diagonal when causal."""
    scores = qs @ ks.transpose(0, 2, 1) / np.sqrt(qs.shape[-1])
    if causal:
        scores = np.where(np.tril(np.ones((len(scores[0]), len(scores[0])), bool)), scores,
                          -np.inf)
    return scores


def grouped_attention(q, k, v, causal):
    """out (b, n, h, d) and lse (b, n, h) in float64; lse is -inf where no branch keeps a row."""
    b, n, h, d = q.shape
    groups = len(SEGMENTS)
    out = np.zeros((b, n, h, d))
    lse = np.full((b, n, h), -np.inf)
    for rows, head in grouped_items(n, h):
        qs, ks, vs = (x[:, rows, head, :].astype(np.float64) for x in (q, k, v))
        scores = item_scores(qs, ks, causal)
        top = scores.max(axis=-1, keepdims=True)
        weights = np.exp(scores - top)
        total = weights.sum(axis=-1, keepdims=True)
        out[:, rows, head, :] = (weights / total) @ vs / groups
        lse[:, rows, head] = (top + np.log(total))[..., 0]
    return out, lse


def grouped_attention_backward(q, k, v, dout, causal):
    """dq, dk, dv (b, n, h, d) in float64 of sum(out * dout) for grouped_attention's out."""
    b, n, h, d = q.shape
    groups = len(SEGMENTS)
    grads = [np.zeros((b, n, h, d)) for _ in range(3)]
    for rows, head in grouped_items(n, h):
        qs, ks, vs, gs = (x[:, rows, head, :].astype(np.float64) for x in (q, k, v, dout))
        scores = item_scores(qs, ks, causal)
        p = np.exp(scores - scores.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        g = gs / groups                      # out = (P V) / groups
        dp = g @ vs.transpose(0, 2, 1)
        ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
        grads[0][:, rows, head, :] += ds @ ks / np.sqrt(d)
        grads[1][:, rows, head, :] += ds.transpose(0, 2, 1) @ qs / np.sqrt(d)
        grads[2][:, rows, head, :] += p.transpose(0, 2, 1) @ g
    return grads

def check_backward(tool, work, rng):
    """--dout: the tool's out, dq, dk, dv against NumPy; --out-dtype float16 against NumPy's
    rounding of the float32 output. Returns the number of failures."""
    failures = 0
    q, k, v, dout = (rng.standard_normal((2, 96, 4, 8)) for _ in range(4))
    paths = {}
    for name, x in (("q", q), ("k", k), ("v", v), ("dout", dout)):
        paths[name] = os.path.join(work, f"bw_{name}.npy")
        np.save(paths[name], x)
    outputs = {name: os.path.join(work, f"bw_out_{name}.npy") for name in ("out", "dq", "dk", "dv")}
    for algorithm in ("original", "improved"):
        for causal in (False, True):
            for dtype in ("float", "double"):
                command = [tool, "run", "--q", paths["q"], "--k", paths["k"], "--v", paths["v"],
                           "--dout", paths["dout"], "--segments", ",".join(map(str, SEGMENTS)),
                           "--dilations", ",".join(map(str, DILATIONS)),
                           "--algorithm", algorithm, "--dtype", dtype, "--format", "json"]
                for name, path in outputs.items():
                    command += ["--" + name, path]
                if causal:
                    command.append("--causal")
                result = subprocess.run(command, capture_output=True, text=True)
                case = f"backward, {algorithm}, {dtype}{', causal' if causal else ''}"
                if result.returncode != 0 or '"pass": "forward+backward"' not in result.stdout:
                    print(f"{case}: exit status {result.returncode}\n{result.stdout}{result.stderr}")
                    failures += 1
                    continue
                rounded = [x.astype(np.float32 if dtype == "float" else np.float64)
                           for x in (q, k, v, dout)]
                expected = [grouped_attention(*rounded[:3], causal)[0]]
                expected += grouped_attention_backward(*rounded, causal)
                # Gradients sum more terms than the output: float's tolerance is wider.
                tol = 1e-4 if dtype == "float" else 1e-10
                errors = []
                ok = True
                for name, want in zip(outputs, expected):
                    got = np.load(outputs[name])
                    errors.append(np.abs(got - want).max() / (1 + np.abs(want).max()))
                    ok = ok and got.shape == q.shape and errors[-1] <= tol
                print(f"{case}: relative max errors out {errors[0]:.2e}, dq {errors[1]:.2e}, "
                      f"dk {errors[2]:.2e}, dv {errors[3]:.2e}: {'ok' if ok else 'FAIL'}")
                failures += not ok
    # --out-dtype float16 from float storage: NumPy's own float32 -> float16 rounding (to nearest
    # even; the dout scaled so that some values overflow, and tiny ones go subnormal).
    for scale in (1.0, 1e5, 1e-6):
        np.save(paths["v"], v * scale)
        half = os.path.join(work, "bw_out16.npy")
        results = [subprocess.run([tool, "run", "--q", paths["q"], "--k", paths["k"], "--v",
                                   paths["v"], "--segments", ",".join(map(str, SEGMENTS)),
                                   "--dilations", ",".join(map(str, DILATIONS)), "--out", out]
                                  + extra, capture_output=True, text=True)
                   for out, extra in ((outputs["out"], []),
                                      (half, ["--out-dtype", "float16"]))]
        if any(r.returncode != 0 for r in results):
            print(f"--out-dtype float16 (v x {scale}): exit status "
                  f"{[r.returncode for r in results]}\n{results[1].stderr}")
            failures += 1
            continue
        full, rounded = np.load(outputs["out"]), np.load(half)
        expected = full.astype(np.float16)
        ok = (rounded.dtype == np.float16 and full.dtype == np.float32
              and np.array_equal(rounded.view(np.uint16), expected.view(np.uint16)))
        print(f"--out-dtype float16 (v x {scale}): {np.count_nonzero(np.isinf(rounded))} inf, "
              f"{np.count_nonzero(np.abs(rounded) < 2.0 ** -14)} subnormal or zero, bits equal to "
              f"NumPy's rounding: {'ok' if ok else 'FAIL'}")
        failures += not ok
    return failures


def main():
    tool, work = sys.argv[1], sys.argv[2]
    os.makedirs(work, exist_ok=True)
    rng = np.random.default_rng(7)
    failures = 0
    for input_dtype in (np.float16, np.float64):
        q, k, v = (rng.standard_normal((2, 96, 4, 8)).astype(input_dtype) for _ in range(3))
        paths = {}
        for name, x in (("q", q), ("k", k), ("v", v)):
            paths[name] = os.path.join(work, f"{name}_{np.dtype(input_dtype).name}.npy")
            np.save(paths[name], x)
        for algorithm in ("original", "improved"):
            for causal in (False, True):
                for dtype in ("float", "double"):
                    out_path = os.path.join(work, "out.npy")
                    lse_path = os.path.join(work, "lse.npy")
                    command = [tool, "run", "--q", paths["q"], "--k", paths["k"], "--v", paths["v"],
                               "--segments", ",".join(map(str, SEGMENTS)),
                               "--dilations", ",".join(map(str, DILATIONS)),
                               "--algorithm", algorithm, "--dtype", dtype,
                               "--out", out_path, "--lse", lse_path, "--format", "json"]
                    if causal:
                        command.append("--causal")
                    result = subprocess.run(command, capture_output=True, text=True)
                    case = (f"{np.dtype(input_dtype).name} input, {algorithm}, {dtype}"
                            f"{', causal' if causal else ''}")
                    if result.returncode != 0:
                        print(f"{case}: exit status {result.returncode}\n{result.stderr}")
                        failures += 1
                        continue
                    out, lse = np.load(out_path), np.load(lse_path)
                    # The tool rounds the inputs to --dtype first.
                    rounded = [x.astype(np.float32 if dtype == "float" else np.float64)
                               for x in (q, k, v)]
                    expected_out, expected_lse = grouped_attention(*rounded, causal)
                    expected_dtype = np.float32 if dtype == "float" else np.float64
                    tol = 2e-5 if dtype == "float" else 1e-10
                    kept = np.isfinite(expected_lse)
                    errors = (np.abs(out - expected_out).max(),
                              np.abs(lse[kept] - expected_lse[kept]).max())
                    ok = (out.dtype == expected_dtype and lse.dtype == expected_dtype
                          and out.shape == q.shape and lse.shape == q.shape[:3]
                          and errors[0] <= tol and errors[1] <= tol * 10
                          and np.all(np.isneginf(lse[~kept])))
                    print(f"{case}: out {errors[0]:.2e}, lse {errors[1]:.2e}: "
                          f"{'ok' if ok else 'FAIL'}")
                    failures += not ok
    failures += check_backward(tool, work, rng)
    print(f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
