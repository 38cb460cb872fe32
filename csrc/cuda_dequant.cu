// CUDA dequantising row gather (see cuda_dequant.h): the same arithmetic as dequant.cpp, so the two
// agree bit for bit. Decoding a code is exact; the one float32 multiply is __fmul_rn (never fused),
// and the output conversions are dequant.cpp's own bit procedures. CUDA's NaN results are canonical
// (0x7fffffff), an x86 CPU's keep the NaN operand's sign and payload: mul_like_x86 makes a NaN
// product the x86 way, so NaN codes (e4m3 0x7f / 0xff) dequantise to the same bits as on the CPU.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda_common.cuh"
#include "cuda_dequant.h"

namespace featstore::cuda {
namespace {

// The float8 e4m3fn code c as float32, as dequant.cpp's table: subnormals man/8 * 2^-6, no
// infinities, 0x7f / 0xff the quiet NaN 0x7fc00000 with the code's sign.
__device__ __forceinline__ float e4m3_value(unsigned c) {
    const unsigned sign = (c & 0x80u) << 24, exp = (c >> 3) & 15u, man = c & 7u;
    if (exp == 15u && man == 7u) return __uint_as_float(sign | 0x7fc00000u);
    if (exp == 0u) return __uint_as_float(sign | __float_as_uint(__fmul_rn(static_cast<float>(man), 0x1.0p-9f)));
    return __uint_as_float(sign | ((exp + 120u) << 23) | (man << 20));
}

__device__ __forceinline__ bool is_nan_bits(unsigned u) { return (u & 0x7fffffffu) > 0x7f800000u; }

// a * b rounded to nearest even, with the NaN an x86 CPU gives: a NaN operand quieted (a first),
// else (inf * 0) the default NaN 0xffc00000.
__device__ __forceinline__ float mul_like_x86(float a, float b) {
    const float r = __fmul_rn(a, b);
    if (!isnan(r)) return r;
    const unsigned ua = __float_as_uint(a), ub = __float_as_uint(b);
    if (is_nan_bits(ua)) return __uint_as_float(ua | 0x00400000u);
    if (is_nan_bits(ub)) return __uint_as_float(ub | 0x00400000u);
    return __uint_as_float(0xffc00000u);
}

// dequant.cpp's half_bits (fp16_ieee_from_fp32_value), its float operations unfused.
__device__ __forceinline__ unsigned half_bits(float f) {
    float base = __fmul_rn(__fmul_rn(fabsf(f), 0x1.0p+112f), 0x1.0p-110f);
    const unsigned w = __float_as_uint(f);
    const unsigned shl1_w = w + w;
    const unsigned sign = w & 0x80000000u;
    const unsigned bias = max(shl1_w & 0xff000000u, 0x71000000u);
    base = __fadd_rn(__uint_as_float((bias >> 1) + 0x07800000u), base);
    const unsigned bits = __float_as_uint(base);
    const unsigned nonsign = ((bits >> 13) & 0x7c00u) + (bits & 0x0fffu);
    const unsigned nan = 0u - static_cast<unsigned>(shl1_w > 0xff000000u);
    return ((sign >> 16) | (0x7e00u & nan) | (nonsign & ~nan)) & 0xffffu;
}

// dequant.cpp's bfloat16_bits: round to nearest even; a NaN stays NaN, quieted.
__device__ __forceinline__ unsigned bfloat16_bits(float f) {
    const unsigned x = __float_as_uint(f);
    const unsigned rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    const unsigned nan = 0u - static_cast<unsigned>(is_nan_bits(x));
    return ((((x >> 16) | 0x40u) & nan) | (rounded & ~nan)) & 0xffffu;
}

template <Scheme S, Out O>
__device__ __forceinline__ unsigned dequant_bits(unsigned code, float scale) {
    const float x = S == Scheme::kInt8 ? static_cast<float>(static_cast<signed char>(code)) : e4m3_value(code);
    const float y = mul_like_x86(x, scale);
    if (O == Out::kFloat32) return __float_as_uint(y);
    return O == Out::kFloat16 ? half_bits(y) : bfloat16_bits(y);
}

// VW codes at p (aligned to VW) as the low bytes of their words.
template <int VW>
__device__ __forceinline__ void load_codes(const unsigned char* p, unsigned (&c)[VW]) {
    if constexpr (VW == 1) {
        c[0] = p[0];
    } else {
        unsigned words[VW / 4];
        if constexpr (VW == 8) {
            const uint2 v = *reinterpret_cast<const uint2*>(p);
            words[0] = v.x;
            words[1] = v.y;
        } else {
            words[0] = *reinterpret_cast<const unsigned*>(p);
        }
#pragma unroll
        for (int j = 0; j < VW; ++j) c[j] = (words[j / 4] >> (8 * (j % 4))) & 0xffu;
    }
}

// Grid-stride over (row k, vector v of VW codes) pairs; the VW codes of a vector share one scale.
template <Scheme S, Out O, int VW, bool AlignedScales>
__global__ void dequant_kernel(const unsigned char* __restrict__ src, std::int64_t n_rows, std::int64_t row_elems,
                               std::int64_t group_elems, const unsigned char* __restrict__ scales,
                               const std::int64_t* __restrict__ rows, const std::int64_t* __restrict__ pos,
                               std::int64_t n, unsigned char* __restrict__ out, int* bad) {
    constexpr int item = O == Out::kFloat32 ? 4 : 2;
    const std::int64_t vecs = row_elems / VW, groups = row_elems / group_elems, total = n * vecs;
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
        const std::int64_t k = i / vecs;
        const std::int64_t e = (i - k * vecs) * VW;
        const std::int64_t r = rows[k];
        const std::int64_t p = pos ? pos[k] : k;
        if (r < 0 || r >= n_rows || p < 0 || p >= n) {
            if (bad) atomicExch(bad, 1);
            continue;
        }
        const unsigned char* sp = scales + (r * groups + e / group_elems) * 4;
        float scale;
        if constexpr (AlignedScales)
            scale = *reinterpret_cast<const float*>(sp);
        else
            scale = __uint_as_float(sp[0] | (sp[1] << 8) | (sp[2] << 16) | (static_cast<unsigned>(sp[3]) << 24));
        unsigned c[VW];
        load_codes<VW>(src + r * row_elems + e, c);
        unsigned char* dst = out + (p * row_elems + e) * item;
        if constexpr (VW == 1) {
            const unsigned bits = dequant_bits<S, O>(c[0], scale);
            if constexpr (item == 4)
                *reinterpret_cast<unsigned*>(dst) = bits;
            else
                *reinterpret_cast<unsigned short*>(dst) = static_cast<unsigned short>(bits);
        } else {
            constexpr int words = VW * item / 4;
            unsigned w[words];
#pragma unroll
            for (int j = 0; j < words; ++j) w[j] = 0;
#pragma unroll
            for (int j = 0; j < VW; ++j) {
                const unsigned bits = dequant_bits<S, O>(c[j], scale);
                if constexpr (item == 4)
                    w[j] = bits;
                else
                    w[j / 2] |= bits << (16 * (j % 2));
            }
            if constexpr (words % 4 == 0) {
#pragma unroll
                for (int q = 0; q < words / 4; ++q)
                    reinterpret_cast<uint4*>(dst)[q] = make_uint4(w[4 * q], w[4 * q + 1], w[4 * q + 2], w[4 * q + 3]);
            } else {
                *reinterpret_cast<uint2*>(dst) = make_uint2(w[0], w[1]);
            }
        }
    }
}

struct Args {
    const unsigned char* src;
    std::int64_t n_rows, row_elems, group_elems;
    const unsigned char* scales;
    const std::int64_t *rows, *pos;
    std::int64_t n;
    unsigned char* out;
    int* bad;
};

template <Scheme S, Out O, int VW>
void launch(const Args& a, bool aligned_scales, int device, cudaStream_t stream) {
    const int blocks = grid_blocks(a.n * (a.row_elems / VW), device);
    if (aligned_scales)
        dequant_kernel<S, O, VW, true><<<blocks, kThreads, 0, stream>>>(
            a.src, a.n_rows, a.row_elems, a.group_elems, a.scales, a.rows, a.pos, a.n, a.out, a.bad);
    else
        dequant_kernel<S, O, VW, false><<<blocks, kThreads, 0, stream>>>(
            a.src, a.n_rows, a.row_elems, a.group_elems, a.scales, a.rows, a.pos, a.n, a.out, a.bad);
    check(cudaGetLastError(), "dequant gather kernel launch");
}

// The widest vector (8, 4 or 1 codes) that the group size and the src/out addresses allow.
template <Scheme S, Out O>
void launch_widest(const Args& a, bool aligned_scales, int device, cudaStream_t stream) {
    const int item = O == Out::kFloat32 ? 4 : 2;
    const auto src = reinterpret_cast<std::uintptr_t>(a.src), out = reinterpret_cast<std::uintptr_t>(a.out);
    auto fits = [&](int vw) {
        const int out_align = vw * item < 16 ? vw * item : 16;
        return a.group_elems % vw == 0 && src % vw == 0 && out % out_align == 0;
    };
    if (fits(8)) return launch<S, O, 8>(a, aligned_scales, device, stream);
    if (fits(4)) return launch<S, O, 4>(a, aligned_scales, device, stream);
    launch<S, O, 1>(a, aligned_scales, device, stream);
}

template <Scheme S>
void launch_scheme(Out o, const Args& a, bool aligned_scales, int device, cudaStream_t stream) {
    if (o == Out::kFloat32) return launch_widest<S, Out::kFloat32>(a, aligned_scales, device, stream);
    if (o == Out::kFloat16) return launch_widest<S, Out::kFloat16>(a, aligned_scales, device, stream);
    launch_widest<S, Out::kBFloat16>(a, aligned_scales, device, stream);
}

}  // namespace

void dequant_gather_rows(std::uintptr_t src, std::int64_t n_rows, std::int64_t row_elems, std::int64_t group_elems,
                         std::uintptr_t scales, std::uintptr_t rows, std::uintptr_t pos, std::int64_t n,
                         std::uintptr_t out, Scheme scheme, Out out_dtype, std::uintptr_t bad, int device,
                         std::uintptr_t stream) {
    if (row_elems <= 0) throw std::invalid_argument("row_elems must be positive, got " + std::to_string(row_elems));
    if (group_elems <= 0 || row_elems % group_elems)
        throw std::invalid_argument("group_elems must divide row_elems " + std::to_string(row_elems) + ", got " +
                                    std::to_string(group_elems));
    if (n_rows < 0 || n < 0) throw std::invalid_argument("n_rows and n must be non-negative");
    if (scheme != Scheme::kInt8 && scheme != Scheme::kFloat8E4M3) throw std::invalid_argument("unknown scheme");
    if (out_dtype != Out::kFloat32 && out_dtype != Out::kFloat16 && out_dtype != Out::kBFloat16)
        throw std::invalid_argument("unknown output dtype");
    if (n == 0) return;
    if (!src || !scales || !rows || !out)
        throw std::invalid_argument("src, scales, rows and out must be non-null device addresses");
    DeviceGuard guard(device);
    const Args a{reinterpret_cast<const unsigned char*>(src),
                 n_rows,
                 row_elems,
                 group_elems,
                 reinterpret_cast<const unsigned char*>(scales),
                 reinterpret_cast<const std::int64_t*>(rows),
                 reinterpret_cast<const std::int64_t*>(pos),
                 n,
                 reinterpret_cast<unsigned char*>(out),
                 reinterpret_cast<int*>(bad)};
    const bool aligned_scales = scales % 4 == 0;
    auto s = reinterpret_cast<cudaStream_t>(stream);
    if (scheme == Scheme::kInt8) return launch_scheme<Scheme::kInt8>(out_dtype, a, aligned_scales, device, s);
    launch_scheme<Scheme::kFloat8E4M3>(out_dtype, a, aligned_scales, device, s);
}

}  // namespace featstore::cuda
