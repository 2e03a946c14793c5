// gather_rows cases for moe-native: bit-exact row gathers (repeated ids, -1 -> zero rows, odd row sizes), on the
// CPU tiers and on CUDA with the source in device memory and in mapped pinned host memory (the zero-copy path).
#include <cstring>
#include <string>
#include <vector>

#include "cpu/gather_rows.h"
#include "cuda_util.h"
#include "harness.h"
#include "ref.h"

namespace moe::native {
namespace {

#if MOE_WITH_CUDA
void copy_sync_h2d(const Backend& be, void* dst, const void* src, size_t bytes) {
  cuda_check(moe_cuda_memcpy_async(be.device, dst, src, bytes, be.stream), "H2D");
  cuda_check(moe_cuda_stream_synchronize(be.device, be.stream), "sync");
}
#endif

Outcome run_gather(const Backend& be, int64_t rows, int64_t row_bytes, int64_t n, bool pinned_src) {
  Rng rng(static_cast<uint64_t>(rows * 131 + row_bytes * 7 + n));
  std::vector<uint8_t> src(static_cast<size_t>(rows * row_bytes));
  for (auto& b : src) b = static_cast<uint8_t>(rng.next());
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[i] = i % 5 == 4 ? -1 : static_cast<int32_t>(rng.next() % static_cast<uint64_t>(rows));
  std::vector<uint8_t> out(static_cast<size_t>(n * row_bytes), 0xee);
  if (be.kind == BackendKind::Cpu) {
    if (pinned_src) return Outcome::skip("pinned source is the CUDA zero-copy path");
    cpu::gather_rows({src.data(), static_cast<size_t>(rows), static_cast<size_t>(row_bytes), static_cast<size_t>(row_bytes),
                      ids.data(), static_cast<size_t>(n), out.data(), static_cast<size_t>(row_bytes)});
  } else {
#if MOE_WITH_CUDA
    DeviceBuffer did(be.device, ids.size() * 4), dout(be.device, out.size());
    copy_sync_h2d(be, did.get(), ids.data(), ids.size() * 4);
    const void* sp;
    DeviceBuffer dsrc(be.device, pinned_src ? 1 : src.size());
    PinnedBuffer psrc(pinned_src ? src.size() : 1);
    if (pinned_src) {
      std::memcpy(psrc.get(), src.data(), src.size());
      sp = psrc.get();
    } else {
      copy_sync_h2d(be, dsrc.get(), src.data(), src.size());
      sp = dsrc.get();
    }
    cuda_check(moe_cuda_gather_rows(be.device, sp, rows, row_bytes, row_bytes, static_cast<const int32_t*>(did.get()), n,
                                    dout.get(), row_bytes, be.stream),
               "moe_cuda_gather_rows");
    cuda_check(moe_cuda_memcpy_async(be.device, out.data(), dout.get(), out.size(), be.stream), "D2H");
    cuda_check(moe_cuda_stream_synchronize(be.device, be.stream), "sync");
#endif
  }
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* got = out.data() + i * row_bytes;
    std::vector<uint8_t> want(static_cast<size_t>(row_bytes), 0);
    if (ids[i] >= 0) std::memcpy(want.data(), src.data() + ids[i] * row_bytes, static_cast<size_t>(row_bytes));
    if (std::memcmp(got, want.data(), static_cast<size_t>(row_bytes)) != 0) bad++;
  }
  return Outcome::check(bad == 0, std::to_string(bad) + " of " + std::to_string(n) + " rows differ");
}

}  // namespace

void add_gather_cases(std::vector<Case>& cases) {
  const int64_t shapes[][3] = {{50, 128, 17}, {7, 60, 40}, {1000, 4096, 8}, {9, 1, 33}, {64, 28672, 3}};
  for (const auto& s : shapes)
    for (int pinned = 0; pinned < 2; ++pinned) {
      std::string name = "rows=" + std::to_string(s[0]) + " row_bytes=" + std::to_string(s[1]) + " n=" +
                         std::to_string(s[2]) + (pinned ? " src=pinned" : " src=device");
      cases.push_back({"gather_rows", name, [=](const Backend& be) { return run_gather(be, s[0], s[1], s[2], pinned != 0); }});
    }
}

}  // namespace moe::native
