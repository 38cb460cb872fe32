// A libFuzzer-compatible driver for compilers without libFuzzer (g++): runs the target on each file
// given, or on `-runs=N` pseudo-random inputs from `-seed=S` (random bytes, no coverage guidance),
// and prints "Done N runs in S second(s)" like libFuzzer. Sanitizers (ASan/UBSan/TSan) still apply.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv);
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

int main(int argc, char** argv) {
    LLVMFuzzerInitialize(&argc, &argv);
    unsigned long long runs = 0, seed = 1;
    std::vector<const char*> files;
    for (int i = 1; i < argc; ++i) {
        if (std::strncmp(argv[i], "-runs=", 6) == 0) runs = std::strtoull(argv[i] + 6, nullptr, 10);
        else if (std::strncmp(argv[i], "-seed=", 6) == 0) seed = std::strtoull(argv[i] + 6, nullptr, 10);
        else if (argv[i][0] != '-') files.push_back(argv[i]);
    }
    const auto t0 = std::chrono::steady_clock::now();
    unsigned long long done = 0;
    for (const char* f : files) {
        std::ifstream s(f, std::ios::binary);
        std::vector<std::uint8_t> buf((std::istreambuf_iterator<char>(s)), std::istreambuf_iterator<char>());
        LLVMFuzzerTestOneInput(buf.data(), buf.size());
        ++done;
    }
    std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    auto next = [&x] { x ^= x << 13; x ^= x >> 7; x ^= x << 17; return x; };
    std::vector<std::uint8_t> buf;
    for (unsigned long long r = 0; r < runs; ++r, ++done) {
        // Mostly short inputs (small rows, few indices); now and then long ones (threads, big copies).
        const std::size_t len = next() % 8 == 0 ? next() % 2048 : next() % 64;
        buf.resize(len);
        for (auto& b : buf) b = static_cast<std::uint8_t>(next());
        if (len > 2 && next() % 2) buf[1] = static_cast<std::uint8_t>(next() % 8);  // small rows are the common case
        LLVMFuzzerTestOneInput(buf.data(), buf.size());
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("Done %llu runs in %.0f second(s)\n", done, s);
    return 0;
}
