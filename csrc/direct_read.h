// Direct row reads: rows of a file read with pread/preadv straight into the caller's buffer, many
// requests in flight, adjacent rows coalesced (pure C++ on raw pointers and a file descriptor).
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "dequant.h"

namespace featstore {

// Rows of one-byte codes decoded as they land (read_rows with a bounce buffer): out row p receives
// the codes decoded with the float32 scales at scales + p * (row_bytes / group_elems) * 4, as
// dequant_gather_rows decodes them, so out rows are row_bytes * out_item_bytes(out_dtype) bytes.
struct RowDecode {
    QuantScheme scheme;
    OutDtype out_dtype;
    std::size_t group_elems;
    const std::uint8_t* scales;  // one row of scales per out row
    std::size_t scales_bytes;
};

// The file ended before a row did: it is shorter than its rows (truncated, perhaps while being
// read). module.cpp maps it to Python's EOFError; the message names the file.
class ShortReadError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Reads row indices[i] of the n_rows rows of row_bytes bytes stored in fd from byte `offset` to
// out[i*row_bytes, (i+1)*row_bytes). Validates everything before the first read, as gather_rows
// does (row_bytes == 0, out too small -> std::invalid_argument; an index outside [0, n_rows) ->
// IndexError), then checks the file is long enough (fstat; ShortReadError if not).
// The rows are visited in file order; rows adjacent in the file are read by one preadv (one iovec
// per run of rows adjacent in out too), at most max_request_bytes and IOV_MAX iovecs a request;
// a row asked for twice is read once and copied. queue_depth: requests in flight (io_uring from the
// calling thread, else threads of the I/O pool blocked in preadv: see io_engine(); 1 = preadv
// inline). A read that returns 0 before its bytes are in -> ShortReadError; a failed read ->
// SystemError(errno, path). EINTR is retried.
// pos (nullable): row indices[i] goes to out row pos[i] instead of row i, so one call can fill
// scattered slots of a buffer (the block read-ahead reads several blocks at once that way); every
// pos must lie in [0, out_bytes / row_bytes) (IndexError otherwise), and should be distinct.
// bounce (nullable; 4096-byte aligned, bounce_bytes long): for fd opened with O_DIRECT and rows
// that are not whole pages. Each request reads the whole pages around its run into a free slot of
// bounce (one slot fits the pages of the longest run: std::invalid_argument if bounce cannot hold
// one), and its rows are copied to out as it completes, so queue_depth requests (at most as many as
// slots fit) stay in flight to the call's end in bounce_bytes of memory. A read ending before its
// run's bytes (the file's last page may be partial) -> ShortReadError.
// decode (nullable; needs bounce): the rows are codes, decoded into out as they land instead of copied
// (see RowDecode), so a quantised batch costs one pass over its bytes and the queue stays full while
// the CPU decodes; out (and pos) then count rows of row_bytes * out_item_bytes bytes, and scales must
// hold a row of scales for every out row (std::invalid_argument otherwise).
// Thread-safe; may be called without the GIL. fd must stay open for the call.
void read_rows(int fd, std::uint64_t offset, std::size_t row_bytes, std::size_t n_rows,
               const std::int64_t* indices, std::size_t n, std::uint8_t* out, std::size_t out_bytes,
               int queue_depth, std::size_t max_request_bytes, const std::string& path,
               const std::int64_t* pos = nullptr, std::uint8_t* bounce = nullptr, std::size_t bounce_bytes = 0,
               const RowDecode* decode = nullptr);

// The engine read_rows uses for several requests in flight on this thread: "auto: ..." (io_uring
// for O_DIRECT files, the thread pool for the others), "io_uring (...)", or "threads (why)" when
// $FEATSTORE_IO=threads or the kernel refuses a ring. Throws
// std::invalid_argument for a $FEATSTORE_IO other than auto, io_uring or threads.
std::string io_engine();

}  // namespace featstore
