// CUDA dequantising row gather (see cuda_dequant.h): loads, stores and launch; the arithmetic of one
// element is cuda_dequant_math.cuh (bit for bit dequant.cpp's).
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda_common.cuh"
#include "cuda_dequant.h"
#include "cuda_dequant_math.cuh"

namespace featstore::cuda {
namespace {

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
            const unsigned bits = math::dequant_bits<S, O>(c[0], scale);
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
                const unsigned bits = math::dequant_bits<S, O>(c[j], scale);
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
