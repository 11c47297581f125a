"""The arrays of scripts/large_check.sh (the 64-bit check of issue 20): writes the large float16
inputs, cuts token slices out of them, and compares a full run's rows with a slice run's.

  large_check.py generate DIR N HEADS DIM SEED [JOBS]
      q, k, v, dout (1, N, HEADS, DIM) float16 in DIR: multiples of 1/1024 in [-1, 1), uniform,
      from NumPy's PCG64, one generator per 2^26-element chunk seeded (SEED, tensor, chunk), so
      the values are fixed and differ along the whole tensor (a wrong index reads other values),
      written by JOBS processes into the .npy files in place (np.lib.format.open_memmap: never
      in memory whole).
  large_check.py slice DIR START LENGTH TAG
      DIR/<name>_<TAG>.npy = tokens [START, START + LENGTH) of DIR/<name>.npy for each input.
  large_check.py compare FULL PART START ULPS LABEL
      rows [START, START + len) of FULL (np.load, memory-mapped) against PART: one line, exit
      status 0 when every element is within ULPS units in the last place of the files' dtype
      (NaN anywhere, a shape or dtype mismatch, or an all-zero slice fails).
"""
import multiprocessing
import os
import sys

import numpy as np

INPUTS = ("q", "k", "v", "dout")
CHUNK = 1 << 26  # elements per generator and per worker task (128 MiB of float16)


def _fill(task):
    path, tensor, first, count, seed = task
    array = np.load(path, mmap_mode="r+")
    flat = array.reshape(-1)
    rng = np.random.default_rng([seed, tensor, first // CHUNK])
    # k / 1024 for integers k in [-1024, 1024): exact in float16, and twice as fast to make as
    # float32 uniforms rounded to float16.
    steps = rng.integers(-1024, 1024, count, dtype=np.int16)
    np.multiply(steps, np.float16(1 / 1024), out=flat[first:first + count], dtype=np.float16,
                casting="unsafe")
    array.flush()
    return count


def generate(directory, n, heads, dim, seed, jobs):
    os.makedirs(directory, exist_ok=True)
    shape = (1, n, heads, dim)
    size = n * heads * dim
    tasks = []
    for tensor, name in enumerate(INPUTS):
        path = os.path.join(directory, name + ".npy")
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape).flush()
        tasks += [(path, tensor, first, min(CHUNK, size - first), seed)
                  for first in range(0, size, CHUNK)]
    with multiprocessing.Pool(jobs) as pool:
        written = sum(pool.imap_unordered(_fill, tasks))
    print(f"generated q, k, v, dout {shape} float16: {written} elements, "
          f"{written * 2 / 1e9:.2f} GB in {directory}")


def cut(directory, start, length, tag):
    for name in INPUTS:
        full = np.load(os.path.join(directory, name + ".npy"), mmap_mode="r")
        np.save(os.path.join(directory, f"{name}_{tag}.npy"),
                np.ascontiguousarray(full[:, start:start + length]))


def ordered(bits, dtype):
    """The bit patterns of float16/32 values as integers in the order of the values (so that
    their difference counts units in the last place across zero too)."""
    signed = bits.view(np.int16 if dtype == np.float16 else np.int32).astype(np.int64)
    top = np.int64(0x8000 if dtype == np.float16 else 0x80000000)
    return np.where(signed < 0, -(signed & (top - 1)), signed)


def compare(full_path, part_path, start, ulps, label):
    full = np.load(full_path, mmap_mode="r")
    part = np.load(part_path)
    rows = full[:, start:start + part.shape[1]]
    problems = []
    if rows.shape != part.shape:
        problems.append(f"shape {rows.shape} vs {part.shape}")
    if full.dtype != part.dtype or part.dtype not in (np.float16, np.float32):
        problems.append(f"dtype {full.dtype} vs {part.dtype}")
    if problems:
        print(f"{label}: {', '.join(problems)}: FAIL")
        return 1
    rows = np.ascontiguousarray(rows)
    nan = int(np.count_nonzero(np.isnan(rows)) + np.count_nonzero(np.isnan(part)))
    unsigned = np.uint16 if part.dtype == np.float16 else np.uint32
    distance = np.abs(ordered(rows.view(unsigned), part.dtype) -
                      ordered(part.view(unsigned), part.dtype))
    worst = int(distance.max())
    differing = int(np.count_nonzero(distance))
    largest = float(np.abs(part.astype(np.float64)).max())
    difference = float(np.abs(rows.astype(np.float64) - part.astype(np.float64)).max())
    ok = nan == 0 and worst <= ulps and largest > 0
    print(f"{label}: max |full - slice| {difference:.3g} ({worst} ulp; tolerance {ulps}), "
          f"{differing} of {part.size} elements not bitwise equal, NaN {nan}, "
          f"max |slice| {largest:.3g}: {'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


def main():
    command = sys.argv[1]
    if command == "generate":
        directory, n, heads, dim, seed = sys.argv[2], *map(int, sys.argv[3:7])
        jobs = int(sys.argv[7]) if len(sys.argv) > 7 else os.cpu_count()
        generate(directory, n, heads, dim, seed, jobs)
        return 0
    if command == "slice":
        cut(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
        return 0
    if command == "compare":
        return compare(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
