// Paged-KV attention cases (cpu/attention.h) for moe-native: every CPU tier against a float64 reference over the
// logical K/V (no pages), with scattered page ids, GQA, decode + prefill/extend batches, window and sinks, split
// vs unsplit, and the typed errors of bad block tables / heads / kv_len beyond the table. Attention is a CPU op by
// design (the KV cache lives in host memory): CUDA backends report SKIP with that reason.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "cpu/attention.h"
#include "harness.h"
#include "ref.h"

namespace moe::native {

namespace {

struct AttnShape {
  int hd, qh, kvh, bs;
  std::vector<std::pair<int, int>> seqs;  // (q_len, kv_len)
  DType kv;
  int window = 0;
  bool sinks = false;
  int splits = 3;
};

std::string attn_name(const AttnShape& s) {
  std::string n = "hd=" + std::to_string(s.hd) + " heads=" + std::to_string(s.qh) + "/" + std::to_string(s.kvh) +
                  " bs=" + std::to_string(s.bs) + " kv=" + dtype_name(s.kv) + " seqs=";
  for (auto& [q, l] : s.seqs) n += "(" + std::to_string(q) + "," + std::to_string(l) + ")";
  if (s.window) n += " window=" + std::to_string(s.window);
  if (s.sinks) n += " sinks";
  return n;
}

struct AttnData {
  std::vector<uint8_t> k, v;
  std::vector<float> q, sinks;
  std::vector<int32_t> bt, kv_lens, q_lens;
  int64_t num_pages = 0, max_blocks = 0, total_q = 0;
  std::vector<double> ref;
};

AttnData make_data(const AttnShape& s) {
  AttnData d;
  Rng rng(0xA77E + s.hd * 7 + s.qh * 131 + s.kvh * 17 + s.seqs.size());
  const size_t es = dtype_size(s.kv);
  std::vector<int> nb;
  for (auto& [q, l] : s.seqs) {
    nb.push_back((l + s.bs - 1) / s.bs);
    d.max_blocks = std::max<int64_t>(d.max_blocks, nb.back());
    d.total_q += q;
  }
  d.max_blocks += 1;
  for (int n : nb) d.num_pages += n;
  d.num_pages += 2;
  std::vector<int32_t> perm(static_cast<size_t>(d.num_pages));
  for (size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<int32_t>(i);
  for (size_t i = perm.size() - 1; i > 0; --i) std::swap(perm[i], perm[rng.next() % (i + 1)]);
  const size_t elems = static_cast<size_t>(d.num_pages) * s.kvh * s.bs * s.hd;
  d.k.resize(elems * es);
  d.v.resize(elems * es);
  std::vector<double> kd(elems), vd(elems);
  for (size_t i = 0; i < elems; ++i) {
    uint32_t kr = f32_to_raw(s.kv, static_cast<float>(rng.uniform() * 1.5));
    uint32_t vr = f32_to_raw(s.kv, static_cast<float>(rng.uniform()));
    store_raw(s.kv, d.k.data(), i, kr);
    store_raw(s.kv, d.v.data(), i, vr);
    kd[i] = raw_to_f32(s.kv, kr);
    vd[i] = raw_to_f32(s.kv, vr);
  }
  d.q.resize(static_cast<size_t>(d.total_q) * s.qh * s.hd);
  for (auto& x : d.q) x = static_cast<float>(rng.uniform() * 1.5);
  if (s.sinks) {
    d.sinks.resize(s.qh);
    for (auto& x : d.sinks) x = static_cast<float>(rng.uniform() * 2);
  }
  d.bt.assign(static_cast<size_t>(s.seqs.size() * d.max_blocks), -5);
  size_t next = 0;
  d.ref.assign(d.q.size(), 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.hd));
  const int g = s.qh / s.kvh;
  int64_t q0 = 0;
  for (size_t si = 0; si < s.seqs.size(); ++si) {
    const int Q = s.seqs[si].first, L = s.seqs[si].second;
    d.q_lens.push_back(Q);
    d.kv_lens.push_back(L);
    for (int b = 0; b < nb[si]; ++b) d.bt[si * d.max_blocks + b] = perm[next++];
    auto at = [&](int pos, int h) {
      return (static_cast<size_t>(d.bt[si * d.max_blocks + pos / s.bs]) * s.kvh + h) * s.bs * s.hd +
             static_cast<size_t>(pos % s.bs) * s.hd;
    };
    std::vector<double> sc(static_cast<size_t>(L));
    for (int i = 0; i < Q; ++i) {
      const int pos = L - Q + i, lo = s.window ? std::max(0, pos - s.window + 1) : 0;
      for (int h = 0; h < s.qh; ++h) {
        const size_t qo = (static_cast<size_t>(q0 + i) * s.qh + h) * s.hd;
        double m = -INFINITY;
        for (int j = lo; j <= pos; ++j) {
          double dot = 0;
          const size_t ko = at(j, h / g);
          for (int e = 0; e < s.hd; ++e) dot += static_cast<double>(d.q[qo + e]) * kd[ko + e];
          sc[j] = dot * scale;
          m = std::max(m, sc[j]);
        }
        if (s.sinks) m = std::max(m, static_cast<double>(d.sinks[h]));
        double den = s.sinks ? std::exp(d.sinks[h] - m) : 0.0;
        for (int j = lo; j <= pos; ++j) {
          const double p = std::exp(sc[j] - m);
          den += p;
          const size_t vo = at(j, h / g);
          for (int e = 0; e < s.hd; ++e) d.ref[qo + e] += p * vd[vo + e];
        }
        for (int e = 0; e < s.hd; ++e) d.ref[qo + e] /= den;
      }
    }
    q0 += Q;
  }
  return d;
}

cpu::AttentionArgs args_of(const AttnShape& s, AttnData& d, std::vector<float>& out, int64_t splits) {
  cpu::AttentionArgs a{};
  a.q = d.q.data();
  a.k = d.k.data();
  a.v = d.v.data();
  a.out = out.data();
  a.block_tables = d.bt.data();
  a.kv_lens = d.kv_lens.data();
  a.q_lens = d.q_lens.data();
  a.sinks = s.sinks ? d.sinks.data() : nullptr;
  a.q_dtype = DType::F32;
  a.kv_dtype = s.kv;
  a.out_dtype = DType::F32;
  a.num_seqs = static_cast<int64_t>(s.seqs.size());
  a.max_blocks = d.max_blocks;
  a.num_pages = d.num_pages;
  a.total_q = d.total_q;
  a.q_heads = s.qh;
  a.kv_heads = s.kvh;
  a.head_dim = s.hd;
  a.block_size = s.bs;
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.hd)));
  a.sliding_window = s.window;
  a.num_splits = splits;
  return a;
}

Outcome run_attention(const Backend& be, const AttnShape& s) {
  if (be.kind != BackendKind::Cpu) return Outcome::skip("attention is a CPU op by design (KV cache in host memory)");
  AttnData d = make_data(s);
  std::vector<float> o1(d.q.size()), o2(d.q.size()), o0(d.q.size()), o3(d.q.size());
  Isa ran = cpu::attention(args_of(s, d, o1, 1), be.isa);
  cpu::attention(args_of(s, d, o2, s.splits), be.isa);
  cpu::attention(args_of(s, d, o0, 0), be.isa);
  cpu::AttentionArgs one = args_of(s, d, o3, s.splits);
  one.threads = 1;  // on the caller alone: the same splits, so the same bits
  cpu::attention(one, be.isa);
  const bool capped_same = o3 == o2;
  const double tol = s.kv == DType::F32 ? 1e-6 : 5e-4;
  auto to_d = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
  ErrorStats e1 = compare(to_d(o1), d.ref), e2 = compare(to_d(o2), d.ref), e0 = compare(to_d(o0), d.ref);
  ErrorStats agree = compare(to_d(o2), to_d(o1));
  bool ok = capped_same && e1.nmse <= tol && e2.nmse <= tol && e0.nmse <= tol && agree.nmse <= (ran == Isa::Avx512Bf16 ? 1e-6 : 1e-9) && e1.non_finite == 0 &&
            static_cast<int>(ran) <= static_cast<int>(be.isa);
  return Outcome::check(ok, "nmse=" + fmt(e1.nmse) + " split=" + fmt(e2.nmse) + " auto=" + fmt(e0.nmse) +
                                " split-vs-unsplit=" + fmt(agree.nmse) + " tol=" + fmt(tol) + " ran=" + isa_name(ran) +
                                (capped_same ? "" : " threads=1 differs"));
}

// Each bad argument must throw moe::Error(InvalidArgument) before touching out.
Outcome run_attention_errors(const Backend& be) {
  if (be.kind != BackendKind::Cpu) return Outcome::skip("attention is a CPU op by design (KV cache in host memory)");
  AttnShape s{128, 8, 2, 16, {{1, 40}, {3, 20}}, DType::BF16};
  AttnData d = make_data(s);
  std::vector<float> out(d.q.size(), 7.0f);
  struct Bad { const char* what; std::function<void(cpu::AttentionArgs&, AttnData&)> edit; };
  std::vector<Bad> bads = {
      {"page id >= num_pages", [](cpu::AttentionArgs&, AttnData& x) { x.bt[1] = static_cast<int32_t>(x.num_pages); }},
      {"negative page id", [](cpu::AttentionArgs&, AttnData& x) { x.bt[0] = -1; }},
      {"kv_len beyond the table", [](cpu::AttentionArgs&, AttnData& x) { x.kv_lens[0] = static_cast<int32_t>(x.max_blocks * 16 + 1); }},
      {"q_len > kv_len", [](cpu::AttentionArgs&, AttnData& x) { x.q_lens[1] = 21; }},
      {"q_heads % kv_heads", [](cpu::AttentionArgs& a, AttnData&) { a.kv_heads = 3; }},
      {"head_dim 96", [](cpu::AttentionArgs& a, AttnData&) { a.head_dim = 96; }},
      {"sum q_lens != total_q", [](cpu::AttentionArgs& a, AttnData&) { a.total_q = 5; }},
      {"negative threads", [](cpu::AttentionArgs& a, AttnData&) { a.threads = -1; }},
  };
  std::string failed;
  for (const Bad& b : bads) {
    AttnData x = d;
    cpu::AttentionArgs a = args_of(s, x, out, 1);
    b.edit(a, x);
    try {
      cpu::attention(a, be.isa);
      failed += std::string(b.what) + ": no error; ";
    } catch (const Error& e) {
      if (e.code() != ErrorCode::InvalidArgument) failed += std::string(b.what) + ": wrong code; ";
    }
  }
  for (float f : out)
    if (f != 7.0f) {
      failed += "out was written; ";
      break;
    }
  return Outcome::check(failed.empty(), failed.empty() ? std::to_string(bads.size()) + " bad inputs rejected" : failed);
}

}  // namespace

void add_attention_cases(std::vector<Case>& cases) {
  std::vector<AttnShape> shapes;
  for (int hd : {64, 128, 256})
    for (auto [qh, kvh] : std::vector<std::pair<int, int>>{{32, 8}, {28, 4}, {4, 4}, {9, 3}, {64, 4}})
      shapes.push_back({hd, qh, kvh, 16, {{1, 1}, {1, 7}, {1, 113}, {1, 512}, {1, 1024}, {1, 4097}}, DType::BF16, 0, false, 5});
  shapes.push_back({128, 32, 8, 64, {{1, 213}, {1, 1}, {1, 312}, {1, 7}, {1, 7812}}, DType::BF16, 0, false, 7});
  shapes.push_back({128, 4, 4, 16, {{5, 5}, {3, 16}, {134, 5131}}, DType::BF16, 0, false, 4});
  shapes.push_back({64, 8, 2, 32, {{1, 700}, {17, 300}, {3, 3}}, DType::BF16, 100, true, 3});
  shapes.push_back({256, 6, 2, 7, {{9, 50}, {1, 33}, {2, 2}}, DType::BF16, 13, false, 3});  // odd block size
  shapes.push_back({128, 9, 3, 16, {{1, 1000}, {6, 77}}, DType::F32, 0, false, 3});
  shapes.push_back({256, 4, 2, 8, {{2, 600}, {1, 9}}, DType::F16, 0, false, 2});
  for (const AttnShape& s : shapes)
    cases.push_back({"attention", attn_name(s), [s](const Backend& be) { return run_attention(be, s); }});
  cases.push_back({"attention", "bad block tables / heads / kv_len", [](const Backend& be) { return run_attention_errors(be); }});
}

}  // namespace moe::native
