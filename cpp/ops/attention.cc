// attention(stream, { q, qDtype, k, v, kvDtype, out, outDtype, blockTables, kvLens, qLens, sinks?, numSeqs,
//   maxBlocks, numPages, totalQ, qHeads, kvHeads, headDim, blockSize, scale, slidingWindow, numSplits, splitTokens,
//   threads?, isa? },
//   cancel?) -> Promise<tier>
// Paged-KV attention on the CPU (cpu/attention.h): q/out [totalQ, qHeads, headDim], k/v pages
// [numPages, kvHeads, blockSize, headDim], blockTables [numSeqs, maxBlocks] i32, kvLens/qLens [numSeqs] i32,
// sinks [qHeads] f32. A CPU op by design (the KV cache lives in host memory): every tensor must be host-accessible,
// and the stream must be a CPU stream. Block-table contents are validated when the op runs (they may be written
// by earlier ops on the stream): a bad table rejects the Promise with MOE_INVALID_ARGUMENT. threads > 0 caps the pool
// threads it runs on (0 or absent: all).
#include "cpu/attention.h"

#include <string>

#include "napi/op_args.h"

namespace moe::js {

Napi::Value Attention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    OpStart s = begin_op(info, "attention");
    if (s.cuda()) throw_error(env, ErrorCode::InvalidArgument, "attention: runs on CPU streams only (the KV cache is in host memory)");
    cpu::AttentionArgs g{};
    g.q_dtype = s.dtype("qDtype");
    g.kv_dtype = s.dtype("kvDtype");
    g.out_dtype = s.dtype("outDtype");
    g.num_seqs = s.size("numSeqs");
    g.max_blocks = s.size("maxBlocks");
    g.num_pages = s.size("numPages");
    g.total_q = s.size("totalQ");
    g.q_heads = s.size("qHeads");
    g.kv_heads = s.size("kvHeads");
    g.head_dim = s.size("headDim");
    g.block_size = s.size("blockSize");
    g.scale = static_cast<float>(s.number("scale"));
    g.sliding_window = s.size("slidingWindow");
    g.num_splits = s.size("numSplits");
    g.split_tokens = s.size("splitTokens");
    g.threads = s.size_or("threads", 0);
    // Shape-level checks now (contents of the tables when the op runs).
    if (g.q_heads > (1 << 16) || g.kv_heads > (1 << 16) || g.num_seqs > (int64_t{1} << 31) || g.max_blocks > (int64_t{1} << 31))
      throw_error(env, ErrorCode::InvalidArgument, "attention: head or sequence counts out of range");

    struct T { const char* name; DType dtype; uint64_t elems; TensorArg arg; };
    const uint64_t qe = static_cast<uint64_t>(g.total_q) * g.q_heads * g.head_dim;
    const uint64_t kve = static_cast<uint64_t>(g.num_pages) * g.kv_heads * g.block_size * g.head_dim;
    T ts[6] = {{"q", g.q_dtype, qe, {}},
               {"k", g.kv_dtype, kve, {}},
               {"v", g.kv_dtype, kve, {}},
               {"out", g.out_dtype, qe, {}},
               {"blockTables", DType::I32, static_cast<uint64_t>(g.num_seqs) * g.max_blocks, {}},
               {"kvLens", DType::I32, static_cast<uint64_t>(g.num_seqs), {}}};
    for (T& t : ts) {
      t.arg = read_tensor(*s.op, s.params.Get(t.name), t.name);
      check_placement(env, t.arg, *s.stream, "attention", t.name, false);
      check_aligned(env, t.arg, t.dtype, "attention", t.name);
      if (t.arg.bytes < t.elems * dtype_size(t.dtype))
        throw_error(env, ErrorCode::InvalidArgument, std::string("attention: ") + t.name + " must hold at least " +
                                                         std::to_string(t.elems * dtype_size(t.dtype)) + " bytes, received " +
                                                         std::to_string(t.arg.bytes));
    }
    TensorArg ql = read_tensor(*s.op, s.params.Get("qLens"), "qLens");
    check_placement(env, ql, *s.stream, "attention", "qLens", false);
    check_aligned(env, ql, DType::I32, "attention", "qLens");
    check_bytes(env, ql, static_cast<uint64_t>(g.num_seqs) * 4, "attention", "qLens");
    Napi::Value sv = s.params.Get("sinks");
    if (!sv.IsUndefined() && !sv.IsNull()) {
      TensorArg sk = read_tensor(*s.op, sv, "sinks");
      check_placement(env, sk, *s.stream, "attention", "sinks", false);
      check_aligned(env, sk, DType::F32, "attention", "sinks");
      check_bytes(env, sk, static_cast<uint64_t>(g.q_heads) * 4, "attention", "sinks");
      g.sinks = reinterpret_cast<const float*>(sk.ptr);
    }
    g.q = ts[0].arg.ptr;
    g.k = ts[1].arg.ptr;
    g.v = ts[2].arg.ptr;
    g.out = ts[3].arg.ptr;
    g.block_tables = reinterpret_cast<const int32_t*>(ts[4].arg.ptr);
    g.kv_lens = reinterpret_cast<const int32_t*>(ts[5].arg.ptr);
    g.q_lens = reinterpret_cast<const int32_t*>(ql.ptr);

    auto ran = std::make_shared<int>(-1);
    resolve_with_tier(*s.op, ran);
    Isa isa = s.isa;
    s.op->work = [g, isa, ran](const ExecContext& ctx) { *ran = static_cast<int>(cpu::attention(g, isa, ctx.cancel)); };
    return submit_op(s);
  });
}

}  // namespace moe::js
