#!/usr/bin/env bash
# Profiles circ on the workloads where it misses a target of issue 8 (perf record, sampled
# call stacks; falls back to valgrind --tool=callgrind when perf cannot count). Shortened runs.
# Output: bench/out/profile/<name>.txt (perf report, top entries by self time, and by DSO:
# JIT-compiled code has no symbols and shows as anonymous memory).
#   bash bench/profile.sh            # all: a, b256, c256, d, f
#   bash bench/profile.sh a d        # some
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
circ="$root/target/release/circ"
out="$here/out/profile"
mkdir -p "$out"
: "${CIRC_MNIST_DIR:?set CIRC_MNIST_DIR to the MNIST IDX files}"
export CIRC_MNIST_DIR

cmd_for() {
  local fa=(run "$root/stdlib/fa.circ" --json --out "$out/run" --set depth=1 --set hidden=256 --set momentum=0 --no-shuffle --epochs 1)
  local bp=(run "$root/stdlib/bp.circ" --json --out "$out/run" --set depth=2 --set hidden=256 --set momentum=0 --no-shuffle --epochs 1)
  case "$1" in
    a) echo "${fa[@]}" --set lr=0.01 --batch 1 --limit 20000 ;;
    b256) echo "${fa[@]}" --set lr=0.1 --batch 256 ;;
    c256) echo "${bp[@]}" --set lr=0.1 --batch 256 ;;
    d) echo run "$root/stdlib/stdp.circ" --json --out "$out/run" --epochs 3 ;;
    f) echo run "$root/bench/circ/rank1.circ" --json --out "$out/run" ;;
    *) echo "unknown workload $1" >&2; exit 2 ;;
  esac
}

if perf stat -e instructions true >/dev/null 2>&1; then use_perf=1; else use_perf=0; fi
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(a b256 c256 d f)
for n in "${names[@]}"; do
  read -r -a args <<<"$(cmd_for "$n")"
  echo "== $n: circ ${args[*]}" | tee "$out/$n.txt"
  if [ $use_perf = 1 ]; then
    perf record -F 999 -g -o "$out/$n.perf.data" "$circ" "${args[@]}" 2>/dev/null | tail -1 | tee -a "$out/$n.txt"
    # (head closes the pipe early: no pipefail here)
    { set +o pipefail
      echo "-- by DSO (self)"; perf report -i "$out/$n.perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -8
      echo "-- by symbol (self)"; perf report -i "$out/$n.perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -25
      echo "-- perf stat"; perf stat -e task-clock,cycles,instructions,cache-misses "$circ" "${args[@]}" 2>&1 >/dev/null | grep -E 'task-clock|cycles|instructions|cache-misses|elapsed'
      set -o pipefail
    } >>"$out/$n.txt"
  else
    valgrind --tool=callgrind --callgrind-out-file="$out/$n.callgrind" "$circ" "${args[@]}" >/dev/null 2>&1
    callgrind_annotate "$out/$n.callgrind" | head -40 >>"$out/$n.txt"
  fi
  echo "   -> $out/$n.txt"
done
