// Direct row reads: validate, sort the picks by file position, cut them into runs of adjacent rows,
// one preadv per run on the I/O pool, then copy the rows asked for twice.
//
// Why preadv with scattered iovecs: a run of rows adjacent in the file is one request to the disk
// even when the batch wants them at positions far apart, so block-ordered batches (runs of
// hundreds of rows) cost a few large requests, and random batches one request per row.
// Two engines keep `queue_depth` requests in flight: io_uring (uring.h), where the kernel allows
// a ring, submits them all from the calling thread; the I/O thread pool has a thread blocked in
// preadv per request. $FEATSTORE_IO picks: "auto" (default: io_uring for a file opened with
// O_DIRECT, the pool otherwise), "io_uring", "threads". io_engine() says which runs and why.
// With a bounce buffer (O_DIRECT reads of rows that are not whole pages), each request reads the
// pages around its run into a free slot of the buffer and its rows are copied out (or, for a quantised
// set's codes, decoded) as it completes, so the queue stays full for the whole call in a few MiB
// (docs/performance.md).
#include "direct_read.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "gather.h"
#include "mapped_file.h"
#include "thread_pool.h"
#include "uring.h"

namespace featstore {

namespace {

#ifdef IOV_MAX
constexpr std::size_t kMaxIov = IOV_MAX;
#else
constexpr std::size_t kMaxIov = 1024;
#endif

struct Pick {
    std::uint64_t row;
    std::uint64_t pos;
};

struct Run {
    std::size_t begin, end;  // [begin, end) of the unique picks, rows row[begin] .. row[begin] + (end - begin) - 1
};

[[noreturn]] void throw_short(const std::string& path, std::uint64_t at, std::size_t got, std::size_t want) {
    throw ShortReadError("short read from " + path + ": got " + std::to_string(got) + " of " + std::to_string(want) +
                         " bytes at offset " + std::to_string(at) + "; the file ends before its rows (truncated?)");
}

constexpr std::uint64_t kPage = 4096;  // O_DIRECT alignment of a bounce read's offset, length and slot

std::uint64_t page_floor(std::uint64_t x) { return x / kPage * kPage; }
std::uint64_t page_ceil(std::uint64_t x) { return (x + kPage - 1) / kPage * kPage; }

// One run's request: its iovecs (one per stretch of rows adjacent in out too) and how far it got.
// A bounce request reads the whole pages around the run into one slot instead; it is done once the
// run's bytes are in (the file's last page may be partial) and is never resumed part-way, since the
// rest of a short O_DIRECT read would start unaligned: a short one means the file was cut short.
struct Request {
    std::vector<iovec> iov;
    std::size_t first = 0;  // iovecs before this are filled
    std::size_t done = 0, want = 0;
    std::uint64_t start = 0;  // file offset of the request's first byte
    std::size_t run = 0, slot = 0;
    bool resumable = true;

    Request(std::uint64_t offset, std::size_t row_bytes, const Pick* picks, const Run& run, std::uint8_t* out) {
        iov.reserve(run.end - run.begin);
        for (std::size_t k = run.begin; k < run.end; ++k) {
            std::uint8_t* dst = out + picks[k].pos * row_bytes;
            if (!iov.empty() && static_cast<std::uint8_t*>(iov.back().iov_base) + iov.back().iov_len == dst)
                iov.back().iov_len += row_bytes;
            else
                iov.push_back({dst, row_bytes});
        }
        want = (run.end - run.begin) * row_bytes;
        start = offset + picks[run.begin].row * row_bytes;
    }

    // A bounce request of run `r` (file bytes [begin, begin + bytes)) into `slot` at `base`.
    Request(std::uint64_t begin, std::size_t bytes, std::size_t r, std::size_t s, std::uint8_t* base)
        : start(page_floor(begin)), run(r), slot(s), resumable(false) {
        want = static_cast<std::size_t>(begin - start) + bytes;
        iov.push_back({base, static_cast<std::size_t>(page_ceil(begin + bytes) - start)});
    }

    // Accounts for `got` more bytes read (a partial read moves the iovecs on); true when all are in.
    bool advance(std::size_t got) {
        done += got;
        while (got > 0 && first < iov.size()) {
            if (got >= iov[first].iov_len) {
                got -= iov[first].iov_len;
                ++first;
            } else {
                iov[first].iov_base = static_cast<std::uint8_t*>(iov[first].iov_base) + got;
                iov[first].iov_len -= got;
                got = 0;
            }
        }
        return done >= want;
    }
    const iovec* rest() const { return iov.data() + first; }
    unsigned rest_count() const { return static_cast<unsigned>(iov.size() - first); }
    std::uint64_t at() const { return start + done; }
};

// One preadv of the run, repeated until every byte is in.
void read_run(int fd, std::uint64_t offset, std::size_t row_bytes, const Pick* picks, const Run& run,
              std::uint8_t* out, const std::string& path) {
    Request req(offset, row_bytes, picks, run, out);
    for (;;) {
        const ssize_t got = ::preadv(fd, req.rest(), static_cast<int>(req.rest_count()), static_cast<off_t>(req.at()));
        if (got < 0) {
            if (errno == EINTR) continue;
            throw SystemError(errno, std::strerror(errno), path);
        }
        if (got == 0) throw_short(path, req.at(), req.done, req.want);
        if (req.advance(static_cast<std::size_t>(got))) return;
    }
}

constexpr unsigned kRingEntries = 128;  // a thread's ring: at most this many requests in flight on io_uring

// `count` requests through the calling thread's io_uring, up to `depth` in flight: make(r) builds
// request r (in order, when a slot in flight is free), finish(q) runs once all of q's bytes are in.
// A partial read is resubmitted from where it stopped (a bounce request's is a short read); on an
// error the requests in flight are drained before it is thrown (their iovecs point into this frame
// and the caller's buffers).
template <class Make, class Finish>
void uring_requests(Uring& ring, int fd, std::size_t count, std::size_t depth, const std::string& path, Make make,
                    Finish finish) {
    depth = std::min<std::size_t>(depth, ring.capacity());
    std::vector<Request> reqs;
    reqs.reserve(count);
    std::size_t next = 0, in_flight = 0, finished = 0;
    std::exception_ptr failure;
    auto push = [&](std::size_t r) {
        const Request& q = reqs[r];
        if (!ring.push_readv(fd, q.rest(), q.rest_count(), q.at(), r))  // in_flight < capacity: a slot is free
            throw std::logic_error("io_uring submission queue full with " + std::to_string(in_flight) + " in flight");
        ++in_flight;
    };
    auto fail_short = [&](const Request& q) {
        try {
            throw_short(path, q.at(), q.done, q.want);
        } catch (...) {
            failure = std::current_exception();
        }
    };
    while (finished < count) {
        while (!failure && next < count && in_flight < depth) {
            reqs.push_back(make(next));
            push(next++);
        }
        if (failure && in_flight == 0) break;
        ring.submit(1);
        ring.reap([&](std::uint64_t r, std::int32_t res) {
            --in_flight;
            Request& q = reqs[r];
            if (failure) {
                ++finished;
            } else if (res == -EINTR || res == -EAGAIN) {
                push(r);
            } else if (res < 0) {
                failure = std::make_exception_ptr(SystemError(-res, std::strerror(-res), path));
                ++finished;
            } else if (res == 0) {
                fail_short(q);
                ++finished;
            } else if (q.advance(static_cast<std::size_t>(res))) {
                finish(q);
                ++finished;
            } else if (q.resumable) {
                push(r);
            } else {
                fail_short(q);
                ++finished;
            }
        });
    }
    if (failure) std::rethrow_exception(failure);
}

// One bounce request read with pread into its slot; fewer bytes than its run needs is a short read.
void pread_request(int fd, Request& q, const std::string& path) {
    for (;;) {
        const ssize_t got = ::preadv(fd, q.rest(), static_cast<int>(q.rest_count()), static_cast<off_t>(q.at()));
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) throw SystemError(errno, std::strerror(errno), path);
        if (got == 0 || !q.advance(static_cast<std::size_t>(got))) throw_short(path, q.at(), q.done, q.want);
        return;
    }
}

// The bounce buffer's slots: free ones handed out and taken back (by the I/O pool's threads, or on
// the io_uring path by the one calling thread). Last in, first out: a call touches no more slots
// than it keeps in flight.
class SlotPool {
public:
    explicit SlotPool(std::size_t n) {
        for (std::size_t s = n; s-- > 0;) free_.push_back(s);
    }
    std::size_t take() {  // waits for one: the I/O pool may run more threads than there are slots
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return !free_.empty(); });
        const std::size_t s = free_.back();
        free_.pop_back();
        return s;
    }
    void give(std::size_t s) {
        {
            std::lock_guard<std::mutex> lk(mu_);
            free_.push_back(s);
        }
        cv_.notify_one();
    }

private:
    std::mutex mu_;
    std::condition_variable cv_;
    std::vector<std::size_t> free_;
};

// Which engine $FEATSTORE_IO asks for: "auto" (or unset), "io_uring" or "threads".
std::string engine_asked() {
    const char* raw = std::getenv("FEATSTORE_IO");
    const std::string asked = raw == nullptr || *raw == '\0' ? "auto" : raw;
    if (asked != "auto" && asked != "io_uring" && asked != "threads")
        throw std::invalid_argument("$FEATSTORE_IO must be auto, io_uring or threads, got '" + asked + "'");
    return asked;
}

// Every out position in [0, out_rows); checked before the first read, like the indices.
void check_positions(const std::int64_t* pos, std::size_t n, std::size_t out_rows) {
    for (std::size_t i = 0; i < n; ++i)
        if (pos[i] < 0 || static_cast<std::uint64_t>(pos[i]) >= out_rows)
            throw IndexError("position " + std::to_string(pos[i]) + " at " + std::to_string(i) +
                             " is out of range for an out of " + std::to_string(out_rows) + " rows");
}

}  // namespace

void read_rows(int fd, std::uint64_t offset, std::size_t row_bytes, std::size_t n_rows,
               const std::int64_t* indices, std::size_t n, std::uint8_t* out, std::size_t out_bytes,
               int queue_depth, std::size_t max_request_bytes, const std::string& path, const std::int64_t* pos,
               std::uint8_t* bounce, std::size_t bounce_bytes, const RowDecode* decode) {
    if (bounce != nullptr && reinterpret_cast<std::uintptr_t>(bounce) % kPage != 0)
        throw std::invalid_argument("bounce must start on a " + std::to_string(kPage) + "-byte boundary");
    if (row_bytes == 0) throw std::invalid_argument("row_bytes must be positive, got 0");
    if (queue_depth < 1) throw std::invalid_argument("queue_depth must be >= 1, got " + std::to_string(queue_depth));
    if (decode != nullptr && bounce == nullptr) throw std::invalid_argument("decoding rows as they land needs bounce");
    if (decode != nullptr && (decode->group_elems == 0 || row_bytes % decode->group_elems))
        throw std::invalid_argument("group_elems must divide row_bytes " + std::to_string(row_bytes));
    // out's rows: the rows read, or their decoded values
    const std::size_t out_row_bytes = decode != nullptr ? row_bytes * out_item_bytes(decode->out_dtype) : row_bytes;
    std::size_t need, rows_bytes;
    const std::size_t out_rows = out_bytes / out_row_bytes;
    if (pos != nullptr) {
        check_positions(pos, n, out_rows);
    } else if (__builtin_mul_overflow(n, out_row_bytes, &need) || out_bytes < need)
        throw std::invalid_argument("out has " + std::to_string(out_bytes) + " bytes but " + std::to_string(n) +
                                    (decode != nullptr ? " rows of " + std::to_string(out_row_bytes) + " bytes"
                                                       : " indices x " + std::to_string(row_bytes) + " row_bytes") +
                                    " need " +
                                    (need / out_row_bytes == n ? std::to_string(need) : std::string("more")) +
                                    " bytes");
    const std::size_t scale_row_bytes = decode != nullptr ? row_bytes / decode->group_elems * 4 : 0;
    if (decode != nullptr && decode->scales_bytes / scale_row_bytes < (pos != nullptr ? out_rows : n))
        throw std::invalid_argument("scales has " + std::to_string(decode->scales_bytes) + " bytes but " +
                                    std::to_string(pos != nullptr ? out_rows : n) + " out rows need " +
                                    std::to_string(scale_row_bytes) + " each");
    if (__builtin_mul_overflow(n_rows, row_bytes, &rows_bytes) || offset > UINT64_MAX - rows_bytes)
        throw std::invalid_argument("n_rows x row_bytes from offset " + std::to_string(offset) + " overflows");
    const bool sorted = check_row_indices(indices, n, n_rows);
    if (n == 0) return;
    struct stat st;
    if (::fstat(fd, &st) != 0) throw SystemError(errno, std::strerror(errno), path);
    if (static_cast<std::uint64_t>(st.st_size) < offset + rows_bytes)
        throw ShortReadError(path + " is " + std::to_string(st.st_size) + " bytes, but its " + std::to_string(n_rows) +
                             " rows of " + std::to_string(row_bytes) + " bytes end at byte " +
                             std::to_string(offset + rows_bytes) + " (truncated?)");

    // Our own copy of the picks, clamped: another thread may change `indices` or `pos` since they were checked.
    std::vector<Pick> picks(n);
    for (std::size_t i = 0; i < n; ++i)
        picks[i] = {std::min<std::uint64_t>(static_cast<std::uint64_t>(indices[i]), n_rows - 1),
                    pos != nullptr ? std::min<std::uint64_t>(static_cast<std::uint64_t>(pos[i]), out_rows - 1) : i};
    if (!sorted)
        std::sort(picks.begin(), picks.end(),
                  [](const Pick& a, const Pick& b) { return a.row < b.row || (a.row == b.row && a.pos < b.pos); });
    // Unique rows (the first position asking for each), the repeats copied afterwards.
    std::vector<std::pair<std::uint64_t, std::uint64_t>> repeats;  // (from position, to position)
    std::size_t u = 0;
    for (std::size_t k = 0; k < n; ++k) {
        if (u > 0 && picks[u - 1].row == picks[k].row)
            repeats.emplace_back(picks[u - 1].pos, picks[k].pos);
        else
            picks[u++] = picks[k];
    }
    const std::size_t max_rows = std::max<std::size_t>(1, std::min(kMaxIov, max_request_bytes / row_bytes));
    std::vector<Run> runs;
    for (std::size_t k = 0; k < u;) {
        std::size_t e = k + 1;
        while (e < u && e - k < max_rows && picks[e].row == picks[e - 1].row + 1) ++e;
        runs.push_back({k, e});
        k = e;
    }

    const auto copy_repeats = [&] {
        for (const auto& [from, to] : repeats)
            std::memcpy(out + to * out_row_bytes, out + from * out_row_bytes, out_row_bytes);
    };
    // bounce: one slot holds the pages around the longest run; as many slots in flight as fit
    std::size_t slot_bytes = 0, depth = static_cast<std::size_t>(queue_depth);
    if (bounce != nullptr) {
        for (const Run& r : runs) {
            const std::uint64_t begin = offset + picks[r.begin].row * row_bytes;
            slot_bytes = std::max<std::size_t>(slot_bytes, page_ceil(begin + (r.end - r.begin) * row_bytes) -
                                                               page_floor(begin));
        }
        if (bounce_bytes < slot_bytes)
            throw std::invalid_argument("bounce has " + std::to_string(bounce_bytes) + " bytes but a request needs " +
                                        std::to_string(slot_bytes));
        depth = std::min(depth, bounce_bytes / slot_bytes);
    }
    SlotPool slots(bounce != nullptr ? depth : 0);
    const auto run_begin = [&](std::size_t r) { return offset + picks[runs[r].begin].row * row_bytes; };
    const auto bounce_request = [&](std::size_t r, std::size_t s) {
        return Request(run_begin(r), (runs[r].end - runs[r].begin) * row_bytes, r, s, bounce + s * slot_bytes);
    };
    auto make = [&](std::size_t r) {  // a bounce slot is always free: at most depth requests are in flight
        return bounce == nullptr ? Request(offset, row_bytes, picks.data(), runs[r], out)
                                 : bounce_request(r, slots.take());
    };
    auto finish = [&](const Request& q) {  // a bounce request's rows out of its slot, the slot free again
        if (bounce == nullptr) return;
        const std::uint8_t* src = bounce + q.slot * slot_bytes + (run_begin(q.run) - page_floor(run_begin(q.run)));
        for (std::size_t k = runs[q.run].begin; k < runs[q.run].end; ++k, src += row_bytes) {
            std::uint8_t* dst = out + picks[k].pos * out_row_bytes;
            if (decode == nullptr)
                std::memcpy(dst, src, row_bytes);
            else
                dequant_row(src, decode->scales + picks[k].pos * scale_row_bytes, row_bytes, decode->group_elems, dst,
                            decode->scheme, decode->out_dtype);
        }
        slots.give(q.slot);
    };

    const std::string asked = depth > 1 && runs.size() > 1 ? engine_asked() : "threads";
    // auto: io_uring for O_DIRECT reads (truly asynchronous in the kernel), the thread pool for reads
    // through the page cache, which a ring hands to kernel workers (measured 25% slower, docs/performance.md)
    if (asked == "io_uring" || (asked == "auto" && (::fcntl(fd, F_GETFL) & O_DIRECT))) {
        std::string why;
        if (Uring* ring = thread_ring(kRingEntries, &why)) {
            uring_requests(*ring, fd, runs.size(), depth, path, make, finish);
            copy_repeats();
            return;
        }
        if (asked == "io_uring") throw std::runtime_error("$FEATSTORE_IO=io_uring, but " + why);
    }
    std::mutex mu;
    std::exception_ptr failure;
    std::atomic<bool> failed{false};
    auto task = [&](std::size_t t) {
        if (failed.load(std::memory_order_relaxed)) return;
        try {
            if (bounce == nullptr) {
                read_run(fd, offset, row_bytes, picks.data(), runs[t], out, path);
                return;
            }
            Request q = bounce_request(t, slots.take());
            try {
                pread_request(fd, q, path);
            } catch (...) {
                slots.give(q.slot);
                throw;
            }
            finish(q);
        } catch (...) {
            std::lock_guard<std::mutex> lk(mu);
            if (!failure) failure = std::current_exception();
            failed.store(true);
        }
    };
    if (depth == 1 || runs.size() == 1) {
        for (std::size_t t = 0; t < runs.size(); ++t) task(t);
    } else {
        io_pool(queue_depth)->parallel_for(runs.size(), task);  // one pool size: bounce slots cap the reads
    }
    if (failure) std::rethrow_exception(failure);
    copy_repeats();
}

std::string io_engine() {
    const std::string asked = engine_asked();
    if (asked == "threads") return "threads ($FEATSTORE_IO=threads)";
    std::string why;
    if (thread_ring(kRingEntries, &why) == nullptr) return "threads (" + why + ")";
    if (asked == "io_uring") return "io_uring ($FEATSTORE_IO=io_uring)";
    return "auto: io_uring for O_DIRECT reads, threads for reads through the page cache";
}

}  // namespace featstore
