// Dequantising row gather: out[i] = float(q[indices[i]]) * scale, as float16, bfloat16 or float32
// (pure C++ on raw pointers, no Python or torch).
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace featstore {

enum class QuantScheme { kInt8 = 0, kFloat8E4M3 = 1 };
enum class OutDtype { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// The names Python passes ("int8", "float8_e4m3"; "float32", "float16", "bfloat16"); std::invalid_argument
// (Python's ValueError) for any other. Shared by featstore._core and featstore._cuda.
inline QuantScheme quant_scheme_of(const std::string& scheme) {
    if (scheme == "int8") return QuantScheme::kInt8;
    if (scheme == "float8_e4m3") return QuantScheme::kFloat8E4M3;
    throw std::invalid_argument("scheme must be 'int8' or 'float8_e4m3', got '" + scheme + "'");
}

inline OutDtype out_dtype_of(const std::string& dtype) {
    if (dtype == "float32") return OutDtype::kFloat32;
    if (dtype == "float16") return OutDtype::kFloat16;
    if (dtype == "bfloat16") return OutDtype::kBFloat16;
    throw std::invalid_argument("out_dtype must be 'float16', 'bfloat16' or 'float32', got '" + dtype + "'");
}

// Row r of src holds row_elems one-byte codes (int8, or float8 e4m3fn bits) in groups of
// group_elems consecutive elements; each group has one float32 scale, group g of row r at
// scales[r * (row_elems / group_elems) + g] (scales need not be 4-byte aligned). For every i, row
// indices[i] is decoded as float32(code) * scale (one float32 multiply) and rounded to out_dtype
// to nearest, ties to even; out receives len(indices) rows of row_elems elements.
// Validates everything before the first byte moves (std::invalid_argument for sizes, IndexError for
// an index outside [0, n_rows), n_rows = src_bytes / row_elems). threads as in gather_rows.
void dequant_gather_rows(const std::uint8_t* src, std::size_t src_bytes, const std::uint8_t* scales,
                         std::size_t scales_bytes, std::size_t row_elems, std::size_t group_elems,
                         const std::int64_t* indices, std::size_t n, std::uint8_t* out, std::size_t out_bytes,
                         QuantScheme scheme, OutDtype out_dtype, int threads);

// Decodes one row: row_elems codes at `codes`, its row_elems / group_elems float32 scales at `scales`
// (unaligned is fine), into `out` (row_elems elements of out_dtype), exactly as dequant_gather_rows
// decodes a row. No checks: the caller has validated the sizes (direct_read.cpp decodes rows as they land).
void dequant_row(const std::uint8_t* codes, const std::uint8_t* scales, std::size_t row_elems,
                 std::size_t group_elems, std::uint8_t* out, QuantScheme scheme, OutDtype out_dtype);

// Bytes of one element of out_dtype.
inline std::size_t out_item_bytes(OutDtype o) { return o == OutDtype::kFloat32 ? 4 : 2; }

// float32 -> float16 / bfloat16 bits, round to nearest even (NaN stays NaN).
std::uint16_t float_to_half_bits(float f);
std::uint16_t float_to_bfloat16_bits(float f);

}  // namespace featstore
