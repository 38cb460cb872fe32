// Shared by the CUDA kernels' host code: error checks and a current-device guard (CUDA headers).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "cuda_gather.h"

namespace featstore::cuda {

inline void check(cudaError_t err, const char* call) {
    if (err == cudaSuccess) return;
    cudaGetLastError();  // do not leave the error for the next call to find
    throw Error(std::string(call) + " failed: " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

// Makes `device` current for one call and restores the caller's device afterwards, so a gather on
// cuda:1 does not leave the calling thread (and torch's next allocation) on GPU 1.
class DeviceGuard {
   public:
    explicit DeviceGuard(int device) {
        if (cudaGetDevice(&previous_) != cudaSuccess) {
            cudaGetLastError();
            previous_ = -1;
        }
        check(cudaSetDevice(device), "cudaSetDevice");
    }
    ~DeviceGuard() {
        if (previous_ >= 0 && cudaSetDevice(previous_) != cudaSuccess) cudaGetLastError();
    }
    DeviceGuard(const DeviceGuard&) = delete;
    DeviceGuard& operator=(const DeviceGuard&) = delete;

   private:
    int previous_ = -1;
};

constexpr int kThreads = 256;

// Blocks for a grid-stride kernel over `total` items: enough for all of them, at most 8 per SM.
inline int grid_blocks(std::int64_t total, int device) {
    int sms = 0;
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
    const std::int64_t wanted = (total + kThreads - 1) / kThreads;
    return static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(wanted, sms * 8LL)));
}

}  // namespace featstore::cuda
