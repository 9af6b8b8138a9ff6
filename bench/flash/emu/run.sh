#!/usr/bin/env bash
# Runs every workbench version (bench/flash/v*.cu) under the host emulator (emu.h) against its double-precision
# reference (harness.cpp): plain at every test shape, then with AddressSanitizer (a global or host read out of
# bounds) and ThreadSanitizer (a shared-memory race between warps, with cp.async copies made at issue) at a few.
# Needs only g++ (C++20); no GPU, no CUDA toolkit.
#
#   bash bench/flash/emu/run.sh [v1 v2 ...]
set -euo pipefail
cd "$(dirname "$0")"
build=${TMPDIR:-/tmp}/flash-emu
mkdir -p "$build"
versions=("$@")
if [ ${#versions[@]} -eq 0 ]; then
    for f in ../v*.cu; do versions+=("$(basename "$f" .cu)"); done
fi
flags=(-std=c++20 -O1 -g -I. -pthread -Wall -Wno-unused-function -Wno-unknown-pragmas)
for v in "${versions[@]}"; do
    src="\"../$v.cu\""
    g++ "${flags[@]}" -DFLASH_VERSION="$src" harness.cpp -o "$build/$v"
    "$build/$v"
    g++ "${flags[@]}" -fsanitize=address,undefined -DFLASH_VERSION="$src" harness.cpp -o "$build/$v-asan"
    FLASH_EMU_QUICK=1 "$build/$v-asan"
    g++ "${flags[@]}" -fsanitize=thread -DFLASH_VERSION="$src" harness.cpp -o "$build/$v-tsan"
    FLASH_EMU_QUICK=1 FLASH_EMU_EAGER=1 TSAN_OPTIONS=halt_on_error=1 "$build/$v-tsan"
done
