// Single-query attention over a key/value cache, for CPUs: out = softmax(q k^T / sqrt(d)) v for one new token
// of each of B*heads streams, over the first `size` positions of a [B, heads, max_tokens, head_dim] cache.
//
// Why a kernel: a decoding call reads the whole cache and does almost no arithmetic per byte, so its speed is the
// memory bandwidth one core reaches. PyTorch's fused CPU attention is built for many queries and reaches about
// 70 % of a streaming read here; this loop reads every stream's keys and then its values front to back and asks
// for the next rows before it needs them (software prefetch), which brings it to the streaming rate.
// Exact up to float rounding: the same sums in another order.
#include <torch/extension.h>

#include <cmath>
#include <vector>

#if defined(__GNUC__)
#define PREFETCH(p) __builtin_prefetch((p), 0, 3)
#else
#define PREFETCH(p) ((void)0)
#endif
// one binary for every x86-64 CPU of a cluster: the compiler emits AVX-512, AVX2 and baseline versions and picks
// one at load time
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MULTIVERSION __attribute__((target_clones("avx512f", "avx2,fma", "default")))
#else
#define MULTIVERSION
#endif

static constexpr int64_t AHEAD_FLOATS = 1024;  // prefetch 4 KB ahead of the row being read (measured: 1-2 KB is slower)

MULTIVERSION
static void attend(const float* q, const float* k, const float* v, float* out, const float* next_k,
                   int64_t size, int64_t d, float scale, float* p) {
  const int64_t rows_ahead = AHEAD_FLOATS / d > 4 ? AHEAD_FLOATS / d : 4, ahead = rows_ahead * d;
  float top = -INFINITY;
  for (int64_t s = 0; s < size; ++s) {                 // scores: one row of keys each
    const float* row = k + s * d;
    const float* pf = s + rows_ahead < size ? row + ahead : v + (s + rows_ahead - size) * d;   // then the values
    for (int64_t j = 0; j < d; j += 16) PREFETCH(pf + j);
    float dot = 0.f;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < d; ++j) dot += q[j] * row[j];
    p[s] = dot * scale;
    top = p[s] > top ? p[s] : top;
  }
  float total = 0.f;
  for (int64_t s = 0; s < size; ++s) {
    p[s] = std::exp(p[s] - top);
    total += p[s];
  }
  for (int64_t j = 0; j < d; ++j) out[j] = 0.f;
  for (int64_t s = 0; s < size; ++s) {                 // weighted sum of the value rows
    const float* row = v + s * d;
    const float* pf = s + rows_ahead < size ? row + ahead : next_k + (s + rows_ahead - size) * d;  // then the next stream
    for (int64_t j = 0; j < d; j += 16) PREFETCH(pf + j);
    const float w = p[s];
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) out[j] += w * row[j];
  }
  const float inv = 1.f / total;
#pragma omp simd
  for (int64_t j = 0; j < d; ++j) out[j] *= inv;
}

// q: [B, heads, 1, d] (any strides, last one 1); k, v: contiguous [B, heads, max_tokens, d]; returns [B, heads, 1, d]
// laid out as [B, 1, heads, d], so that the caller's transpose to [B, 1, heads * d] is free.
torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, int64_t size) {
  TORCH_CHECK(q.dtype() == torch::kFloat32 && k.dtype() == torch::kFloat32 && v.dtype() == torch::kFloat32,
              "decode_attention: float32 only");
  TORCH_CHECK(k.is_contiguous() && v.is_contiguous() && q.stride(3) == 1, "decode_attention: layout");
  const int64_t B = k.size(0), H = k.size(1), M = k.size(2), d = k.size(3);
  TORCH_CHECK(q.size(2) == 1 && size >= 1 && size <= M, "decode_attention: one query over 1..max_tokens positions");
  auto out = torch::empty({B, 1, H, d}, q.options());
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  const float* Q = q.data_ptr<float>();
  const float* K = k.data_ptr<float>();
  const float* V = v.data_ptr<float>();
  float* O = out.data_ptr<float>();
  const int64_t qb = q.stride(0), qh = q.stride(1), streams = B * H;
  at::parallel_for(0, streams, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> p(size);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / H, h = i % H, next = i + 1 < streams ? i + 1 : i;
      attend(Q + b * qb + h * qh, K + i * M * d, V + i * M * d, O + i * d, K + next * M * d, size, d, scale,
             p.data());
    }
  });
  return out.permute({0, 2, 1, 3});
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("decode_attention", &decode_attention); }
