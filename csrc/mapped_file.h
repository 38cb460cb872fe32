// MappedFile: a whole file mapped copy-on-write (MAP_PRIVATE, PROT_READ|PROT_WRITE); pure C++, no Python.
// Never register this mapping with CUDA: a long-term pin (FOLL_LONGTERM) of a copy-on-write mapping
// makes Linux >= 6.2 unshare every page into anonymous memory first. featstore.batches.cuda maps
// the file again, MAP_SHARED and PROT_READ, and registers that one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace featstore {

// A failed system call on a path; module.cpp turns it into OSError(errno, strerror, path).
class SystemError : public std::runtime_error {
public:
    SystemError(int err, const std::string& what, const std::string& path)
        : std::runtime_error(what), err_(err), path_(path) {}
    int err() const noexcept { return err_; }
    const std::string& path() const noexcept { return path_; }

private:
    int err_;
    std::string path_;
};

class MappedFile {
public:
    // Opens O_RDONLY|O_CLOEXEC, mmaps the whole file; the fd is closed once mapped.
    // A 0-byte file gives size()==0 and a non-null data() pointer to an empty buffer (no mmap).
    explicit MappedFile(const std::string& path);
    ~MappedFile();  // the only place the mapping is released
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    const std::string& path() const noexcept { return path_; }
    std::size_t size() const noexcept { return size_; }
    std::uint8_t* data() const noexcept { return data_; }

    // madvise on [offset, offset+length), offset rounded down to the page. Throws
    // std::invalid_argument for an unknown advice or a range outside the file, SystemError if
    // madvise fails. "dontneed" drops this mapping's private (copied-on-write) pages.
    void advise(std::int64_t offset, std::int64_t length, const std::string& advice);

    // How many pages of [offset, offset+length) (offset rounded down to the page) are in memory now,
    // by mincore(2): the file's pages in the page cache, or this mapping's private copies. Same range
    // rules and errors as advise. Python samples a big file with it (featstore.store.memory).
    std::size_t resident_pages(std::int64_t offset, std::int64_t length) const;

private:
    void check_range(std::int64_t offset, std::int64_t length, const char* what) const;

    std::string path_;
    std::size_t size_ = 0;
    std::uint8_t* data_ = nullptr;
    bool mapped_ = false;
};

}  // namespace featstore
