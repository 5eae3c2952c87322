#!/usr/bin/env bash
# Measures the storage ceiling with fio (io_uring, O_DIRECT, 128 KiB random
# reads, 32 in flight) and compares asyncloader's cold O_DIRECT rows with it.
#
#   benches/fio-ceiling.sh [--install] [--size 2G] [--runtime 20]
#                          [--bin PATH] [--fio-dir DIR] [DATA_DIR]
#
# DATA_DIR: the data set to load cold (e.g. one made with
#   `asyncloader gen DIR --dist imagenet`). Without it, asyncloader's cached
#   default imagenet set is used (generated on first use, ~2.5 GB).
# --fio-dir: where fio writes its test file (default: the parent of DATA_DIR,
#   i.e. the same file system; the file is removed afterwards).
# --install: apt-get install fio if it is missing (otherwise this script
#   installs nothing and exits 2, saying how to install it).
# --bin: the asyncloader binary (default: builds it with cargo --release).
#
# Needs root for --cold (dropping the page cache); the bench says when it
# cannot. Prints fio's MB/s, the asyncloader direct rows' MB/s and the ratio.
set -euo pipefail

install=0 size=2G runtime=20 bin="" fio_dir="" data=""
while [ $# -gt 0 ]; do
  case "$1" in
    --install) install=1 ;;
    --size) size="$2"; shift ;;
    --runtime) runtime="$2"; shift ;;
    --bin) bin="$2"; shift ;;
    --fio-dir) fio_dir="$2"; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) data="$1" ;;
  esac
  shift
done

# shellcheck source=benches/fio-common.sh
. "$(dirname "$0")/fio-common.sh"
need_fio "$install"

here="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "$bin" ]; then
  (cd "$here" && cargo build --release --quiet --bin asyncloader)
  bin="${CARGO_TARGET_DIR:-$here/target}/release/asyncloader"
fi

cache="${ASYNCLOADER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/asyncloader}"
if [ -z "$fio_dir" ]; then
  if [ -n "$data" ]; then fio_dir="$(dirname "$(realpath "$data")")"; else fio_dir="$cache"; fi
fi
mkdir -p "$fio_dir"
tmp="$(mktemp -d)"
fio_file="$fio_dir/.fio-ceiling.$$"
trap 'rm -rf "$tmp" "$fio_file"' EXIT

echo "== fio: io_uring, O_DIRECT, randread 128k, iodepth 32, $size file in $fio_dir, ${runtime}s" >&2
fio --name=ceiling --filename="$fio_file" --size="$size" --ioengine=io_uring \
    --direct=1 --rw=randread --bs=128k --iodepth=32 --runtime="$runtime" \
    --time_based --group_reporting --output-format=json >"$tmp/fio.json"
fio_mbs="$(json_get "$tmp/fio.json" "d['jobs'][0]['read']['bw_bytes']/1e6")"
fio_iops="$(json_get "$tmp/fio.json" "d['jobs'][0]['read']['iops']")"
printf 'fio: %.1f MB/s (%.0f IOPS of 128 KiB)\n' "$fio_mbs" "$fio_iops"

echo "== asyncloader bench --cold --direct --json ${data:-(default imagenet set)}" >&2
if [ -n "$data" ]; then
  set -- "$data"
else
  set -- --dist imagenet --files 20000
fi
rc=0
"$bin" bench "$@" --cold --direct --json >"$tmp/bench.json" || rc=$?
if [ ! -s "$tmp/bench.json" ]; then
  echo "asyncloader bench failed (exit $rc)" >&2
  exit 1
fi
python3 - "$tmp/bench.json" "$fio_mbs" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
fio = float(sys.argv[2])
if not d["cold"]:
    print("warning: the bench could not drop the page cache; its rows are WARM")
print(f"data: {d['data']['files']} files, {d['data']['bytes']/1e6:.1f} MB, {d['data']['dir']}")
print(f"{'row':<16} {'MB/s':>9} {'files/s':>9} {'x fio':>7}")
print(f"{'fio':<16} {fio:>9.1f} {'':>9} {1.0:>7.2f}")
for r in d["rows"]:
    if "mb_per_s" not in r:
        print(f"{r['method']:<16} failed: {r.get('error')}")
        continue
    print(f"{r['method']:<16} {r['mb_per_s']:>9.1f} {r['files_per_s']:>9.0f} {r['mb_per_s']/fio:>7.2f}")
best = max((r for r in d["rows"] if r["method"].endswith("-direct") and "mb_per_s" in r),
           key=lambda r: r["mb_per_s"], default=None)
if best:
    print(f"asyncloader direct / fio ceiling: {best['mb_per_s']/fio:.2f} ({best['method']})")
PY
exit "$rc"
