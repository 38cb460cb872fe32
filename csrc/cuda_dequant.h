// CUDA dequantising row gather: rows of one-byte codes (int8 or float8 e4m3fn) and their float32
// scales, from device-readable memory (registered host pages or device memory), into float16,
// bfloat16 or float32 rows. Plain C++ declarations (no CUDA headers); see cuda_gather.h.
#pragma once

#include <cstdint>

#include "dequant.h"

namespace featstore::cuda {

// The schemes and output dtypes of the CPU kernel (dequant.h).
using Scheme = featstore::QuantScheme;
using Out = featstore::OutDtype;

// For k < n: row rows[k] of the codes at src (n_rows rows of row_elems bytes) is decoded, in groups
// of group_elems consecutive codes sharing one float32 scale (group g of row r at byte
// scales + (r * row_elems / group_elems + g) * 4; scales need not be 4-byte aligned), as
// float32(code) * scale, rounded to `out` to nearest even, and written to row pos[k] of out
// (pos == 0: pos[k] = k). Bit for bit what dequant.cpp computes on an x86 host, NaN bits included.
// rows, pos: n int64 on the device; bad as in gather_rows. Launched on `stream` of `device`.
// Throws std::invalid_argument for bad sizes, Error when the launch fails.
void dequant_gather_rows(std::uintptr_t src, std::int64_t n_rows, std::int64_t row_elems, std::int64_t group_elems,
                         std::uintptr_t scales, std::uintptr_t rows, std::uintptr_t pos, std::int64_t n,
                         std::uintptr_t out, Scheme scheme, Out out_dtype, std::uintptr_t bad, int device,
                         std::uintptr_t stream);

}  // namespace featstore::cuda
