// MappedFile implementation: open/fstat/mmap/madvise/munmap with errors as C++ exceptions.
#include "mapped_file.h"

#include <cerrno>
#include <cstring>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace featstore {

namespace {
std::uint8_t g_empty[1];  // data() of a 0-byte file: valid pointer, never read or written

[[noreturn]] void throw_errno(int err, const std::string& path) {
    throw SystemError(err, std::strerror(err), path);
}
}  // namespace

MappedFile::MappedFile(const std::string& path) : path_(path) {
    int fd;
    do {
        fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) throw_errno(errno, path);

    struct stat st;
    if (::fstat(fd, &st) != 0) {
        int err = errno;
        ::close(fd);
        throw_errno(err, path);
    }
    if (S_ISDIR(st.st_mode)) {
        ::close(fd);
        throw_errno(EISDIR, path);
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ == 0) {
        data_ = g_empty;
    } else {
        // MAP_PRIVATE + PROT_WRITE: writes through a view copy the page and never reach the file.
        // MAP_NORESERVE: don't charge the whole file against swap/commit for pages never written.
        void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
        if (p == MAP_FAILED) {
            int err = errno;
            ::close(fd);
            throw_errno(err, path);
        }
        data_ = static_cast<std::uint8_t*>(p);
        mapped_ = true;
    }
    ::close(fd);  // the mapping holds its own reference to the file
}

MappedFile::~MappedFile() {
    if (mapped_) ::munmap(data_, size_);
}

void MappedFile::advise(std::int64_t offset, std::int64_t length, const std::string& advice) {
    int adv;
    if (advice == "normal") adv = MADV_NORMAL;
    else if (advice == "random") adv = MADV_RANDOM;
    else if (advice == "sequential") adv = MADV_SEQUENTIAL;
    else if (advice == "willneed") adv = MADV_WILLNEED;
    else if (advice == "dontneed") adv = MADV_DONTNEED;
    else
        throw std::invalid_argument("unknown advice '" + advice +
                                    "', expected one of normal, random, sequential, willneed, dontneed");
    check_range(offset, length, "advise");
    if (!mapped_ || length == 0) return;
    static const std::int64_t page = ::sysconf(_SC_PAGESIZE);
    const std::int64_t start = offset / page * page;
    if (::madvise(data_ + start, static_cast<std::size_t>(offset + length - start), adv) != 0)
        throw_errno(errno, path_);
}

void MappedFile::check_range(std::int64_t offset, std::int64_t length, const char* what) const {
    const auto size = static_cast<std::int64_t>(size_);
    if (offset < 0 || length < 0 || offset > size || length > size - offset)
        throw std::invalid_argument(std::string(what) + " range offset=" + std::to_string(offset) + " length=" +
                                    std::to_string(length) + " is outside the file of " +
                                    std::to_string(size) + " bytes");
}

std::size_t MappedFile::resident_pages(std::int64_t offset, std::int64_t length) const {
    check_range(offset, length, "resident_pages");
    if (!mapped_ || length == 0) return 0;
    static const std::int64_t page = ::sysconf(_SC_PAGESIZE);
    const std::int64_t start = offset / page * page;
    const auto bytes = static_cast<std::size_t>(offset + length - start);
    std::vector<unsigned char> vec((bytes + page - 1) / page);
    if (::mincore(data_ + start, bytes, vec.data()) != 0) throw_errno(errno, path_);
    std::size_t resident = 0;
    for (const unsigned char v : vec) resident += v & 1;
    return resident;
}

}  // namespace featstore
