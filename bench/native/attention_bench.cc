// `moe-native bench-attention [--json PATH] [--quick]`: paged-KV attention (cpu/attention.h) against rooflines
// measured in the same run on the same machine (issue 5):
//   - decode: 64 sequences x kv_len {1024, 4096, 8192}, GQA (32,8), (32,4), (8,8), (64,4), head_dim 128, bf16 KV,
//     block sizes 16 and 64, pages scattered (sequence s block b -> page b * 64 + s): KV bytes
//     read per second as a fraction of a streaming-read probe (cpu::read_probe over 1 GiB, every pool thread) run
//     right before and right after each timed repetition (their mean: the development VM's bandwidth swings
//     between ~25 and ~60 GB/s within minutes); a row reports the repetition with the median fraction;
//   - prefill: q_len = kv_len = 2048 causal, (32,8), head_dim 128, block 16 and 64: FLOP/s (4 * head_dim per (query head, key) pair
//     attended) as a fraction of the best tier's register-only multiply-add peak (vdpbf16ps, or f32 FMAs without
//     AVX512_BF16; every pool thread; the best reading so far, re-read before each row);
//   - decode-read: the same pages read in the kernel's order with nothing else (the bandwidth of the scattered
//     layout itself, which the sequential probe can exceed by ~30% when the VM's bandwidth is high);
//   - decode-cached: the bf16 tier on the same decode shapes with every block table pointing at the same 8 pages
//     (K/V in cache): the kernel's compute time alone, the other side of the roofline;
//   - the floor: a naive scalar loop per query head (K/V re-read for every head of a group) on a decode shape;
//   - splits: the throughput bench's shapes (decode of 1536 sequences x 530 tokens; prefill of 16 x 512), (32,8),
//     block 64, at the best tier with 4 splits per sequence (what the model runtime passed before 2026-11-27), one
//     split, and split_tokens 1024 (what it passes now), that last also on the tier below the best (AVX-512F's f32
//     FMAs on an AVX-512 BF16 machine), interleaved repetitions.
// Timing: steady_clock, 1 warm-up, median of 3 (1 with --quick). JSON: date, machine, every measurement.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <ctime>
#include <functional>
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "core/dtype.h"
#include "core/isa.h"
#include "core/threadpool.h"
#include "cpu/attention.h"
#include "cpu/dot_probe.h"
#include "cpu/read_probe.h"
#include "harness.h"

#if MOE_X86
#include "cpu/simd.h"
#endif

namespace moe::native {
namespace {

struct Row {
  std::string op, backend, shape, unit, roof_src;
  double ms = 0, value = 0, roof = 0;
};
std::vector<Row> g_rows;

void emit(Row r) {
  std::printf("%-9s %-14s %-52s %9.3f ms %9.2f %-7s", r.op.c_str(), r.backend.c_str(), r.shape.c_str(), r.ms, r.value,
              r.unit.c_str());
  if (r.roof > 0) std::printf(" %5.1f%% of %.1f (%s)", 100.0 * r.value / r.roof, r.roof, r.roof_src.c_str());
  std::printf("\n");
  std::fflush(stdout);
  g_rows.push_back(std::move(r));
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Median seconds of `runs` calls after one warm-up.
double time_it(int runs, const std::function<void()>& fn) {
  fn();
  std::vector<double> t;
  for (int i = 0; i < runs; ++i) {
    double t0 = now_s();
    fn();
    t.push_back(now_s() - t0);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}


// Page-aligned (2 MiB when huge) host memory; with huge = true it asks for transparent huge pages
// (madvise(MADV_HUGEPAGE)): scattered 4 KiB (page, kv head) runs otherwise cost a TLB miss each.
struct HostBuf {
  uint16_t* p = nullptr;
  size_t n = 0;
  HostBuf(size_t elems, bool huge) : n(elems) {
    const size_t align = huge ? (size_t{2} << 20) : 4096;
    const size_t bytes = (elems * 2 + align - 1) / align * align;
    p = static_cast<uint16_t*>(std::aligned_alloc(align, bytes));
    if (p == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(p, bytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
#endif
  }
  ~HostBuf() { std::free(p); }
  HostBuf(const HostBuf&) = delete;
  HostBuf& operator=(const HostBuf&) = delete;
  uint16_t& operator[](size_t i) { return p[i]; }
  uint16_t* data() { return p; }
};

volatile float g_sink;

// Streaming read probe, GB/s: cpu::read_probe (every pool thread) over a 1 GiB buffer (allocated and filled once).
double read_probe(int runs) {
  const size_t n = size_t{1} << 28;  // 1 GiB of f32
  static HostBuf raw(n * 2, true);  // huge pages, like the decode pools
  float* buf = reinterpret_cast<float*>(raw.data());
  static const bool filled = [&] {
    for (size_t i = 0; i < n; ++i) buf[i] = 1.0f;
    return true;
  }();
  (void)filled;
  const double t = time_it(runs, [&] { g_sink = static_cast<float>(cpu::read_probe(buf, n)); });
  return static_cast<double>(n * 4) / t / 1e9;
}

// Multiply-add peak over the pool, GFLOP/s (cpu::dot_probe at the best tier: vdpbf16ps, or f32 FMAs without
// AVX512_BF16; the probe bench/throughput.ts uses too).
// The best of `runs` (a register-only peak is a property of the core: other work on the shared VM only lowers a
// reading, so the fastest one is the peak).
double dp_peak(int runs) {
  double best = 0;
  for (int i = 0; i < runs; ++i) {
    const double t0 = now_s();
    const double flops = cpu::dot_probe(20'000'000, cpu_info().best);
    best = std::max(best, flops / (now_s() - t0) / 1e9);
  }
  return best;
}

// A decode row against the read probe: after one warm-up, `runs` repetitions of (probe, one timed call, probe);
// returns the repetition with the median ratio of bytes / time to the mean of its two probes, so a bandwidth swing
// of the VM between repetitions does not mix one repetition's time with another's probe.
struct VsProbe {
  double s, bw;
};
VsProbe time_vs_probe(int runs, double bytes, const std::function<void()>& fn) {
  fn();
  std::vector<VsProbe> reps;
  for (int i = 0; i < runs; ++i) {
    const double bw0 = read_probe(1);
    const double t0 = now_s();
    fn();
    const double s = now_s() - t0;
    reps.push_back({s, (bw0 + read_probe(1)) / 2});
  }
  std::sort(reps.begin(), reps.end(), [&](const VsProbe& a, const VsProbe& b) { return bytes / a.s / a.bw < bytes / b.s / b.bw; });
  return reps[reps.size() / 2];
}

struct Problem {
  int64_t seqs, q_len, kv_len, qh, kvh, hd, bs;
  bool huge;
  HostBuf k, v;
  std::vector<uint16_t> q;
  std::vector<float> out;
  std::vector<int32_t> bt, kvl, ql;
  int64_t pages = 0, max_blocks = 0;
  static size_t pool_elems(int64_t s, int64_t L, int64_t kvh, int64_t hd, int64_t bs) {
    return static_cast<size_t>(s * ((L + bs - 1) / bs) * kvh * bs * hd);
  }
  Problem(int64_t s, int64_t Q, int64_t L, int64_t qh_, int64_t kvh_, int64_t hd_, int64_t bs_, bool huge_ = true)
      : seqs(s), q_len(Q), kv_len(L), qh(qh_), kvh(kvh_), hd(hd_), bs(bs_), huge(huge_),
        k(pool_elems(s, L, kvh_, hd_, bs_), huge_), v(pool_elems(s, L, kvh_, hd_, bs_), huge_) {
    max_blocks = (L + bs - 1) / bs;
    pages = seqs * max_blocks;
    const size_t elems = k.n;
    uint32_t x = 12345;
    for (size_t i = 0; i < elems; ++i) {
      x = x * 1664525u + 1013904223u;
      k[i] = f32_to_bf16(static_cast<float>(static_cast<int32_t>(x) >> 8) * 1e-7f);
      v[i] = f32_to_bf16(static_cast<float>(static_cast<int32_t>(x >> 3) >> 8) * 1e-7f);
    }
    q.resize(static_cast<size_t>(seqs * Q * qh * hd));
    for (size_t i = 0; i < q.size(); ++i) q[i] = f32_to_bf16(static_cast<float>((i * 7919) % 1000) * 1e-3f - 0.5f);
    out.resize(q.size());
    // pages of a sequence scattered: sequence s block b -> page b * seqs + s
    for (int64_t s2 = 0; s2 < seqs; ++s2) {
      for (int64_t b = 0; b < max_blocks; ++b) bt.push_back(static_cast<int32_t>(b * seqs + s2));
      kvl.push_back(static_cast<int32_t>(L));
      ql.push_back(static_cast<int32_t>(Q));
    }
  }
  cpu::AttentionArgs args() {
    cpu::AttentionArgs a{};
    a.q = q.data();
    a.k = k.data();
    a.v = v.data();
    a.out = out.data();
    a.block_tables = bt.data();
    a.kv_lens = kvl.data();
    a.q_lens = ql.data();
    a.q_dtype = DType::BF16;
    a.kv_dtype = DType::BF16;
    a.out_dtype = DType::F32;
    a.num_seqs = seqs;
    a.max_blocks = max_blocks;
    a.num_pages = pages;
    a.total_q = seqs * q_len;
    a.q_heads = qh;
    a.kv_heads = kvh;
    a.head_dim = hd;
    a.block_size = bs;
    a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
    return a;
  }
  double kv_bytes() const { return static_cast<double>(seqs) * kv_len * kvh * hd * 2 * 2; }
  // 4 * hd FLOP per (query head, attended key): q.k and p.v
  double flops() const {
    double pairs = 0;
    for (int64_t i = 0; i < q_len; ++i) pairs += static_cast<double>(kv_len - q_len + i + 1);
    return 4.0 * hd * qh * pairs * seqs;
  }
  std::string name() const {
    return std::string(huge ? "" : "4K-pages ") + "seqs=" + std::to_string(seqs) + " q=" + std::to_string(q_len) + " kv=" + std::to_string(kv_len) +
           " heads=" + std::to_string(qh) + "/" + std::to_string(kvh) + " hd=" + std::to_string(hd) + " bs=" + std::to_string(bs);
  }
};

// The read side of a decode row: every sequence's K and V pages read once in the kernel's order (per page, per kv
// head, the K segment then the V segment), with cpu::read_sum and nothing else, sequences spread over the pool: the
// bandwidth this scattered layout allows, next to the sequential probe.
double pattern_read(Problem& p, int runs) {
  const size_t seg = static_cast<size_t>(p.bs * p.hd), page = seg * static_cast<size_t>(p.kvh);  // bf16 elements
  std::vector<float> part(static_cast<size_t>(p.seqs));
  return time_it(runs, [&] {
    ThreadPool::global().parallel_for(static_cast<size_t>(p.seqs), 1, [&](size_t b, size_t e) {
      for (size_t s = b; s < e; ++s) {
        float acc = 0;
        for (int64_t blk = 0; blk < p.max_blocks; ++blk) {
          const size_t pg = static_cast<size_t>(p.bt[s * p.max_blocks + blk]);
          for (int64_t u = 0; u < p.kvh; ++u) {
            acc += cpu::read_sum(reinterpret_cast<const float*>(p.k.data() + pg * page + u * seg), seg / 2);
            acc += cpu::read_sum(reinterpret_cast<const float*>(p.v.data() + pg * page + u * seg), seg / 2);
          }
        }
        part[s] = acc;
      }
    });
    g_sink = part[0];
  });
}

// The floor: per (sequence, query head) a plain scalar loop over its kv head's pages, decode only, one thread per
// (sequence, head) range of the pool, K/V re-read for every query head.
void naive_decode(Problem& p) {
  const int64_t g = p.qh / p.kvh;
  ThreadPool::global().parallel_for(static_cast<size_t>(p.seqs * p.qh), 1, [&](size_t b, size_t e) {
    std::vector<float> sc(static_cast<size_t>(p.kv_len));
    for (size_t w = b; w < e; ++w) {
      const int64_t s = static_cast<int64_t>(w) / p.qh, h = static_cast<int64_t>(w) % p.qh, kh = h / g;
      const uint16_t* q = p.q.data() + (s * p.qh + h) * p.hd;
      float m = -INFINITY;
      for (int64_t j = 0; j < p.kv_len; ++j) {
        const size_t off = ((static_cast<size_t>(p.bt[s * p.max_blocks + j / p.bs]) * p.kvh + kh) * p.bs + j % p.bs) * p.hd;
        float d = 0;
        for (int64_t x = 0; x < p.hd; ++x) d += bf16_to_f32(q[x]) * bf16_to_f32(p.k[off + x]);
        sc[j] = d;
        m = std::max(m, d);
      }
      float l = 0;
      float* o = p.out.data() + (s * p.qh + h) * p.hd;
      std::fill(o, o + p.hd, 0.0f);
      for (int64_t j = 0; j < p.kv_len; ++j) {
        const float pj = std::exp(sc[j] - m);
        l += pj;
        const size_t off = ((static_cast<size_t>(p.bt[s * p.max_blocks + j / p.bs]) * p.kvh + kh) * p.bs + j % p.bs) * p.hd;
        for (int64_t x = 0; x < p.hd; ++x) o[x] += pj * bf16_to_f32(p.v[off + x]);
      }
      for (int64_t x = 0; x < p.hd; ++x) o[x] /= l;
    }
  });
}

std::string iso_now() {
  char buf[32];
  std::time_t t = std::time(nullptr);
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

std::string esc(const std::string& s) {
  std::string r;
  for (char c : s) {
    if (c == '"' || c == '\\') r += '\\';
    r += c;
  }
  return r;
}

}  // namespace

int attention_bench_main(int argc, char** argv) {
  std::string json;
  bool quick = false;
  for (int i = 0; i < argc; ++i) {
    if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) json = argv[++i];
    else if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    else {
      std::fprintf(stderr, "usage: moe-native bench-attention [--json PATH] [--quick]\n");
      return 2;
    }
  }
  const int runs = quick ? 1 : 3;
  const CpuInfo& ci = cpu_info();
  std::printf("moe-native bench-attention %s\ncpu: %s, %d logical cores, best tier %s, thread pool %d\n", iso_now().c_str(),
              ci.model.c_str(), ci.logical_cores, isa_name(ci.best), ThreadPool::global().size());
  const double bw = read_probe(runs);
  double peak = dp_peak(3);
  emit({"probe", "cpu", "streaming read, 1 GiB (cpu::read_probe)", "GB/s", "", 0, bw, 0});
  const std::string peak_of = cpu::dot_probe_op(ci.best);
  emit({"probe", "cpu", peak_of + " register peak", "GFLOP/s", "", 0, peak, 0});
  const std::string bw_src = "read probe before and after the repetition";
  const std::string pk_src = peak_of + " peak: best reading of this run";

  std::vector<Isa> tiers;
  for (Isa t : {Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2})
    if (static_cast<int>(t) <= static_cast<int>(ci.best)) tiers.push_back(t);

  // decode
  struct D { int64_t L, qh, kvh, bs; bool all_tiers; };
  std::vector<D> decodes = {{4096, 32, 8, 16, true}, {1024, 32, 8, 64, false}, {4096, 32, 8, 64, true},
                            {8192, 32, 8, 64, false}, {4096, 32, 4, 16, false}, {4096, 32, 4, 64, false},
                            {4096, 8, 8, 16, false}, {4096, 8, 8, 64, false}, {4096, 64, 4, 64, false}};
  if (quick) decodes = {{4096, 32, 8, 64, true}};
  for (const D& d : decodes) {
    Problem p(64, 1, d.L, d.qh, d.kvh, 128, d.bs);
    for (Isa t : tiers) {
      if (!d.all_tiers && t != tiers.front()) continue;
      cpu::AttentionArgs a = p.args();
      Isa ran = t;
      const VsProbe r = time_vs_probe(runs, p.kv_bytes(), [&] { ran = cpu::attention(a, t); });
      emit({"decode", std::string("cpu-") + isa_name(ran), p.name(), "GB/s", bw_src, r.s * 1e3, p.kv_bytes() / r.s / 1e9, r.bw});
      if (t == tiers.front()) {
        const double sr = pattern_read(p, runs);
        if (sr > 0)
          emit({"decode-read", "cpu", p.name() + " (K/V read only, same order)", "GB/s", "", sr * 1e3, p.kv_bytes() / sr / 1e9, 0});
        // The compute side of the same row: every sequence's block table points at the same 8 pages (K/V stay
        // in cache), so the time is the kernel's work alone; the decode row's time against max(this, streaming)
        // shows how well loads and compute overlap (they add up when they do not).
        std::vector<int32_t> cached(p.bt.size());
        for (size_t i = 0; i < cached.size(); ++i) cached[i] = static_cast<int32_t>(i % static_cast<size_t>(p.max_blocks) % 8);
        cpu::AttentionArgs c = a;
        c.block_tables = cached.data();
        const double sc = time_it(runs, [&] { cpu::attention(c, t); });
        emit({"decode-cached", std::string("cpu-") + isa_name(ran), p.name() + " (K/V in cache)", "GB/s", "", sc * 1e3,
              p.kv_bytes() / sc / 1e9, 0});
      }
    }
    if (d.all_tiers) {
      const VsProbe r = time_vs_probe(1, p.kv_bytes(), [&] { naive_decode(p); });
      emit({"decode", "naive-scalar", p.name() + " (KV bytes once)", "GB/s", bw_src, r.s * 1e3, p.kv_bytes() / r.s / 1e9, r.bw});
    }
  }
  {  // the same decode shape without transparent huge pages (4 KiB OS pages): the TLB cost of scattered pages
    Problem p(64, 1, 4096, 32, 8, 128, 64, false);
    cpu::AttentionArgs a = p.args();
    Isa ran = tiers.front();
    const VsProbe r = time_vs_probe(runs, p.kv_bytes(), [&] { ran = cpu::attention(a, tiers.front()); });
    emit({"decode", std::string("cpu-") + isa_name(ran), p.name(), "GB/s", bw_src, r.s * 1e3, p.kv_bytes() / r.s / 1e9, r.bw});
  }
  // prefill
  for (int64_t bs : {16, 64}) {
    Problem p(1, 2048, 2048, 32, 8, 128, bs);
    for (Isa t : tiers) {
      cpu::AttentionArgs a = p.args();
      Isa ran = t;
      peak = std::max(peak, dp_peak(1));  // re-read before each row: the highest reading so far is the peak
      double s = time_it(runs, [&] { ran = cpu::attention(a, t); });
      emit({"prefill", std::string("cpu-") + isa_name(ran), p.name(), "GFLOP/s", pk_src, s * 1e3, p.flops() / s / 1e9, peak});
    }
  }

  // splits: the same call with each split setting, repetitions interleaved (the VM's bandwidth drifts)
  for (const int64_t Q : {int64_t{1}, int64_t{512}}) {
    Problem p(Q == 1 ? 1536 : 16, Q, Q == 1 ? 530 : 512, 32, 8, 128, 64);
    // the last setting again on the next tier down (AVX-512F's f32 FMAs where the best is AVX-512 BF16): on the
    // H200 host's Xeon the f32 tier read 98 GB/s against the bf16 tier's 85 at block 64 (2026-11-27)
    struct S { const char* name; int64_t num_splits, split_tokens; Isa tier; };
    std::vector<S> settings = {{"numSplits 4", 4, 0, tiers.front()}, {"one split", 1, 0, tiers.front()}, {"splitTokens 1024", 0, 1024, tiers.front()}};
    if (tiers.size() > 1) settings.push_back({"splitTokens 1024, the tier below", 0, 1024, tiers[1]});
    const size_t ns = settings.size();
    std::vector<std::vector<double>> t(ns);
    std::vector<Isa> ran(ns, tiers.front());
    for (int r = 0; r < runs + 1; ++r)  // the first round warms up
      for (size_t i = 0; i < ns; ++i) {
        cpu::AttentionArgs a = p.args();
        a.num_splits = settings[i].num_splits;
        a.split_tokens = settings[i].split_tokens;
        const auto t0 = std::chrono::steady_clock::now();
        ran[i] = cpu::attention(a, settings[i].tier);
        const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (r > 0) t[i].push_back(sec);
      }
    for (size_t i = 0; i < ns; ++i) {
      std::sort(t[i].begin(), t[i].end());
      const double sec = t[i][t[i].size() / 2];
      if (Q == 1)
        emit({"decode-splits", std::string("cpu-") + isa_name(ran[i]), p.name() + " " + settings[i].name, "GB/s", "", sec * 1e3,
              p.kv_bytes() / sec / 1e9, 0});
      else
        emit({"prefill-splits", std::string("cpu-") + isa_name(ran[i]), p.name() + " " + settings[i].name, "GFLOP/s", pk_src,
              sec * 1e3, p.flops() / sec / 1e9, peak});
    }
  }

  if (!json.empty()) {
    FILE* f = std::fopen(json.c_str(), "w");
    if (!f) {
      std::fprintf(stderr, "cannot write %s\n", json.c_str());
      return 1;
    }
    std::fprintf(f, "{\n  \"date\": \"%s\",\n  \"machine\": {\"cpu\": \"%s\", \"cores\": %d, \"threads\": %d, \"isa\": \"%s\"},\n",
                 iso_now().c_str(), esc(ci.model).c_str(), ci.logical_cores, ThreadPool::global().size(), isa_name(ci.best));
    std::fprintf(f, "  \"results\": [\n");
    for (size_t i = 0; i < g_rows.size(); ++i) {
      const Row& r = g_rows[i];
      std::fprintf(f,
                   "    {\"op\": \"%s\", \"backend\": \"%s\", \"shape\": \"%s\", \"time_ms\": %.4f, \"value\": %.4f, \"unit\": "
                   "\"%s\", \"roofline\": %.4f, \"fraction\": %.4f, \"roofline_source\": \"%s\"}%s\n",
                   r.op.c_str(), r.backend.c_str(), esc(r.shape).c_str(), r.ms, r.value, r.unit.c_str(), r.roof,
                   r.roof > 0 ? r.value / r.roof : 0.0, r.roof_src.c_str(), i + 1 < g_rows.size() ? "," : "");
    }
    std::fprintf(f, "  ]\n}\n");
    std::fclose(f);
    std::printf("wrote %s\n", json.c_str());
  }
  return 0;
}

}  // namespace moe::native
