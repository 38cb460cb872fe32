// Row gather kernel: out[i] = src[indices[i]] for fixed-size byte rows (pure C++ on raw pointers).
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>

namespace featstore {

// An index outside [0, n_rows); module.cpp maps it to Python's IndexError.
class IndexError : public std::out_of_range {
public:
    using std::out_of_range::out_of_range;
};

// Throws IndexError (the message gather_rows uses) for the first of indices[0, n) outside
// [0, n_rows); returns whether they are non-decreasing.
bool check_row_indices(const std::int64_t* indices, std::size_t n, std::size_t n_rows);

// Copies row indices[i] of src (rows of row_bytes bytes; n_rows = src_bytes / row_bytes) to
// out[i*row_bytes, (i+1)*row_bytes). Validates everything before the first byte moves:
//   row_bytes == 0 or out_bytes < n*row_bytes -> std::invalid_argument,
//   an index < 0 or >= n_rows                 -> IndexError (negatives are not wrapped).
// threads: 0 = the global pool's size, 1 = inline on the calling thread, k = at most k threads.
// Thread-safe; may be called without the GIL. src and out must not overlap.
void gather_rows(const std::uint8_t* src, std::size_t src_bytes, std::size_t row_bytes,
                 const std::int64_t* indices, std::size_t n, std::uint8_t* out, std::size_t out_bytes,
                 int threads);

}  // namespace featstore
