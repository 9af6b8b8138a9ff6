#!/usr/bin/env bash
# Builds here, in release mode, everything bench/gpu/check.sh runs on the GPU machine (which has
# no Rust toolchain): the test binaries that hold GPU tests (gpu_flash and gpu_hypernet among the
# gpu_* ones), and the GPU benches (gpu_kernels, the flash workbench flash_workbench,
# gpu_hypernet, and the whole training step gpu_train_step). They are built into target/gpu-bin/
# and packed into bench/gpu/bin/bundle.tar.gz (ignored by git), which the device call names in
# `carry`:
#
#   bash bench/gpu/prepare.sh
#   device run: bash bench/gpu/check.sh      carry: ["bench/gpu/bin"]
#
# Packed because every binary embeds the PTX of every module as text (3 MB, a third of it the flash
# kernels'): unpacked the binaries come to more than the 64 MiB a device call carries, gzipped
# to about a quarter of that.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=target/gpu-bin
carry=bench/gpu/bin
rm -rf "$out" "$carry" && mkdir -p "$out" "$carry"

# test executables, by target name (cargo prints their paths as JSON)
crates="-p odeflow-runtime -p odeflow-kernels -p odeflow-tests -p odeflow-model"
cargo test --release $crates --no-run --message-format=json 2>/dev/null \
    | python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        name = m["target"]["name"].replace("-", "_")
        kind = "lib" if "lib" in m["target"]["kind"] else "test"
        # the unit tests of each crate, and the integration tests that need a GPU
        gpu_libs = ("odeflow_runtime", "odeflow_kernels")
        if (kind == "lib" and name in gpu_libs) or name.startswith("gpu_") or name == "train_cli":
            shutil.copy(m["executable"], f"'"$out"'/test-{name}-{kind}")
'
cargo build --release -p odeflow-bench --bin gpu_kernels --bin flash_workbench --bin gpu_hypernet \
    --bin gpu_train_step --bin adjoint_memory --bin decode
cargo build --release -p odeflow-model --bin train
cp target/release/gpu_kernels target/release/flash_workbench target/release/gpu_hypernet \
    target/release/gpu_train_step target/release/adjoint_memory target/release/decode \
    target/release/train "$out/"
strip --strip-all "$out"/* 2>/dev/null || true
ls -la "$out"
tar -czf "$carry/bundle.tar.gz" -C "$out" .
du -sh "$out" "$carry"
