// Stress of the gather thread pool for ThreadSanitizer (g++/clang++ -fsanitize=thread): several
// caller threads run multithreaded gathers at once (so parallel_for both owns the pool and falls
// back to inline), while another thread resizes the pool (set_num_threads replaces it under live
// users). Every gather's output is checked. Usage: tsan_pool_stress [iterations per caller].
// Built and run by benchmarks/reliability/fuzzing.py; a race or a wrong row exits non-zero.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "../gather.h"
#include "../thread_pool.h"

int main(int argc, char** argv) {
    const int iterations = argc > 1 ? std::atoi(argv[1]) : 200;
    constexpr int kCallers = 3;
    constexpr std::size_t kRowBytes = 3000, kRows = 97;
    std::vector<std::uint8_t> src(kRows * kRowBytes);
    for (std::size_t i = 0; i < src.size(); ++i) src[i] = static_cast<std::uint8_t>(i % 251);
    featstore::set_num_threads(4);

    std::atomic<bool> stop{false};
    std::atomic<long> gathers{0}, wrong{0};
    std::thread resizer([&] {
        for (int k = 0; !stop.load(); ++k) {
            featstore::set_num_threads(2 + k % 3);
            std::this_thread::sleep_for(std::chrono::milliseconds(3));
        }
    });
    std::vector<std::thread> callers;
    for (int c = 0; c < kCallers; ++c) {
        callers.emplace_back([&, c] {
            std::uint64_t x = 0x9E3779B97F4A7C15ull * (c + 1);
            for (int it = 0; it < iterations; ++it) {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                const std::size_t n = 1 + x % 120;  // up to 360 KB: several tasks on the pool
                std::vector<std::int64_t> idx(n);
                for (std::size_t i = 0; i < n; ++i) idx[i] = static_cast<std::int64_t>((x >> (i % 40)) % kRows);
                std::vector<std::uint8_t> out(n * kRowBytes);
                featstore::gather_rows(src.data(), src.size(), kRowBytes, idx.data(), n, out.data(), out.size(),
                                       static_cast<int>(x % 4 == 3 ? 2 : 0));
                for (std::size_t i = 0; i < n; ++i)
                    if (std::memcmp(out.data() + i * kRowBytes, src.data() + idx[i] * kRowBytes, kRowBytes) != 0)
                        wrong.fetch_add(1);
                gathers.fetch_add(1);
            }
        });
    }
    for (auto& t : callers) t.join();
    stop.store(true);
    resizer.join();
    std::printf("tsan_pool_stress: %ld gathers by %d callers, %ld wrong rows\n", gathers.load(), kCallers, wrong.load());
    return wrong.load() == 0 ? 0 : 1;
}
