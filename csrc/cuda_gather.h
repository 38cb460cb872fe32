// CUDA row gather from host-registered memory, and the registration calls it needs.
// Plain C++ declarations (no CUDA headers), so the pybind11 binding compiles with the host compiler;
// the definitions live in cuda_gather.cu. Pointers and streams cross as integers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace featstore::cuda {

// A CUDA runtime call failed; the message names the call and the CUDA error.
class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Devices the runtime sees; 0 (and `why` set) when the driver or runtime is missing or fails.
// Never throws: a machine without a GPU is not an error.
int device_count(std::string* why);

// Whether `device` can map registered host memory read-only (cudaHostRegisterReadOnly).
bool read_only_register_supported(int device);

// cudaHostRegister(ptr, bytes, Mapped|Portable[|ReadOnly]). Returns true when this call
// registered the range, false when it was already registered (cudaErrorHostMemoryAlreadyRegistered;
// the error is cleared). Throws Error otherwise.
bool host_register(std::uintptr_t ptr, std::size_t bytes, bool read_only, int device);

// cudaHostUnregister(ptr). Returns false when ptr was not registered (the error is cleared).
bool host_unregister(std::uintptr_t ptr);

// The device address of registered host memory at `ptr` (cudaHostGetDevicePointer).
std::uintptr_t device_pointer(std::uintptr_t ptr, int device);

// out[pos[k]] = src[rows[k]] for k < n, rows of row_bytes bytes, launched on `stream` of `device`.
// src: n_rows*row_bytes bytes readable by the device (registered host memory or device memory);
// rows, pos: n int64 on the device (pos == 0 means pos[k] = k); out: n*row_bytes device bytes.
// Callers validate rows and pos on the host first; the kernel still skips any out of range and,
// when bad != 0, sets the device int32 *bad to 1. Loads are 16/8/4/2/1 bytes wide, the widest that
// row_bytes and the src/out addresses allow. Throws Error when the launch fails.
void gather_rows(std::uintptr_t src, std::int64_t n_rows, std::int64_t row_bytes, std::uintptr_t rows,
                 std::uintptr_t pos, std::int64_t n, std::uintptr_t out, std::uintptr_t bad, int device,
                 std::uintptr_t stream);

}  // namespace featstore::cuda
