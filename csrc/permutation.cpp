// numpy's permutation (see permutation.h). numpy's loop (numpy/random/_generator.pyx, _shuffle_raw,
// and distributions.c, random_interval) is, for i = n-1 .. 1: draw 32-bit words w until w & mask(i) <= i
// (mask(i): the smallest 2^k - 1 >= i), then swap out[i] and out[w & mask(i)]. Here the words are made in
// blocks, a block's words are accepted or rejected without a branch (a rejected word leaves i where it
// was), and then the block's swaps are done. Same words, same order: the same permutation.
#include "permutation.h"

#include <cstddef>

namespace featstore {
namespace {

using u128 = unsigned __int128;

constexpr u128 kMultiplier = (static_cast<u128>(2549297995355413924ULL) << 64) | 4865540595714422341ULL;

inline std::uint64_t next64(u128& state, u128 inc) {
    state = state * kMultiplier + inc;
    const std::uint64_t x = static_cast<std::uint64_t>(state >> 64) ^ static_cast<std::uint64_t>(state);
    const unsigned rot = static_cast<unsigned>(state >> 122);
    return (x >> rot) | (x << ((64 - rot) & 63));
}

}  // namespace

void permute_pcg64(std::int64_t* out, std::int64_t n, const Pcg64State& s) {
    for (std::int64_t i = 0; i < n; ++i) out[i] = i;
    u128 state = (static_cast<u128>(s.state_hi) << 64) | s.state_lo;
    const u128 inc = (static_cast<u128>(s.inc_hi) << 64) | s.inc_lo;
    constexpr std::size_t kWords = 2048;  // a block: 8 KiB of words and 16 KiB of swap targets
    std::uint32_t words[kWords + 1];
    std::int64_t targets[kWords + 1];
    bool buffered = s.has_uint32;  // numpy's next 32-bit draw is the kept upper half of the last 64-bit one
    std::uint64_t i = n > 0 ? static_cast<std::uint64_t>(n - 1) : 0;
    std::uint64_t mask = i;  // the smallest 2^k - 1 >= i
    for (unsigned shift = 1; shift < 64; shift <<= 1) mask |= mask >> shift;
    while (i >= 1) {
        std::size_t n_words = 0;
        if (buffered) {
            words[n_words++] = s.uinteger;
            buffered = false;
        }
        while (n_words < kWords) {
            const std::uint64_t x = next64(state, inc);
            words[n_words++] = static_cast<std::uint32_t>(x);
            words[n_words++] = static_cast<std::uint32_t>(x >> 32);
        }
        const std::uint64_t top = i;
        for (std::size_t w = 0; w < n_words && i >= 1; ++w) {
            mask >>= static_cast<unsigned>(i <= (mask >> 1));  // i falls by at most 1 a word
            const std::uint64_t v = words[w] & mask;
            targets[top - i] = static_cast<std::int64_t>(v);  // rewritten until a word is accepted
            i -= static_cast<std::uint64_t>(v <= i);
        }
        for (std::uint64_t k = top; k > i; --k) {
            const std::int64_t j = targets[top - k];
            const std::int64_t held = out[j];
            out[j] = out[k];
            out[k] = held;
        }
    }
}

}  // namespace featstore
