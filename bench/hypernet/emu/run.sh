#!/usr/bin/env bash
# Runs kernels/cuda/hypernet.cu under the host emulator of the flash workbench (bench/flash/emu/emu.h) against its
# double-precision reference (harness.cpp): plain at every case, then with AddressSanitizer (a global or host read
# out of bounds) and ThreadSanitizer (a shared-memory race between warps, with cp.async copies made at issue) at a
# few. Needs only g++ (C++20); no GPU, no CUDA toolkit.
#
#   bash bench/hypernet/emu/run.sh
set -euo pipefail
cd "$(dirname "$0")"
build=${TMPDIR:-/tmp}/hypernet-emu
mkdir -p "$build"
flags=(-std=c++20 -O1 -g -I. -I../../flash/emu -pthread -Wall -Wno-unused-function -Wno-unknown-pragmas)
g++ "${flags[@]}" harness.cpp -o "$build/hypernet"
"$build/hypernet"
g++ "${flags[@]}" -fsanitize=address,undefined harness.cpp -o "$build/hypernet-asan"
HYPERNET_EMU_QUICK=1 "$build/hypernet-asan"
g++ "${flags[@]}" -fsanitize=thread harness.cpp -o "$build/hypernet-tsan"
HYPERNET_EMU_QUICK=1 HYPERNET_EMU_EAGER=1 TSAN_OPTIONS=halt_on_error=1 "$build/hypernet-tsan"
