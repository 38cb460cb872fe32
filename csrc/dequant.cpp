// Dequantising row gather (see dequant.h). Decoding is exact (an int8 or an e4m3 code is a float32
// value); the one rounding is float32(code) * scale, then one more to the output dtype (nearest,
// ties to even), so this kernel, the numpy fallback and the CUDA kernel agree bit for bit.
#include "dequant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "gather.h"
#include "thread_pool.h"

namespace featstore {

namespace {

constexpr std::size_t kMinBytesPerThread = 64 * 1024;  // of output

// The 256 float8 e4m3fn codes as float32 (exact): 1 sign, 4 exponent (bias 7), 3 mantissa bits;
// no infinities, 0x7f / 0xff are NaN.
struct E4M3Table {
    float value[256];
    E4M3Table() {
        for (int c = 0; c < 256; ++c) {
            const int sign = c >> 7, exp = (c >> 3) & 15, man = c & 7;
            float v;
            if (exp == 15 && man == 7)
                v = std::nanf("");
            else if (exp == 0)
                v = std::ldexp(static_cast<float>(man), -9);  // subnormal: man/8 * 2^-6
            else
                v = std::ldexp(1.0f + static_cast<float>(man) / 8.0f, exp - 7);
            value[c] = sign ? -v : v;
        }
    }
};

const E4M3Table& e4m3_table() {
    static const E4M3Table table;
    return table;
}

inline std::uint32_t float_bits(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

}  // namespace

namespace {

// Branch-free float32 -> float16 (M. Maratyszcza's FP16 library, fp16_ieee_from_fp32_value): the
// float32 additions round to nearest even, so the result is IEEE's; it vectorises. NaN -> 0x7e00.
inline std::uint16_t half_bits(float f) {
    const float scale_to_inf = 0x1.0p+112f, scale_to_zero = 0x1.0p-110f;
    float base = (std::fabs(f) * scale_to_inf) * scale_to_zero;
    const std::uint32_t w = float_bits(f);
    const std::uint32_t shl1_w = w + w;
    const std::uint32_t sign = w & 0x80000000u;
    std::uint32_t bias = shl1_w & 0xff000000u;
    bias = std::max(bias, 0x71000000u);
    const std::uint32_t b = (bias >> 1) + 0x07800000u;
    float bias_f;
    std::memcpy(&bias_f, &b, 4);
    base = bias_f + base;
    const std::uint32_t bits = float_bits(base);
    const std::uint32_t nonsign = ((bits >> 13) & 0x7c00u) + (bits & 0x0fffu);
    const std::uint32_t nan = 0u - static_cast<std::uint32_t>(shl1_w > 0xff000000u);  // all ones for NaN
    return static_cast<std::uint16_t>((sign >> 16) | (0x7e00u & nan) | (nonsign & ~nan));
}

inline std::uint16_t bfloat16_bits(float f) {
    const std::uint32_t x = float_bits(f);
    const std::uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    const std::uint32_t nan = 0u - static_cast<std::uint32_t>((x & 0x7fffffffu) > 0x7f800000u);  // NaN: quiet
    return static_cast<std::uint16_t>((((x >> 16) | 0x40u) & nan) | (rounded & ~nan));
}

constexpr std::size_t kChunk = 256;  // elements decoded into a float32 buffer, then converted

#if defined(__x86_64__)
// float32 -> float16 with the F16C instruction (round to nearest even, as half_bits; 8 at a time):
// about 3x the portable loop. Chosen at run time where the CPU has it.
__attribute__((target("avx,f16c"))) void half_bits_f16c(const float* tmp, std::uint16_t* h, std::size_t n) {
    std::size_t k = 0;
    for (; k + 8 <= n; k += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(h + k),
                         _mm256_cvtps_ph(_mm256_loadu_ps(tmp + k), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; k < n; ++k) h[k] = half_bits(tmp[k]);
}
const bool kHasF16C = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
#else
constexpr bool kHasF16C = false;
void half_bits_f16c(const float*, std::uint16_t*, std::size_t) {}
#endif

// Decodes n codes times s into tmp (float32), then converts tmp to the output type at dst.
template <QuantScheme S, OutDtype O>
inline void dequant_chunk(const std::uint8_t* __restrict q, float s, std::size_t n, std::uint8_t* dst,
                          const float* __restrict table) {
    float tmp[kChunk];
    if (S == QuantScheme::kInt8)
        for (std::size_t k = 0; k < n; ++k) tmp[k] = static_cast<float>(static_cast<std::int8_t>(q[k])) * s;
    else
        for (std::size_t k = 0; k < n; ++k) tmp[k] = table[q[k]] * s;
    if (O == OutDtype::kFloat32) {
        std::memcpy(dst, tmp, n * 4);
        return;
    }
    std::uint16_t h[kChunk];
    if (O == OutDtype::kFloat16 && kHasF16C)
        half_bits_f16c(tmp, h, n);
    else if (O == OutDtype::kFloat16)
        for (std::size_t k = 0; k < n; ++k) h[k] = half_bits(tmp[k]);
    else
        for (std::size_t k = 0; k < n; ++k) h[k] = bfloat16_bits(tmp[k]);
    std::memcpy(dst, h, n * 2);
}

#if defined(__x86_64__)
// One group of n codes times s, 8 at a time with AVX2 (and F16C for float16 output), the rest with
// dequant_chunk: about 4x the chunked loop (benchmarks/micro_dequant.py). The same roundings, so the
// same bits: one float32 multiply (never fused), then cvtps_ph / the bfloat16 bit rounding.
template <QuantScheme S, OutDtype O>
__attribute__((target("avx2,f16c"))) void dequant_group_avx2(const std::uint8_t* __restrict q, float s, std::size_t n,
                                                           std::uint8_t* dst, const float* __restrict table) {
    constexpr std::size_t item = O == OutDtype::kFloat32 ? 4 : 2;
    const __m256 scale = _mm256_set1_ps(s);
    std::size_t k = 0;
    for (; k + 8 <= n; k += 8) {
        const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + k));
        __m256 v;
        if (S == QuantScheme::kInt8) {
            v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
        } else {  // e4m3 code c as float16 bits (c & 0x80) << 8 | (c & 0x7f) << 7 is its value * 2^-8, exactly
            const __m128i c = _mm_cvtepu8_epi16(bytes);
            const __m128i sign = _mm_and_si128(c, _mm_set1_epi16(0x80));
            const __m128i mag = _mm_and_si128(c, _mm_set1_epi16(0x7f));
            const __m128i h = _mm_or_si128(_mm_slli_epi16(sign, 8), _mm_slli_epi16(mag, 7));
            v = _mm256_mul_ps(_mm256_cvtph_ps(h), _mm256_set1_ps(256.0f));
            const __m256 nan = _mm256_castsi256_ps(_mm256_or_si256(  // 0x7f / 0xff: NaN, with the code's sign
                _mm256_slli_epi32(_mm256_cvtepu16_epi32(sign), 24), _mm256_set1_epi32(0x7fc00000)));
            const __m256 is_nan = _mm256_castsi256_ps(_mm256_cvtepi16_epi32(_mm_cmpeq_epi16(mag, _mm_set1_epi16(0x7f))));
            v = _mm256_blendv_ps(v, nan, is_nan);
        }
        v = _mm256_mul_ps(v, scale);
        std::uint8_t* at = dst + k * item;
        if (O == OutDtype::kFloat32) {
            _mm256_storeu_ps(reinterpret_cast<float*>(at), v);
        } else if (O == OutDtype::kFloat16) {
            _mm_storeu_si128(reinterpret_cast<__m128i*>(at),
                             _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        } else {  // bfloat16: (x + 0x7fff + lsb) >> 16; NaN: (x >> 16) | 0x40 (as bfloat16_bits)
            const __m256i x = _mm256_castps_si256(v);
            const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
            const __m256i rounded =
                _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7fff)), lsb), 16);
            const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(0x40));
            const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0x7fffffff)),
                                                   _mm256_set1_epi32(0x7f800000));
            const __m256i bits = _mm256_blendv_epi8(rounded, quiet, nan);  // 8 x uint16 in int32 lanes
            const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(bits, bits), 0x08);
            _mm_storeu_si128(reinterpret_cast<__m128i*>(at), _mm256_castsi256_si128(packed));
        }
    }
    if (k < n) dequant_chunk<S, O>(q + k, s, n - k, dst + k * item, table);
}
const bool kHasAvx2 = kHasF16C && __builtin_cpu_supports("avx2");
#else
constexpr bool kHasAvx2 = false;
template <QuantScheme S, OutDtype O>
void dequant_group_avx2(const std::uint8_t*, float, std::size_t, std::uint8_t*, const float*) {}
#endif

template <QuantScheme S, OutDtype O>
void dequant_rows(const std::uint8_t* src, const std::uint8_t* scales, std::size_t n_rows, std::size_t row_elems,
                  std::size_t group_elems, const std::int64_t* idx, std::size_t b, std::size_t e, std::uint8_t* out) {
    constexpr std::size_t item = O == OutDtype::kFloat32 ? 4 : 2;
    const std::size_t groups = row_elems / group_elems;
    const float* table = e4m3_table().value;
    for (std::size_t i = b; i < e; ++i) {
        const auto r = static_cast<std::uint64_t>(idx[i]);
        if (r >= n_rows) continue;  // changed under us (the GIL is released); validated before
        const std::uint8_t* row = src + r * row_elems;
        for (std::size_t g = 0; g < groups; ++g) {
            float s;
            std::memcpy(&s, scales + (r * groups + g) * 4, 4);
            const std::size_t at = g * group_elems;
            if (kHasAvx2) {
                dequant_group_avx2<S, O>(row + at, s, group_elems, out + (i * row_elems + at) * item, table);
                continue;
            }
            for (std::size_t k = 0; k < group_elems; k += kChunk)
                dequant_chunk<S, O>(row + at + k, s, std::min(kChunk, group_elems - k),
                                    out + (i * row_elems + at + k) * item, table);
        }
    }
}

template <QuantScheme S>
void dequant_rows_to(OutDtype o, const std::uint8_t* src, const std::uint8_t* scales, std::size_t n_rows,
                     std::size_t row_elems, std::size_t group_elems, const std::int64_t* idx, std::size_t b,
                     std::size_t e, std::uint8_t* out) {
    if (o == OutDtype::kFloat32)
        dequant_rows<S, OutDtype::kFloat32>(src, scales, n_rows, row_elems, group_elems, idx, b, e, out);
    else if (o == OutDtype::kFloat16)
        dequant_rows<S, OutDtype::kFloat16>(src, scales, n_rows, row_elems, group_elems, idx, b, e, out);
    else
        dequant_rows<S, OutDtype::kBFloat16>(src, scales, n_rows, row_elems, group_elems, idx, b, e, out);
}

}  // namespace

void dequant_row(const std::uint8_t* codes, const std::uint8_t* scales, std::size_t row_elems,
                 std::size_t group_elems, std::uint8_t* out, QuantScheme scheme, OutDtype out_dtype) {
    static constexpr std::int64_t kFirst = 0;  // row 0 of a one-row source
    if (scheme == QuantScheme::kInt8)
        dequant_rows_to<QuantScheme::kInt8>(out_dtype, codes, scales, 1, row_elems, group_elems, &kFirst, 0, 1, out);
    else
        dequant_rows_to<QuantScheme::kFloat8E4M3>(out_dtype, codes, scales, 1, row_elems, group_elems, &kFirst, 0, 1,
                                                  out);
}

std::uint16_t float_to_half_bits(float f) { return half_bits(f); }
std::uint16_t float_to_bfloat16_bits(float f) { return bfloat16_bits(f); }

void dequant_gather_rows(const std::uint8_t* src, std::size_t src_bytes, const std::uint8_t* scales,
                         std::size_t scales_bytes, std::size_t row_elems, std::size_t group_elems,
                         const std::int64_t* indices, std::size_t n, std::uint8_t* out, std::size_t out_bytes,
                         QuantScheme scheme, OutDtype out_dtype, int threads) {
    if (row_elems == 0) throw std::invalid_argument("row_elems must be positive, got 0");
    if (group_elems == 0 || row_elems % group_elems)
        throw std::invalid_argument("group_elems must divide row_elems " + std::to_string(row_elems) + ", got " +
                                    std::to_string(group_elems));
    if (threads < 0) throw std::invalid_argument("threads must be >= 0, got " + std::to_string(threads));
    const std::size_t out_item = out_dtype == OutDtype::kFloat32 ? 4 : 2;
    const std::size_t n_rows = src_bytes / row_elems;
    const std::size_t groups = row_elems / group_elems;
    std::size_t need;
    if (__builtin_mul_overflow(n, row_elems * out_item, &need) || out_bytes < need)
        throw std::invalid_argument("out has " + std::to_string(out_bytes) + " bytes but " + std::to_string(n) +
                                    " rows of " + std::to_string(row_elems) + " elements need more");
    if (scales_bytes / 4 / groups < n_rows)
        throw std::invalid_argument("scales has " + std::to_string(scales_bytes) + " bytes but " +
                                    std::to_string(n_rows) + " rows of " + std::to_string(groups) +
                                    " float32 scales need " + std::to_string(n_rows * groups * 4));
    check_row_indices(indices, n, n_rows);
    if (n == 0) return;
    std::size_t nt = threads == 1 ? 1 : static_cast<std::size_t>(get_num_threads());
    if (threads > 1) nt = std::min(nt, static_cast<std::size_t>(threads));
    nt = std::min({nt, n, std::max<std::size_t>(1, need / kMinBytesPerThread)});
    const std::size_t tasks = std::min(nt * 4, n);

    auto body = [&](std::size_t b, std::size_t e) {
        if (scheme == QuantScheme::kInt8)
            dequant_rows_to<QuantScheme::kInt8>(out_dtype, src, scales, n_rows, row_elems, group_elems, indices, b, e,
                                                out);
        else
            dequant_rows_to<QuantScheme::kFloat8E4M3>(out_dtype, src, scales, n_rows, row_elems, group_elems,
                                                      indices, b, e, out);
    };
    if (nt <= 1) return body(0, n);
    global_pool()->parallel_for(tasks, [&](std::size_t t) { body(n * t / tasks, n * (t + 1) / tasks); });
}

}  // namespace featstore
