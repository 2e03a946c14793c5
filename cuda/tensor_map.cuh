// Host side of the TMA (cp.async.bulk.tensor) loads of the wgmma path (moe_experts_wgmma_tma.cuh): 2D bf16 tensor
// maps of the experts' weights, encoded with the driver's cuTensorMapEncodeTiled (reached through the runtime's
// driver entry point: no link against libcuda) and kept on the device per (device, stream) like the pointer tables
// (table_cache.cuh), keyed by the table and the shapes; and the map of one matrix (a dense GEMM's b).
// Map of a row-major [rows, cols] bf16 matrix (cols contiguous, the K of its GEMM), box [box_rows, 64]: a box
// lands in shared memory as box_rows rows of 128 bytes with the 128B swizzle (16-byte chunk c of row r at
// r * 128 + ((c ^ (r % 8)) * 16) from a 1024-aligned destination: moe_mma_swz), elements outside the matrix
// zero-filled (rows past the expert's N, columns past K).
#pragma once
#include <cuda.h>  // CUtensorMap and its enums (types only)
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "table_cache.cuh"

namespace moe {
namespace dev {

// The driver's cuTensorMapEncodeTiled, or null when the driver does not offer it (the caller then takes another path).
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
    const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q);
#else
    const cudaError_t err = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &p, cudaEnableDefault, &q);
#endif
    if (err != cudaSuccess || q != cudaDriverEntryPointSuccess) {
      cudaGetLastError();  // not sticky; leave no error behind
      return static_cast<PFN_cuTensorMapEncodeTiled_v12000>(nullptr);
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// *map = the tensor map of `base` [rows, cols] bf16 (row pitch cols * 2 bytes, a multiple of 16; base 16-byte
// aligned) with boxes of [box_rows, 64]; all zero for a null base (an absent expert: never loaded).
inline bool encode_bf16_map(CUtensorMap* map, const void* base, uint64_t rows, uint64_t cols, uint32_t box_rows) {
  std::memset(map, 0, sizeof(CUtensorMap));
  if (base == nullptr) return true;
  const PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
  if (encode == nullptr) return false;
  const cuuint64_t dims[2] = {cols, rows};
  const cuuint64_t strides[1] = {cols * 2};  // bytes between rows (dimension 1)
  const cuuint32_t box[2] = {64, box_rows};
  const cuuint32_t elem[2] = {1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(base), dims, strides, box, elem,
                CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// *out = device copies of the 3 e expert maps of `table` (gate | up | down, e pointers each, null when absent):
// gate and up [inter, h] in boxes of [gate_box, 64], down [h, inter] in boxes of [down_box, 64]; 64-byte aligned
// (scratch allocations are 256-aligned). cudaErrorNotSupported when the driver cannot encode them.
inline cudaError_t expert_maps_on_device(const std::vector<const void*>& table, int64_t e, int64_t h, int64_t inter,
                                         uint32_t gate_box, uint32_t down_box, int device, cudaStream_t s,
                                         const CUtensorMap** out) {
  std::vector<const void*> key(table.begin(), table.begin() + 3 * e);
  for (int64_t v : {h, inter, static_cast<int64_t>(gate_box), static_cast<int64_t>(down_box)})
    key.push_back(reinterpret_cast<const void*>(static_cast<uintptr_t>(v)));
  void* dev = nullptr;
  const cudaError_t err = cached_on_device<1>(
      key,
      [&](std::vector<unsigned char>& bytes) {
        std::vector<CUtensorMap> maps(static_cast<size_t>(3 * e));
        for (int64_t i = 0; i < e; ++i) {
          if (!encode_bf16_map(&maps[i], table[i], inter, h, gate_box) ||
              !encode_bf16_map(&maps[e + i], table[e + i], inter, h, gate_box) ||
              !encode_bf16_map(&maps[2 * e + i], table[2 * e + i], h, inter, down_box))
            return cudaErrorNotSupported;
        }
        bytes.resize(maps.size() * sizeof(CUtensorMap));
        std::memcpy(bytes.data(), maps.data(), bytes.size());
        return cudaSuccess;
      },
      device, s, &dev);
  *out = static_cast<const CUtensorMap*>(dev);
  return err;
}

// *out = a device copy of the map of `base` [rows, cols] bf16 in boxes of [box_rows, 64] (a dense GEMM's b), cached
// per (device, stream) like the expert maps. cudaErrorNotSupported when the driver cannot encode it.
inline cudaError_t matrix_map_on_device(const void* base, int64_t rows, int64_t cols, uint32_t box_rows, int device,
                                        cudaStream_t s, const CUtensorMap** out) {
  const std::vector<const void*> key = {base, reinterpret_cast<const void*>(static_cast<uintptr_t>(rows)),
                                        reinterpret_cast<const void*>(static_cast<uintptr_t>(cols)),
                                        reinterpret_cast<const void*>(static_cast<uintptr_t>(box_rows))};
  void* dev = nullptr;
  const cudaError_t err = cached_on_device<2>(
      key,
      [&](std::vector<unsigned char>& bytes) {
        CUtensorMap map;
        if (!encode_bf16_map(&map, base, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), box_rows))
          return cudaErrorNotSupported;
        bytes.resize(sizeof(CUtensorMap));
        std::memcpy(bytes.data(), &map, bytes.size());
        return cudaSuccess;
      },
      device, s, &dev);
  *out = static_cast<const CUtensorMap*>(dev);
  return err;
}

}  // namespace dev
}  // namespace moe
