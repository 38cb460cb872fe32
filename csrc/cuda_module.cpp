// pybind11 bindings for featstore._cuda: the CUDA gather and host registration, on integer
// addresses (tensor.data_ptr(), stream.cuda_stream). No torch C++ linkage; Python validates inputs.
#include <pybind11/pybind11.h>

#include <string>

#include "cuda_dequant.h"
#include "cuda_gather.h"

namespace py = pybind11;
namespace fc = featstore::cuda;

PYBIND11_MODULE(_cuda, m) {
    m.doc() = "featstore CUDA module: row gather from host-registered memory (raw addresses; see featstore.batches.cuda).";

    m.def(
        "device_count",
        []() {
            std::string why;
            const int n = fc::device_count(&why);
            return py::make_tuple(n, why);
        },
        "(count, why): devices the CUDA runtime sees; (0, reason) when there is no usable GPU. Never raises.");
    m.def("read_only_register_supported", &fc::read_only_register_supported, py::arg("device"),
          "Whether the device can map registered host memory read-only (cudaHostRegisterReadOnly).");
    m.def(
        "host_register",
        [](std::uintptr_t ptr, std::size_t nbytes, bool read_only, int device) {
            py::gil_scoped_release nogil;  // pinning a large range faults every page in
            return fc::host_register(ptr, nbytes, read_only, device);
        },
        py::arg("ptr"), py::arg("nbytes"), py::arg("read_only"), py::arg("device"),
        "cudaHostRegister(Mapped|Portable[|ReadOnly]); True if registered now, False if it already was. "
        "RuntimeError on other failures.");
    m.def(
        "host_unregister",
        [](std::uintptr_t ptr) {
            py::gil_scoped_release nogil;
            return fc::host_unregister(ptr);
        },
        py::arg("ptr"), "cudaHostUnregister; False if ptr was not registered.");
    m.def("device_pointer", &fc::device_pointer, py::arg("ptr"), py::arg("device"),
          "Device address of registered host memory (cudaHostGetDevicePointer).");
    m.def("gather", &fc::gather_rows, py::arg("src"), py::arg("n_rows"), py::arg("row_bytes"), py::arg("rows"),
          py::arg("pos"), py::arg("n"), py::arg("out"), py::arg("bad"), py::arg("device"), py::arg("stream"),
          R"doc(
out[pos[k]] = src[rows[k]] for k < n (rows of row_bytes bytes), launched asynchronously on `stream`.

All pointers are device addresses as ints: src (registered host memory's device pointer, or device
memory), rows/pos (int64 device arrays; pos=0 means identity), out, bad (int32 flag set to 1 when
the kernel skipped an out-of-range row or position; 0 for none). Validate on the host first.)doc");
    m.def(
        "dequant_gather",
        [](std::uintptr_t src, std::int64_t n_rows, std::int64_t row_elems, std::int64_t group_elems,
           std::uintptr_t scales, std::uintptr_t rows, std::uintptr_t pos, std::int64_t n, std::uintptr_t out,
           const std::string& scheme, const std::string& out_dtype, std::uintptr_t bad, int device,
           std::uintptr_t stream) {
            fc::dequant_gather_rows(src, n_rows, row_elems, group_elems, scales, rows, pos, n, out, featstore::quant_scheme_of(scheme),
                                    featstore::out_dtype_of(out_dtype), bad, device, stream);
        },
        py::arg("src"), py::arg("n_rows"), py::arg("row_elems"), py::arg("group_elems"), py::arg("scales"),
        py::arg("rows"), py::arg("pos"), py::arg("n"), py::arg("out"), py::arg("scheme"), py::arg("out_dtype"),
        py::arg("bad"), py::arg("device"), py::arg("stream"),
        R"doc(
out[pos[k]] = dequantise(src[rows[k]]) for k < n, launched asynchronously on `stream`.

src: n_rows rows of row_elems one-byte codes (scheme 'int8' or 'float8_e4m3'); scales: the float32
scales, one per group_elems consecutive codes (group g of row r at byte (r*row_elems/group_elems+g)*4);
out: n rows of row_elems elements of out_dtype ('float16', 'bfloat16', 'float32'). Each code decodes
as float32(code)*scale, rounded to nearest even: bit for bit what featstore._core.dequant_gather gives.
Pointers as in gather (device addresses as ints; pos=0 means identity; bad as there).)doc");
}
