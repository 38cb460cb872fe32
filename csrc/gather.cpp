// Row gather kernel implementation: validate, optionally sort by source row, copy rows with memcpy.
//
// Tuning notes (2-vCPU AMD EPYC Zen 4 VM shared with other jobs, so figures are noisy medians,
// +-20%; source = pre-faulted MAP_PRIVATE file mapping):
// * Prefetch: __builtin_prefetch of the first 512 B (8 lines) of the row 4 positions ahead: 1536 B
//   rows 5.1 -> 6.8-7.5 GB/s single-threaded, 3072 B rows 5.0 -> 6.9. Prefetching whole rows hurt
//   3072 B rows (5.4); 1-2 lines gave nothing for 1536 B rows; also prefetching the start of the
//   next 4 KiB page a row crosses hurt. No effect on 197 KB rows (memcpy is bandwidth-bound there).
// * Sorting (row, position) keys to visit rows in source order. Page cache warm, single thread,
//   262144 rows of 1536 B, never vs always sorting: 1024 picks 4.92 vs 4.76 GB/s, 8192 picks 5.73
//   vs 4.94, 65536 picks 5.23 vs 4.18, 262144 picks 5.96 vs 5.00: sorting never pays when the rows
//   are in memory (sorted reads are still ~random at these densities, and the writes become
//   scattered). Page cache cold (posix_fadvise DONTNEED first): 1024 picks 390 vs 457 ms,
//   8192 picks 407 vs 371 ms, 65536 picks 485 vs 220 ms: it pays for dense batches from disk.
//   Radix sort cost: 3 us for 1024 keys, 30 us for 8192, 180 us for 65536.
//   So the sort is adaptive: only for unsorted, dense batches (mean gap between sorted picks
//   <= 128 KiB) of rows <= 64 KiB, and only if mincore() says some sampled rows are not resident
//   (cold). Measured with that rule: warm = "never" figures; cold 65536 picks 249 ms.
// * Non-temporal stores: no gain over glibc memcpy for 197 KB rows (which uses rep movsb there),
//   and slower for 1536 B rows: not used.
// * Rows of at most 8 bytes (a batch's labels): each is one load that misses once the feature
//   gathers have gone through the caches. With a memcpy per row, 4 rows of prefetch and the cold
//   check, 1024 labels took 27 us beside 768-d float16 gathers, numpy's fancy indexing 10 us; with
//   fixed-size loads, 32 rows of prefetch, no sort, 5.5 us (8192 labels: 29 us on 2 threads, 39 on
//   one, numpy 76). Batches under 256 KiB skip the cold check (8 mincore calls, ~7 us).
// * Threads: see FEATSTORE_POOL_SPIN_US in thread_pool.h.
#include "gather.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "thread_pool.h"

#include <sys/mman.h>
#include <unistd.h>

namespace featstore {

namespace {

constexpr std::size_t kMinBytesPerThread = 64 * 1024;  // below 2x this, one thread (inline)
constexpr std::size_t kMinBytesPerTask = 32 * 1024;    // up to 4 tasks per thread, for balance
constexpr std::size_t kTasksPerThread = 4;
constexpr std::size_t kPrefetchDistance = 4;           // rows ahead
constexpr std::size_t kPrefetchBytes = 512;            // of each row
constexpr std::size_t kSortMaxGap = 128 * 1024;        // mean bytes between consecutive sorted picks
constexpr std::size_t kSortMaxRowBytes = 64 * 1024;
constexpr std::size_t kSortMinBytes = 256 * 1024;      // smaller batches skip the cold check (8 mincore calls)
constexpr std::size_t kSmallRowBytes = 8;              // rows up to this (labels): fixed-size loads ...
constexpr std::size_t kSmallPrefetchDistance = 32;     // ... prefetched this many rows ahead ...
constexpr std::size_t kSmallRowsPerThread = 2048;      // ... and split by rows: they wait on latency, not bytes

[[noreturn]] void throw_bad_index(std::int64_t value, std::size_t pos, std::size_t n_rows) {
    throw IndexError("index " + std::to_string(value) + " at position " + std::to_string(pos) +
                     " is out of range for " + std::to_string(n_rows) + " rows");
}

// Throws IndexError for the first index outside [0, n_rows); returns whether indices are non-decreasing.
bool check_indices(const std::int64_t* idx, std::size_t n, std::size_t n_rows) {
    const auto limit = static_cast<std::uint64_t>(n_rows);
    bool sorted = true;
    constexpr std::size_t kBlock = 1024;
    for (std::size_t b = 0; b < n; b += kBlock) {
        const std::size_t e = std::min(n, b + kBlock);
        bool bad = false;
        for (std::size_t i = b; i < e; ++i) bad |= static_cast<std::uint64_t>(idx[i]) >= limit;
        if (bad)
            for (std::size_t i = b; i < e; ++i)
                if (static_cast<std::uint64_t>(idx[i]) >= limit) throw_bad_index(idx[i], i, n_rows);
        if (sorted)
            for (std::size_t i = std::max<std::size_t>(b, 1); i < e; ++i) sorted &= idx[i - 1] <= idx[i];
    }
    return sorted;
}

inline void prefetch_row(const std::uint8_t* p, std::size_t row_bytes) {
    const std::size_t len = std::min(row_bytes, kPrefetchBytes);
    for (std::size_t o = 0; o < len; o += 64) __builtin_prefetch(p + o, 0, 0);
}

// Copies rows for positions [b, e) in position order. The indices were validated, but another
// thread could have changed them since (the GIL is released), so out-of-range rows are skipped
// here rather than read out of bounds.
void copy_in_order(const std::uint8_t* src, std::size_t row_bytes, std::size_t n_rows,
                   const std::int64_t* idx, std::size_t b, std::size_t e, std::uint8_t* out) {
    for (std::size_t i = b; i < e; ++i) {
        if (i + kPrefetchDistance < e) {
            const auto r = static_cast<std::uint64_t>(idx[i + kPrefetchDistance]);
            if (r < n_rows) prefetch_row(src + r * row_bytes, row_bytes);
        }
        const auto r = static_cast<std::uint64_t>(idx[i]);
        if (r < n_rows) std::memcpy(out + i * row_bytes, src + r * row_bytes, row_bytes);
    }
}

// copy_in_order for rows of RB <= kSmallRowBytes bytes (a label a row): each row is one load that
// waits on memory latency, so the rows are prefetched far ahead and copied with fixed-size moves.
template <std::size_t RB>
void copy_small_in_order(const std::uint8_t* src, std::size_t n_rows, const std::int64_t* idx, std::size_t b,
                         std::size_t e, std::uint8_t* out) {
    for (std::size_t i = b; i < std::min(e, b + kSmallPrefetchDistance); ++i) {
        const auto r = static_cast<std::uint64_t>(idx[i]);
        if (r < n_rows) __builtin_prefetch(src + r * RB, 0, 0);
    }
    for (std::size_t i = b; i < e; ++i) {
        if (i + kSmallPrefetchDistance < e) {
            const auto r = static_cast<std::uint64_t>(idx[i + kSmallPrefetchDistance]);
            if (r < n_rows) __builtin_prefetch(src + r * RB, 0, 0);
        }
        const auto r = static_cast<std::uint64_t>(idx[i]);
        if (r < n_rows) std::memcpy(out + i * RB, src + r * RB, RB);
    }
}

// Same over sorted (row << pos_bits | position) keys: visits rows in source order.
void copy_sorted_keys(const std::uint8_t* src, std::size_t row_bytes, const std::uint64_t* keys,
                      int pos_bits, std::size_t b, std::size_t e, std::uint8_t* out) {
    const std::uint64_t mask = (std::uint64_t(1) << pos_bits) - 1;
    for (std::size_t i = b; i < e; ++i) {
        if (i + kPrefetchDistance < e) prefetch_row(src + (keys[i + kPrefetchDistance] >> pos_bits) * row_bytes, row_bytes);
        const std::uint64_t k = keys[i];
        std::memcpy(out + (k & mask) * row_bytes, src + (k >> pos_bits) * row_bytes, row_bytes);
    }
}

void copy_sorted_pairs(const std::uint8_t* src, std::size_t row_bytes,
                       const std::pair<std::uint64_t, std::uint64_t>* pairs, std::size_t b, std::size_t e,
                       std::uint8_t* out) {
    for (std::size_t i = b; i < e; ++i) {
        if (i + kPrefetchDistance < e) prefetch_row(src + pairs[i + kPrefetchDistance].first * row_bytes, row_bytes);
        std::memcpy(out + pairs[i].second * row_bytes, src + pairs[i].first * row_bytes, row_bytes);
    }
}

// Whether some of the rows the batch picks are not in memory (mincore on the first page of a few
// sampled rows), i.e. the copy will fault in pages from disk. Any error counts as "resident".
bool batch_looks_cold(const std::uint8_t* src, std::size_t row_bytes, std::size_t n_rows,
                      const std::int64_t* idx, std::size_t n) {
    static const std::uintptr_t page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    constexpr std::size_t kSamples = 8;
    for (std::size_t j = 0; j < kSamples && j < n; ++j) {
        const auto r = static_cast<std::uint64_t>(idx[j * n / std::min(n, kSamples)]);
        if (r >= n_rows) continue;
        const auto addr = reinterpret_cast<std::uintptr_t>(src + r * row_bytes) & ~(page - 1);
        unsigned char vec = 1;
        if (::mincore(reinterpret_cast<void*>(addr), 1, &vec) == 0 && !(vec & 1)) return true;
    }
    return false;
}

int bit_width(std::uint64_t x) { return x == 0 ? 0 : 64 - __builtin_clzll(x); }

// LSD radix sort of a[0, n) by key bits [lo, hi), using b[0, n) as scratch; stable. Returns a or b,
// whichever holds the result.
std::uint64_t* radix_sort(std::uint64_t* a, std::uint64_t* b, std::size_t n, int lo, int hi) {
    const int bits = hi - lo;
    if (bits <= 0) return a;
    const int passes = (bits + 10) / 11;
    const int digit = (bits + passes - 1) / passes;
    const std::size_t nb = std::size_t(1) << digit;
    const std::uint64_t mask = nb - 1;
    std::vector<std::size_t> count(nb * passes, 0);
    for (std::size_t i = 0; i < n; ++i) {
        const std::uint64_t k = a[i] >> lo;
        for (int p = 0; p < passes; ++p) ++count[p * nb + ((k >> (p * digit)) & mask)];
    }
    for (int p = 0; p < passes; ++p) {
        std::size_t* c = &count[p * nb];
        std::size_t sum = 0;
        for (std::size_t d = 0; d < nb; ++d) sum += std::exchange(c[d], sum);
        const int shift = lo + p * digit;
        for (std::size_t i = 0; i < n; ++i) {
            const std::uint64_t k = a[i];
            b[c[(k >> shift) & mask]++] = k;
        }
        std::swap(a, b);
    }
    return a;
}

}  // namespace

bool check_row_indices(const std::int64_t* indices, std::size_t n, std::size_t n_rows) {
    return check_indices(indices, n, n_rows);
}

void gather_rows(const std::uint8_t* src, std::size_t src_bytes, std::size_t row_bytes,
                 const std::int64_t* indices, std::size_t n, std::uint8_t* out, std::size_t out_bytes,
                 int threads) {
    if (row_bytes == 0) throw std::invalid_argument("row_bytes must be positive, got 0");
    if (threads < 0) throw std::invalid_argument("threads must be >= 0, got " + std::to_string(threads));
    std::size_t need;
    if (__builtin_mul_overflow(n, row_bytes, &need) || out_bytes < need)
        throw std::invalid_argument("out has " + std::to_string(out_bytes) + " bytes but " + std::to_string(n) +
                                    " indices x " + std::to_string(row_bytes) + " row_bytes need " +
                                    (need / row_bytes == n ? std::to_string(need) : std::string("more")) + " bytes");
    const std::size_t n_rows = src_bytes / row_bytes;
    const bool sorted = check_indices(indices, n, n_rows);
    if (n == 0) return;

    // Threads: as asked (0 = pool size) but at most the pool's size, and kMinBytesPerThread each
    // (small rows: kSmallRowsPerThread rows each).
    const bool small = row_bytes <= kSmallRowBytes && (row_bytes & (row_bytes - 1)) == 0;
    std::size_t nt = threads == 1 ? 1 : static_cast<std::size_t>(get_num_threads());
    if (threads > 1) nt = std::min(nt, static_cast<std::size_t>(threads));
    const std::size_t per_thread = small ? n / kSmallRowsPerThread : need / kMinBytesPerThread;
    nt = std::min({nt, n, std::max<std::size_t>(1, per_thread)});
    const std::size_t tasks =
        small ? nt : std::min({nt * kTasksPerThread, n, std::max(nt, need / kMinBytesPerTask)});

    // Runs body(begin, end) over [0, n) split into `tasks` contiguous ranges.
    auto run = [&](auto&& body) {
        if (nt <= 1) return body(std::size_t(0), n);
        global_pool()->parallel_for(tasks, [&](std::size_t t) { body(n * t / tasks, n * (t + 1) / tasks); });
    };

    if (small) {  // never sorted: a cold page holds 512 labels, and the sort's keys would cost more than them
        run([&](std::size_t b, std::size_t e) {
            switch (row_bytes) {
                case 1: return copy_small_in_order<1>(src, n_rows, indices, b, e, out);
                case 2: return copy_small_in_order<2>(src, n_rows, indices, b, e, out);
                case 4: return copy_small_in_order<4>(src, n_rows, indices, b, e, out);
                default: return copy_small_in_order<8>(src, n_rows, indices, b, e, out);
            }
        });
        return;
    }
    const bool do_sort = !sorted && n > 1 && row_bytes <= kSortMaxRowBytes && src_bytes / n <= kSortMaxGap &&
                         need >= kSortMinBytes && batch_looks_cold(src, row_bytes, n_rows, indices, n);
    if (!do_sort) {
        run([&](std::size_t b, std::size_t e) { copy_in_order(src, row_bytes, n_rows, indices, b, e, out); });
        return;
    }
    // Indices may change under us (see copy_in_order): clamp them, the keys are our private copy.
    const auto row_of = [&](std::size_t i) {
        return std::min<std::uint64_t>(static_cast<std::uint64_t>(indices[i]), n_rows - 1);
    };
    const int pos_bits = bit_width(n - 1);
    const int row_bits = bit_width(n_rows - 1);
    if (pos_bits + row_bits <= 63) {
        std::unique_ptr<std::uint64_t[]> buf(new std::uint64_t[2 * n]);
        for (std::size_t i = 0; i < n; ++i) buf[i] = (row_of(i) << pos_bits) | i;
        const std::uint64_t* keys = radix_sort(buf.get(), buf.get() + n, n, pos_bits, pos_bits + row_bits);
        run([&](std::size_t b, std::size_t e) { copy_sorted_keys(src, row_bytes, keys, pos_bits, b, e, out); });
    } else {
        std::vector<std::pair<std::uint64_t, std::uint64_t>> pairs(n);
        for (std::size_t i = 0; i < n; ++i) pairs[i] = {row_of(i), i};
        std::sort(pairs.begin(), pairs.end());
        run([&](std::size_t b, std::size_t e) { copy_sorted_pairs(src, row_bytes, pairs.data(), b, e, out); });
    }
}

}  // namespace featstore
