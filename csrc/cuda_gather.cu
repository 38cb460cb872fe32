// CUDA row gather from host-registered (or device) memory; see cuda_gather.h.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "cuda_common.cuh"
#include "cuda_gather.h"

namespace featstore::cuda {
namespace {

// Grid-stride over (row k, vector v) pairs: consecutive threads move consecutive vectors of a row,
// then of the next row (rows arrive sorted, so host reads walk forward through the file).
template <typename V>
__global__ void gather_kernel(const V* __restrict__ src, std::int64_t n_rows, std::int64_t vecs_per_row,
                              const std::int64_t* __restrict__ rows, const std::int64_t* __restrict__ pos,
                              std::int64_t n, V* __restrict__ out, int* bad) {
    const std::int64_t total = n * vecs_per_row;
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
        const std::int64_t k = i / vecs_per_row;
        const std::int64_t v = i - k * vecs_per_row;
        const std::int64_t r = rows[k];
        const std::int64_t p = pos ? pos[k] : k;
        if (r < 0 || r >= n_rows || p < 0 || p >= n) {
            if (bad) atomicExch(bad, 1);
            continue;
        }
        out[p * vecs_per_row + v] = src[r * vecs_per_row + v];
    }
}

template <typename V>
void launch(std::uintptr_t src, std::int64_t n_rows, std::int64_t row_bytes, std::uintptr_t rows,
            std::uintptr_t pos, std::int64_t n, std::uintptr_t out, std::uintptr_t bad, int device,
            cudaStream_t stream) {
    const std::int64_t vecs = row_bytes / static_cast<std::int64_t>(sizeof(V));
    const std::int64_t total = n * vecs;
    gather_kernel<V><<<grid_blocks(total, device), kThreads, 0, stream>>>(
        reinterpret_cast<const V*>(src), n_rows, vecs, reinterpret_cast<const std::int64_t*>(rows),
        reinterpret_cast<const std::int64_t*>(pos), n, reinterpret_cast<V*>(out), reinterpret_cast<int*>(bad));
    check(cudaGetLastError(), "gather kernel launch");
}

}  // namespace

int device_count(std::string* why) {
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        cudaGetLastError();
        if (why) *why = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
        return 0;
    }
    return n;
}

bool read_only_register_supported(int device) {
    int value = 0;
    if (cudaDeviceGetAttribute(&value, cudaDevAttrHostRegisterReadOnlySupported, device) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    return value != 0;
}

bool host_register(std::uintptr_t ptr, std::size_t bytes, bool read_only, int device) {
    DeviceGuard guard(device);
    unsigned flags = cudaHostRegisterMapped | cudaHostRegisterPortable;
    if (read_only) flags |= cudaHostRegisterReadOnly;
    const cudaError_t err = cudaHostRegister(reinterpret_cast<void*>(ptr), bytes, flags);
    if (err == cudaErrorHostMemoryAlreadyRegistered) {
        cudaGetLastError();
        return false;
    }
    check(err, "cudaHostRegister");
    return true;
}

bool host_unregister(std::uintptr_t ptr) {
    const cudaError_t err = cudaHostUnregister(reinterpret_cast<void*>(ptr));
    if (err == cudaErrorHostMemoryNotRegistered) {
        cudaGetLastError();
        return false;
    }
    check(err, "cudaHostUnregister");
    return true;
}

std::uintptr_t device_pointer(std::uintptr_t ptr, int device) {
    DeviceGuard guard(device);
    void* dev = nullptr;
    check(cudaHostGetDevicePointer(&dev, reinterpret_cast<void*>(ptr), 0), "cudaHostGetDevicePointer");
    return reinterpret_cast<std::uintptr_t>(dev);
}

void gather_rows(std::uintptr_t src, std::int64_t n_rows, std::int64_t row_bytes, std::uintptr_t rows,
                 std::uintptr_t pos, std::int64_t n, std::uintptr_t out, std::uintptr_t bad, int device,
                 std::uintptr_t stream) {
    if (row_bytes <= 0) throw std::invalid_argument("row_bytes must be positive, got " + std::to_string(row_bytes));
    if (n_rows < 0 || n < 0) throw std::invalid_argument("n_rows and n must be non-negative");
    if (n == 0) return;
    if (!src || !rows || !out) throw std::invalid_argument("src, rows and out must be non-null device addresses");
    DeviceGuard guard(device);
    auto s = reinterpret_cast<cudaStream_t>(stream);
    // The widest load that every row start in src and out is aligned to.
    const std::uintptr_t align = src | out | static_cast<std::uintptr_t>(row_bytes);
    if (align % 16 == 0) return launch<uint4>(src, n_rows, row_bytes, rows, pos, n, out, bad, device, s);
    if (align % 8 == 0) return launch<uint2>(src, n_rows, row_bytes, rows, pos, n, out, bad, device, s);
    if (align % 4 == 0) return launch<unsigned>(src, n_rows, row_bytes, rows, pos, n, out, bad, device, s);
    if (align % 2 == 0) return launch<unsigned short>(src, n_rows, row_bytes, rows, pos, n, out, bad, device, s);
    launch<unsigned char>(src, n_rows, row_bytes, rows, pos, n, out, bad, device, s);
}

}  // namespace featstore::cuda
