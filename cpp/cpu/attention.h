// Attention over a paged KV cache in host memory (issue 5): f32 online softmax, GQA, batches that mix decode
// (q_len = 1) and prefill/extend (q_len > 1, causal over an existing prefix), split-KV with log-sum-exp merging,
// optional sliding window and attention sinks.
//
// KV page layout (lib/kv/cache.ts writes it): k and v are each a pool of pages
//   [num_pages][kv_heads][block_size][head_dim]  kv_dtype
// so one (page, kv head) is block_size * head_dim contiguous elements: the kernel reads each K/V page once per kv
// head, for all q_heads / kv_heads query heads of its group together.
//
// Query token i (0-based) of a sequence with kv_len L and q_len Q sits at position L - Q + i and attends to kv
// positions p with p <= L - Q + i, and p > L - Q + i - sliding_window when sliding_window > 0.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../core/cancel.h"
#include "../core/dtype.h"
#include "../core/isa.h"

namespace moe::cpu {

struct AttentionArgs {
  const void* q;             // [total_q, q_heads, head_dim] q_dtype (f32 | bf16); sequences back to back
  const void* k;             // [num_pages, kv_heads, block_size, head_dim] kv_dtype (f32 | f16 | bf16)
  const void* v;             // same shape and dtype as k
  void* out;                 // [total_q, q_heads, head_dim] out_dtype (f32 | bf16)
  const int32_t* block_tables;  // [num_seqs, max_blocks] page ids; entries past ceil(kv_len / block_size) unread
  const int32_t* kv_lens;    // [num_seqs] tokens in the cache per sequence, the new ones included
  const int32_t* q_lens;     // [num_seqs] query tokens per sequence (0 <= q_len <= kv_len); sum == total_q
  const float* sinks;        // [q_heads] f32 attention-sink logits, or nullptr
  DType q_dtype, kv_dtype, out_dtype;
  int64_t num_seqs, max_blocks, num_pages, total_q;
  int64_t q_heads, kv_heads, head_dim, block_size;  // head_dim 64 | 128 | 256; q_heads % kv_heads == 0
  float scale;               // softmax scale (usually 1 / sqrt(head_dim))
  int64_t sliding_window;    // 0: none
  int64_t num_splits;        // KV splits per sequence: 0 = automatic by length, else that many (>= 1)
  int64_t split_tokens;      // > 0: ceil(kv_len / split_tokens) splits per sequence instead (num_splits ignored): a
                             // count that depends on the sequence alone, so its rows do not depend on the batch
  int64_t threads;           // > 0: run on at most this many of the pool's threads (0: all); the same bits with
                             // split_tokens or num_splits set (automatic splits follow the thread count)
};

// Validates every argument, the block tables' contents included (ids in [0, num_pages), enough blocks for kv_len),
// and throws moe::Error(InvalidArgument) naming the first problem. Called by attention() before any work.
void attention_validate(const AttentionArgs& args);

// Multithreaded over (sequence, kv head, query tile, kv split) on ThreadPool::global() (on at most args.threads of
// its threads when set); the cancel token is checked between work items. Returns the tier that ran (Avx512Bf16
// only for bf16 KV; f32/f16 KV run the Avx512 kernels).
// Throws moe::Error(InvalidArgument) for bad arguments, (Cancelled) when cancelled.
Isa attention(const AttentionArgs& args, Isa isa, const CancelToken* cancel = nullptr);

}  // namespace moe::cpu
