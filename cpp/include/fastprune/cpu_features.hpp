// CPU feature detection for choosing which compiled copy of the core to load.
//
// A feature counts as usable only when the CPU reports it (cpuid) AND the operating system
// saves the registers it needs across context switches (xgetbv): AVX needs the XMM and YMM
// state enabled in XCR0, AVX-512 additionally the opmask and ZMM state.
#pragma once

#include <string>
#include <vector>

namespace fastprune::cpu {

struct Level {
  std::string name;        // "baseline", "avx2" or "avx512"
  bool supported = false;  // the CPU and the OS both allow it
  std::string reason;      // why not, when not supported; what was found when supported
};

// Every instruction-set level fastprune knows, best first.
std::vector<Level> detect_levels();

// The CPU's brand string, or "" when cpuid does not report one.
std::string brand();

}  // namespace fastprune::cpu
