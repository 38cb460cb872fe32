// pybind11 bindings for featstore._core: MappedFile, gather, dequant_gather, read_rows, permute_pcg64, io_engine,
// set_num_threads, get_num_threads.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <string>

#include "dequant.h"
#include "direct_read.h"
#include "gather.h"
#include "mapped_file.h"
#include "permutation.h"
#include "thread_pool.h"

namespace py = pybind11;
using featstore::MappedFile;

namespace {

// Filesystem paths cross as bytes (os.fsencode / os.fsdecode), so any name the OS allows works.
py::str fsdecode(const std::string& raw) {
    return py::module_::import("os").attr("fsdecode")(py::bytes(raw));
}

// A C-contiguous byte view of `obj` (buffer protocol, or __dlpack__ e.g. a CPU torch.Tensor).
class ByteView {
public:
    ByteView(py::handle obj, const char* name, bool writable) {
        py::object holder = py::reinterpret_borrow<py::object>(obj);
        if (!PyObject_CheckBuffer(obj.ptr())) {
            if (!py::hasattr(obj, "__dlpack__"))
                throw py::type_error(std::string(name) + " must support the buffer protocol (or __dlpack__), got " +
                                     std::string(py::str(py::type::of(obj).attr("__name__"))));
            holder = py::module_::import("numpy").attr("from_dlpack")(obj);
        }
        if (PyObject_GetBuffer(holder.ptr(), &view_, PyBUF_RECORDS_RO) != 0) throw py::error_already_set();
        if (!PyBuffer_IsContiguous(&view_, 'C')) {
            PyBuffer_Release(&view_);
            throw py::value_error(std::string(name) + " must be C-contiguous");
        }
        if (writable && view_.readonly) {
            PyBuffer_Release(&view_);
            throw py::value_error(std::string(name) + " is read-only");
        }
    }
    ~ByteView() { PyBuffer_Release(&view_); }
    ByteView(const ByteView&) = delete;
    ByteView& operator=(const ByteView&) = delete;

    std::uint8_t* data() const { return static_cast<std::uint8_t*>(view_.buf); }
    std::size_t size() const { return static_cast<std::size_t>(view_.len); }

private:
    Py_buffer view_{};
};

// indices (or another array of row numbers, named `name`): exactly a 1-D C-contiguous int64 ndarray;
// never a silent converting copy.
py::array check_index_array(py::handle indices, const std::string& name = "indices") {
    if (!py::isinstance<py::array>(indices))
        throw py::type_error(name + " must be a numpy int64 array, got " +
                             std::string(py::str(py::type::of(indices).attr("__name__"))));
    auto idx = py::reinterpret_borrow<py::array>(indices);
    if (!idx.dtype().equal(py::dtype::of<std::int64_t>()))
        throw py::type_error(name + " must have dtype int64, got " + std::string(py::str(idx.dtype())));
    if (idx.ndim() != 1) throw py::value_error(name + " must be 1-D, got " + std::to_string(idx.ndim()) + "-D");
    if (!(idx.flags() & py::array::c_style)) throw py::value_error(name + " must be C-contiguous");
    return idx;
}

void gather(py::handle src, std::int64_t row_bytes, py::handle indices, py::handle out, int threads) {
    if (row_bytes <= 0) throw py::value_error("row_bytes must be positive, got " + std::to_string(row_bytes));
    if (threads < 0) throw py::value_error("threads must be >= 0, got " + std::to_string(threads));
    auto idx = check_index_array(indices);
    ByteView s(src, "src", false);
    ByteView o(out, "out", true);
    const auto* ip = static_cast<const std::int64_t*>(idx.data());
    const auto n = static_cast<std::size_t>(idx.shape(0));
    py::gil_scoped_release nogil;
    featstore::gather_rows(s.data(), s.size(), static_cast<std::size_t>(row_bytes), ip, n, o.data(), o.size(),
                           threads);
}

// out = numpy's Generator(PCG64).permutation(len(out)) for the bit generator state given (state and inc
// as Python ints of up to 128 bits).
void permute_pcg64(py::handle out, py::int_ state, py::int_ inc, bool has_uint32, std::uint32_t uinteger) {
    auto arr = check_index_array(out, "out");
    if (!arr.writeable()) throw py::value_error("out is read-only");
    const auto n = static_cast<std::int64_t>(arr.shape(0));
    if (n > featstore::kMaxPermutation)
        throw py::value_error("out may hold at most 2**32 rows, got " + std::to_string(n));
    auto half = [](const py::int_& v, int shift) {
        py::object part = v.attr("__rshift__")(shift);
        return static_cast<std::uint64_t>(PyLong_AsUnsignedLongLongMask(part.ptr()));
    };
    const featstore::Pcg64State s{half(state, 64), half(state, 0), half(inc, 64), half(inc, 0), has_uint32, uinteger};
    auto* data = static_cast<std::int64_t*>(arr.mutable_data());
    py::gil_scoped_release nogil;
    featstore::permute_pcg64(data, n, s);
}

void dequant_gather(py::handle src, py::handle scales, std::int64_t row_elems, std::int64_t group_elems,
                    py::handle indices, py::handle out, const std::string& scheme, const std::string& out_dtype,
                    int threads) {
    if (row_elems <= 0) throw py::value_error("row_elems must be positive, got " + std::to_string(row_elems));
    if (group_elems <= 0 || row_elems % group_elems)
        throw py::value_error("group_elems must divide row_elems, got " + std::to_string(group_elems));
    if (threads < 0) throw py::value_error("threads must be >= 0, got " + std::to_string(threads));
    const auto sch = featstore::quant_scheme_of(scheme);
    const auto od = featstore::out_dtype_of(out_dtype);
    auto idx = check_index_array(indices);
    ByteView s(src, "src", false);
    ByteView sc(scales, "scales", false);
    ByteView o(out, "out", true);
    const auto* ip = static_cast<const std::int64_t*>(idx.data());
    const auto n = static_cast<std::size_t>(idx.shape(0));
    py::gil_scoped_release nogil;
    featstore::dequant_gather_rows(s.data(), s.size(), sc.data(), sc.size(), static_cast<std::size_t>(row_elems),
                                   static_cast<std::size_t>(group_elems), ip, n, o.data(), o.size(), sch, od,
                                   threads);
}

void read_rows(int fd, std::int64_t offset, std::int64_t row_bytes, std::int64_t n_rows, py::handle indices,
               py::handle out, int queue_depth, std::int64_t max_request_bytes, const py::object& path,
               py::handle pos, py::handle bounce, py::handle scales, std::int64_t group_elems,
               const std::string& scheme, const std::string& out_dtype) {
    if (row_bytes <= 0) throw py::value_error("row_bytes must be positive, got " + std::to_string(row_bytes));
    if (offset < 0) throw py::value_error("offset must be >= 0, got " + std::to_string(offset));
    if (n_rows < 0) throw py::value_error("n_rows must be >= 0, got " + std::to_string(n_rows));
    if (queue_depth < 1) throw py::value_error("queue_depth must be >= 1, got " + std::to_string(queue_depth));
    if (max_request_bytes < 1)
        throw py::value_error("max_request_bytes must be positive, got " + std::to_string(max_request_bytes));
    auto idx = check_index_array(indices);
    ByteView o(out, "out", true);
    const std::string raw = py::bytes(py::module_::import("os").attr("fsencode")(path));
    const auto* ip = static_cast<const std::int64_t*>(idx.data());
    const auto n = static_cast<std::size_t>(idx.shape(0));
    py::array where;
    const std::int64_t* pp = nullptr;
    if (!pos.is_none()) {
        where = check_index_array(pos, "pos");
        if (static_cast<std::size_t>(where.shape(0)) != n)
            throw py::value_error("pos has " + std::to_string(where.shape(0)) + " entries but indices has " +
                                  std::to_string(n));
        pp = static_cast<const std::int64_t*>(where.data());
    }
    std::unique_ptr<ByteView> b;
    if (!bounce.is_none()) b = std::make_unique<ByteView>(bounce, "bounce", true);
    std::unique_ptr<ByteView> sc;
    featstore::RowDecode decode{};
    if (!scales.is_none()) {
        if (group_elems <= 0) throw py::value_error("group_elems must be positive, got " + std::to_string(group_elems));
        sc = std::make_unique<ByteView>(scales, "scales", false);
        decode = {featstore::quant_scheme_of(scheme), featstore::out_dtype_of(out_dtype),
                  static_cast<std::size_t>(group_elems), sc->data(), sc->size()};
    }
    py::gil_scoped_release nogil;
    featstore::read_rows(fd, static_cast<std::uint64_t>(offset), static_cast<std::size_t>(row_bytes),
                         static_cast<std::size_t>(n_rows), ip, n, o.data(), o.size(), queue_depth,
                         static_cast<std::size_t>(max_request_bytes), raw, pp, b ? b->data() : nullptr,
                         b ? b->size() : 0, sc ? &decode : nullptr);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "featstore compiled core: copy-on-write file mappings, a multithreaded row gather, direct row reads.";

    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const featstore::SystemError& e) {
            // OSError(errno, strerror, filename) picks the subclass (FileNotFoundError, ...) from errno.
            py::object exc = py::reinterpret_borrow<py::object>(PyExc_OSError)(e.err(), e.what(), fsdecode(e.path()));
            PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
        } catch (const featstore::IndexError& e) {
            PyErr_SetString(PyExc_IndexError, e.what());
        } catch (const featstore::ShortReadError& e) {
            PyErr_SetString(PyExc_EOFError, e.what());
        }
    });

    py::class_<MappedFile>(m, "MappedFile", py::buffer_protocol(), py::module_local(), R"doc(
A whole file mapped copy-on-write (MAP_PRIVATE, PROT_READ|PROT_WRITE).

memoryview(mf) / np.frombuffer(mf, ...) / torch.frombuffer(mf, ...) give a writable 1-D byte view
that keeps the MappedFile alive; writes to it copy the touched pages privately and never reach the
file. The mapping is released only when the object and every view are gone (there is no close()).
A 0-byte file gives an empty buffer.)doc")
        .def(py::init([](const py::object& path) {
                 const std::string raw = py::bytes(py::module_::import("os").attr("fsencode")(path));
                 py::gil_scoped_release nogil;
                 return std::make_unique<MappedFile>(raw);
             }),
             py::arg("path"))
        .def_property_readonly("path", [](const MappedFile& f) { return fsdecode(f.path()); })
        .def_property_readonly("size", &MappedFile::size)
        .def("advise", &MappedFile::advise, py::arg("offset"), py::arg("length"), py::arg("advice"),
             R"doc(madvise(2) on [offset, offset+length); offset is rounded down to the page.

advice: "normal", "random", "sequential", "willneed" or "dontneed". The range must lie within the
file (else ValueError). Note: on this MAP_PRIVATE mapping "dontneed" discards privately written
(copy-on-write) pages; views then read the file's contents again.)doc")
        .def(
            "resident_pages",
            [](const MappedFile& f, std::int64_t offset, std::int64_t length) {
                py::gil_scoped_release nogil;
                return f.resident_pages(offset, length);
            },
            py::arg("offset"), py::arg("length"),
            R"doc(How many pages of [offset, offset+length) are in memory now (mincore(2)); offset is rounded
down to the page.

The file's pages in the page cache count, whoever read them, and so do this mapping's private
copies. The range must lie within the file (else ValueError).)doc")
        .def("__repr__", [](const MappedFile& f) {
            return "<featstore._core.MappedFile path=" + std::string(py::repr(fsdecode(f.path()))) +
                   " size=" + std::to_string(f.size()) + ">";
        })
        .def_buffer([](MappedFile& f) {
            return py::buffer_info(f.data(), 1, py::format_descriptor<std::uint8_t>::format(), 1,
                                   {static_cast<py::ssize_t>(f.size())}, {1}, /*readonly=*/false);
        });

    m.def("gather", &gather, py::arg("src"), py::arg("row_bytes"), py::arg("indices"), py::arg("out"),
          py::arg("threads") = 0, R"doc(
Copy row indices[i] of src to out[i*row_bytes:(i+1)*row_bytes].

src: C-contiguous buffer (read-only is fine), viewed as bytes; n_rows = nbytes(src) // row_bytes.
indices: 1-D C-contiguous numpy int64 array; no conversion is done (TypeError/ValueError).
out: writable C-contiguous buffer of at least len(indices) * row_bytes bytes (else ValueError).
src/out may also be objects with __dlpack__ on the CPU (e.g. torch.Tensor).
Every index is checked before any byte is copied: one outside [0, n_rows) raises IndexError
(negative indices are not wrapped). The GIL is released during the copy.
threads: 0 = the pool's size (get_num_threads()), 1 = inline on the calling thread.)doc");

    m.def("dequant_gather", &dequant_gather, py::arg("src"), py::arg("scales"), py::arg("row_elems"),
          py::arg("group_elems"), py::arg("indices"), py::arg("out"), py::arg("scheme"), py::arg("out_dtype"),
          py::arg("threads") = 0, R"doc(
Gather rows indices[i] of a quantised matrix and dequantise them into out.

src: rows of row_elems one-byte codes (scheme "int8", or "float8_e4m3" e4m3fn bits); scales: the
float32 scales, one per group_elems consecutive elements (row r's at r * row_elems/group_elems);
out: writable, len(indices) * row_elems elements of out_dtype ("float16", "bfloat16", "float32").
Each element is float32(code) * scale (one float32 multiply) rounded to out_dtype, nearest-even.
Checks and threads as gather (IndexError before any byte moves; the GIL is released).)doc");

    m.def("read_rows", &read_rows, py::arg("fd"), py::arg("offset"), py::arg("row_bytes"), py::arg("n_rows"),
          py::arg("indices"), py::arg("out"), py::arg("queue_depth") = 32, py::arg("max_request_bytes") = 1 << 20,
          py::arg("path") = "", py::arg("pos") = py::none(), py::arg("bounce") = py::none(),
          py::arg("scales") = py::none(), py::arg("group_elems") = 0, py::arg("scheme") = "int8",
          py::arg("out_dtype") = "float16", R"doc(
Read row indices[i] of the file open as fd into out[i*row_bytes:(i+1)*row_bytes] with pread/preadv
(into out row pos[i] instead when pos, an int64 array as long as indices, is given).

The rows are the n_rows rows of row_bytes bytes from byte offset of the file. indices and out are
checked as gather checks them, and every index before any read (IndexError). The picks are read in
file order, rows adjacent in the file by one preadv (at most max_request_bytes each), with up to
queue_depth requests in flight (io_uring from the calling thread where the kernel allows it, else the
I/O thread pool: see io_engine; 1 = on the calling thread); a row asked for twice is read once.
bounce (a writable, 4096-byte aligned buffer; fd opened with O_DIRECT): each request reads the whole
pages around its run into a free slot of bounce and its rows are copied out as it completes, so the
queue stays full to the end of the call (at most as many requests in flight as slots fit; ValueError
if not one does). scales (needs bounce): the rows are one-byte codes (scheme "int8" or "float8_e4m3"),
decoded into out as they land, as dequant_gather decodes them, with the float32 scales of out row p
(one per group_elems codes) at scales[p * row_bytes / group_elems * 4:]; out rows are then row_bytes
elements of out_dtype. The GIL is released. A file shorter than its rows, or one cut while it is read,
raises EOFError naming `path`; a failed read raises OSError(errno, strerror, path).)doc");

    m.def("permute_pcg64", &permute_pcg64, py::arg("out"), py::arg("state"), py::arg("inc"), py::arg("has_uint32"),
          py::arg("uinteger"), R"doc(
Fill out with the permutation numpy's Generator(PCG64) draws for permutation(len(out)), bit for bit.

out: a writable 1-D C-contiguous int64 ndarray of at most 2**32 elements. state, inc, has_uint32,
uinteger: the PCG64 bit generator's state (bit_generator.state['state'] and its other fields), which
is not advanced. 2.1-3.4x numpy's speed (blocks of draws, accepted without branches); the GIL
is released.)doc");

    m.def("io_engine", &featstore::io_engine,
          "How read_rows keeps several requests in flight on this thread: 'auto: ...' (io_uring for O_DIRECT "
          "files, the I/O threads for the others), 'io_uring (...)', or 'threads (why)' where "
          "$FEATSTORE_IO=threads or the kernel refuses a ring. ValueError for a bad $FEATSTORE_IO.");

    m.def(
        "set_num_threads",
        [](int n) {
            if (n < 1) throw py::value_error("num_threads must be >= 1, got " + std::to_string(n));
            featstore::set_num_threads(n);
        },
        py::arg("n"), "Set the size of the persistent gather thread pool (>= 1).");
    m.def("get_num_threads", &featstore::get_num_threads,
          "Size of the gather thread pool: FEATSTORE_NUM_THREADS if set to a positive int, else "
          "min(8, CPUs in the affinity mask), unless set_num_threads() was called.");
}
