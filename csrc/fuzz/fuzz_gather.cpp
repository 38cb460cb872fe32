// Fuzz target for the gather kernel's index handling (featstore::gather_rows), for libFuzzer
// (clang -fsanitize=fuzzer,address,undefined) or the standalone driver in standalone_main.cpp
// (g++ -fsanitize=address,undefined). Built and run by benchmarks/reliability/fuzzing.py.
//
// The input picks the row size, the number of source rows, a few flags and the indices. The source
// ends exactly at a PROT_NONE guard page, so any read past it faults even where ASan does not look
// (mmap'd memory). Every outcome is checked against a plain loop:
//   - an index outside [0, n_rows), or an `out` too small -> the kernel throws and `out` is untouched;
//   - otherwise out row i == source row indices[i], byte for byte, and nothing after the rows is written.
// "Cold" inputs leave every other page of the source unfaulted, so mincore() sees a cold batch and
// the kernel takes its sort-by-row path.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "../gather.h"
#include "../thread_pool.h"

namespace {

[[noreturn]] void fail(const char* what) {
    std::fprintf(stderr, "fuzz_gather: %s\n", what);
    std::abort();
}

// Source bytes at the end of an anonymous mapping that is followed by a guard page.
class GuardedSource {
public:
    GuardedSource(std::size_t bytes, bool cold) : page_(static_cast<std::size_t>(::sysconf(_SC_PAGESIZE))) {
        pages_ = (bytes + page_ - 1) / page_ + 1;  // + the guard page
        void* p = ::mmap(nullptr, pages_ * page_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) fail("mmap failed");
        base_ = static_cast<std::uint8_t*>(p);
        if (::mprotect(base_ + (pages_ - 1) * page_, page_, PROT_NONE) != 0) fail("mprotect failed");
        data_ = base_ + (pages_ - 1) * page_ - bytes;
        // A byte pattern with period 251 (prime), so a row copied from the wrong offset differs.
        static const std::vector<std::uint8_t> pattern = [] {
            std::vector<std::uint8_t> p(1 << 17);
            for (std::size_t i = 0; i < p.size(); ++i) p[i] = static_cast<std::uint8_t>(i % 251 * 7 + 1);
            return p;
        }();
        for (std::size_t off = 0; off < bytes;) {  // page by page; cold sources skip every other page
            const std::size_t page_index = (static_cast<std::size_t>(data_ - base_) + off) / page_;
            const std::size_t len = std::min(bytes - off, (page_index + 1) * page_ - static_cast<std::size_t>(data_ - base_) - off);
            if (!cold || page_index % 2 == 0) std::memcpy(data_ + off, pattern.data() + off % 251, len);
            off += len;
        }
    }
    ~GuardedSource() { ::munmap(base_, pages_ * page_); }
    const std::uint8_t* data() const { return data_; }

private:
    std::size_t page_, pages_ = 0;
    std::uint8_t* base_ = nullptr;
    std::uint8_t* data_ = nullptr;
};

constexpr std::size_t kMaxSrcBytes = 64 * 1024;  // keeps one run well under a millisecond
constexpr std::size_t kMaxOutBytes = 160 * 1024;  // > 2 x 64 KiB: big batches use the thread pool

struct Input {
    const std::uint8_t* p;
    std::size_t left;
    std::uint8_t byte() { return left ? (--left, *p++) : 0; }
    std::uint16_t u16() { return static_cast<std::uint16_t>(byte() | (byte() << 8)); }
    std::int64_t i64() {
        std::uint64_t v = 0;
        for (int k = 0; k < 8; ++k) v |= static_cast<std::uint64_t>(byte()) << (8 * k);
        return static_cast<std::int64_t>(v);
    }
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    featstore::set_num_threads(4);  // exercise the pool even on a 2-CPU machine
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    Input in{data, size};
    const std::size_t row_bytes = 1 + in.u16() % 6000;          // up to ~6 KB rows: big batches use threads
    const std::size_t n_rows = std::min<std::size_t>(in.byte(), kMaxSrcBytes / row_bytes);  // 0..255 rows
    const std::uint8_t flags = in.byte();
    const int threads = flags & 3;                               // 0 = pool size, 1 = inline, 2, 3
    const bool cold = flags & 4;
    const bool raw64 = flags & 8;                                // indices as raw int64 (extremes) or small
    const bool short_out = (flags & 0x30) == 0x30;               // an `out` one byte too small
    const std::size_t src_extra = row_bytes > 1 ? (flags >> 6) % row_bytes : 0;  // a partial trailing row

    std::vector<std::int64_t> idx;
    while (in.left && (idx.size() + 1) * row_bytes <= kMaxOutBytes)
        idx.push_back(raw64 ? in.i64() : static_cast<std::int64_t>(in.byte() % (n_rows + 2)) - 1);
    const std::size_t n = idx.size();

    const std::size_t src_bytes = n_rows * row_bytes + src_extra;
    GuardedSource src(src_bytes, cold);
    const std::size_t need = n * row_bytes;
    const std::size_t out_bytes = short_out && need ? need - 1 : need;
    std::vector<std::uint8_t> out(out_bytes + 64, 0xA5);       // 64 sentinel bytes after the rows

    bool valid = !short_out || need == 0;
    for (std::int64_t i : idx) valid &= i >= 0 && static_cast<std::uint64_t>(i) < n_rows;
    bool threw = false;
    try {
        featstore::gather_rows(src.data(), src_bytes, row_bytes, idx.data(), n, out.data(), out_bytes, threads);
    } catch (const featstore::IndexError&) {
        threw = true;
    } catch (const std::invalid_argument&) {
        threw = true;
    }
    if (threw == valid) fail(valid ? "threw on a valid call" : "accepted an invalid call");
    static std::vector<std::uint8_t> sentinel;
    if (sentinel.size() < out.size()) sentinel.assign(out.size(), 0xA5);
    if (threw) {
        if (std::memcmp(out.data(), sentinel.data(), out.size()) != 0) fail("wrote to out before rejecting the call");
        return 0;
    }
    for (std::size_t i = 0; i < n; ++i)
        if (std::memcmp(out.data() + i * row_bytes, src.data() + idx[i] * row_bytes, row_bytes) != 0)
            fail("out row differs from the source row");
    if (std::memcmp(out.data() + need, sentinel.data(), out.size() - need) != 0) fail("wrote past the rows");
    return 0;
}
