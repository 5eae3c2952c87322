#!/usr/bin/env bash
# Large files, cold: asyncloader's O_DIRECT whole-file loads into destination
# memory (examples/large_files.rs, one Worker::request_into per file) against
# fio's sequential 1 MiB reads of the same files (issue 15).
#
#   benches/large-files.sh [--install] [--size 1G] [--files 3] [--repeat 5]
#                          [--buffered] [--huge] [--keep] [--bin PATH]
#                          [--fio-iodepth "8 32"] [--fio-args "..."]
#                          [--engine-args "..."] [DIR]
#
# DIR: where the test files go (default: target/large-files of this repo,
#   never in git). Files large-N.bin of --size (numfmt's IEC units: 1G =
#   1 GiB) are made there from /dev/urandom unless already there with that
#   size; the ones this script made are removed at the end unless --keep.
# Each of --repeat rounds, caches dropped before every measurement:
#   fio --name=seq --rw=read --bs=1m --iodepth=32 --direct=1
#       --ioengine=io_uring --file_service_type=sequential, over the files;
#   large_files --direct over the same files (sizes and 64 random 4 KiB
#     blocks per file compared with pread after each run).
# The two alternate which goes first. --buffered adds a cold buffered pair:
#   fio --direct=0 and large_files without --direct. --huge adds a pair
#   whose memory is in huge pages: fio --iomem=shmhuge (this script reserves
#   64 hugetlb pages, 128 MiB, and gives them back at the end) and
#   large_files --dest registered --hugepages (transparent huge pages). On a
#   virtio disk the pages a 1 MiB read lands in matter: see docs/bench.md.
# --fio-iodepth "8 32": fio once per iodepth each round (default 32; the
#   ratios are against each).
# --fio-args / --engine-args: more options for fio / large_files (e.g.
#   --engine-args "--inflight 2 --dest registered").
# --bin: the large_files binary (default: cargo build --release --example).
# --install: apt-get install fio if it is missing (otherwise this script
#   installs nothing and exits 2, saying how to install it).
#
# Needs root (dropping the page cache); says so and measures warm without
# it. Prints each round, the medians and the ratio engine/fio, and no ratio
# (exit 1) when a load failed or its bytes differ from the file.
set -euo pipefail

install=0 size=1G nfiles=3 repeat=5 buffered=0 huge=0 keep=0 bin="" dir="" depths=32
fio_args="" engine_args=""
while [ $# -gt 0 ]; do
  case "$1" in
    --install) install=1 ;;
    --size) size="$2"; shift ;;
    --files) nfiles="$2"; shift ;;
    --repeat) repeat="$2"; shift ;;
    --buffered) buffered=1 ;;
    --huge) huge=1 ;;
    --keep) keep=1 ;;
    --bin) bin="$2"; shift ;;
    --fio-args) fio_args="$2"; shift ;;
    --fio-iodepth) depths="$2"; shift ;;
    --engine-args) engine_args="$2"; shift ;;
    -h|--help) sed -n '2,39p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) dir="$1" ;;
  esac
  shift
done

# shellcheck source=benches/fio-common.sh
. "$(dirname "$0")/fio-common.sh"
need_fio "$install"

here="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "$bin" ]; then
  (cd "$here" && cargo build --release --quiet --example large_files)
  bin="${CARGO_TARGET_DIR:-$here/target}/release/examples/large_files"
fi
[ -n "$dir" ] || dir="${CARGO_TARGET_DIR:-$here/target}/large-files"
mkdir -p "$dir"
bytes="$(numfmt --from=iec "$size")"

tmp="$(mktemp -d)"
made=()
hugepages_before=""
cleanup() {
  rm -rf "$tmp"
  if [ -n "$hugepages_before" ]; then
    echo "$hugepages_before" >/proc/sys/vm/nr_hugepages || true
  fi
  if [ "$keep" = 0 ] && [ ${#made[@]} -gt 0 ]; then rm -f "${made[@]}"; fi
}
trap cleanup EXIT

files=()
for i in $(seq 0 $((nfiles - 1))); do
  f="$dir/large-$i.bin"
  if [ ! -f "$f" ] || [ "$(stat -c %s "$f")" != "$bytes" ]; then
    echo "== making $f ($size)" >&2
    made+=("$f")
    head -c "$bytes" /dev/urandom >"$f.tmp" && mv "$f.tmp" "$f"
  fi
  files+=("$f")
done
sync
fio_files="$(IFS=:; echo "${files[*]}")"
fs="$(df --output=source,fstype "$dir" | tail -1 | tr -s ' ')"

if [ "$huge" = 1 ]; then
  hugepages_before="$(cat /proc/sys/vm/nr_hugepages)"
  if [ "$hugepages_before" -lt 64 ] && ! echo 64 >/proc/sys/vm/nr_hugepages 2>/dev/null; then
    echo "--huge: cannot reserve hugetlb pages for fio (not root?)" >&2
    exit 2
  fi
fi

cold=1
drop() {
  sync
  if ! echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then
    if [ "$cold" = 1 ]; then
      echo "warning: cannot drop the page cache (not root?): buffered rows are WARM" >&2
    fi
    cold=0
  fi
}

# fio_run NAME DIRECT IODEPTH [FIO_OPTION]: MB/s of fio's sequential 1 MiB
# reads over the files.
fio_run() {
  drop
  # shellcheck disable=SC2086 # fio_args is split on purpose
  fio --name=seq --filename="$fio_files" --rw=read --bs=1m --iodepth="$3" \
      --direct="$2" --ioengine=io_uring --file_service_type=sequential \
      ${4:-} $fio_args --output-format=json >"$tmp/$1.json"
  json_get "$tmp/$1.json" "'%.1f' % (d['jobs'][0]['read']['bw_bytes']/1e6)"
}

failed=0
# engine_run NAME ARGS...: MB/s of one large_files run (caches dropped).
engine_run() {
  local name="$1"; shift
  drop
  # shellcheck disable=SC2086
  if ! "$bin" "$@" $engine_args "${files[@]}" >"$tmp/$name.out" 2>"$tmp/$name.err"; then
    failed=1
    echo "large_files $* FAILED:" >&2
    cat "$tmp/$name.out" "$tmp/$name.err" >&2
    echo "nan"
    return
  fi
  sed -n 's/^run 1\/1: .* s, \([0-9.]*\) MB\/s.*/\1/p' "$tmp/$name.out"
}

echo "== $nfiles files of $size in $dir ($fs), $repeat rounds" >&2
echo "   fio --rw=read --bs=1m --iodepth=${depths// /|} --ioengine=io_uring --file_service_type=sequential $fio_args" >&2
echo "   $bin $engine_args (one request_into per file)" >&2
rows=(direct)
[ "$huge" = 1 ] && rows+=(huge)
[ "$buffered" = 1 ] && rows+=(buffered)
: >"$tmp/rounds"
for r in $(seq 1 "$repeat"); do
  for row in "${rows[@]}"; do
    case "$row" in
      direct) d=1 fio_mem="" flag=--direct ;;
      huge) d=1 fio_mem=--iomem=shmhuge flag="--direct --dest registered --hugepages" ;;
      buffered) d=0 fio_mem="" flag="" ;;
    esac
    # Alternate the order: a disk that slows down within a run (or noise
    # from other work) does not always land on the same side.
    line="round $r $row"
    if [ $((r % 2)) = 0 ]; then
      e="$(engine_run "al-$row-$r" $flag)"
    fi
    for qd in $depths; do
      f="$(fio_run "fio-$row-$qd-$r" $d "$qd" $fio_mem)"
      if [ -z "$f" ]; then echo "fio failed (row $row, iodepth $qd)" >&2; exit 1; fi
      echo "$row fio-qd$qd $f" >>"$tmp/rounds"
      line="$line  fio-qd$qd $f"
    done
    if [ $((r % 2)) = 1 ]; then
      e="$(engine_run "al-$row-$r" $flag)"
    fi
    if [ -z "$e" ] || [ "$e" = nan ]; then e=nan; failed=1; fi
    echo "$row asyncloader $e" >>"$tmp/rounds"
    echo "$line  asyncloader $e (MB/s)"
  done
done
grep -h "^run 1/1" "$tmp"/al-direct-1.out | sed 's/^/example: /' || true

python3 - "$tmp/rounds" "$failed" "$cold" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    row, who, v = line.split()
    runs.setdefault(row, {}).setdefault(who, []).append(float(v))
failed, cold = sys.argv[2] == "1", sys.argv[3] == "1"
print(f"{'row':<9} {'who':<12} {'MB/s median (range)':>24} {'asyncloader / it':>17} {'per round':>11}")
for row, whos in runs.items():
    al = whos.get("asyncloader", [])
    note = "" if cold or row != "buffered" else "  (WARM: caches not dropped)"
    for who, xs in whos.items():
        m = statistics.median(xs)
        cell = f"{m:.0f} ({min(xs):.0f}-{max(xs):.0f})"
        ratio = per = ""
        if who != "asyncloader":
            if failed:
                ratio = per = "-"
            else:
                ratio = f"{statistics.median(al) / m:.2f}"
                pr = [a / f for a, f in zip(al, xs)]
                per = f"{min(pr):.2f}-{max(pr):.2f}"
        print(f"{row:<9} {who:<12} {cell:>24} {ratio:>17} {per:>11}{note}")
if failed:
    print("asyncloader: a load FAILED or differed from the file: no ratio")
PY
exit "$failed"
