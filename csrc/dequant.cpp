// Dequantising row gather (see dequant.h). Decoding is exact (an int8 or an e4m3 code is a float32
// value); the one rounding is float32(code) * scale, then one more to the output dtype (nearest,
// ties to even), so this kernel, the numpy fallback and the CUDA kernel agree bit for bit.
#include "dequant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

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

template <class Store>
void dequant_range(const std::uint8_t* src, const std::uint8_t* scales, std::size_t n_rows, std::size_t row_elems,
                   std::size_t group_elems, const std::int64_t* idx, std::size_t b, std::size_t e, QuantScheme scheme,
                   Store store) {
    const std::size_t groups = row_elems / group_elems;
    const float* table = e4m3_table().value;
    for (std::size_t i = b; i < e; ++i) {
        const auto r = static_cast<std::uint64_t>(idx[i]);
        if (r >= n_rows) continue;  // changed under us (the GIL is released); validated before
        const std::uint8_t* row = src + r * row_elems;
        const std::uint8_t* row_scales = scales + r * groups * 4;
        for (std::size_t g = 0; g < groups; ++g) {
            float s;
            std::memcpy(&s, row_scales + g * 4, 4);
            const std::uint8_t* q = row + g * group_elems;
            const std::size_t o = i * row_elems + g * group_elems;
            if (scheme == QuantScheme::kInt8) {
                for (std::size_t k = 0; k < group_elems; ++k)
                    store(o + k, static_cast<float>(static_cast<std::int8_t>(q[k])) * s);
            } else {
                for (std::size_t k = 0; k < group_elems; ++k) store(o + k, table[q[k]] * s);
            }
        }
    }
}

}  // namespace

std::uint16_t float_to_half_bits(float f) {
    const std::uint32_t x = float_bits(f);
    const std::uint32_t sign = (x >> 16) & 0x8000u;
    const std::uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    if (ax >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
    if (ax < 0x38800000u) {
        // result is subnormal (or zero): value / 2^-24, rounded to nearest even
        if (ax < 0x33000000u) return static_cast<std::uint16_t>(sign);  // < 2^-25: rounds to 0
        const std::uint32_t man = (ax & 0x7fffffu) | 0x800000u;
        const int shift = 126 - static_cast<int>(ax >> 23);  // 14 - (exp - 127) + 9 ... bits to drop
        std::uint32_t q = man >> shift;
        const std::uint32_t rem = man & ((1u << shift) - 1u), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u))) ++q;
        return static_cast<std::uint16_t>(sign | q);
    }
    // normal: rebias the exponent, drop 13 mantissa bits, round to nearest even (a carry may bump the exponent)
    std::uint32_t h = ((ax >> 13) - (112u << 10));
    const std::uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return static_cast<std::uint16_t>(sign | h);
}

std::uint16_t float_to_bfloat16_bits(float f) {
    const std::uint32_t x = float_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);  // quiet NaN
    return static_cast<std::uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

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
        switch (out_dtype) {
            case OutDtype::kFloat32:
                dequant_range(src, scales, n_rows, row_elems, group_elems, indices, b, e, scheme,
                              [out](std::size_t o, float v) { std::memcpy(out + 4 * o, &v, 4); });
                break;
            case OutDtype::kFloat16:
                dequant_range(src, scales, n_rows, row_elems, group_elems, indices, b, e, scheme,
                              [out](std::size_t o, float v) {
                                  const std::uint16_t h = float_to_half_bits(v);
                                  std::memcpy(out + 2 * o, &h, 2);
                              });
                break;
            case OutDtype::kBFloat16:
                dequant_range(src, scales, n_rows, row_elems, group_elems, indices, b, e, scheme,
                              [out](std::size_t o, float v) {
                                  const std::uint16_t h = float_to_bfloat16_bits(v);
                                  std::memcpy(out + 2 * o, &h, 2);
                              });
                break;
        }
    };
    if (nt <= 1) return body(0, n);
    global_pool()->parallel_for(tasks, [&](std::size_t t) { body(n * t / tasks, n * (t + 1) / tasks); });
}

}  // namespace featstore
