#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (fuzz/, preset "fuzz", scripts/fuzz.sh):

  fuzz/corpus/npy/  .npy files for dilated_fuzz_npy: valid files of every supported dtype
                    (<f2, <f4, <f8), shapes () to rank 4, format versions 1-3, and the same with
                    fortran_order True (refused); truncated at every part (magic, version, header
                    length, header, data); headers that lie (lengths beyond the file, shapes too
                    large for a size_t, unknown dtypes, missing keys, not a tuple);
  fuzz/corpus/cli/  inputs for dilated_fuzz_cli: a command line, then files (fuzz/fuzz_cli.cpp
                    says the format) over the fixtures q.npy, k.npy, v.npy, q64.npy, x.npy, w/.

  python3 scripts/make_fuzz_corpus.py [fuzz/corpus]

Only files this script names are written (gen-*); crash-* files, inputs the fuzzers found and
that were fixed, are kept as they are (each has a regression test: unit_tests/tstNpy.cpp or
tools/CMakeLists.txt). Plain Python, no NumPy: the bytes are NumPy's format written out.
"""
import os
import struct
import sys

here = os.path.dirname(os.path.abspath(__file__))
root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "fuzz", "corpus")

FORMATS = {"<f2": "e", "<f4": "f", "<f8": "d"}


def shape_text(shape):
    if len(shape) == 1:
        return "(%d,)" % shape[0]
    return "(" + ", ".join(str(n) for n in shape) + ")"


def header_dict(descr, fortran, shape):
    return "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (
        descr, "True" if fortran else "False", shape_text(shape))


def npy_bytes(descr, shape, fortran=False, version=1, values=None, dict_text=None):
    """A .npy file as NumPy writes it: magic, version, header length, the padded header, data."""
    text = dict_text if dict_text is not None else header_dict(descr, fortran, shape)
    length_size = 2 if version == 1 else 4
    unpadded = 6 + 2 + length_size + len(text) + 1
    text += " " * ((64 - unpadded % 64) % 64) + "\n"
    head = b"\x93NUMPY" + bytes([version, 0])
    head += struct.pack("<H" if version == 1 else "<I", len(text))
    head += text.encode("latin-1")
    count = 1
    for n in shape:
        count *= n
    if values is None:
        values = [((i * 7) % 11 - 5) / 4.0 for i in range(count)]
    data = b"".join(struct.pack("<" + FORMATS.get(descr, "f"), v) for v in values)
    return head + data


def write(folder, name, data):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def npy_corpus(folder):
    shapes = [(), (3,), (2, 3), (1, 4, 2, 2)]
    for descr in FORMATS:
        for shape in shapes:
            for fortran in (False, True):
                for version in (1, 2, 3):
                    if version > 1 and shape not in [(2, 3)]:
                        continue
                    name = "gen-valid-%s-%s-%s-v%d.npy" % (
                        descr[1:], "x".join(map(str, shape)) or "scalar",
                        "F" if fortran else "C", version)
                    write(folder, name, npy_bytes(descr, shape, fortran, version))
    good = npy_bytes("<f4", (2, 3))
    # Truncated at every part: magic, version, header length, header, data.
    for cut in (0, 3, 6, 7, 9, 20, 60, len(good) - 24, len(good) - 1):
        write(folder, "gen-truncated-at-%d.npy" % cut, good[:cut])
    v2 = npy_bytes("<f8", (2, 3), version=2)
    write(folder, "gen-truncated-v2-length.npy", v2[:10])
    # Headers that lie or are not what NumPy writes.
    lies = {
        "header-length-beyond-file-v1": b"\x93NUMPY\x01\x00\xff\xff{'descr': '<f4'}",
        "header-length-beyond-file-v3": b"\x93NUMPY\x03\x00\xf0\xff\xff\xff{'descr'",
        "bad-magic": b"\x93NUMPX\x01\x00" + good[8:],
        "version-0": b"\x93NUMPY\x00\x00" + good[8:],
        "version-4": b"\x93NUMPY\x04\x00" + good[8:],
    }
    for name, data in lies.items():
        write(folder, "gen-%s.npy" % name, data)
    dicts = {
        "int32": "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }",
        "big-endian": "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }",
        "bool": "{'descr': '|b1', 'fortran_order': False, 'shape': (2, 3), }",
        "no-descr": "{'fortran_order': False, 'shape': (2, 3), }",
        "no-shape": "{'descr': '<f4', 'fortran_order': False, }",
        "no-fortran": "{'descr': '<f4', 'shape': (2, 3), }",
        "shape-not-tuple": "{'descr': '<f4', 'fortran_order': False, 'shape': 6, }",
        "shape-letter": "{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }",
        "shape-negative": "{'descr': '<f4', 'fortran_order': False, 'shape': (-2, 3), }",
        "shape-product-too-large":
            "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }",
        "shape-entry-beyond-size_t":
            "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,), }",
        "shape-nested": "{'descr': '<f4', 'fortran_order': False, 'shape': ((2, 3), 1), }",
        "shape-empty-extent": "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 3), }",
        "empty-dict": "{}",
        "no-colon": "{'descr' '<f4', 'fortran_order' False, 'shape' (2, 3)}",
    }
    for name, text in dicts.items():
        write(folder, "gen-%s.npy" % name, npy_bytes("<f4", (2, 3), dict_text=text))


def cli_input(args, files=()):
    """A dilated_fuzz_cli input: the command line, then (name, bytes) records."""
    data = " ".join(args).encode()
    for name, contents in files:
        data += b"\0" + name.encode() + b"\0" + struct.pack("<H", len(contents)) + contents
    return data


def cli_corpus(folder):
    geometry = ["--segments", "8,16", "--dilations", "1,2"]
    qkv = ["run", "--q", "q.npy", "--k", "k.npy", "--v", "v.npy", "--out", "o.npy"] + geometry
    layer = ["run", "--input", "x.npy", "--weights", "w", "--heads", "2", "--out", "y.npy"]
    layer += geometry
    half_q = npy_bytes("<f2", (1, 16, 2, 4))
    cases = {
        "core-improved": (qkv, []),
        "core-original-longnet-causal-lse": (
            qkv + ["--algorithm", "original", "--semantics", "longnet", "--causal", "--lse",
                   "l.npy", "--format", "json"], []),
        "core-double-host": (qkv + ["--dtype", "double", "--backend", "host"], []),
        "core-float64-input": (["run", "--q", "q64.npy", "--k", "k.npy", "--v", "v.npy", "--out",
                                "o.npy"] + geometry, []),
        "core-half-input": (qkv, [("q.npy", half_q)]),
        "core-softmax-scale-repeats": (qkv + ["--softmax-scale", "0.5", "--warmup", "1",
                                              "--repeats", "2"], []),
        "core-default-geometry": (qkv[:9], []),
        "core-segments-beyond-length": (qkv[:9] + ["--segments", "32,64", "--dilations", "1,4"],
                                        []),
        "core-segment-zero": (qkv[:9] + ["--segments", "0,16", "--dilations", "1,2"], []),
        "core-dilation-count": (qkv[:9] + ["--segments", "8,16", "--dilations", "1"], []),
        "core-too-few-heads": (qkv[:9] + ["--segments", "2,4,8,16", "--dilations", "1,1,1,1"],
                               []),
        "core-shape-mismatch": (qkv, [("k.npy", npy_bytes("<f4", (1, 15, 2, 4)))]),
        "core-rank3": (qkv, [("q.npy", npy_bytes("<f4", (16, 2, 4)))]),
        "core-empty-extent": (qkv, [("q.npy", npy_bytes("<f4", (1, 0, 2, 4)))]),
        "core-truncated": (qkv, [("v.npy", npy_bytes("<f4", (1, 16, 2, 4))[:200])]),
        "core-fortran": (qkv, [("q.npy", npy_bytes("<f4", (1, 16, 2, 4), fortran=True))]),
        "core-int32": (qkv, [("q.npy", npy_bytes("<i4", (1, 16, 2, 4)))]),
        "core-missing-file": (["run", "--q", "nothing.npy", "--k", "k.npy", "--v", "v.npy",
                               "--out", "o.npy"] + geometry, []),
        "core-directory": (["run", "--q", "w", "--k", "k.npy", "--v", "v.npy", "--out",
                            "o.npy"] + geometry, []),
        "core-unwritable-out": (qkv[:8] + ["--out", "none/o.npy"] + geometry, []),
        "core-no-inputs": (["run", "--k", "k.npy", "--out", "o.npy"], []),
        "layer-improved-lse": (layer + ["--lse", "l.npy"], []),
        "layer-original-cross": (layer + ["--algorithm", "original", "--key-input", "x.npy",
                                          "--value-input", "x.npy"], []),
        "layer-heads-3": (layer[:6] + ["3"] + layer[7:], []),
        "layer-weight-shape": (layer, [("w/k_proj.weight.npy", npy_bytes("<f4", (8, 7)))]),
        "layer-weight-truncated": (layer, [("w/out_proj.weight.npy",
                                            npy_bytes("<f4", (8, 8))[:100])]),
        "layer-input-rank4": (["run", "--input", "q.npy", "--weights", "w", "--heads", "2",
                               "--out", "y.npy"] + geometry, []),
        "layer-no-weights": (["run", "--input", "x.npy", "--heads", "2", "--out", "y.npy"], []),
        "layer-eps": (layer + ["--layer-norm-eps", "0.1"], []),
        "info": (["info"], []),
        "help": (["run", "--help"], []),
        "no-subcommand": ([], []),
        "bad-option": (qkv + ["--no-such-option"], []),
        "bad-dtype": (qkv + ["--dtype", "int8"], []),
        "dtype-half": (qkv + ["--dtype", "half"], []),
        "segments-text": (qkv[:9] + ["--segments", "a,b", "--dilations", "1,2"], []),
    }
    for name, (args, files) in cases.items():
        write(folder, "gen-%s" % name, cli_input(args, files))


def main():
    npy_corpus(os.path.join(root, "npy"))
    cli_corpus(os.path.join(root, "cli"))
    for sub in ("npy", "cli"):
        print("%s: %d files" % (os.path.join(root, sub), len(os.listdir(os.path.join(root, sub)))))


if __name__ == "__main__":
    main()
