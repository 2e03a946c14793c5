// float64 and scalar references of the op tests (see ref.h).
#include "ref.h"

#include <cmath>
#include <cstring>

namespace moe::native {

float raw_to_f32(DType t, uint32_t raw) {
  switch (t) {
    case DType::F32: return bits_f32(raw);
    case DType::F16: return f16_to_f32(static_cast<uint16_t>(raw));
    case DType::BF16: return bf16_to_f32(static_cast<uint16_t>(raw));
    default: return 0.0f;
  }
}

uint32_t f32_to_raw(DType t, float f) {
  switch (t) {
    case DType::F32: return f32_bits(f);
    case DType::F16: return f32_to_f16(f);
    case DType::BF16: return f32_to_bf16(f);
    default: return 0;
  }
}

uint32_t load_raw(DType t, const void* base, size_t i) {
  if (dtype_size(t) == 4) {
    uint32_t v;
    std::memcpy(&v, static_cast<const char*>(base) + 4 * i, 4);
    return v;
  }
  uint16_t v;
  std::memcpy(&v, static_cast<const char*>(base) + 2 * i, 2);
  return v;
}

void store_raw(DType t, void* base, size_t i, uint32_t raw) {
  if (dtype_size(t) == 4) {
    std::memcpy(static_cast<char*>(base) + 4 * i, &raw, 4);
  } else {
    uint16_t v = static_cast<uint16_t>(raw);
    std::memcpy(static_cast<char*>(base) + 2 * i, &v, 2);
  }
}

uint32_t convert_ref(DType src, DType dst, uint32_t raw) {
  if (src == dst) return raw;
  return f32_to_raw(dst, raw_to_f32(src, raw));
}

std::vector<double> gemm_ref(DType ab, const void* a, const void* b, int64_t m, int64_t n, int64_t k, int64_t lda,
                             int64_t ldb) {
  // Widen once: [m, k] and [n, k] in float64.
  std::vector<double> a64(static_cast<size_t>(m * k)), b64(static_cast<size_t>(n * k));
  for (int64_t i = 0; i < m; i++)
    for (int64_t p = 0; p < k; p++)
      a64[i * k + p] = raw_to_f32(ab, load_raw(ab, a, static_cast<size_t>(i * lda + p)));
  for (int64_t j = 0; j < n; j++)
    for (int64_t p = 0; p < k; p++)
      b64[j * k + p] = raw_to_f32(ab, load_raw(ab, b, static_cast<size_t>(j * ldb + p)));
  std::vector<double> out(static_cast<size_t>(m * n), 0.0);
  for (int64_t i = 0; i < m; i++) {
    const double* ar = &a64[i * k];
    for (int64_t j = 0; j < n; j++) {
      const double* br = &b64[j * k];
      double s = 0.0;
      for (int64_t p = 0; p < k; p++) s += ar[p] * br[p];
      out[i * n + j] = s;
    }
  }
  return out;
}

ErrorStats compare(const std::vector<double>& out, const std::vector<double>& ref) {
  ErrorStats st;
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < out.size(); i++) {
    if (!std::isfinite(out[i])) st.non_finite++;
    double d = out[i] - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
    double ad = std::fabs(d);
    if (!(ad <= st.max_abs)) st.max_abs = ad;  // also propagates NaN
    st.max_ref = std::fmax(st.max_ref, std::fabs(ref[i]));
  }
  st.nmse = den > 0.0 ? num / den : (num > 0.0 ? INFINITY : 0.0);
  if (st.non_finite > 0) st.nmse = NAN;
  return st;
}

}  // namespace moe::native
