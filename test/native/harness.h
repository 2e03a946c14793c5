// Table-driven op tests in the style of llama.cpp's test-backend-ops: every case runs on every backend present
// (cpu-scalar, cpu-avx2, cpu-avx512, cpu-avx512bf16, cuda) and is checked against a reference computed in the
// test. An absent backend is reported as SKIP with its reason, never as PASS.
// Output: one line per (case, backend) `PASS|FAIL|SKIP op shape backend err=...`, then `N passed, M failed,
// K skipped`.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "core/isa.h"

namespace moe::native {

enum class BackendKind { Cpu, Cuda };

struct Backend {
  std::string name;     // "cpu-avx512", "cuda"
  BackendKind kind;
  Isa isa;              // CPU tier requested (Cpu only)
  bool available;
  std::string reason;   // why not available
  int device = 0;       // CUDA device (Cuda only)
  void* stream = nullptr;  // CUDA stream shared by all cases (Cuda only)
};

// Detects the backends once (creating the CUDA test stream when a device exists); valid until exit.
const std::vector<Backend>& backends();

enum class Status { Pass, Fail, Skip };

struct Outcome {
  Status status;
  std::string detail;  // "err=1.2e-07 tol=1e-05", or the reason of a SKIP/FAIL
  static Outcome pass(const std::string& d) { return {Status::Pass, d}; }
  static Outcome fail(const std::string& d) { return {Status::Fail, d}; }
  static Outcome skip(const std::string& d) { return {Status::Skip, d}; }
  // PASS when ok, FAIL otherwise, with the same detail.
  static Outcome check(bool ok, const std::string& d) { return {ok ? Status::Pass : Status::Fail, d}; }
};

struct Case {
  std::string op;     // "gemm"
  std::string shape;  // "m=7 n=19 k=111 ab=bf16 out=f32"
  // Runs the case on one available backend. Exceptions (moe::Error, CUDA failures) become FAIL.
  std::function<Outcome(const Backend&)> run;
  bool cuda_only = false;  // CUDA runtime checks: not listed for CPU backends (they have no such API)
};

// Case tables, one function per op family (ops_test.cc).
void add_copy_cases(std::vector<Case>& cases);
void add_convert_cases(std::vector<Case>& cases);
void add_add_cases(std::vector<Case>& cases);
void add_gemm_cases(std::vector<Case>& cases);
void add_attention_cases(std::vector<Case>& cases);  // attention_test.cc
void add_api_cases(std::vector<Case>& cases);  // argument errors on every backend, CUDA runtime wrappers
void add_moe_cases(std::vector<Case>& cases);     // router_topk, moe_align, moe_experts (moe_test.cc)
void add_moe_oai_cases(std::vector<Case>& cases);  // moe_experts with biases / swiglu-oai (moe_oai_test.cc)
void add_grouped_gemm_cases(std::vector<Case>& cases);  // grouped_gemm (grouped_gemm_test.cc)
void add_gather_cases(std::vector<Case>& cases);  // gather_rows (gather_test.cc)
void add_argmax_cases(std::vector<Case>& cases);  // argmax_rows, greedy tokens (argmax_test.cc)
void add_pack_cases(std::vector<Case>& cases);    // pack_weights, the panel64 layout (pack_test.cc)
void add_rms_norm_cases(std::vector<Case>& cases);  // rms_norm, row-broadcast add (rms_norm_test.cc)
void add_gemv_cases(std::vector<Case>& cases);  // small-m gemm, the streaming decode path (gemv_test.cc)
void add_moe_invariance_cases(std::vector<Case>& cases);  // moe_experts batch invariance (moe_invariance_test.cc)
void add_moe_parts_cases(std::vector<Case>& cases);  // moe_experts parts mode + moe_combine (moe_parts_test.cc)
void add_read_probe_cases(std::vector<Case>& cases);  // the bench's streaming-read probe (read_probe_test.cc)
void add_dot_probe_cases(std::vector<Case>& cases);   // the benches' multiply-add peak probe (dot_probe_test.cc)
void add_threadpool_cases(std::vector<Case>& cases);  // parallel_for's thread cap (threadpool_test.cc)

// Runs every case whose "op shape backend" line contains every string of `filters` (none: all) and prints the results.
// Returns the number of failures.
int run_cases(const std::vector<Case>& cases, const std::vector<std::string>& filters);

// `moe-native test [--filter SUBSTR]...` (a case runs when its line holds every SUBSTR): exit code 1 when any case failed.
int test_main(int argc, char** argv);

// `moe-native bench [--json PATH] [--cuda-only]` (bench/native/bench.cc).
int bench_main(int argc, char** argv);

// `moe-native bench-attention [--json PATH] [--quick]` (bench/native/attention_bench.cc).
int attention_bench_main(int argc, char** argv);

// `moe-native bench-gemv [--isa TIER] [--runs N] [--json PATH]` (bench/native/gemv_bench.cc).
int gemv_bench_main(int argc, char** argv);
// `moe-native bench-moe-cuda [--json PATH] [--quick] [--once] [--models a,b] [--t T1,T2]` (moe_cuda_bench.cc).
int moe_cuda_bench_main(int argc, char** argv);

// Formats a double like printf("%.3g").
std::string fmt(double v, const char* spec = "%.3g");

}  // namespace moe::native
