// The io_uring of the direct read path (see uring.h): ring set-up and submission by raw system
// calls. The kernel and this thread share the rings; head and tail indices are read with acquire
// and written with release ordering, as io_uring(7) prescribes.
#include "uring.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "mapped_file.h"

namespace featstore {

namespace {

static_assert(sizeof(io_uring_cqe) == 16, "a ring without IORING_SETUP_CQE32 has 16-byte completions");

int uring_setup(unsigned entries, io_uring_params* p) {
    return static_cast<int>(::syscall(__NR_io_uring_setup, entries, p));
}

int uring_enter(int fd, unsigned submit, unsigned wait, unsigned flags) {
    return static_cast<int>(::syscall(__NR_io_uring_enter, fd, submit, wait, flags, nullptr, 0));
}

void* map_ring(int fd, std::size_t bytes, off_t what) {
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, what);
    return p == MAP_FAILED ? nullptr : p;
}

}  // namespace

std::unique_ptr<Uring> Uring::open(unsigned entries, std::string* why) {
    io_uring_params p;
    std::memset(&p, 0, sizeof p);
    const int fd = uring_setup(entries, &p);
    if (fd < 0) {
        *why = std::string("io_uring_setup: ") + std::strerror(errno);
        return nullptr;
    }
    std::unique_ptr<Uring> ring(new Uring());
    ring->fd_ = fd;
    ring->sq_ring_bytes_ = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    ring->cq_ring_bytes_ = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe);
    const bool single = p.features & IORING_FEAT_SINGLE_MMAP;
    if (single) ring->sq_ring_bytes_ = ring->cq_ring_bytes_ = std::max(ring->sq_ring_bytes_, ring->cq_ring_bytes_);
    ring->sq_ring_ = map_ring(fd, ring->sq_ring_bytes_, IORING_OFF_SQ_RING);
    ring->cq_ring_ = single ? ring->sq_ring_ : map_ring(fd, ring->cq_ring_bytes_, IORING_OFF_CQ_RING);
    ring->sqes_bytes_ = p.sq_entries * sizeof(io_uring_sqe);
    ring->sqes_ = map_ring(fd, ring->sqes_bytes_, IORING_OFF_SQES);
    if (ring->sq_ring_ == nullptr || ring->cq_ring_ == nullptr || ring->sqes_ == nullptr) {
        *why = std::string("mmap of the io_uring rings: ") + std::strerror(errno);
        return nullptr;  // the destructor unmaps what was mapped and closes fd
    }
    auto* sq = static_cast<char*>(ring->sq_ring_);
    auto* cq = static_cast<char*>(ring->cq_ring_);
    ring->sq_head_ = reinterpret_cast<unsigned*>(sq + p.sq_off.head);
    ring->sq_tail_ = reinterpret_cast<unsigned*>(sq + p.sq_off.tail);
    ring->sq_mask_ = *reinterpret_cast<unsigned*>(sq + p.sq_off.ring_mask);
    ring->sq_array_ = reinterpret_cast<unsigned*>(sq + p.sq_off.array);
    ring->sq_entries_ = p.sq_entries;
    ring->cq_head_ = reinterpret_cast<unsigned*>(cq + p.cq_off.head);
    ring->cq_tail_ = reinterpret_cast<unsigned*>(cq + p.cq_off.tail);
    ring->cq_mask_ = *reinterpret_cast<unsigned*>(cq + p.cq_off.ring_mask);
    ring->cqes_ = reinterpret_cast<const Cqe*>(cq + p.cq_off.cqes);
    // A buffered read that misses the page cache goes to the kernel's io-wq workers, at most
    // min(entries, 4 x CPUs) of them by default: 8 on 2 CPUs, fewer requests in flight than asked.
    // Allow one per slot (kernels before 5.15 refuse this; their default then stays).
    unsigned workers[2] = {p.sq_entries, 0};  // bounded (file reads), unbounded (unchanged)
    ::syscall(__NR_io_uring_register, fd, IORING_REGISTER_IOWQ_MAX_WORKERS, workers, 2);
    return ring;
}

Uring::~Uring() {
    if (sqes_ != nullptr) ::munmap(sqes_, sqes_bytes_);
    if (cq_ring_ != nullptr && cq_ring_ != sq_ring_) ::munmap(cq_ring_, cq_ring_bytes_);
    if (sq_ring_ != nullptr) ::munmap(sq_ring_, sq_ring_bytes_);
    if (fd_ >= 0) ::close(fd_);
}

bool Uring::push_readv(int fd, const iovec* iov, unsigned cnt, std::uint64_t offset, std::uint64_t tag) {
    const unsigned tail = *sq_tail_;
    if (tail - __atomic_load_n(sq_head_, __ATOMIC_ACQUIRE) >= sq_entries_) return false;
    const unsigned slot = tail & sq_mask_;
    auto* sqe = static_cast<io_uring_sqe*>(sqes_) + slot;
    std::memset(sqe, 0, sizeof *sqe);
    sqe->opcode = IORING_OP_READV;
    sqe->fd = fd;
    sqe->addr = reinterpret_cast<std::uint64_t>(iov);
    sqe->len = cnt;
    sqe->off = offset;
    sqe->user_data = tag;
    sq_array_[slot] = slot;
    __atomic_store_n(sq_tail_, tail + 1, __ATOMIC_RELEASE);
    ++queued_;
    return true;
}

void Uring::submit(unsigned wait) {
    for (;;) {
        const int got = uring_enter(fd_, queued_, wait, wait ? IORING_ENTER_GETEVENTS : 0);
        if (got >= 0) {
            queued_ -= static_cast<unsigned>(got);
            if (queued_ == 0) return;
            continue;  // the kernel took part of them: submit the rest
        }
        // EAGAIN / EBUSY: the kernel is short of memory or completions; what is in flight still lands, so wait
        if (errno == EINTR || errno == EAGAIN || errno == EBUSY) {
            if (errno != EINTR) ::usleep(50);
            continue;
        }
        throw SystemError(errno, std::strerror(errno), "io_uring_enter");
    }
}

Uring* thread_ring(unsigned entries, std::string* why) {
    thread_local std::unique_ptr<Uring> ring;
    thread_local std::string refused;
    thread_local pid_t owner = 0;
    if (owner != ::getpid()) {  // a forked child (a DataLoader worker) shares its parent's rings: its own
        ring.reset();           // copies of the mapping and fd go; the parent's ring is untouched
        refused.clear();
        owner = ::getpid();
    }
    if (!ring && refused.empty()) {
        ring = Uring::open(entries, &refused);
        if (!ring && refused.empty()) refused = "io_uring unavailable";
    }
    if (!ring) *why = refused;
    return ring.get();
}

}  // namespace featstore
