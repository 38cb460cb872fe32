// numpy's uniform permutation, drawn faster: the permutation numpy's Generator over a PCG64 bit generator
// returns for permutation(n), bit for bit (featstore's loader draws one per epoch, see
// featstore/batches/orders.py).
#pragma once

#include <cstdint>

namespace featstore {

// The state of numpy's PCG64 (PCG XSL RR 128/64): the 128-bit LCG state and increment, and the
// buffered upper half of a 64-bit draw that numpy hands out as the next 32-bit draw.
struct Pcg64State {
    std::uint64_t state_hi, state_lo, inc_hi, inc_lo;
    bool has_uint32;
    std::uint32_t uinteger;
};

// The largest n permute_pcg64 takes: beyond it numpy's draws for the first swaps are 64-bit ones.
constexpr std::int64_t kMaxPermutation = std::int64_t{1} << 32;

// out[0..n) = arange(n) shuffled exactly as numpy.random.Generator(PCG64 in `state`).permutation(n)
// shuffles it: Fisher-Yates from the last element down, swap i with j = random_interval(i) (masked
// rejection sampling on 32-bit draws, the low half of each 64-bit draw first). 2.1-3.4x numpy's speed
// (benchmarks/micro_permutation.py): the draws are made in blocks and accepted without branches.
// 0 <= n <= kMaxPermutation.
void permute_pcg64(std::int64_t* out, std::int64_t n, const Pcg64State& state);

}  // namespace featstore
