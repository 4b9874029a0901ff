// Torture test for torn and mixed reads, per fix strategy: the server changes
// a handful of files every few milliseconds while readers read them through
// the mount in every way a build tool does (whole reads in small chunks, slow
// readers that keep an old version open, mmap, stat-then-read), the listing
// TTL is short so lazy fill and refresh run all the time, and a writer copies
// some files up halfway through. Every read must return exactly one version
// the file had (checked after the run against the server's mutation log), no
// read may fail, and the attributes read with a file must match its bytes.
#include <sys/mman.h>

#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <random>

#include "common/oid.h"
#include "fs/remote/http_client.h"
#include "fs/tests/e2e_util.h"

namespace antares::e2e {
namespace {

struct Read {
  std::string path;  // repository path
  std::string how;
  Oid oid;
  size_t size = 0;
  std::string head;  // first bytes, for the failure message
};

class TornReads : public ::testing::TestWithParam<std::string> {
 protected:
  TempDir dir_;
  MegaProcess mega_{dir_, MegaOptions{11, 400, 1, {}}};
};

// The larger lower-only source files (multi-page: a mixed read shows).
std::vector<std::string> pick_files(MegaProcess& mega, size_t n) {
  auto candidates = lower_only_files(mega, 16);
  std::vector<std::pair<size_t, std::string>> sized;
  for (auto& p : candidates) sized.emplace_back(server_content(mega, p).size(), p);
  std::sort(sized.rbegin(), sized.rend());
  std::vector<std::string> out;
  for (size_t i = 0; i < n && i < sized.size(); ++i) out.push_back(sized[i].second);
  return out;
}

TEST_P(TornReads, EveryReadIsOneVersionTheFileHad) {
  const auto files = pick_files(mega_, 6);
  std::map<std::string, std::set<std::string>> versions;  // path -> oids (hex)
  for (auto& f : files) versions[f].insert(oid_of(mega_, f));
  MountOptions o = strategy_mount(GetParam());
  o.ttl = "20ms";
  Mount m(dir_, mega_.url(), o);
  ASSERT_TRUE(m.ok()) << m.log();

  std::atomic<bool> stop{false};
  std::mutex mu;
  std::vector<Read> reads;
  std::vector<std::string> failures;
  auto record = [&](Read r) {
    std::lock_guard l(mu);
    reads.push_back(std::move(r));
  };
  auto fail = [&](const std::string& what) {
    std::lock_guard l(mu);
    if (failures.size() < 20) failures.push_back(what);
  };
  auto mnt = [&](const std::string& p) { return m.path(rel(p)); };

  // Server changes, as fast as the admin API answers.
  std::atomic<int> mutations{0};
  std::thread mutator([&] {
    remote::CurlHttpClient http;
    std::mt19937 rng(1);
    while (!stop) {
      const std::string& f = files[rng() % files.size()];
      remote::HttpRequest req;
      req.method = "POST";
      req.url = mega_.url() + "/admin/mutate";
      req.body = json{{"mutations", json::array({{{"kind", "modify"}, {"path", f}}})}}.dump();
      auto r = http.perform(req);
      if (!r.ok() || r->status != 200) {
        fail("mutate " + f + ": " + (r.ok() ? std::to_string(r->status) : r.error().describe()));
        continue;
      }
      auto j = json::parse(r->body, nullptr, false);
      if (j.is_discarded() || !j.contains("applied")) continue;
      std::lock_guard l(mu);
      for (auto& e : j["applied"])
        if (e.contains("new_oid") && e["new_oid"].is_string()) versions[f].insert(e["new_oid"].get<std::string>());
      mutations++;
      std::this_thread::sleep_for(std::chrono::milliseconds(3));
    }
  });

  // Whole reads in 4 KiB chunks; every few reads, slowly (an old version kept open).
  auto chunk_reader = [&](int seed, bool slow) {
    std::mt19937 rng(seed);
    while (!stop) {
      const std::string& f = files[rng() % files.size()];
      int fd = ::open(mnt(f).c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        fail("open " + f + ": " + std::strerror(errno));
        continue;
      }
      std::string data;
      char buf[4096];
      ssize_t n;
      while ((n = ::read(fd, buf, sizeof buf)) > 0) {
        data.append(buf, size_t(n));
        if (slow) std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
      if (n < 0) fail("read " + f + ": " + std::strerror(errno));
      struct stat st {};
      if (::fstat(fd, &st) != 0) fail("fstat " + f + ": " + std::strerror(errno));
      else if (n == 0 && size_t(st.st_size) != data.size())
        fail("fstat " + f + ": size " + std::to_string(st.st_size) + " but read " + std::to_string(data.size()));
      ::close(fd);
      if (n == 0) record({f, slow ? "slow" : "chunks", git_blob_oid(data), data.size(), data.substr(0, 40)});
    }
  };
  auto mmap_reader = [&](int seed) {
    std::mt19937 rng(seed);
    while (!stop) {
      const std::string& f = files[rng() % files.size()];
      int fd = ::open(mnt(f).c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        fail("open " + f + ": " + std::strerror(errno));
        continue;
      }
      struct stat st {};
      if (::fstat(fd, &st) != 0 || st.st_size == 0) {
        fail("fstat " + f + ": " + std::strerror(errno));
        ::close(fd);
        continue;
      }
      void* p = ::mmap(nullptr, size_t(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
      if (p == MAP_FAILED) {
        fail("mmap " + f + ": " + std::strerror(errno));
      } else {
        std::string data(static_cast<const char*>(p), size_t(st.st_size));
        ::munmap(p, size_t(st.st_size));
        record({f, "mmap", git_blob_oid(data), data.size(), data.substr(0, 40)});
      }
      ::close(fd);
    }
  };
  std::vector<std::thread> readers;
  readers.emplace_back(chunk_reader, 11, false);
  readers.emplace_back(chunk_reader, 12, false);
  readers.emplace_back(chunk_reader, 13, true);
  readers.emplace_back(chunk_reader, 14, true);
  readers.emplace_back(mmap_reader, 15);

  // Halfway through, two files are copied up (opened for writing): from then
  // on they hold the version they had, and reads must agree.
  std::this_thread::sleep_for(std::chrono::seconds(3));
  for (size_t i = 0; i < 2; ++i) {
    int fd = ::open(mnt(files[i]).c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) fail("copy-up " + files[i] + ": " + std::strerror(errno));
    else ::close(fd);
  }
  std::this_thread::sleep_for(std::chrono::seconds(3));
  stop = true;
  mutator.join();
  for (auto& t : readers) t.join();

  EXPECT_TRUE(failures.empty()) << failures.size() << " failures, first: " << failures.front() << "\n" << m.log();
  ASSERT_GT(mutations.load(), 50) << "the server must change the files while they are read";
  ASSERT_GT(reads.size(), 200u);
  size_t wrong = 0;
  std::set<std::pair<std::string, std::string>> seen;  // (path, oid): proof that changes were read
  for (auto& r : reads) {
    seen.insert({r.path, r.oid.hex()});
    if (versions[r.path].count(r.oid.hex())) continue;
    if (++wrong <= 5)
      ADD_FAILURE() << "a " << r.how << " read of " << r.path << " matches no version it had: " << r.size
                    << " bytes, oid " << r.oid.hex() << ", starting \"" << r.head << "\"";
  }
  EXPECT_EQ(wrong, 0u) << "of " << reads.size() << " reads";
  EXPECT_GT(seen.size(), files.size() * 3) << "reads must have met several versions of each file";
}

INSTANTIATE_TEST_SUITE_P(Strategies, TornReads, ::testing::Values("A", "B", "C", "auto", "auto_kernel_opens"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace antares::e2e
