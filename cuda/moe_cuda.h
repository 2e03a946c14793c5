/* C ABI of everything CUDA: the only way host code in cpp/ (and test/native/) reaches the GPU.
 * Plain C types only, so it compiles without CUDA headers; every function returns a cudaError_t value as int
 * (0 = success) and never aborts or throws. Stream, event and memory handles are opaque pointers
 * (cudaStream_t / cudaEvent_t / device pointers). Implemented by the .cu files in cuda/; only linked when MOE_WITH_CUDA=1.
 *
 * Ops follow the three-layer rule (DESIGN.md section 4): cuda/<op>.cuh holds the kernel, cuda/<op>.cu the
 * launcher declared here; cpp/ops/<op>.cc checks arguments and calls the launcher.
 */
#ifndef MOE_CUDA_H_
#define MOE_CUDA_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* --- errors and versions --- */
const char* moe_cuda_error_name(int err);    /* "cudaErrorInsufficientDriver" */
const char* moe_cuda_error_string(int err);  /* human readable */
int moe_cuda_driver_version(int* version);   /* 0 when no driver; e.g. 13000 */
int moe_cuda_runtime_version(int* version);
int moe_cuda_device_count(int* count);       /* cudaErrorInsufficientDriver (35) / cudaErrorNoDevice (100) without GPU */

typedef struct MoeCudaDeviceInfo {
  char name[256];
  int major, minor;           /* compute capability */
  int sm_count;
  size_t total_memory;        /* bytes */
  int pci_bus_id;
  int clock_khz;              /* 0 where the runtime no longer reports it */
  int memory_bus_width_bits;
  int l2_bytes;
  int can_map_host_memory;
  int concurrent_copy_engines; /* asyncEngineCount */
} MoeCudaDeviceInfo;
/* Properties only: creates no context. Free memory: moe_cuda_mem_info (which does). */
int moe_cuda_device_info(int device, MoeCudaDeviceInfo* out);

/* --- memory --- */
int moe_cuda_malloc(int device, size_t bytes, void** ptr);
int moe_cuda_free(int device, void* ptr);
/* Page-locked host memory; portable + mapped (usable by every device, and readable from kernels through UVA). */
int moe_cuda_host_alloc(size_t bytes, void** ptr);
int moe_cuda_host_free(void* ptr);
int moe_cuda_host_register(void* ptr, size_t bytes);
int moe_cuda_host_unregister(void* ptr);
int moe_cuda_mem_info(int device, size_t* free_bytes, size_t* total_bytes);

/* --- streams and events (created on `device`) --- */
/* priority: 0 = normal, 1 = high (the runtime's greatest priority). Non-blocking w.r.t. the legacy stream. */
int moe_cuda_stream_create(int device, int priority, void** stream);
int moe_cuda_stream_destroy(int device, void* stream);
int moe_cuda_stream_synchronize(int device, void* stream);
int moe_cuda_stream_wait_event(int device, void* stream, void* event);
/* Calls fn(user) on a runtime thread once all earlier work on the stream finished; fn must not call CUDA. */
int moe_cuda_launch_host_func(int device, void* stream, void (*fn)(void*), void* user);

/* timing: 0 no timing, 1 timing, 2 no timing + blocking sync (cudaEventSynchronize sleeps instead of spinning:
 * the completion events of cpp/napi/stream.cc) */
int moe_cuda_event_create(int device, int timing, void** event);
int moe_cuda_event_destroy(int device, void* event);
int moe_cuda_event_record(int device, void* event, void* stream);
int moe_cuda_event_synchronize(int device, void* event);
/* *done = 1 when complete, 0 when pending (cudaErrorNotReady is not an error here). */
int moe_cuda_event_query(int device, void* event, int* done);
int moe_cuda_event_elapsed_ms(float* ms, void* start, void* end);

/* --- copies: any direction (UVA), asynchronous on `stream` --- */
int moe_cuda_memcpy_async(int device, void* dst, const void* src, size_t bytes, void* stream);
int moe_cuda_memset_async(int device, void* dst, int value, size_t bytes, void* stream);

/* --- ops (dtype codes are moe::DType: 0 f32, 1 f16, 2 bf16, 3 i32, 4 u8) --- */
/* dst[i] = convert(src[i]); f32/f16/bf16 in any pair; round to nearest even. */
int moe_cuda_convert(int device, const void* src, int src_dtype, void* dst, int dst_dtype, size_t n, void* stream);
/* out[i] = a[i] + b[i], computed in f32; dtype f32/f16/bf16. */
int moe_cuda_add(int device, const void* a, const void* b, void* out, int dtype, size_t n, void* stream);
/* Row broadcast (add.cu): out[r,j] = a[r,j] + b[j], a/out [n/b_len, b_len], b [b_len]; n a multiple of b_len > 0. */
int moe_cuda_add_bcast(int device, const void* a, const void* b, void* out, int dtype, size_t n, size_t b_len,
                       void* stream);
/* out[m,n] = sum_k a[m,k] * b[n,k]; ab_dtype f32|bf16, out_dtype f32|bf16; row strides in elements. */
int moe_cuda_gemm(int device, const void* a, const void* b, void* out, int ab_dtype, int out_dtype, int64_t m,
                  int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc, void* stream);
/* Grouped GEMM (issue 3; grouped_gemm.cu): rows offsets[x]..offsets[x+1] of a [rows,k] bf16 times b[x] [n,k] bf16
 * into the same rows of out [rows,n] (out_dtype f32|bf16); offsets [g+1] and b [g] are host arrays. */
int moe_cuda_grouped_gemm(int device, const void* a, const int32_t* offsets, const void* const* b, void* out,
                          int out_dtype, int64_t g_count, int64_t n, int64_t k, int64_t lda, int64_t ldb,
                          int64_t ldc, void* stream);

/* Rotary embedding in place (issue 5; rope.cu, HF rotate_half, cpp/cpu/rope.h): q [tokens,q_heads,head_dim],
 * k [tokens,kv_heads,head_dim] dtype f32|bf16 (either NULL with 0 heads), positions [tokens] i32, inv_freq
 * [rotary_dim/2] f32. */
int moe_cuda_rope(int device, void* q, void* k, const int32_t* positions, const float* inv_freq, int dtype, int64_t tokens,
                  int64_t q_heads, int64_t kv_heads, int64_t head_dim, int64_t rotary_dim, float attention_scaling,
                  void* stream);

/* RMSNorm (rms_norm.cu, cpp/cpu/rms_norm.h): x [rows,d] (x_dtype f32|bf16; when add != NULL: x f32 and
 * x += add [rows,d] add_dtype f32|bf16 in place first), weight [d] w_dtype, out [rows,d] out_dtype (may be x);
 * out = x / sqrt(mean(x^2) + eps) * weight in f32; eps finite >= 0; d < 2^31. */
int moe_cuda_rms_norm(int device, void* x, int x_dtype, const void* add, int add_dtype, const void* weight,
                      int w_dtype, void* out, int out_dtype, int64_t rows, int64_t d, float eps, void* stream);

/* --- fused MoE (issue 3; router_topk.cu, moe_experts.cu) --- */
/* logits [t,e] f32 -> topk_ids [t,k] i32, topk_weights [t,k] f32; scoring 0 softmax, 1 sigmoid (bias [e] or NULL,
 * selection only); e <= 1024. Ties to the lower expert id. */
int moe_cuda_router_topk(int device, const float* logits, const float* bias, int32_t* topk_ids, float* topk_weights,
                         int64_t t, int64_t e, int64_t k, int scoring, int renormalize, void* stream);
/* vLLM moe_align_block_size: counts [e], offsets [e+1] (padded to block), sorted_token_ids [capacity] (slot ids
 * t*k+j ascending per expert; padding = t*k); capacity >= t*k + e*(block-1). Ids outside [0,e) are skipped; an id
 * outside [-1,e) is also reported in error (NULL: not reported), 3 i32 in mapped pinned host memory (zeroed by the
 * caller): [0] = 1, [1] its smallest index, [2] the id. Read it once the stream reached the op (no sync here). */
int moe_cuda_moe_align(int device, const int32_t* topk_ids, int32_t* counts, int32_t* offsets,
                       int32_t* sorted_token_ids, int64_t t, int64_t k, int64_t e, int64_t block, int64_t capacity,
                       int32_t* error, void* stream);
/* out [t,h] bf16 = sum_j w[t,j] down_e(silu(gate_e x) * up_e x); gate/up/down: HOST arrays of e DEVICE pointers
 * ([inter,h], [inter,h], [h,inter] bf16; NULL = absent, contributes zero), uploaded on the stream. Ids outside
 * [-1,e) contribute zero and are reported in error as by moe_cuda_moe_align (NULL: not reported). */
int moe_cuda_moe_experts(int device, const void* x, const int32_t* topk_ids, const float* topk_weights,
                         const void* const* gate, const void* const* up, const void* const* down, void* out,
                         int64_t t, int64_t h, int64_t inter, int64_t e, int64_t k, int32_t* error, void* stream);
/* moe_cuda_moe_experts with the gpt-oss options: gate_bias/up_bias/down_bias NULL (no biases) or HOST arrays of e
 * DEVICE pointers ([inter], [inter], [h] f32; NULL = that expert has none), added to gate_e x / up_e x before the
 * activation and to down_e(a) before the weight; activation 0 silu, 1 swiglu-oai (min(g,limit), clamp(u,+-limit),
 * (u+1) * g * sigmoid(alpha g); alpha finite, limit finite > 0). */
int moe_cuda_moe_experts_ex(int device, const void* x, const int32_t* topk_ids, const float* topk_weights,
                            const void* const* gate, const void* const* up, const void* const* down,
                            const void* const* gate_bias, const void* const* up_bias, const void* const* down_bias,
                            void* out, int64_t t, int64_t h, int64_t inter, int64_t e, int64_t k, int activation,
                            float alpha, float limit, int32_t* error, void* stream);
/* Parts mode of moe_cuda_moe_experts_ex (module-based batching, moe_experts.cu): parts [t,k,h] f32 gets, for every
 * (t,j) whose id is a present expert, that expert's unweighted output row down_e(a) (+ bd_e), the other rows left
 * untouched; no routing weights. moe_cuda_moe_combine over the rows of any partition of the experts into chunks
 * then gives bitwise moe_cuda_moe_experts_ex's output (it ends with the same combine). */
int moe_cuda_moe_experts_parts(int device, const void* x, const int32_t* topk_ids, const void* const* gate,
                               const void* const* up, const void* const* down, const void* const* gate_bias,
                               const void* const* up_bias, const void* const* down_bias, float* parts, int64_t t,
                               int64_t h, int64_t inter, int64_t e, int64_t k, int activation, float alpha,
                               float limit, int32_t* error, void* stream);
/* out [t,h] bf16 = bf16(sum over j in order of w[t,j] * parts[t,j]) (f32, fmaf per term; moe_combine.cu) over the
 * slots with id >= 0 and, when present (a DEVICE array of e pointers) is not NULL, id < e and present[id] not NULL.
 * Ids < -1 are skipped and reported in error (NULL: not reported) like moe_cuda_moe_align: [0] = 1, [1] the
 * smallest index, [2] the id. */
int moe_cuda_moe_combine(int device, const float* parts, const int32_t* topk_ids, const float* topk_weights,
                         const void* const* present, int64_t e, void* out, int64_t t, int64_t h, int64_t k,
                         int32_t* error, void* stream);

/* dst[i] = src[ids[i]] for rows of row_bytes (strides in bytes); id -1 or out of range gives a zero row. src may
 * be mapped pinned host memory (zero-copy gather over PCIe) or device memory. */
int moe_cuda_gather_rows(int device, const void* src, int64_t src_rows, int64_t src_stride, int64_t row_bytes,
                         const int32_t* ids, int64_t n, void* dst, int64_t dst_stride, void* stream);

/* out[r] = the id of the highest logit of row r of logits [rows, vocab] f32, ties to the lower id, NaN never
 * chosen, 0 for a row without a logit above -inf (cpu/argmax_rows.h's rule): greedy tokens on the device. */
int moe_cuda_argmax_rows(int device, const float* logits, int64_t rows, int64_t vocab, int32_t* out, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* MOE_CUDA_H_ */
