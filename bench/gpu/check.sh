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
if [ ! -f "$bin/bundle.tar.gz" ]; then
    echo "no $bin/bundle.tar.gz: run bash bench/gpu/prepare.sh here first and carry $bin" >&2
    exit 2
fi
# the binaries travel packed (see prepare.sh); unpacked outside the carried folder, so a run
# here does not make the next carry four times larger
unpacked=$(cd "${TMPDIR:-/tmp}" && pwd)/odeflow-gpu-bin
rm -rf "$unpacked" && mkdir -p "$unpacked"
tar -xzf "$bin/bundle.tar.gz" -C "$unpacked"
bin=$unpacked
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
summary=()

# tests: every test, ignored (GPU) ones included; the train CLI tests run the carried binary
export ODEFLOW_TRAIN_BIN="$bin/train"
for t in "$bin"/test-*; do
    name=$(basename "$t")
    # a kernel that hangs must not take the whole device call with it
    timeout 240 "$t" --include-ignored --test-threads 1 > "$OUT/$name.log" 2>&1
    rc=$?
    line=$(grep -E "^test result" "$OUT/$name.log" | tail -1)
    summary+=("| $name | rc $rc | ${line#test result: } |")
done
cat "$OUT"/test-*.log > "$OUT/tests.log"
rm -f "$OUT"/test-*.log

# kernel benches, then PyTorch's side of them (same shapes, same device)
timeout 180 "$bin/gpu_kernels" --json "$OUT/ours_kernels.json" > "$OUT/bench.log" 2>&1
timeout 180 python3 bench/peers/torch_kernels.py --json "$OUT/torch_kernels.json" \
    > "$OUT/torch.log" 2>&1
# the flash-attention workbench (each version checked against the CPU, then timed), and
# PyTorch's flash backend on the same shapes
timeout 120 "$bin/flash_workbench" --out "$OUT/ours_flash.json" > "$OUT/flash.log" 2>&1
timeout 120 python3 bench/peers/torch_sdpa.py --out "$OUT/torch_sdpa.json" \
    > "$OUT/torch_sdpa.log" 2>&1
# the fused hypernetwork kernels (each case checked against the CPU op, then timed) beside a
# device-to-device copy of the same bytes and the composed GEMMs
timeout 180 "$bin/gpu_hypernet" --json "$OUT/ours_hypernet.json" > "$OUT/hypernet.log" 2>&1
# whole training steps: the GPT-2-small-shaped neural ODE and GPT-2 small at B 8 x T 1024 in
# bf16, ours and PyTorch's (eager, bf16 autocast, SDPA, fused AdamW; per-step checkpointing on
# both sides)
timeout 240 "$bin/gpu_train_step" --batch 8 --reps 3 --json "$OUT/ours_train_step.json" \
    > "$OUT/train_step.log" 2>&1
timeout 180 python3 bench/peers/torch_train_step.py --device cuda --bf16 --only-small --batch 8 \
    --reps 3 --fused-adamw --json > "$OUT/torch_train_step.jsonl" 2> "$OUT/torch_train_step.log"
# the adjoint-vs-discretise memory experiment on the device (issue 10): the allocator's peak
# per gradient mode as L grows to 96
timeout 150 "$bin/adjoint_memory" --device cuda --widths 128 --steps 4,16,48,96 --segments 8 \
    --reps 1 --out-dir "$OUT/adjoint_memory" > "$OUT/adjoint_memory.log" 2>&1
# text generation on the device (issue 13): tokens/s with the KV cache and without, same tokens
timeout 90 "$bin/decode" --device cuda --reps 1 --json "$OUT/decode.json" > "$OUT/decode.log" 2>&1

echo "## $(tail -1 "$OUT/gpu.txt")"
echo
echo "| tests | exit | result |"
echo "|---|---|---|"
printf '%s\n' "${summary[@]}"
echo
grep -h "FAILED\|panicked" "$OUT/tests.log" | head -20
echo
echo "adjoint memory on the GPU (allocator peak, MiB):"
cat "$OUT/adjoint_memory/table.md" 2>/dev/null || tail -3 "$OUT/adjoint_memory.log"
echo
echo "decoding on the GPU:"
grep "^|" "$OUT/decode.log" | head -14 || tail -3 "$OUT/decode.log"
echo
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except Exception as e:
        print(f"({name}: {e})")
        return []
ours = load("ours_kernels.json")
torch = {r["op"]: r for r in load("torch_kernels.json")}
copy = next((r["rate"] for r in ours if r["op"].startswith("copy")), None)
print("| op | odeflow | torch | odeflow / torch | odeflow / copy |")
print("|---|---:|---:|---:|---:|")
for r in ours:
    t = torch.get(r["op"])
    vs_torch = f"{r['rate'] / t['rate']:.2f}" if t else ""
    vs_copy = f"{r['rate'] / copy:.2f}" if copy and r["unit"] == "GB/s" else ""
    theirs = f"{t['rate']:.1f}" if t else ""
    print(f"| {r['op']} | {r['rate']:.1f} {r['unit']} | {theirs} | {vs_torch} | {vs_copy} |")
print()
# targets of issue 9: forward >= 0.8x, backward >= 0.6x of PyTorch's flash backend
torch = {r["t"]: r for r in load("torch_sdpa.json")}
print("| flash attention, B 8 H 12 hd 64 causal bf16 | T | fwd TFLOP/s | bwd TFLOP/s "
      "| fwd / torch (>= 0.8) | bwd / torch (>= 0.6) |")
print("|---|---:|---:|---:|---:|---:|")
for r in load("ours_flash.json"):
    if r["check"] != "ok":
        print(f"| {r['version']} | | {r['check']} | | | |")
        continue
    t = torch.get(r["t"])
    fwd = f"{r['fwd_tflops'] / t['fwd_tflops']:.2f}" if t else ""
    bwd = f"{r['bwd_tflops'] / t['bwd_tflops']:.2f}" if t else ""
    print(f"| {r['version']} | {r['t']} | {r['fwd_tflops']:.1f} | {r['bwd_tflops']:.1f} "
          f"| {fwd} | {bwd} |")
for t in torch.values():
    print(f"| torch sdpa flash | {t['t']} | {t['fwd_tflops']:.1f} | {t['bwd_tflops']:.1f} | | |")
print()
# issue 10's target: the fused kernels at >= 80% of a device-to-device copy of the same bytes
print("| hypernet, N 12 K 21 | P | us | GB/s | copy GB/s | x copy (>= 0.8) | fused / composed "
      "| host us |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for r in load("ours_hypernet.json"):
    if r["check"] != "ok":
        print(f"| {r['op']} | {r['p']} | {r['check']} | | | | | |")
        continue
    met = "met" if r["fraction_of_copy"] >= 0.8 else "short"
    print(f"| {r['op']} | {r['p']} | {r['fused_us']:.1f} | {r['gbps']:.0f} | {r['copy_gbps']:.0f} "
          f"| {r['fraction_of_copy']:.2f} ({met}) | {r['speedup']:.2f} | {r['host_us']:.1f} |")
print()
def load_lines(name):
    try:
        return [json.loads(l) for l in open(os.path.join(out, name)) if l.strip()]
    except Exception as e:
        print(f"({name}: {e})")
        return []
# issue 10's target: odeflow's training step at >= 1.0x PyTorch's tokens/s, for both models
torch = {r["model"]: r for r in load_lines("torch_train_step.jsonl")}
print("| training step, bf16, B 8 x T 1024 | tokens/s | torch tokens/s | x torch (>= 1.0) "
      "| MFU | torch MFU | peak GB | torch peak GB |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for r in load("ours_train_step.json"):
    t = torch.get(r["model"])
    if "error" in r:
        print(f"| {r['model']} | error: {r['error']} | | | | | | |")
        continue
    theirs = f"{t['tokens_per_s']:.0f}" if t else ""
    ratio = f"{r['tokens_per_s'] / t['tokens_per_s']:.2f}" if t else ""
    their_mfu = f"{t['mfu'] * 100:.1f}%" if t and t.get("mfu") is not None else ""
    their_peak = f"{t['peak_bytes'] / 1e9:.1f}" if t else ""
    print(f"| {r['model']} | {r['tokens_per_s']:.0f} | {theirs} | {ratio} | {r['mfu'] * 100:.1f}% "
          f"| {their_mfu} | {r['peak_bytes'] / 1e9:.1f} | {their_peak} |")
PY
