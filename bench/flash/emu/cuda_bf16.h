// cuda_bf16.h for the host emulator (bench/flash/emu/emu.h): the few bf16 types and conversions the flash
// kernels use, with CUDA's rounding (to nearest, ties to even; NaN stays a quiet NaN).
#pragma once
#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
    uint16_t bits;
};

struct __nv_bfloat162 {
    __nv_bfloat16 x, y;  // x in the low 16 bits, as on the device
};

inline uint16_t emu_round_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

inline float __bfloat162float(__nv_bfloat16 b) {
    uint32_t u = (uint32_t)b.bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline __nv_bfloat16 __float2bfloat16(float f) { return {emu_round_bf16(f)}; }

inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    return {{emu_round_bf16(lo)}, {emu_round_bf16(hi)}};
}
