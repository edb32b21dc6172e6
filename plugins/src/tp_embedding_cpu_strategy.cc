// The CPU kernel's copy strategy, decided once per process, and the two C functions the library
// exports besides RegisterCustomOps for `graphbuild bench` (read through ctypes): the strategy as
// JSON, and plain copies of each kind for its copy ceiling.
//
// What is decided, and from what:
// - The vector width of the vector copies: the widest the CPU has (cpuid), capped by
//   GRAPHBUILD_CPU_ISA=sse2|avx|avx512.
// - How far ahead rows are prefetched: the L1 data cache's size (32 KiB when unknown).
// - Outputs smaller than `large_min_bytes` are copied row by row with memcpy: they stay in the last
//   level cache for the next op, and glibc's memcpy (`rep movsb` with ERMS/FSRM) is the fastest
//   copy of a cache-resident row. `large_min_bytes` is 3/4 of the L3 cache one core sees (from
//   /sys, which is right where sysconf is not: glibc 2.36 reports ten times the L3 on AMD EPYC),
//   at most 24 MiB, the size from which streaming won on the Intel Xeon development VM.
// - Larger outputs use whichever of the five row copies (memcpy, streaming lockstep,
//   ordinary-store lockstep, and both lockstep copies with the next group prefetched into L2) was
//   fastest in a calibration run once per process, when the first TPEmbedding kernel is created:
//   a gather of random 8 KiB rows of a table three times the L3 cache (so that they come from
//   memory, as a real table's do; at least twice the output, at most 256 MiB) into an output of
//   twice `large_min_bytes`, each copy run over the whole output three times in turn, one 1 MiB
//   segment at a time, and each segment's best time counted (so that a busy machine's preemptions
//   do not decide it); a copy later in that order replaces an earlier one only when at least 3%
//   faster. Whether non-temporal stores pay differs between CPU families and even between virtual
//   machines of one family, and so does what prefetching into L2 gains, so both are measured
//   rather than assumed. It takes 55-335 ms on the AMD EPYC, most of it faulting in the two buffers.
// - The lockstep copies of large outputs use the widest vectors too, except on AMD Zen 4 (family
//   0x19 with AVX-512F), which splits a 64-byte store in two: there they use 32-byte vectors.
// - GRAPHBUILD_CPU_STRATEGY=memcpy|stream|lockstep|stream-prefetch|lockstep-prefetch forces one
//   row copy for every output size (the tests use it to run each copy); `auto` or unset decides
//   as above.
#include "tp_embedding_cpu_strategy.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <new>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace graphbuild::plugins {
namespace {

constexpr size_t kMiB = size_t{1} << 20;
constexpr size_t kMaxLargeMinBytes = 24 * kMiB;
// The calibration's table: three times the L3 cache (at least twice its output), at most this.
constexpr size_t kMaxCalibrationTableBytes = 256 * kMiB;
constexpr size_t kCalibrationRowBytes = 8192;
constexpr size_t kCalibrationSegmentBytes = kMiB;
constexpr int kCalibrationRounds = 3;
// A copy other than memcpy is chosen only when it is at least this much faster than every copy
// before it in RowCopy order, so that copies equally fast do not trade places from run to run.
constexpr double kCalibrationMargin = 0.97;
constexpr const char* kRowCopyNames[kNumRowCopies] = {"memcpy", "stream", "lockstep", "stream-prefetch",
                                                     "lockstep-prefetch"};

const char* RowCopyName(RowCopy copy) { return kRowCopyNames[static_cast<int>(copy)]; }

const char* IsaName(size_t vector_bytes) {
  return vector_bytes == 64 ? "avx512" : vector_bytes == 32 ? "avx" : vector_bytes == 16 ? "sse2" : "none";
}

// What the CPU is: cpuid's vendor and brand strings, and cache sizes (0 when unknown).
struct CpuFacts {
  std::string vendor = "unknown";
  std::string model = "unknown";
  unsigned family = 0;  // cpuid's display family (base plus extended).
  size_t l1d_bytes = 0;
  size_t l3_bytes = 0;
  std::string l3_from = "unknown";
};

std::string Trim(std::string text) {
  const size_t first = text.find_first_not_of(" \t\n");
  if (first == std::string::npos) return "";
  return text.substr(first, text.find_last_not_of(" \t\n") - first + 1);
}

std::string ReadLine(const std::string& path) {
  std::ifstream file(path);
  std::string line;
  std::getline(file, line);
  return Trim(line);
}

// "32768K" (as /sys writes cache sizes) in bytes; 0 when unreadable.
size_t ParseSize(const std::string& text) {
  char* end = nullptr;
  const unsigned long long value = std::strtoull(text.c_str(), &end, 10);
  if (end == text.c_str()) return 0;
  const char unit = *end;
  return static_cast<size_t>(value) * (unit == 'K' ? 1024 : unit == 'M' ? kMiB : 1);
}

// The size of the cache of `level` (and `type`: Data or Unified) that cpu0 uses, from /sys.
size_t SysCacheBytes(int level, const char* type) {
  for (int index = 0; index < 8; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
    const std::string found_level = ReadLine(dir + "level");
    if (found_level.empty()) break;
    if (found_level == std::to_string(level) && ReadLine(dir + "type") == type) {
      return ParseSize(ReadLine(dir + "size"));
    }
  }
  return 0;
}

CpuFacts ReadCpuFacts() {
  CpuFacts facts;
#if defined(__x86_64__) || defined(__i386__)
  unsigned regs[4] = {0, 0, 0, 0};
  if (__get_cpuid(0, &regs[0], &regs[1], &regs[2], &regs[3])) {
    char vendor[13];
    std::memcpy(vendor, &regs[1], 4);
    std::memcpy(vendor + 4, &regs[3], 4);
    std::memcpy(vendor + 8, &regs[2], 4);
    vendor[12] = '\0';
    facts.vendor = vendor;
  }
  if (__get_cpuid(1, &regs[0], &regs[1], &regs[2], &regs[3])) {
    const unsigned base = (regs[0] >> 8) & 0xF;
    facts.family = base == 0xF ? base + ((regs[0] >> 20) & 0xFF) : base;
  }
  char brand[49] = {0};
  if (__get_cpuid_max(0x80000000, nullptr) >= 0x80000004) {
    for (unsigned leaf = 0; leaf < 3; ++leaf) {
      __get_cpuid(0x80000002 + leaf, &regs[0], &regs[1], &regs[2], &regs[3]);
      std::memcpy(brand + 16 * leaf, regs, 16);
    }
    facts.model = Trim(brand);
  }
#endif
  facts.l1d_bytes = SysCacheBytes(1, "Data");
  facts.l3_bytes = SysCacheBytes(3, "Unified");
  if (facts.l3_bytes > 0) {
    facts.l3_from = "/sys";
  } else {
#if defined(_SC_LEVEL3_CACHE_SIZE)
    const long value = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (value > 0) {
      facts.l3_bytes = static_cast<size_t>(value);
      facts.l3_from = "sysconf";
    }
#endif
  }
#if defined(_SC_LEVEL1_DCACHE_SIZE)
  if (facts.l1d_bytes == 0) {
    const long value = sysconf(_SC_LEVEL1_DCACHE_SIZE);
    if (value > 0) facts.l1d_bytes = static_cast<size_t>(value);
  }
#endif
  return facts;
}

// The vector width: the widest the CPU and build have, capped by GRAPHBUILD_CPU_ISA.
size_t ChooseVectorBytes(std::string* error) {
  const size_t widest = WidestVectorBytes();
  const char* requested = std::getenv("GRAPHBUILD_CPU_ISA");
  if (requested == nullptr || *requested == '\0') return widest;
  const std::string name(requested);
  const size_t asked = name == "sse2" ? 16 : name == "avx" ? 32 : name == "avx512" ? 64 : 0;
  if (asked == 0) {
    *error = "GRAPHBUILD_CPU_ISA must be 'sse2', 'avx', 'avx512' or unset, got '" + name + "'";
  } else if (asked > widest) {
    *error = "GRAPHBUILD_CPU_ISA=" + name +
             ", but this CPU (or this build of the library) has no " + name + " copy";
  }
  return asked;
}

// The lockstep copies' vector width for large outputs: `vector_bytes`, except 32 on AMD family
// 0x19 with AVX-512F (Zen 4), which executes a 64-byte store as two 32-byte halves: there the
// streaming lockstep with next-group prefetch moved random 8-16 KiB rows 2-5% faster in 32-byte
// vectors, and a contiguous streaming copy 6-10% faster.
size_t LargeVectorBytes(const CpuFacts& facts, size_t vector_bytes) {
  const bool zen4 = facts.vendor == "AuthenticAMD" && facts.family == 0x19;
  return zen4 && vector_bytes == 64 ? 32 : vector_bytes;
}

// GRAPHBUILD_CPU_STRATEGY: the forced row copy, or -1 for auto.
int ForcedRowCopy(size_t vector_bytes, std::string* error) {
  const char* requested = std::getenv("GRAPHBUILD_CPU_STRATEGY");
  if (requested == nullptr || *requested == '\0' || std::string(requested) == "auto") return -1;
  const std::string name(requested);
  for (int copy = 0; copy < kNumRowCopies; ++copy) {
    if (name != kRowCopyNames[copy]) continue;
    if (copy != static_cast<int>(RowCopy::kMemcpy) && vector_bytes < 16) {
      *error = "GRAPHBUILD_CPU_STRATEGY=" + name + ", but this build has no vector copies";
    }
    return copy;
  }
  *error = "GRAPHBUILD_CPU_STRATEGY must be 'auto', 'memcpy', 'stream', 'lockstep', "
           "'stream-prefetch', 'lockstep-prefetch' or unset, got '" + name + "'";
  return -1;
}

// Best wall time (ms) of each row copy over a synthetic gather of `out_bytes`.
struct Calibration {
  double ms[kNumRowCopies] = {};
  double setup_ms = 0;  // Of total_ms: allocating and filling the buffers.
  double total_ms = 0;
  size_t bytes = 0;        // The output's.
  size_t table_bytes = 0;  // The table's.
};

// Anonymous memory for the calibration, in transparent huge pages where the kernel allows them
// (faulting 100 MiB in 4 KiB pages would take longer than the timing itself).
class Scratch {
 public:
  explicit Scratch(size_t bytes) : bytes_(bytes) {
    void* mapped = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mapped == MAP_FAILED) throw std::bad_alloc();
    data_ = static_cast<unsigned char*>(mapped);
#if defined(MADV_HUGEPAGE)
    madvise(mapped, bytes, MADV_HUGEPAGE);
#endif
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { munmap(data_, bytes_); }
  unsigned char* data() const { return data_; }

 private:
  size_t bytes_;
  unsigned char* data_;
};

// A gather of `out_bytes` from a table of `table_bytes` (more than the L3 cache holds, so that the
// rows come from memory as a real table's do).
Calibration Calibrate(size_t out_bytes, size_t table_bytes, size_t vector_bytes, size_t prefetch_bytes) {
  using Clock = std::chrono::steady_clock;
  const auto started = Clock::now();
  Calibration result;
  const size_t rows = std::max<size_t>(kRowsInFlight, out_bytes / kCalibrationRowBytes);
  const size_t table_rows = std::max(rows, table_bytes / kCalibrationRowBytes);
  result.bytes = rows * kCalibrationRowBytes;
  result.table_bytes = table_rows * kCalibrationRowBytes;
  // Table and output (page aligned), written once so that no page faults are timed.
  Scratch table(result.table_bytes);
  Scratch out(result.bytes);
  std::memset(table.data(), 0x5A, result.table_bytes);
  std::memset(out.data(), 0, result.bytes);
  std::vector<int64_t> ids(rows);
  uint64_t state = 0x9E3779B97F4A7C15ull;  // A fixed LCG: the same ids every process.
  for (int64_t& id : ids) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    id = static_cast<int64_t>((state >> 33) % table_rows);
  }
  CopyJob job;
  job.ids = ids.data();
  job.table = table.data();
  job.out = out.data();
  job.num_ids = static_cast<int64_t>(rows);
  job.rows = job.vocab_size = static_cast<int64_t>(table_rows);
  job.row_bytes = kCalibrationRowBytes;
  job.prefetch_bytes = prefetch_bytes;
  result.setup_ms = std::chrono::duration<double, std::milli>(Clock::now() - started).count();
  // Each copy runs over the whole output in every round, one 1 MiB segment (as the kernel's tasks)
  // at a time; each segment's best time over the rounds counts. A segment takes a fraction of a
  // millisecond, so on a busy machine most run without being preempted at least once.
  const int64_t segment_rows = static_cast<int64_t>(kCalibrationSegmentBytes / kCalibrationRowBytes);
  const size_t segments = (rows + segment_rows - 1) / segment_rows;
  std::vector<double> best(kNumRowCopies * segments, 1e300);
  for (int round = 0; round < kCalibrationRounds; ++round) {
    for (int c = 0; c < kNumRowCopies; ++c) {
      SetRowCopy(&job, static_cast<RowCopy>(c), vector_bytes);
      for (size_t segment = 0; segment < segments; ++segment) {
        const int64_t begin = static_cast<int64_t>(segment) * segment_rows;
        const auto start = Clock::now();
        RunRange(job, begin, std::min<int64_t>(job.num_ids, begin + segment_rows));
        const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
        double& kept = best[c * segments + segment];
        kept = std::min(kept, ms);
      }
    }
  }
  for (int c = 0; c < kNumRowCopies; ++c) {
    for (size_t segment = 0; segment < segments; ++segment) result.ms[c] += best[c * segments + segment];
  }
  result.total_ms = std::chrono::duration<double, std::milli>(Clock::now() - started).count();
  return result;
}

std::string JsonString(const std::string& text) {
  std::string quoted = "\"";
  for (const char ch : text) {
    if (ch == '"' || ch == '\\') quoted += '\\';
    if (static_cast<unsigned char>(ch) >= 0x20) quoted += ch;
  }
  return quoted + "\"";
}

std::string Fixed(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.3f", value);
  return text;
}

CpuStrategy Decide() {
  CpuStrategy strategy;
  const CpuFacts facts = ReadCpuFacts();
  strategy.vector_bytes = ChooseVectorBytes(&strategy.error);
  strategy.large_vector_bytes = LargeVectorBytes(facts, strategy.vector_bytes);
  std::string forced_error;
  const int forced = ForcedRowCopy(strategy.vector_bytes, &forced_error);
  if (strategy.error.empty()) strategy.error = forced_error;
  strategy.prefetch_bytes = std::clamp<size_t>(facts.l1d_bytes, 16 * 1024, 64 * 1024);
  if (facts.l1d_bytes == 0) strategy.prefetch_bytes = 32 * 1024;
  strategy.large_min_bytes = facts.l3_bytes > 0
                                 ? std::clamp<size_t>(facts.l3_bytes / 4 * 3, kMiB, kMaxLargeMinBytes)
                                 : kMaxLargeMinBytes;
  std::string chosen_by;
  Calibration calibration;
  if (!strategy.error.empty()) {
    chosen_by = "error";
  } else if (forced >= 0) {
    strategy.small = strategy.large = static_cast<RowCopy>(forced);
    strategy.large_min_bytes = 0;
    chosen_by = "GRAPHBUILD_CPU_STRATEGY";
  } else if (strategy.vector_bytes < 16) {
    chosen_by = "no vector copies in this build";
  } else {
    const size_t out_bytes = 2 * strategy.large_min_bytes;
    const size_t table_bytes = std::min(kMaxCalibrationTableBytes, std::max(2 * out_bytes, 3 * facts.l3_bytes));
    calibration = Calibrate(out_bytes, table_bytes, strategy.large_vector_bytes,
                            strategy.prefetch_bytes);
    int best = 0;
    for (int c = 1; c < kNumRowCopies; ++c) {
      if (calibration.ms[c] < kCalibrationMargin * calibration.ms[best]) best = c;
    }
    strategy.large = static_cast<RowCopy>(best);
    chosen_by = "calibration";
  }
  std::string json = "{\"vendor\": " + JsonString(facts.vendor) +
                     ", \"cpu\": " + JsonString(facts.model) +
                     ", \"isa\": " + JsonString(IsaName(strategy.vector_bytes)) +
                     ", \"vector_bytes\": " + std::to_string(strategy.vector_bytes) +
                     ", \"l1d_bytes\": " + std::to_string(facts.l1d_bytes) +
                     ", \"l3_bytes\": " + std::to_string(facts.l3_bytes) +
                     ", \"l3_from\": " + JsonString(facts.l3_from) +
                     ", \"prefetch_bytes\": " + std::to_string(strategy.prefetch_bytes) +
                     ", \"large_min_bytes\": " + std::to_string(strategy.large_min_bytes) +
                     ", \"small\": " + JsonString(RowCopyName(strategy.small)) +
                     ", \"family\": " + std::to_string(facts.family) +
                     ", \"large\": " + JsonString(RowCopyName(strategy.large)) +
                     ", \"large_vector_bytes\": " + std::to_string(strategy.large_vector_bytes) +
                     ", \"chosen_by\": " + JsonString(chosen_by) +
                     ", \"error\": " + JsonString(strategy.error);
  if (calibration.bytes > 0) {
    json += ", \"calibration\": {\"bytes\": " + std::to_string(calibration.bytes) +
            ", \"table_bytes\": " + std::to_string(calibration.table_bytes) +
            ", \"total_ms\": " + Fixed(calibration.total_ms) +
            ", \"setup_ms\": " + Fixed(calibration.setup_ms);
    for (int c = 0; c < kNumRowCopies; ++c) {
      json += ", " + JsonString(std::string(kRowCopyNames[c]) + "_ms") + ": " + Fixed(calibration.ms[c]);
    }
    json += "}";
  }
  strategy.description = json + "}";
  return strategy;
}

}  // namespace

const CpuStrategy& Strategy() {
  static const CpuStrategy strategy = Decide();
  return strategy;
}

}  // namespace graphbuild::plugins

// Writes the strategy's JSON description into `buffer` (NUL-terminated, cut to `size`; the
// strategy is decided first if no kernel did yet) and returns its full length.
extern "C" __attribute__((visibility("default"))) size_t GraphBuildCpuStrategy(char* buffer,
                                                                                size_t size) {
  try {
    const std::string& text = graphbuild::plugins::Strategy().description;
    if (buffer != nullptr && size > 0) {
      const size_t count = std::min(size - 1, text.size());
      std::memcpy(buffer, text.data(), count);
      buffer[count] = '\0';
    }
    return text.size();
  } catch (...) {
    return 0;
  }
}

// Copies `bytes` from `src` to `dst` (not overlapping) by `method`: 0 memcpy, 1 streaming stores,
// 2 ordinary vector stores (the prefetching row copies have no contiguous form), with vectors of
// `vector_bytes` (16, 32 or 64; 0 for the strategy's width), no wider than the strategy's. Returns
// 0, or -1 for an unknown method or width, or one this build or environment cannot do.
extern "C" __attribute__((visibility("default"))) int GraphBuildCopyBytes(void* dst,
                                                                         const void* src,
                                                                         size_t bytes, int method,
                                                                         size_t vector_bytes) {
  using graphbuild::plugins::RowCopy;
  try {
    const auto& strategy = graphbuild::plugins::Strategy();
    if (method < 0 || method > static_cast<int>(RowCopy::kLockstep)) return -1;
    if (method != 0 && (strategy.vector_bytes < 16 || !strategy.error.empty())) return -1;
    const size_t width = vector_bytes == 0 ? strategy.vector_bytes : vector_bytes;
    if (width != 16 && width != 32 && width != 64) return -1;
    if (method != 0 && width > strategy.vector_bytes) return -1;
    graphbuild::plugins::CopyBytes(dst, src, bytes, static_cast<RowCopy>(method), width);
    return 0;
  } catch (...) {
    return -1;
  }
}
