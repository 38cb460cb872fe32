// Persistent, fork-aware worker pool for the gather kernel (header-only, pure C++).
#pragma once

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

// How long idle workers (and a caller waiting for them) spin before sleeping. On the 2-vCPU KVM guest
// this was tuned on, a worker woken from sleep often landed on the caller's CPU (an idle vCPU looks
// "preempted" to the guest scheduler) and did not help at all; spinning through gaps of up to 2 ms
// between calls took 1536 B x 1024-row batches from ~5.5 (= one thread) to ~9 GB/s. libgomp, which
// torch uses, spins ~10 ms. The cost is up to this much CPU per worker after each parallel gather.
#ifndef FEATSTORE_POOL_SPIN_US
#define FEATSTORE_POOL_SPIN_US 2000
#endif

namespace featstore {

// size() threads in total: the caller of parallel_for plus size()-1 workers. Idle workers spin
// (spin_, yielding the CPU every couple of microseconds) before sleeping on a condvar, so calls in
// quick succession don't pay a wake-up; the caller likewise spins a while waiting for them.
class ThreadPool {
public:
    // spin: how long idle workers (and a waiting caller) spin before sleeping; the I/O pool of the
    // direct read path (direct_read.cpp) spins not at all, its workers block in pread.
    explicit ThreadPool(int n_threads, std::chrono::microseconds spin = kDefaultSpin)
        : spin_(spin), pid_(::getpid()) {
        try {
            for (int i = 1; i < n_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
        } catch (const std::exception&) {
            // Out of threads/memory: work with the workers we got (possibly none).
        }
        size_ = static_cast<int>(workers_.size()) + 1;
    }

    // Only ever run in the creating process (see global_pool()); a pool inherited through fork() is leaked.
    ~ThreadPool() {
        {
            std::lock_guard<std::mutex> lk(mu_);
            stop_.store(true);
        }
        wake_.notify_all();
        for (auto& t : workers_) t.join();
    }

    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const noexcept { return size_; }
    pid_t pid() const noexcept { return pid_; }

    // Runs fn(i) for i in [0, n_tasks): the calling thread takes tasks too, workers take the rest;
    // returns when all are done. If another thread is already using the pool, everything runs
    // inline on the calling thread instead of waiting. fn must not throw.
    template <class F>
    void parallel_for(std::size_t n_tasks, F&& fn) {
        if (n_tasks == 0) return;
        std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
        if (n_tasks == 1 || size_ == 1 || !busy.owns_lock()) {
            for (std::size_t i = 0; i < n_tasks; ++i) fn(i);
            return;
        }
        using Fn = std::remove_reference_t<F>;
        run(n_tasks, [](void* ctx, std::size_t i) { (*static_cast<Fn*>(ctx))(i); },
            const_cast<void*>(static_cast<const void*>(&fn)));
    }

private:
    using Call = void (*)(void*, std::size_t);
    using Clock = std::chrono::steady_clock;
    static constexpr auto kDefaultSpin = std::chrono::microseconds(FEATSTORE_POOL_SPIN_US);

    static void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        asm volatile("yield");
#endif
    }

    // Spins until pred() or spin_ elapsed; returns pred().
    template <class P>
    bool spin_until(P&& pred) const {
        if (pred()) return true;
        if (spin_.count() == 0) return false;
        const auto deadline = Clock::now() + spin_;
        for (;;) {
            for (int i = 0; i < 64; ++i) {
                cpu_relax();
                if (pred()) return true;
            }
            if (Clock::now() >= deadline) return pred();
            ::sched_yield();  // let a thread that shares our CPU (e.g. the caller) run
        }
    }

    // Protocol: the caller (holding busy_) writes the job fields, then open_=true, then bumps
    // generation_. A worker first registers in active_, then reads the fields only if open_.
    // The caller sets open_=false once every task is claimed and waits for active_==0 before it
    // returns, so the fields are never rewritten under a worker that is reading them.
    void run(std::size_t n_tasks, Call call, void* ctx) {
        caller_cpu_ = ::sched_getcpu();
        call_ = call;
        ctx_ = ctx;
        n_tasks_ = n_tasks;
        next_.store(0, std::memory_order_relaxed);
        open_.store(true, std::memory_order_release);
        generation_.fetch_add(1);
        if (sleepers_.load() > 0) {
            { std::lock_guard<std::mutex> lk(mu_); }
            wake_.notify_all();
        }
        for (std::size_t i; (i = next_.fetch_add(1, std::memory_order_relaxed)) < n_tasks;) call(ctx, i);
        open_.store(false);
        auto idle = [this] { return active_.load() == 0; };
        if (!spin_until(idle)) {
            std::unique_lock<std::mutex> lk(mu_);
            caller_waiting_.store(true);
            done_.wait(lk, idle);
            caller_waiting_.store(false);
        }
    }

    // A woken worker can land on the caller's CPU and merely time-share it: under a hypervisor an
    // idle vCPU looks "preempted", so the scheduler won't wake threads onto it. Then move this
    // thread off that CPU (affinity without it, then the old affinity back: it stays where it went).
    static void move_off_cpu(int cpu) {
        cpu_set_t old_set, new_set;
        if (::sched_getaffinity(0, sizeof(old_set), &old_set) != 0 || !CPU_ISSET(cpu, &old_set) ||
            CPU_COUNT(&old_set) < 2)
            return;
        new_set = old_set;
        CPU_CLR(cpu, &new_set);
        if (::sched_setaffinity(0, sizeof(new_set), &new_set) == 0) ::sched_setaffinity(0, sizeof(old_set), &old_set);
    }

    void worker_loop() {
        std::uint64_t seen = generation_.load();
        for (;;) {
            auto has_news = [&] { return generation_.load() != seen || stop_.load(std::memory_order_relaxed); };
            if (!spin_until(has_news)) {
                std::unique_lock<std::mutex> lk(mu_);
                sleepers_.fetch_add(1);
                wake_.wait(lk, has_news);
                sleepers_.fetch_sub(1);
            }
            if (stop_.load()) return;
            seen = generation_.load();
            active_.fetch_add(1);
            if (open_.load()) {
                if (caller_cpu_ >= 0 && ::sched_getcpu() == caller_cpu_) move_off_cpu(caller_cpu_);
                const Call call = call_;
                void* const ctx = ctx_;
                const std::size_t n = n_tasks_;
                for (std::size_t i; (i = next_.fetch_add(1, std::memory_order_relaxed)) < n;) call(ctx, i);
            }
            if (active_.fetch_sub(1) == 1 && caller_waiting_.load()) {
                { std::lock_guard<std::mutex> lk(mu_); }
                done_.notify_one();
            }
        }
    }

    int size_;  // set once in the constructor
    const std::chrono::microseconds spin_;
    const pid_t pid_;
    std::vector<std::thread> workers_;
    std::mutex busy_;  // held by the one parallel_for that owns the workers
    // The job, written by the busy_ holder while no worker reads it (see run()).
    Call call_ = nullptr;
    void* ctx_ = nullptr;
    int caller_cpu_ = -1;
    std::size_t n_tasks_ = 0;
    std::atomic<std::size_t> next_{0};
    std::atomic<bool> open_{false};
    std::atomic<std::uint64_t> generation_{0};
    std::atomic<int> active_{0};
    // Sleeping and waking.
    std::mutex mu_;
    std::condition_variable wake_, done_;
    std::atomic<int> sleepers_{0};
    std::atomic<bool> caller_waiting_{false};
    std::atomic<bool> stop_{false};
};

// ---- the process-wide pool ------------------------------------------------------------------
// The slot and its mutex are heap-allocated and never freed: no static destructor joins threads at
// interpreter exit, and a pool inherited through fork() (whose threads don't exist in the child) is
// leaked, never destroyed, and replaced by a fresh one.
namespace detail {
struct PoolRegistry {
    std::mutex mu;
    std::shared_ptr<ThreadPool> pool;
    int n_threads = 0;  // 0: not yet decided
};

inline int default_num_threads() {
    if (const char* env = std::getenv("FEATSTORE_NUM_THREADS")) {
        // A positive decimal integer (digits only), capped at 1024; anything else is ignored.
        long v = 0;
        const char* p = env;
        for (; *p >= '0' && *p <= '9'; ++p) v = std::min(v * 10 + (*p - '0'), 1000000L);
        if (p != env && *p == '\0' && v > 0) return static_cast<int>(std::min(v, 1024L));
    }
    int n = 0;
    cpu_set_t set;
    if (::sched_getaffinity(0, sizeof(set), &set) == 0) n = CPU_COUNT(&set);
    if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
    return std::max(1, std::min(8, n));
}

inline PoolRegistry& registry() {
    static PoolRegistry* r = [] {
        auto* reg = new PoolRegistry();
        // Hold the registry lock across fork() so the child never inherits it locked.
        ::pthread_atfork([] { registry().mu.lock(); }, [] { registry().mu.unlock(); },
                         [] { registry().mu.unlock(); });
        return reg;
    }();
    return *r;
}

inline void leak(std::shared_ptr<ThreadPool>&& p) {
    if (p) new std::shared_ptr<ThreadPool>(std::move(p));  // intentionally never deleted
}
}  // namespace detail

inline int get_num_threads() {
    auto& r = detail::registry();
    std::lock_guard<std::mutex> lk(r.mu);
    if (r.n_threads == 0) r.n_threads = detail::default_num_threads();
    return r.n_threads;
}

// n >= 1 (checked by the caller). The old pool is joined once its in-flight users finish.
inline void set_num_threads(int n) {
    auto& r = detail::registry();
    std::shared_ptr<ThreadPool> old;
    {
        std::lock_guard<std::mutex> lk(r.mu);
        r.n_threads = n;
        if (r.pool && r.pool->pid() != ::getpid()) detail::leak(std::move(r.pool));
        if (r.pool && r.pool->size() != n) old = std::move(r.pool);
    }
    old.reset();  // joins the workers (outside the lock) unless a parallel_for still holds it
}

// The current process's pool, created on first use and re-created after fork().
inline std::shared_ptr<ThreadPool> global_pool() {
    auto& r = detail::registry();
    std::lock_guard<std::mutex> lk(r.mu);
    if (r.pool && r.pool->pid() != ::getpid()) detail::leak(std::move(r.pool));
    if (!r.pool) {
        if (r.n_threads == 0) r.n_threads = detail::default_num_threads();
        r.pool = std::make_shared<ThreadPool>(r.n_threads);
    }
    return r.pool;
}

// ---- the process-wide I/O pool of the direct read path -------------------------------------
// Workers that block in pread/preadv, so there are more of them than CPUs (the queue depth) and
// they never spin. Created on first use with queue_depth threads, re-created when a call asks for
// another depth, and after fork(), like global_pool().
inline std::shared_ptr<ThreadPool> io_pool(int queue_depth) {
    static detail::PoolRegistry* r = [] {
        auto* reg = new detail::PoolRegistry();
        static detail::PoolRegistry* self = reg;
        ::pthread_atfork([] { self->mu.lock(); }, [] { self->mu.unlock(); }, [] { self->mu.unlock(); });
        return reg;
    }();
    std::shared_ptr<ThreadPool> old;
    std::shared_ptr<ThreadPool> pool;
    {
        std::lock_guard<std::mutex> lk(r->mu);
        if (r->pool && r->pool->pid() != ::getpid()) detail::leak(std::move(r->pool));
        if (r->pool && r->n_threads != queue_depth) old = std::move(r->pool);
        if (!r->pool) {
            r->pool = std::make_shared<ThreadPool>(queue_depth, std::chrono::microseconds(0));
            r->n_threads = queue_depth;
        }
        pool = r->pool;
    }
    old.reset();  // joins the old workers outside the lock, unless a caller still holds it
    return pool;
}

}  // namespace featstore
