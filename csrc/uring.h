// A minimal io_uring for the direct read path: readv requests on one thread, many in flight, through
// the raw system calls (linux/io_uring.h; no liburing). Where the kernel refuses a ring (too old,
// io_uring disabled, a seccomp filter), open() says why and the caller uses its thread pool instead.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include <sys/uio.h>

namespace featstore {

class Uring {
public:
    // A ring of at least `entries` submission slots, or nullptr with `why` set.
    static std::unique_ptr<Uring> open(unsigned entries, std::string* why);
    ~Uring();
    Uring(const Uring&) = delete;
    Uring& operator=(const Uring&) = delete;

    unsigned capacity() const { return sq_entries_; }

    // Queues readv(fd, iov[0..cnt), offset), to be reported with `tag`. The iovecs must stay valid
    // until its completion is reaped. Returns false when every slot is taken (submit first).
    bool push_readv(int fd, const iovec* iov, unsigned cnt, std::uint64_t offset, std::uint64_t tag);

    // Submits what is queued and waits until at least `wait` completions are ready (EINTR, EAGAIN and
    // EBUSY retried). Throws SystemError for any other refusal (a bad ring or request: a bug).
    void submit(unsigned wait);

    // Calls done(tag, result) for every completion ready: result is the bytes read, or -errno.
    template <class Done>
    unsigned reap(Done&& done) {
        unsigned head = *cq_head_, seen = 0;
        const unsigned tail = __atomic_load_n(cq_tail_, __ATOMIC_ACQUIRE);
        for (; head != tail; ++head, ++seen) {
            const auto& cqe = cqes_[head & cq_mask_];
            done(cqe.user_data, cqe.res);
        }
        __atomic_store_n(cq_head_, head, __ATOMIC_RELEASE);
        return seen;
    }

private:
    struct Cqe {
        std::uint64_t user_data;
        std::int32_t res;
        std::uint32_t flags;
    };
    Uring() = default;
    int fd_ = -1;
    void* sq_ring_ = nullptr;
    void* cq_ring_ = nullptr;
    void* sqes_ = nullptr;
    std::size_t sq_ring_bytes_ = 0, cq_ring_bytes_ = 0, sqes_bytes_ = 0;
    unsigned *sq_head_ = nullptr, *sq_tail_ = nullptr, *sq_array_ = nullptr;
    unsigned *cq_head_ = nullptr, *cq_tail_ = nullptr;
    unsigned sq_mask_ = 0, cq_mask_ = 0, sq_entries_ = 0;
    unsigned queued_ = 0;  // pushed, not yet submitted
    const Cqe* cqes_ = nullptr;
};

// The ring of the calling thread (made on first use, kept for the thread's life), or nullptr where
// the kernel refuses one; `why` says why (stays empty when a ring exists).
Uring* thread_ring(unsigned entries, std::string* why);

}  // namespace featstore
