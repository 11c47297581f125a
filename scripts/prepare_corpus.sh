#!/usr/bin/env bash
# Builds the byte-level corpus (vocabulary 256: one token per byte) that the language model
# trains on, from English text a Debian package installs: by default the Linux kernel's
# documentation in `linux-doc-6.1` (bookworm), i.e. the reStructuredText sources Sphinx copies
# beside the HTML (/usr/share/doc/linux-doc-6.1/html/_sources/**/*.rst.txt; 2,841 files, about
# 21.4 MB, the 342 files under translations/ left out: they are not English).
#
# The package is installed with apt-get when missing (needs root). The files are taken in
# sorted path order (bytewise, LC_ALL=C), each kept only when it is UTF-8 text (decodes
# strictly, no NUL byte), each ending in a newline. The held-out split is the last 5 %: val.bin
# holds the documents from the first one that starts at or after 95 % of the bytes to the end,
# train.bin everything before, so no document is split between the two. Written to <out>:
#   train.bin, val.bin   the bytes (uint8), concatenated
#   manifest.json        package and version, files taken and skipped, sizes, sha256 of each
# each through a temporary renamed into place once all are written (manifest last), so a
# failed run leaves the previous corpus whole.
#
# Usage: scripts/prepare_corpus.sh [--out DIR] [--package NAME] [--no-apt]
#   --out DIR       where to write (default: build/corpus in the checkout)
#   --package NAME  another Debian package whose _sources/*.txt files to take (default
#                   linux-doc-6.1)
#   --no-apt        do not install: fail if the package is missing
set -euo pipefail

say() { printf '[corpus] %s\n' "$*" >&2; }
die() { printf '[corpus] error: %s\n' "$*" >&2; exit 1; }

root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/build/corpus"
package="linux-doc-6.1"
do_apt=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) shift; out="${1:?--out needs a directory}" ;;
    --package) shift; package="${1:?--package needs a name}" ;;
    --no-apt) do_apt=0 ;;
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
if ! installed "$package"; then
  [ "$do_apt" = 1 ] || die "package $package is not installed (and --no-apt was given)"
  [ "$(id -u)" = 0 ] || die "installing $package needs root (or install it and pass --no-apt)"
  say "installing $package"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$package" \
      >&2; then
    say "apt-get install failed: updating the package lists and trying again"
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$package" >&2
  fi
fi
version="$(dpkg-query -W -f='${Version}' "$package")"
command -v python3 >/dev/null || die "python3 is needed (scripts/setup.sh installs it)"

mkdir -p "$out"
list="$(mktemp)"
trap 'rm -f "$list"' EXIT
dpkg -L "$package" | grep -E '/_sources/.*\.txt$' | grep -v '/translations/' |
  LC_ALL=C sort >"$list" || true
[ -s "$list" ] || die "package $package installs no _sources/*.txt files"
say "$package $version: $(wc -l <"$list") text files -> $out"

python3 - "$list" "$out" "$package" "$version" <<'PY'
import hashlib, json, os, sys

list_path, out, package, version = sys.argv[1:5]
paths = [p for p in open(list_path, encoding="utf-8").read().split("\n") if p]
documents, skipped = [], []
for path in paths:
    if not os.path.isfile(path):
        skipped.append((path, "missing"))
        continue
    data = open(path, "rb").read()
    try:
        data.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        skipped.append((path, "not UTF-8"))
        continue
    if b"\0" in data:
        skipped.append((path, "NUL byte"))
        continue
    if data and not data.endswith(b"\n"):
        data += b"\n"
    documents.append(data)

total = sum(len(d) for d in documents)
if total == 0:
    sys.exit("[corpus] error: no text taken")
# The held-out documents: from the first one starting at or after 95 % of the bytes.
start, split = 0, len(documents)
for i, d in enumerate(documents):
    if start >= 0.95 * total:
        split = i
        break
    start += len(d)
if split == len(documents):
    split = len(documents) - 1  # a single huge last document: hold it out whole
parts = {"train.bin": b"".join(documents[:split]), "val.bin": b"".join(documents[split:])}

manifest = {
    "package": package,
    "version": version,
    "files": f"dpkg -L {package} | _sources/**/*.txt, translations/ excluded, LC_ALL=C sorted",
    "files_taken": len(documents),
    "files_skipped": [{"path": p, "why": why} for p, why in skipped],
    "vocabulary": 256,
    "bytes": total,
    "split": "val.bin: the documents from the first one starting at or after 95 % of the bytes",
    "train_documents": split,
    "val_documents": len(documents) - split,
}
names = list(parts) + ["manifest.json"]
try:
    for name, data in parts.items():
        with open(os.path.join(out, name + ".tmp"), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        manifest[name.split(".")[0]] = {
            "file": name,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    with open(os.path.join(out, "manifest.json.tmp"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
except BaseException:
    for name in names:  # the previous corpus stays as it was
        if os.path.exists(os.path.join(out, name + ".tmp")):
            os.remove(os.path.join(out, name + ".tmp"))
    raise
for name in names:
    os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))
print(f"[corpus] train.bin {manifest['train']['bytes']} bytes, val.bin "
      f"{manifest['val']['bytes']} bytes ({len(documents)} files, {len(skipped)} skipped)",
      file=sys.stderr)
PY
echo "$out"
