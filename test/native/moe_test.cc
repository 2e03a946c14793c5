// Fused MoE op cases (issue 3) for moe-native: router_topk, moe_align and moe_experts on every backend (harness.h),
// so a GPU host can check the CUDA kernels without Node. References: exact for ids/align, float64 for weights and
// the expert FFN (no intermediate rounding). moe_experts: rel L2 <= 1e-2 and max abs <= 2e-2 (inputs scaled by 1/10),
// two runs bitwise identical, tokens with no present expert exactly 0.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "cpu/moe_experts.h"
#include "cpu/router_topk.h"
#include "cuda_util.h"
#include "harness.h"
#include "ref.h"

namespace moe::native {

namespace {

#if MOE_WITH_CUDA
template <typename T>
struct DevVec {
  const Backend& be;
  DeviceBuffer buf;
  size_t n;
  DevVec(const Backend& b, const std::vector<T>& host) : be(b), buf(b.device, host.size() * sizeof(T)), n(host.size()) {
    if (n > 0) cuda_check(moe_cuda_memcpy_async(be.device, buf.get(), host.data(), n * sizeof(T), be.stream), "H2D");
    cuda_check(moe_cuda_stream_synchronize(be.device, be.stream), "sync");
  }
  T* get() const { return static_cast<T*>(buf.get()); }
  void download(std::vector<T>& host) const {
    if (n > 0) cuda_check(moe_cuda_memcpy_async(be.device, host.data(), buf.get(), n * sizeof(T), be.stream), "D2H");
    cuda_check(moe_cuda_stream_synchronize(be.device, be.stream), "sync");
  }
};
#endif

std::vector<int32_t> random_ids(int64_t t, int64_t k, int64_t e, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> ids(static_cast<size_t>(t * k));
  std::vector<int32_t> perm(static_cast<size_t>(e));
  for (int64_t i = 0; i < e; ++i) perm[i] = static_cast<int32_t>(i);
  for (int64_t i = 0; i < t; ++i)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t p = j + static_cast<int64_t>(rng.next() % static_cast<uint64_t>(e - j));
      std::swap(perm[j], perm[p]);
      ids[i * k + j] = perm[j];
    }
  return ids;
}

// ---- router_topk ------------------------------------------------------------------------------------------------

Outcome run_topk(const Backend& be, int64_t t, int64_t e, int64_t k, bool sigmoid, bool renorm, bool with_bias) {
  Rng rng(static_cast<uint64_t>(t * 7919 + e * 31 + k));
  std::vector<float> logits(static_cast<size_t>(t * e)), bias(static_cast<size_t>(e));
  for (auto& v : logits) v = static_cast<float>(rng.uniform() * 4);
  for (int64_t x = 0; x < e; ++x) logits[x] = 0.5f;  // token 0: all tied -> ids 0..k-1
  for (auto& v : bias) v = static_cast<float>(rng.uniform() * 0.5);
  std::vector<int32_t> ids(static_cast<size_t>(t * k), -7);
  std::vector<float> w(static_cast<size_t>(t * k), -1.0f);
  const float* bp = with_bias ? bias.data() : nullptr;
  if (be.kind == BackendKind::Cpu) {
    cpu::router_topk({logits.data(), bp, ids.data(), w.data(), t, e, k,
                      sigmoid ? cpu::Scoring::Sigmoid : cpu::Scoring::Softmax, renorm});
  } else {
#if MOE_WITH_CUDA
    DevVec<float> dl(be, logits), db(be, bias), dw(be, w);
    DevVec<int32_t> di(be, ids);
    cuda_check(moe_cuda_router_topk(be.device, dl.get(), with_bias ? db.get() : nullptr, di.get(), dw.get(), t, e, k,
                                    sigmoid ? 1 : 0, renorm ? 1 : 0, be.stream),
               "moe_cuda_router_topk");
    di.download(ids);
    dw.download(w);
#endif
  }
  size_t bad_ids = 0;
  double max_rel = 0;
  for (int64_t i = 0; i < t; ++i) {
    std::vector<int> order(static_cast<size_t>(e));
    std::vector<double> score(static_cast<size_t>(e));
    double mx = -INFINITY, sum = 0;
    for (int64_t x = 0; x < e; ++x) {
      order[x] = static_cast<int>(x);
      score[x] = logits[i * e + x] + (sigmoid && with_bias ? bias[x] : 0.0f);
      mx = std::fmax(mx, logits[i * e + x]);
    }
    for (int64_t x = 0; x < e; ++x) sum += std::exp(static_cast<double>(logits[i * e + x]) - mx);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return score[a] > score[b]; });
    std::vector<double> rw(static_cast<size_t>(k));
    double ws = 0;
    for (int64_t j = 0; j < k; ++j) {
      const double l = logits[i * e + order[j]];
      rw[j] = sigmoid ? 1.0 / (1.0 + std::exp(-l)) : std::exp(l - mx) / sum;
      ws += rw[j];
    }
    for (int64_t j = 0; j < k; ++j) {
      if (renorm) rw[j] /= ws;
      bad_ids += ids[i * k + j] != order[j];
      max_rel = std::fmax(max_rel, std::fabs(w[i * k + j] - rw[j]) / std::fabs(rw[j]));
    }
  }
  return Outcome::check(bad_ids == 0 && max_rel <= 1e-5,
                        "ids wrong=" + std::to_string(bad_ids) + " weight max rel=" + fmt(max_rel) + " tol=1e-05");
}

// ---- moe_align --------------------------------------------------------------------------------------------------

Outcome run_align(const Backend& be, int64_t t, int64_t k, int64_t e, int64_t block, bool minus_one) {
  std::vector<int32_t> ids = random_ids(t, k, e, static_cast<uint64_t>(t * 13 + e));
  if (minus_one)
    for (size_t i = 0; i < ids.size(); i += 3) ids[i] = -1;
  const int64_t cap = cpu::moe_align_capacity(t, k, e, block);
  std::vector<int32_t> counts(static_cast<size_t>(e), -5), offsets(static_cast<size_t>(e + 1), -5), sorted(static_cast<size_t>(cap), -5);
  if (be.kind == BackendKind::Cpu) {
    cpu::moe_align({ids.data(), counts.data(), offsets.data(), sorted.data(), t, k, e, block, cap});
  } else {
#if MOE_WITH_CUDA
    DevVec<int32_t> di(be, ids), dc(be, counts), doff(be, offsets), ds(be, sorted);
    PinnedBuffer slot(16);  // error slot: valid ids (-1 included) must leave it 0
    auto* words = static_cast<int32_t*>(slot.get());
    std::memset(words, 0, 16);
    cuda_check(moe_cuda_moe_align(be.device, di.get(), dc.get(), doff.get(), ds.get(), t, k, e, block, cap, words, be.stream),
               "moe_cuda_moe_align");
    cuda_check(moe_cuda_stream_synchronize(be.device, be.stream), "sync");
    if (words[0] != 0) return Outcome::fail("valid ids flagged in the error slot");
    dc.download(counts);
    doff.download(offsets);
    ds.download(sorted);
#endif
  }
  std::vector<int32_t> rc(static_cast<size_t>(e), 0), ro(static_cast<size_t>(e + 1), 0), rs(static_cast<size_t>(cap), static_cast<int32_t>(t * k));
  for (int32_t x : ids)
    if (x >= 0) ++rc[x];
  for (int64_t x = 0; x < e; ++x) ro[x + 1] = ro[x] + static_cast<int32_t>((rc[x] + block - 1) / block * block);
  std::vector<int32_t> cur(ro.begin(), ro.end() - 1);
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] >= 0) rs[cur[ids[i]]++] = static_cast<int32_t>(i);
  const bool ok = counts == rc && offsets == ro && sorted == rs;
  return Outcome::check(ok, ok ? "exact" : "counts/offsets/sorted differ from the reference");
}

// ---- moe_experts ------------------------------------------------------------------------------------------------

struct MoeShape {
  int64_t t, h, inter, e, k;
  int mode;  // 0 random, 1 all tokens on expert 3 (slot 0), 2 -1 ids + token 0 unrouted, 3 absent experts 1 and 4
};

Outcome run_moe(const Backend& be, const MoeShape& s) {
  const int64_t t = s.t, h = s.h, I = s.inter, e = s.e, k = s.k;
  Rng rng(static_cast<uint64_t>(t * 1000003 + h * 1009 + I * 17 + e * 3 + k + s.mode));
  std::vector<uint16_t> x = rng.bf16s(static_cast<size_t>(t * h), 0.1);
  std::vector<int32_t> ids = random_ids(t, k, e, static_cast<uint64_t>(t + e * 7 + s.mode));
  if (s.mode == 1)
    for (int64_t i = 0; i < t; ++i) {
      for (int64_t j = 1; j < k; ++j)
        if (ids[i * k + j] == 3) ids[i * k + j] = ids[i * k];
      ids[i * k] = 3;
    }
  if (s.mode == 2) {
    for (size_t i = 0; i < ids.size(); i += 3) ids[i] = -1;
    for (int64_t j = 0; j < k; ++j) ids[j] = -1;
  }
  if (s.mode == 3)
    for (int64_t j = 0; j < k; ++j) ids[j] = 1;
  std::vector<float> w(static_cast<size_t>(t * k));
  for (auto& v : w) v = static_cast<float>(0.6 + 0.5 * rng.uniform());
  std::vector<std::vector<uint16_t>> wg(static_cast<size_t>(e)), wu(static_cast<size_t>(e)), wd(static_cast<size_t>(e));
  std::vector<bool> present(static_cast<size_t>(e), true);
  if (s.mode == 3) present[1] = present[4] = false;
  for (int64_t q = 0; q < e; ++q) {
    wg[q] = rng.bf16s(static_cast<size_t>(I * h), 0.1);
    wu[q] = rng.bf16s(static_cast<size_t>(I * h), 0.1);
    wd[q] = rng.bf16s(static_cast<size_t>(h * I), 0.1);
  }
  std::vector<uint16_t> out(static_cast<size_t>(t * h), 0x7fc0), out2(static_cast<size_t>(t * h), 0x7fc0);
  std::vector<const void*> tg(static_cast<size_t>(e)), tu(static_cast<size_t>(e)), td(static_cast<size_t>(e));
  Isa ran = be.isa;
  auto run_once = [&](std::vector<uint16_t>& o) {
    if (be.kind == BackendKind::Cpu) {
      for (int64_t q = 0; q < e; ++q) {
        tg[q] = present[q] ? wg[q].data() : nullptr;
        tu[q] = present[q] ? wu[q].data() : nullptr;
        td[q] = present[q] ? wd[q].data() : nullptr;
      }
      ran = cpu::moe_experts({x.data(), ids.data(), w.data(), tg.data(), tu.data(), td.data(), o.data(), t, h, I, e, k}, be.isa);
    } else {
#if MOE_WITH_CUDA
      std::vector<std::unique_ptr<DevVec<uint16_t>>> dw;
      for (int64_t q = 0; q < e; ++q) {
        dw.emplace_back(new DevVec<uint16_t>(be, wg[q]));
        dw.emplace_back(new DevVec<uint16_t>(be, wu[q]));
        dw.emplace_back(new DevVec<uint16_t>(be, wd[q]));
        tg[q] = present[q] ? dw[3 * q]->get() : nullptr;
        tu[q] = present[q] ? dw[3 * q + 1]->get() : nullptr;
        td[q] = present[q] ? dw[3 * q + 2]->get() : nullptr;
      }
      DevVec<uint16_t> dx(be, x), dout(be, o);
      DevVec<int32_t> di(be, ids);
      DevVec<float> dwt(be, w);
      cuda_check(moe_cuda_moe_experts(be.device, dx.get(), di.get(), dwt.get(), tg.data(), tu.data(), td.data(),
                                      dout.get(), t, h, I, e, k, nullptr, be.stream),
                 "moe_cuda_moe_experts");
      dout.download(o);
#endif
    }
  };
  run_once(out);
  run_once(out2);
  // float64 reference
  std::vector<double> ref(static_cast<size_t>(t * h), 0.0), got(static_cast<size_t>(t * h)), act(static_cast<size_t>(I));
  for (int64_t i = 0; i < t; ++i)
    for (int64_t j = 0; j < k; ++j) {
      const int32_t q = ids[i * k + j];
      if (q < 0 || !present[q]) continue;
      for (int64_t n = 0; n < I; ++n) {
        double g = 0, u = 0;
        for (int64_t c = 0; c < h; ++c) {
          const double xv = bf16_to_f32(x[i * h + c]);
          g += xv * bf16_to_f32(wg[q][n * h + c]);
          u += xv * bf16_to_f32(wu[q][n * h + c]);
        }
        act[n] = g / (1.0 + std::exp(-g)) * u;
      }
      for (int64_t c = 0; c < h; ++c) {
        double acc = 0;
        for (int64_t n = 0; n < I; ++n) acc += act[n] * bf16_to_f32(wd[q][c * I + n]);
        ref[i * h + c] += w[i * k + j] * acc;
      }
    }
  for (size_t i = 0; i < got.size(); ++i) got[i] = bf16_to_f32(out[i]);
  const ErrorStats st = compare(got, ref);
  const double rel = std::sqrt(st.nmse);
  const bool same = std::memcmp(out.data(), out2.data(), out.size() * 2) == 0;
  bool zero_ok = true;
  if (s.mode == 2 || s.mode == 3)
    for (int64_t c = 0; c < h; ++c) zero_ok = zero_ok && out[c] == 0;
  const bool ok = st.non_finite == 0 && rel <= 1e-2 && st.max_abs <= 2e-2 && same && zero_ok;
  std::string d = "rel=" + fmt(rel) + " max_abs=" + fmt(st.max_abs) + " tol=1e-2/2e-2";
  if (!same) d += ", two runs differ";
  if (!zero_ok) d += ", token 0 not exactly 0";
  if (st.non_finite) d += ", " + std::to_string(st.non_finite) + " non-finite";
  if (be.kind == BackendKind::Cpu && ran != be.isa) d += std::string(" ran=") + isa_name(ran);
  return Outcome::check(ok, d);
}

#if MOE_WITH_CUDA
// CUDA: ids outside [-1, e) are skipped by the kernels and reported in an error slot of mapped pinned memory
// ([0] = 1, [1] smallest index, [2] the id), which the op layer reads on completion (cpp/napi/cuda_error_slot.h).
// Valid ids (-1 included) leave it 0.
Outcome run_moe_invalid_cuda(const Backend& be) {
  std::vector<std::string> problems;
  PinnedBuffer slot(16);
  auto* words = static_cast<volatile int32_t*>(slot.get());
  auto expect = [&](const char* what, int32_t flag, int32_t index, int32_t id) {
    if (words[0] != flag || (flag != 0 && (words[1] != index || words[2] != id)))
      problems.push_back(std::string(what) + ": slot " + std::to_string(words[0]) + "," + std::to_string(words[1]) +
                         "," + std::to_string(words[2]));
    for (int i = 0; i < 4; ++i) words[i] = 0;
  };
  for (int i = 0; i < 4; ++i) words[i] = 0;
  const int64_t t = 3, k = 2, e = 4, h = 32, I = 32, block = 4;
  const int64_t cap = cpu::moe_align_capacity(t, k, e, block);
  const std::vector<std::vector<int32_t>> id_sets = {{0, 5, 1, -1, 9, 2}, {0, 1, -7, 2, 3, 0}, {0, -1, 1, 2, 3, -1}};
  const int32_t want[3][3] = {{1, 1, 5}, {1, 2, -7}, {0, 0, 0}};
  std::vector<int32_t> zeros(static_cast<size_t>(cap), 0);
  std::vector<uint16_t> x(static_cast<size_t>(t * h), f32_to_bf16(0.05f)), wv(static_cast<size_t>(I * h), f32_to_bf16(0.05f));
  std::vector<float> w(static_cast<size_t>(t * k), 0.5f);
  DevVec<uint16_t> dx(be, x), dout(be, x), dw(be, wv);
  DevVec<float> dwt(be, w);
  DevVec<int32_t> dc(be, zeros), doff(be, zeros), ds(be, zeros);
  std::vector<const void*> tab(static_cast<size_t>(e), dw.get());
  for (size_t s = 0; s < id_sets.size(); ++s) {
    DevVec<int32_t> di(be, id_sets[s]);
    cuda_check(moe_cuda_moe_align(be.device, di.get(), dc.get(), doff.get(), ds.get(), t, k, e, block, cap,
                                  const_cast<int32_t*>(words), be.stream),
               "moe_cuda_moe_align");
    cuda_check(moe_cuda_stream_synchronize(be.device, be.stream), "sync");
    expect(("align ids set " + std::to_string(s)).c_str(), want[s][0], want[s][1], want[s][2]);
    cuda_check(moe_cuda_moe_experts(be.device, dx.get(), di.get(), dwt.get(), tab.data(), tab.data(), tab.data(),
                                    dout.get(), t, h, I, e, k, const_cast<int32_t*>(words), be.stream),
               "moe_cuda_moe_experts");
    cuda_check(moe_cuda_stream_synchronize(be.device, be.stream), "sync");
    expect(("experts ids set " + std::to_string(s)).c_str(), want[s][0], want[s][1], want[s][2]);
  }
  // The parallel align (t * k > 2048): the smallest bad index over all chunks (here in the second of two).
  {
    const int64_t tp = 1500, kp = 2, ep = 8, bp = 16;
    const int64_t capp = cpu::moe_align_capacity(tp, kp, ep, bp);
    std::vector<int32_t> idp = random_ids(tp, kp, ep, 11);
    idp[2500] = 99;
    idp[2100] = -3;
    std::vector<int32_t> zp(static_cast<size_t>(capp), 0);
    DevVec<int32_t> di(be, idp), dcp(be, zp), doffp(be, zp), dsp(be, zp);
    cuda_check(moe_cuda_moe_align(be.device, di.get(), dcp.get(), doffp.get(), dsp.get(), tp, kp, ep, bp, capp,
                                  const_cast<int32_t*>(words), be.stream),
               "moe_cuda_moe_align");
    cuda_check(moe_cuda_stream_synchronize(be.device, be.stream), "sync");
    expect("parallel align, bad ids at 2100 and 2500", 1, 2100, -3);
  }
  std::string d = "err=" + std::to_string(problems.size());
  for (const auto& p : problems) d += "; " + p;
  return Outcome::check(problems.empty(), d);
}
#endif

// Invalid ids / table entries are rejected on the CPU with InvalidArgument; on CUDA ids are flagged (above).
Outcome run_moe_invalid(const Backend& be) {
  if (be.kind != BackendKind::Cpu) {
#if MOE_WITH_CUDA
    return run_moe_invalid_cuda(be);
#else
    return Outcome::skip("no CUDA in this build");
#endif
  }
  std::vector<std::string> problems;
  auto expect_invalid = [&](const char* what, const std::function<void()>& fn) {
    try {
      fn();
      problems.push_back(std::string(what) + " did not throw");
    } catch (const moe::Error& e) {
      if (e.code() != ErrorCode::InvalidArgument) problems.push_back(std::string(what) + " threw " + error_code_string(e.code()));
    }
  };
  uint16_t x[4] = {}, o[4] = {};
  int32_t ids[2] = {0, 2};
  float w[2] = {1, 1};
  const void* tg[2] = {x, x};
  const void* tu[2] = {x, nullptr};
  expect_invalid("id >= e", [&] { cpu::moe_experts({x, ids, w, tg, tg, tg, o, 1, 2, 2, 2, 2}, be.isa); });
  ids[1] = 1;
  expect_invalid("partial table entry", [&] { cpu::moe_experts({x, ids, w, tg, tu, tg, o, 1, 2, 2, 2, 2}, be.isa); });
  int32_t c[2], off[3], srt[8];
  int32_t bad[2] = {0, 5};
  expect_invalid("align id >= e", [&] { cpu::moe_align({bad, c, off, srt, 1, 2, 2, 4, 8}); });
  expect_invalid("align small capacity", [&] { cpu::moe_align({ids, c, off, srt, 1, 2, 2, 4, 7}); });
  float lg[4] = {};
  expect_invalid("topk k > e", [&] { cpu::router_topk({lg, nullptr, ids, w, 1, 2, 3, cpu::Scoring::Softmax, false}); });
  std::string d = "err=" + std::to_string(problems.size());
  for (const auto& p : problems) d += "; " + p;
  return Outcome::check(problems.empty(), d);
}

}  // namespace

void add_moe_cases(std::vector<Case>& cases) {
  const int64_t topk_shapes[][3] = {{1, 8, 2}, {33, 8, 2}, {222, 64, 6}, {64, 128, 8}, {7, 8, 8}, {5, 256, 8}};
  for (const auto& sh : topk_shapes)
    for (int sg = 0; sg < 2; ++sg)
      for (int rn = 0; rn < 2; ++rn)
        for (int bi = 0; bi <= sg; ++bi) {
          const int64_t t = sh[0], e = sh[1], k = sh[2];
          std::string name = "t=" + std::to_string(t) + " e=" + std::to_string(e) + " k=" + std::to_string(k) +
                             (sg ? " sigmoid" : " softmax") + (rn ? " renorm" : "") + (bi ? " bias" : "");
          cases.push_back({"router_topk", name, [=](const Backend& be) { return run_topk(be, t, e, k, sg, rn, bi); }});
        }
  // The last six take the CUDA parallel align (t * k > 2048 ids: router_topk.cuh's chunks of 2048, one warp each):
  // 2 chunks with a 1-id tail, e = 8192 (8 experts per scan thread), the chunk loop's 8-wide unroll plus tail
  // (9 and 64 chunks), blocks 1 and 128.
  const int64_t align_shapes[][5] = {{1, 2, 8, 16, 0},     {33, 2, 8, 16, 1},      {222, 6, 64, 64, 0},
                                     {64, 8, 128, 1, 0},   {0, 2, 8, 16, 0},       {1024, 8, 128, 64, 1},
                                     {2049, 1, 8, 16, 1},  {3000, 2, 8192, 1, 0},  {2304, 8, 64, 128, 1},
                                     {700, 3, 3, 16, 0},   {16384, 8, 128, 128, 0}, {4096, 8, 128, 128, 1}};
  for (const auto& a : align_shapes) {
    std::string name = "t=" + std::to_string(a[0]) + " k=" + std::to_string(a[1]) + " e=" + std::to_string(a[2]) +
                       " block=" + std::to_string(a[3]) + (a[4] ? " with -1" : "");
    cases.push_back({"moe_align", name, [=](const Backend& be) { return run_align(be, a[0], a[1], a[2], a[3], a[4] != 0); }});
  }
  const MoeShape moe_shapes[] = {
      {1, 128, 96, 8, 2, 0},  {2, 128, 96, 8, 2, 0},   {7, 128, 96, 8, 2, 0},   {33, 128, 96, 8, 2, 0},
      {64, 128, 96, 8, 2, 0}, {222, 64, 64, 8, 2, 0},  {33, 511, 64, 8, 2, 0},  {33, 64, 511, 8, 2, 0},
      {7, 64, 128, 8, 1, 0},  {33, 128, 64, 64, 6, 0}, {16, 64, 48, 128, 8, 0}, {64, 64, 64, 8, 2, 1},
      {33, 64, 64, 8, 2, 2},  {33, 64, 64, 8, 2, 3},   {5, 32, 32, 8, 8, 0},
      // decode rows longer than the streaming kernel's row-after-row limit (2048): side-by-side walk, k tails
      {3, 2085, 40, 8, 2, 0}, {3, 48, 2100, 8, 2, 0},
      // CUDA tensor-core path (h, inter multiples of 8; moe_experts_mma.cuh). Large tiles (t * k > 8 e): k tiles of 64
      // with a ragged last one (520 = 8 * 64 + 8, 200 = 3 * 64 + 8), N not a multiple of the block's 64 / 128, one
      // expert with 100 rows (two 64-row tiles); 16 k tiles through the 3-stage ring.
      {100, 520, 200, 8, 2, 1}, {96, 1024, 256, 4, 2, 0},
      // decode tiles (t * k <= 8 e, align block 16): 40 rows on one expert (three 16-row tiles), ragged k and N
      // (264, 136); a long decode row (16 and 24 k tiles through the 6-stage ring)
      {40, 264, 136, 16, 2, 1}, {1, 1024, 1536, 4, 2, 0},
      // wgmma path (moe_experts_wgmma.cuh, align block 128, GEMM1 N tile 128 (+128 up), GEMM2 N tile 256, 4 stages;
      // chosen on cc 9.0 when t * k >= 64 e, and for every shape here with MOE_CUDA_MOE=wgmma): 300 rows on expert 3
      // (three 128-row tiles), 17 / 6 k tiles with an 8-wide k tail (1032, 328), N tails (328 = 2 * 128 + 72,
      // 1032 = 4 * 256 + 8); 48 slots over 64 experts (most experts empty); 256 rows per expert (the default
      // selection takes wgmma on an H100 / H200).
      {300, 1032, 328, 16, 2, 1}, {24, 136, 72, 64, 2, 0}, {512, 256, 384, 4, 2, 0},
      // more than 2048 slots: the CUDA parallel align (router_topk.cuh), all on one expert and random
      {1100, 64, 64, 8, 2, 1}, {1200, 128, 96, 64, 4, 0},
  };
  for (const MoeShape& s : moe_shapes) {
    static const char* modes[] = {"", " all-on-one", " minus-one", " absent"};
    std::string name = "t=" + std::to_string(s.t) + " h=" + std::to_string(s.h) + " i=" + std::to_string(s.inter) +
                       " e=" + std::to_string(s.e) + " k=" + std::to_string(s.k) + modes[s.mode];
    cases.push_back({"moe_experts", name, [s](const Backend& be) { return run_moe(be, s); }});
  }
  cases.push_back({"moe_experts", "invalid ids and table entries", run_moe_invalid});
}

}  // namespace moe::native
