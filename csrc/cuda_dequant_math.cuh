// The arithmetic of one dequantised element on the GPU, bit for bit dequant.cpp's: decoding a code
// is exact; the one float32 multiply rounds to nearest even and is never fused; the output
// conversions are dequant.cpp's own bit procedures. CUDA's NaN results are canonical (0x7fffffff),
// an x86 CPU's keep the NaN operand's sign and payload: mul_like_x86 makes a NaN product the x86
// way, so NaN codes (e4m3 0x7f / 0xff) dequantise to the same bits as on the CPU.
//
// Host-compilable too (tests/batches/test_cuda_dequant_math.py builds it with the host compiler):
// there mul_rn / add_rn model the GPU's operations (IEEE, round to nearest even, canonical NaN).
#pragma once

#include <cstdint>
#include <cstring>

#include "dequant.h"

#if defined(__CUDACC__)
#define FS_HD __host__ __device__ __forceinline__
#else
#define FS_HD inline
#endif

namespace featstore::cuda::math {

FS_HD unsigned as_uint(float f) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(f);
#else
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
#endif
}

FS_HD float as_float(unsigned u) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float f;
    std::memcpy(&f, &u, 4);
    return f;
#endif
}

FS_HD bool is_nan_bits(unsigned u) { return (u & 0x7fffffffu) > 0x7f800000u; }

// a * b and a + b, rounded to nearest even, never fused; a NaN result is CUDA's canonical 0x7fffffff.
FS_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fmul_rn(a, b);
#else
    volatile float r = a * b;
    return is_nan_bits(as_uint(r)) ? as_float(0x7fffffffu) : static_cast<float>(r);
#endif
}

FS_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fadd_rn(a, b);
#else
    volatile float r = a + b;
    return is_nan_bits(as_uint(r)) ? as_float(0x7fffffffu) : static_cast<float>(r);
#endif
}

// The float8 e4m3fn code c as float32, as dequant.cpp's table: subnormals man/8 * 2^-6, no
// infinities, 0x7f / 0xff the quiet NaN 0x7fc00000 with the code's sign.
FS_HD float e4m3_value(unsigned c) {
    const unsigned sign = (c & 0x80u) << 24, exp = (c >> 3) & 15u, man = c & 7u;
    if (exp == 15u && man == 7u) return as_float(sign | 0x7fc00000u);
    if (exp == 0u) return as_float(sign | as_uint(mul_rn(static_cast<float>(man), 0x1.0p-9f)));
    return as_float(sign | ((exp + 120u) << 23) | (man << 20));
}

// a * b rounded to nearest even, with the NaN an x86 CPU gives: a NaN operand quieted (a first),
// else (inf * 0) the default NaN 0xffc00000.
FS_HD float mul_like_x86(float a, float b) {
    const float r = mul_rn(a, b);
    if (!is_nan_bits(as_uint(r))) return r;
    const unsigned ua = as_uint(a), ub = as_uint(b);
    if (is_nan_bits(ua)) return as_float(ua | 0x00400000u);
    if (is_nan_bits(ub)) return as_float(ub | 0x00400000u);
    return as_float(0xffc00000u);
}

// dequant.cpp's half_bits (fp16_ieee_from_fp32_value), its float operations unfused.
FS_HD unsigned half_bits(float f) {
    float base = mul_rn(mul_rn(as_float(as_uint(f) & 0x7fffffffu), 0x1.0p+112f), 0x1.0p-110f);
    const unsigned w = as_uint(f);
    const unsigned shl1_w = w + w;
    const unsigned sign = w & 0x80000000u;
    const unsigned top = shl1_w & 0xff000000u, bias = top > 0x71000000u ? top : 0x71000000u;
    base = add_rn(as_float((bias >> 1) + 0x07800000u), base);
    const unsigned bits = as_uint(base);
    const unsigned nonsign = ((bits >> 13) & 0x7c00u) + (bits & 0x0fffu);
    const unsigned nan = 0u - static_cast<unsigned>(shl1_w > 0xff000000u);
    return ((sign >> 16) | (0x7e00u & nan) | (nonsign & ~nan)) & 0xffffu;
}

// dequant.cpp's bfloat16_bits: round to nearest even; a NaN stays NaN, quieted.
FS_HD unsigned bfloat16_bits(float f) {
    const unsigned x = as_uint(f);
    const unsigned rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    const unsigned nan = 0u - static_cast<unsigned>(is_nan_bits(x));
    return ((((x >> 16) | 0x40u) & nan) | (rounded & ~nan)) & 0xffffu;
}

template <QuantScheme S, OutDtype O>
FS_HD unsigned dequant_bits(unsigned code, float scale) {
    const float x = S == QuantScheme::kInt8 ? static_cast<float>(static_cast<signed char>(code)) : e4m3_value(code);
    const float y = mul_like_x86(x, scale);
    if (O == OutDtype::kFloat32) return as_uint(y);
    return O == OutDtype::kFloat16 ? half_bits(y) : bfloat16_bits(y);
}

}  // namespace featstore::cuda::math
