#!/usr/bin/env bash
# The GPU session's one call: every test (ignored ones included) of the binaries
# bench/gpu/prepare.sh built, the kernel benches, and PyTorch on the same device; full logs
# under $OUT, a short table last. Run from the repository root on the GPU machine:
#
#   bash bench/gpu/prepare.sh                       # here, first
#   device run: bash bench/gpu/check.sh             carry: ["bench/gpu/bin"]
#
# Record what it prints in bench/RESULTS.md, with the date.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
bin=bench/gpu/bin
if [ ! -d "$bin" ]; then
    echo "no $bin: run bash bench/gpu/prepare.sh here first and carry $bin" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
summary=()

# tests: every test, ignored (GPU) ones included
for t in "$bin"/test-*; do
    name=$(basename "$t")
    "$t" --include-ignored --test-threads 1 > "$OUT/$name.log" 2>&1
    rc=$?
    line=$(grep -E "^test result" "$OUT/$name.log" | tail -1)
    summary+=("| $name | rc $rc | ${line#test result: } |")
done
cat "$OUT"/test-*.log > "$OUT/tests.log"
rm -f "$OUT"/test-*.log

# kernel benches, then PyTorch's side of them
"$bin/gpu_elementwise" --json "$OUT/ours.json" > "$OUT/bench.log" 2>&1
python3 bench/peers/torch_elementwise.py --json "$OUT/torch.json" > "$OUT/torch.log" 2>&1

echo "## $(cat "$OUT/gpu.txt" | tail -1)"
echo
echo "| tests | exit | result |"
echo "|---|---|---|"
printf '%s\n' "${summary[@]}"
echo
cat "$OUT/bench.log"
echo
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
try:
    ours = {r["op"]: r for r in json.load(open(os.path.join(out, "ours.json")))}
    torch = {r["op"]: r for r in json.load(open(os.path.join(out, "torch.json")))}
except Exception as e:
    print(f"no side-by-side table: {e}")
    sys.exit(0)
print("| op | odeflow GB/s | torch GB/s | odeflow / torch |")
print("|---|---:|---:|---:|")
for op, r in ours.items():
    if op in torch:
        print(f"| {op} | {r['gb_s']:.0f} | {torch[op]['gb_s']:.0f} | {r['gb_s'] / torch[op]['gb_s']:.2f} |")
PY
