#include "fastprune/cpu_features.hpp"

#include <array>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#define FASTPRUNE_X86 1
#include <cpuid.h>
#endif

namespace fastprune::cpu {
namespace {

#ifdef FASTPRUNE_X86
struct Regs {
  std::uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
};

Regs cpuid(std::uint32_t leaf, std::uint32_t subleaf) {
  Regs r;
  __cpuid_count(leaf, subleaf, r.eax, r.ebx, r.ecx, r.edx);
  return r;
}

std::uint64_t xgetbv0() {
  std::uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<std::uint64_t>(hi) << 32) | lo;
}

bool bit(std::uint32_t reg, int b) { return ((reg >> b) & 1u) != 0; }

struct Feature {
  bool present;
  const char* name;
};

// `missing` followed by the names of the absent features, comma-separated.
std::string absent(std::string missing, std::initializer_list<Feature> features) {
  for (const Feature& f : features) {
    if (f.present) continue;
    if (!missing.empty()) missing += ", ";
    missing += f.name;
  }
  return missing;
}

// A level is supported when nothing it needs is missing; `reason` says why it is.
void settle(Level& level, const std::string& missing, const char* reason) {
  level.supported = missing.empty();
  level.reason = missing.empty() ? std::string(reason) : "missing " + missing;
}
#endif

}  // namespace

std::vector<Level> detect_levels() {
  std::vector<Level> levels{{"avx512", false, ""}, {"avx2", false, ""}, {"baseline", true, ""}};
#ifdef FASTPRUNE_X86
  levels[2].reason = "x86-64 with SSE2, always available";
  const std::uint32_t max_leaf = cpuid(0, 0).eax;
  const Regs l1 = cpuid(1, 0);
  const Regs l7 = max_leaf >= 7 ? cpuid(7, 0) : Regs{};
  const Regs e1 = cpuid(0x80000001u, 0);

  const bool osxsave = bit(l1.ecx, 27);
  const std::uint64_t xcr0 = osxsave ? xgetbv0() : 0;
  const bool os_ymm = (xcr0 & 0x6) == 0x6;    // XMM | YMM state
  const bool os_zmm = (xcr0 & 0xe6) == 0xe6;  // + opmask, ZMM_Hi256, Hi16_ZMM

  const std::string missing2 = absent("", {{bit(l1.ecx, 28), "AVX"},
                                           {bit(l7.ebx, 5), "AVX2"},
                                           {bit(l1.ecx, 12), "FMA"},
                                           {bit(l1.ecx, 29), "F16C"},
                                           {bit(l7.ebx, 3), "BMI1"},
                                           {bit(l7.ebx, 8), "BMI2"},
                                           {bit(e1.ecx, 5), "LZCNT"},
                                           {bit(l1.ecx, 22), "MOVBE"},
                                           {osxsave, "OSXSAVE"},
                                           {os_ymm, "OS support for YMM state (XCR0)"}});
  settle(levels[1], missing2,
         "CPU has AVX2, FMA, F16C, BMI1/2, LZCNT, MOVBE and the OS saves YMM state");
  const std::string missing512 =
      absent(missing2, {{bit(l7.ebx, 16), "AVX512F"},
                        {bit(l7.ebx, 17), "AVX512DQ"},
                        {bit(l7.ebx, 28), "AVX512CD"},
                        {bit(l7.ebx, 30), "AVX512BW"},
                        {bit(l7.ebx, 31), "AVX512VL"},
                        {os_zmm, "OS support for ZMM and opmask state (XCR0)"}});
  settle(levels[0], missing512, "CPU has AVX-512 F/CD/BW/DQ/VL and the OS saves ZMM state");
#else
  levels[0].reason = "not an x86-64 CPU";
  levels[1].reason = "not an x86-64 CPU";
  levels[2].reason = "portable build";
#endif
  return levels;
}

std::string brand() {
#ifdef FASTPRUNE_X86
  if (cpuid(0x80000000u, 0).eax < 0x80000004u) return "";
  std::array<char, 49> text{};
  for (std::uint32_t i = 0; i < 3; ++i) {
    const Regs r = cpuid(0x80000002u + i, 0);
    std::memcpy(text.data() + 16 * i, &r, 16);
  }
  std::string s(text.data());
  const auto first = s.find_first_not_of(' ');
  return first == std::string::npos ? "" : s.substr(first);
#else
  return "";
#endif
}

}  // namespace fastprune::cpu
