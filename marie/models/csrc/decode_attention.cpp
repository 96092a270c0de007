// Decoding attention over a key/value cache, for CPUs. For each of B*heads streams: write the T new keys and values
// at positions start .. start+T-1 of the stream's [max_tokens, head_dim] cache rows, then
//     out_t = softmax(q_t k^T / sqrt(d)) v   over positions 0 .. start+t   (causal among the new tokens).
//
// Why a kernel: a decoding call reads the whole cache and does almost no arithmetic per byte, so its speed is the
// memory bandwidth one core reaches. PyTorch's CPU attention is built for many queries and reads the cache below
// the streaming rate, and writing the new keys and values into the cache beforehand is one more pass of
// scattered row writes. Here each stream's new rows are written, then its keys and its values are read front to
// back once for all T queries, with the next rows requested before they are needed (software prefetch).
// Exact up to float rounding: the same sums in another order.
#include <torch/extension.h>

#include <cmath>
#include <cstring>
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

static constexpr int64_t MAX_QUERIES = 8;      // new tokens per call the kernel serves (decode_attention.py)
static constexpr int64_t AHEAD_FLOATS = 1024;  // prefetch 4 KB ahead of the row being read (1-2 KB measured slower)

// exp(x) for x <= 0 (scores minus their maximum), in plain arithmetic that the compiler vectorizes (std::exp is
// a scalar call per element, about half of a 32-wide decoding call): x = n ln2 + r with |r| <= ln2/2, e^r by its
// degree-6 Taylor polynomial (relative error < 2e-7, float rounding), 2^n by the exponent bits; 0 below -87.
static inline float exp_le0(float x) {
  x = x < -87.f ? -87.f : x;
  const float n = std::nearbyint(x * 1.44269504088896341f);
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;     // ln2 in two parts: r exact to float rounding
  float e = 1.f / 720.f;
  e = e * r + 1.f / 120.f;
  e = e * r + 1.f / 24.f;
  e = e * r + 1.f / 6.f;
  e = e * r + 0.5f;
  e = e * r + 1.f;
  e = e * r + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return x <= -87.f ? 0.f : e * scale;
}

// One stream: k, v its cache rows (new ones already written), q [T][d] its queries, out [T][d], p [T][size] scratch.
MULTIVERSION
static void attend(const float* q, const float* k, const float* v, float* out, const float* next_k, int64_t start,
                   int64_t T, int64_t d, float scale, float* p) {
  const int64_t size = start + T;
  const int64_t rows_ahead = AHEAD_FLOATS / d > 4 ? AHEAD_FLOATS / d : 4, ahead = rows_ahead * d;
  float top[MAX_QUERIES], total[MAX_QUERIES];
  for (int64_t t = 0; t < T; ++t) top[t] = -INFINITY, total[t] = 0.f;
  // scores: each row of keys once, for every query that sees it; four rows at a time below `start` (seen by every
  // query), so that four independent dot products share the loop and their horizontal sums overlap
  int64_t s = 0;
  for (; s + 4 <= start; s += 4) {
    const float* row = k + s * d;
    for (int64_t r = 0; r < 4; ++r) {
      const float* pf = s + r + rows_ahead < size ? row + r * d + ahead : v + (s + r + rows_ahead - size) * d;
      for (int64_t j = 0; j < d; j += 16) PREFETCH(pf + j);
    }
    for (int64_t t = 0; t < T; ++t) {
      const float* qt = q + t * d;
      float d0 = 0.f, d1 = 0.f, d2 = 0.f, d3 = 0.f;
#pragma omp simd reduction(+ : d0, d1, d2, d3)
      for (int64_t j = 0; j < d; ++j) {
        d0 += qt[j] * row[j];
        d1 += qt[j] * row[d + j];
        d2 += qt[j] * row[2 * d + j];
        d3 += qt[j] * row[3 * d + j];
      }
      float* pt = p + t * size + s;
      pt[0] = d0 * scale, pt[1] = d1 * scale, pt[2] = d2 * scale, pt[3] = d3 * scale;
      for (int64_t r = 0; r < 4; ++r) top[t] = pt[r] > top[t] ? pt[r] : top[t];
    }
  }
  for (; s < size; ++s) {                              // the rest, one row at a time
    const float* row = k + s * d;
    const float* pf = s + rows_ahead < size ? row + ahead : v + (s + rows_ahead - size) * d;   // then the values
    for (int64_t j = 0; j < d; j += 16) PREFETCH(pf + j);
    for (int64_t t = s > start ? s - start : 0; t < T; ++t) {
      const float* qt = q + t * d;
      float dot = 0.f;
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < d; ++j) dot += qt[j] * row[j];
      const float x = dot * scale;
      p[t * size + s] = x;
      top[t] = x > top[t] ? x : top[t];
    }
  }
  for (int64_t t = 0; t < T; ++t) {                   // softmax numerators (vectorized exp: see exp_le0)
    float* pt = p + t * size;
    const float m = top[t];
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j <= start + t; ++j) {
      pt[j] = exp_le0(pt[j] - m);
      sum += pt[j];
    }
    total[t] = sum;
  }
  std::memset(out, 0, sizeof(float) * T * d);
  s = 0;
  for (; s + 4 <= start; s += 4) {                     // weighted sums: each row of values once, four at a time
    const float* row = v + s * d;                      // below `start` (one load and store of out per four rows)
    for (int64_t r = 0; r < 4; ++r) {
      const float* pf = s + r + rows_ahead < size ? row + r * d + ahead : next_k + (s + r + rows_ahead - size) * d;
      for (int64_t j = 0; j < d; j += 16) PREFETCH(pf + j);
    }
    for (int64_t t = 0; t < T; ++t) {
      const float* pt = p + t * size + s;
      const float w0 = pt[0], w1 = pt[1], w2 = pt[2], w3 = pt[3];
      float* ot = out + t * d;
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) ot[j] += w0 * row[j] + w1 * row[d + j] + w2 * row[2 * d + j] + w3 * row[3 * d + j];
    }
  }
  for (; s < size; ++s) {                              // the rest, one row at a time
    const float* row = v + s * d;
    const float* pf = s + rows_ahead < size ? row + ahead : next_k + (s + rows_ahead - size) * d;  // next stream
    for (int64_t j = 0; j < d; j += 16) PREFETCH(pf + j);
    for (int64_t t = s > start ? s - start : 0; t < T; ++t) {
      const float w = p[t * size + s];
      float* ot = out + t * d;
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) ot[j] += w * row[j];
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    const float inv = 1.f / total[t];
    float* ot = out + t * d;
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) ot[j] *= inv;
  }
}

// q, k_new, v_new: [B, heads, T, d] (any strides, the last one 1); k_cache, v_cache: contiguous
// [B, heads, max_tokens, d], written at start .. start+T-1. Returns [B, heads, T, d] laid out as [B, T, heads, d],
// so that the caller's transpose to [B, T, heads * d] is free.
torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k_new, torch::Tensor v_new, torch::Tensor k_cache,
                               torch::Tensor v_cache, int64_t start) {
  for (const auto& x : {q, k_new, v_new, k_cache, v_cache})
    TORCH_CHECK(x.dtype() == torch::kFloat32 && x.dim() == 4 && x.stride(3) == 1, "decode_attention: float32, 4-d");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "decode_attention: contiguous cache");
  const int64_t B = k_cache.size(0), H = k_cache.size(1), M = k_cache.size(2), d = k_cache.size(3), T = q.size(2);
  TORCH_CHECK(T >= 1 && T <= MAX_QUERIES && start >= 0 && start + T <= M, "decode_attention: 1..", MAX_QUERIES,
              " new tokens within max_tokens");
  TORCH_CHECK(q.sizes() == k_new.sizes() && q.sizes() == v_new.sizes() && q.size(0) == B && q.size(1) == H &&
              q.size(3) == d, "decode_attention: shapes");
  auto out = torch::empty({B, T, H, d}, q.options());
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  float* K = k_cache.data_ptr<float>();
  float* V = v_cache.data_ptr<float>();
  const float* Q = q.data_ptr<float>();
  const float* KN = k_new.data_ptr<float>();
  const float* VN = v_new.data_ptr<float>();
  float* O = out.data_ptr<float>();
  const int64_t streams = B * H;
  at::parallel_for(0, streams, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> p(T * (start + T)), qs(T * d), os(T * d);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / H, h = i % H, next = i + 1 < streams ? i + 1 : i;
      float* k = K + i * M * d;
      float* v = V + i * M * d;
      for (int64_t t = 0; t < T; ++t) {                // the new rows into the cache, the queries side by side
        std::memcpy(k + (start + t) * d, KN + b * k_new.stride(0) + h * k_new.stride(1) + t * k_new.stride(2),
                    sizeof(float) * d);
        std::memcpy(v + (start + t) * d, VN + b * v_new.stride(0) + h * v_new.stride(1) + t * v_new.stride(2),
                    sizeof(float) * d);
        std::memcpy(qs.data() + t * d, Q + b * q.stride(0) + h * q.stride(1) + t * q.stride(2), sizeof(float) * d);
      }
      attend(qs.data(), k, v, os.data(), K + next * M * d, start, T, d, scale, p.data());
      for (int64_t t = 0; t < T; ++t)
        std::memcpy(O + ((b * T + t) * H + h) * d, os.data() + t * d, sizeof(float) * d);
    }
  });
  return out.permute({0, 2, 1, 3});
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("decode_attention", &decode_attention); }
