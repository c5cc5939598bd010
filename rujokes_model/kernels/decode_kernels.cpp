// CPU kernels for decoding: low-bit weights (y = x·Wᵀ with W stored as int8 or bf16) and MHLA's attention.
//
// Why: a decode step of mini/small reads every weight once for a handful of rows, so it is bound by the
// bytes it streams (and, once those shrink, by the work of widening them). int8 weights are a quarter of
// fp32's bytes, bf16 half (and exactly the checkpoints we ship).
//   int8_linear(x, w, scale): w int8 (N, K), one fp32 scale per output row. Each row of x is scaled to
//     int16 (its largest element to ±2^14: finer than the bf16 the models trained in) and multiplied with
//     vpmaddwd, 16 products per instruction, summed exactly in int32.
//   int8_head_linear(x, w, scale): the same, one weight matrix per head (MHLA's absorbed W_UK and W_UV).
//   bf16_linear(x, w): w bf16 (N, K), widened to fp32 in registers, fp32 FMAs.
//   fp32_linear(x, w): the same loop over fp32 weights, for fp32 models: a decode step's few rows run
//     faster on it than on torch's BLAS path (nano's tiny products, mini's one-row products).
//   latent_attention(q, entries, mask, scale, rank): MHLA's absorbed attention for one new token a row,
//     scores, softmax and values in one pass over the row's latent cache.
// A row's result never depends on its batch mates or the thread count: int8 sums are exact integers and
// fp32 sums run in one fixed order whatever the number of rows (seeded jokes must not change with who
// shares the batch). Built by rujokes_model/cpu_kernels.py with -mavx2 -mfma -fopenmp; used only on AVX2 CPUs.
// at::parallel_for is a header template over OpenMP pragmas: without -fopenmp it silently runs on one
// thread whatever torch.set_num_threads says (parallel_threads() checks).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace {

constexpr int64_t kRowBlock = 16;  // weight rows kept hot in L1 while every chunk of x rows uses them
// Weight rows are read one after another; asking for the row this many rows ahead while working on the
// current one keeps more memory requests in flight than the hardware prefetcher does alone (≈ 15% more
// bytes a second for small's matrices on one core). A prefetch never faults, even past the end.
constexpr int64_t kPrefetchRows = 8;

std::vector<int64_t> out_shape(const at::Tensor& x, int64_t n) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = n;
  return shape;
}

// Threads split the weight rows (each reads its own slice of the weights once), in blocks of ≥ 64k weights.
// `chunk(rows_begin, rows, n)` computes out[rows_begin : rows_begin + rows, n].
template <int MaxRows, typename Chunk>
void for_each_block(int64_t M, int64_t N, int64_t K, const Chunk& chunk) {
  const int64_t grain = std::max<int64_t>(kRowBlock, (int64_t{1} << 16) / std::max<int64_t>(K, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n0 = begin; n0 < end; n0 += kRowBlock) {
      const int64_t n1 = std::min(end, n0 + kRowBlock);
      for (int64_t m = 0; m < M; m += MaxRows) {
        const int rows = static_cast<int>(std::min<int64_t>(MaxRows, M - m));
        for (int64_t n = n0; n < n1; ++n) chunk(m, rows, n);
      }
    }
  });
}

void check_common(const char* op, const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), op, " runs on the CPU");
  TORCH_CHECK(x.scalar_type() == at::kFloat, op, " takes fp32 activations, got ", x.scalar_type());
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous(), op, " wants a contiguous (out, in) weight");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), op, ": x has ", x.size(-1),
              " features, the weight expects ", weight.size(1));
}

// ---- int8 weights × int16 activations ----------------------------------------------------------------

constexpr float kXMax = 16384.0f;  // a row's largest |x| maps to 2^14
constexpr int64_t kMaxK = 8192;    // keeps each int32 lane below 2^31: (K/8 products)·2^14·127
constexpr int kIntRows = 4;        // rows sharing each widened weight vector: 4 × 2 accumulators

struct QuantRows {
  std::vector<int16_t> values;  // M × K
  std::vector<float> scales;    // one a row: x ≈ values · scale
};

QuantRows quantize_rows(const float* x, int64_t M, int64_t K) {
  QuantRows q{std::vector<int16_t>(M * K), std::vector<float>(M)};
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int64_t r = 0; r < M; ++r) {
    const float* row = x + r * K;
    int16_t* out = q.values.data() + r * K;
    __m256 vmax = _mm256_setzero_ps();
    __m256 nans = _mm256_setzero_ps();  // max_ps drops NaNs, so they are looked for alongside
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
      const __m256 v = _mm256_loadu_ps(row + k);
      vmax = _mm256_max_ps(vmax, _mm256_and_ps(v, abs_mask));
      nans = _mm256_or_ps(nans, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, vmax);
    float amax = *std::max_element(lanes, lanes + 8);
    bool has_nan = _mm256_movemask_ps(nans) != 0;
    for (; k < K; ++k) {
      amax = std::max(amax, std::fabs(row[k]));
      has_nan |= std::isnan(row[k]);
    }
    if (has_nan || std::isinf(amax)) {  // as fp32 arithmetic would: this row's outputs become NaN
      std::fill(out, out + K, int16_t{0});
      q.scales[r] = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    const float inv = amax > 0.0f ? kXMax / amax : 0.0f;
    q.scales[r] = amax > 0.0f ? amax / kXMax : 0.0f;
    const __m256 vinv = _mm256_set1_ps(inv);
    k = 0;
    for (; k + 16 <= K; k += 16) {
      const __m256i lo = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(row + k), vinv));  // nearest even
      const __m256i hi = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(row + k + 8), vinv));
      const __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xD8);  // back in order
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + k), packed);
    }
    for (; k < K; ++k) out[k] = static_cast<int16_t>(std::nearbyint(row[k] * inv));
  }
  return q;
}

// out[r·ldo] = xs[r]·ws·Σ_k xq[r, k]·w[k] for R quantized rows and one int8 weight row.
template <int R>
inline void int8_dot(const int16_t* xq, const float* xs, int64_t K, const int8_t* w, float ws, float* out, int64_t ldo) {
  __m256i acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  const char* ahead = reinterpret_cast<const char*>(w + kPrefetchRows * K);
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    if ((k & 63) == 0) _mm_prefetch(ahead + k, _MM_HINT_T0);
    const __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k)));
    const __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k + 16)));
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const auto* x = reinterpret_cast<const __m256i*>(xq + r * K + k);
      acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(w0, _mm256_loadu_si256(x)));
      acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(w1, _mm256_loadu_si256(x + 1)));
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    alignas(32) int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), _mm256_add_epi32(acc[r][0], acc[r][1]));
    int64_t total = 0;
    for (int32_t lane : lanes) total += lane;
    for (int64_t t = k; t < K; ++t) total += int64_t{xq[r * K + t]} * w[t];  // K not a multiple of 32
    out[r * ldo] = static_cast<float>(static_cast<double>(total) * xs[r] * ws);
  }
}

// o (M, N) = rows (M, K, quantized) · w (N, K)ᵀ · scales.
void int8_matmul(const int16_t* xq, const float* xs, int64_t M, int64_t K, const int8_t* w, const float* ws,
                 int64_t N, float* o) {
  for_each_block<kIntRows>(M, N, K, [&](int64_t m, int rows_here, int64_t n) {
    const int16_t* xm = xq + m * K;
    switch (rows_here) {
      case 1: return int8_dot<1>(xm, xs + m, K, w + n * K, ws[n], o + m * N + n, N);
      case 2: return int8_dot<2>(xm, xs + m, K, w + n * K, ws[n], o + m * N + n, N);
      case 3: return int8_dot<3>(xm, xs + m, K, w + n * K, ws[n], o + m * N + n, N);
      default: return int8_dot<4>(xm, xs + m, K, w + n * K, ws[n], o + m * N + n, N);
    }
  });
}

void check_int8(const char* op, const at::Tensor& weight, const at::Tensor& scale) {
  TORCH_CHECK(weight.scalar_type() == at::kChar, op, ": the weight must be int8");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() &&
                  scale.numel() == weight.numel() / weight.size(-1),
              op, ": one fp32 scale per output feature");
  TORCH_CHECK(weight.size(-1) <= kMaxK, op, ": at most ", kMaxK, " input features (int32 sums), got ",
              weight.size(-1));
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale) {
  check_common("int8_linear", x, weight);
  check_int8("int8_linear", weight, scale);
  const int64_t N = weight.size(0), K = weight.size(1);
  const at::Tensor rows = x.reshape({-1, K}).contiguous();
  const int64_t M = rows.size(0);
  const QuantRows q = quantize_rows(rows.const_data_ptr<float>(), M, K);
  at::Tensor out = at::empty({M, N}, x.options());
  int8_matmul(q.values.data(), q.scales.data(), M, K, weight.const_data_ptr<int8_t>(),
              scale.const_data_ptr<float>(), N, out.mutable_data_ptr<float>());
  return out.view(out_shape(x, N));
}

// One linear map per head (MHLA's absorbed matrices): out[h] = x[h] · w[h]ᵀ · scale[h], x (H, M, K),
// w (H, N, K), scale (H, N) → (H, M, N). Each row of x is quantized on its own, as in int8_linear.
at::Tensor int8_head_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "int8_head_linear runs on the CPU");
  TORCH_CHECK(x.scalar_type() == at::kFloat, "int8_head_linear takes fp32 activations, got ", x.scalar_type());
  TORCH_CHECK(weight.dim() == 3 && weight.is_contiguous(), "int8_head_linear wants a contiguous (heads, out, in) weight");
  TORCH_CHECK(x.dim() == 3 && x.size(0) == weight.size(0) && x.size(2) == weight.size(2),
              "int8_head_linear: x must be (heads, rows, in) matching the weight ", weight.sizes(), ", got ", x.sizes());
  check_int8("int8_head_linear", weight, scale);
  const int64_t H = weight.size(0), N = weight.size(1), K = weight.size(2), M = x.size(1);
  const at::Tensor rows = x.contiguous();
  const QuantRows q = quantize_rows(rows.const_data_ptr<float>(), H * M, K);
  at::Tensor out = at::empty({H, M, N}, x.options());
  const int8_t* w = weight.const_data_ptr<int8_t>();
  const float* ws = scale.const_data_ptr<float>();
  float* o = out.mutable_data_ptr<float>();
  // Threads split the heads: one head's matrix is too small to share (int8_matmul then runs inline).
  at::parallel_for(0, H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t h = begin; h < end; ++h)
      int8_matmul(q.values.data() + h * M * K, q.scales.data() + h * M, M, K, w + h * N * K, ws + h * N, N,
                  o + h * M * N);
  });
  return out;
}

// ---- bf16 or fp32 weights × fp32 activations -----------------------------------------------------------

constexpr int kFloatRows = 3;  // rows sharing each widened weight vector: 3 × 4 accumulators of 16 registers

inline __m256 widen_bf16(const c10::BFloat16* w) {
  // bf16 is the upper half of an fp32: widen to 32 bits and shift into place (exact).
  const __m256i bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(bits, 16));
}

inline float sum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Eight weights as fp32: bf16 widened (exact), fp32 as they are.
inline __m256 load8(const c10::BFloat16* w) { return widen_bf16(w); }
inline __m256 load8(const float* w) { return _mm256_loadu_ps(w); }

// out[r·ldo] = Σ_k x[r, k]·w[k] for R rows and one weight row (bf16 or fp32); four accumulators a row hide
// the FMA latency, in the same layout for every R, so the sum order is fixed.
template <int R, typename W>
inline void float_dot(const float* x, int64_t K, const W* w, float* out, int64_t ldo) {
  __m256 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int a = 0; a < 4; ++a) acc[r][a] = _mm256_setzero_ps();
  const char* ahead = reinterpret_cast<const char*>(w + kPrefetchRows * K);
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    for (size_t line = 0; line < 32 * sizeof(W); line += 64)  // 32 weights: one 64-byte line of bf16, two of fp32
      _mm_prefetch(ahead + sizeof(W) * k + line, _MM_HINT_T0);
#pragma GCC unroll 4
    for (int a = 0; a < 4; ++a) {
      const __m256 wv = load8(w + k + 8 * a);
#pragma GCC unroll 3
      for (int r = 0; r < R; ++r)
        acc[r][a] = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * K + k + 8 * a), wv, acc[r][a]);
    }
  }
#pragma GCC unroll 3
  for (int r = 0; r < R; ++r) {
    float s = sum8(_mm256_add_ps(_mm256_add_ps(acc[r][0], acc[r][1]), _mm256_add_ps(acc[r][2], acc[r][3])));
    for (int64_t t = k; t < K; ++t) s += x[r * K + t] * static_cast<float>(w[t]);  // K not a multiple of 32
    out[r * ldo] = s;
  }
}

template <typename W>
at::Tensor float_linear(const char* op, const at::Tensor& x, const at::Tensor& weight) {
  check_common(op, x, weight);
  const int64_t N = weight.size(0), K = weight.size(1);
  const at::Tensor rows = x.reshape({-1, K}).contiguous();
  const int64_t M = rows.size(0);
  at::Tensor out = at::empty({M, N}, x.options());
  const float* xp = rows.const_data_ptr<float>();
  const W* w = weight.const_data_ptr<W>();
  float* o = out.mutable_data_ptr<float>();
  for_each_block<kFloatRows>(M, N, K, [&](int64_t m, int rows_here, int64_t n) {
    switch (rows_here) {
      case 1: return float_dot<1>(xp + m * K, K, w + n * K, o + m * N + n, N);
      case 2: return float_dot<2>(xp + m * K, K, w + n * K, o + m * N + n, N);
      default: return float_dot<3>(xp + m * K, K, w + n * K, o + m * N + n, N);
    }
  });
  return out.view(out_shape(x, N));
}

at::Tensor bf16_linear(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(weight.scalar_type() == at::kBFloat16, "bf16_linear: the weight must be bf16");
  return float_linear<c10::BFloat16>("bf16_linear", x, weight);
}

at::Tensor fp32_linear(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(weight.scalar_type() == at::kFloat, "fp32_linear: the weight must be fp32");
  return float_linear<float>("fp32_linear", x, weight);
}

// ---- MHLA decode attention over the latent cache --------------------------------------------------------

// e^x for x ≤ 0 (softmax after subtracting the max), 8 lanes; Cephes' polynomial: relative error ≈ 2e-7.
inline __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));  // e^-87 is below what a probability can tell from 0
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // x - n·ln2, in two parts for precision
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i pow2n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(pow2n));
}

constexpr int kScoreHeads = 8;  // query heads sharing each load of a cached column's key
constexpr int kValueHeads = 6;  // heads sharing each load of a value tile: 6 × 2 accumulators + loads fit 16 registers

// scores[h·L + i] = q[h]·key for G heads and one cached column; G is a template argument so that the
// accumulators stay in registers.
template <int G>
inline void score_heads(const float* q, int64_t D, const float* key, float* scores, int64_t L) {
  __m256 acc[G];
  for (int h = 0; h < G; ++h) acc[h] = _mm256_setzero_ps();
  int64_t d = 0;
  for (; d + 8 <= D; d += 8) {
    const __m256 kv = _mm256_loadu_ps(key + d);
#pragma GCC unroll 8
    for (int h = 0; h < G; ++h) acc[h] = _mm256_fmadd_ps(_mm256_loadu_ps(q + h * D + d), kv, acc[h]);
  }
  for (int h = 0; h < G; ++h) {
    float dot = sum8(acc[h]);
    for (int64_t t = d; t < D; ++t) dot += q[h * D + t] * key[t];  // D not a multiple of 8
    scores[h * L] = dot;
  }
}

// out[h, r : r + 16] = Σ_i probs[h·L + i] · values[i][r : r + 16] for G heads.
template <int G>
inline void value_tile(const float* probs, int64_t L, const float* entries, const int64_t* live, int64_t D,
                       int64_t r, float* out, int64_t rank) {
  __m256 acc[G][2];
  for (int h = 0; h < G; ++h) acc[h][0] = acc[h][1] = _mm256_setzero_ps();
  for (int64_t i = 0; i < L; ++i) {
    const float* v = entries + live[i] * D + r;
    const __m256 v0 = _mm256_loadu_ps(v), v1 = _mm256_loadu_ps(v + 8);
#pragma GCC unroll 6
    for (int h = 0; h < G; ++h) {
      const __m256 p = _mm256_broadcast_ss(probs + h * L + i);
      acc[h][0] = _mm256_fmadd_ps(p, v0, acc[h][0]);
      acc[h][1] = _mm256_fmadd_ps(p, v1, acc[h][1]);
    }
  }
  for (int h = 0; h < G; ++h) {
    _mm256_storeu_ps(out + h * rank + r, acc[h][0]);
    _mm256_storeu_ps(out + h * rank + r + 8, acc[h][1]);
  }
}

template <int... G>
inline void score_dispatch(int heads, std::integer_sequence<int, G...>, const float* q, int64_t D,
                           const float* key, float* scores, int64_t L) {
  ((heads == G + 1 ? score_heads<G + 1>(q, D, key, scores, L) : void()), ...);
}
template <int... G>
inline void value_dispatch(int heads, std::integer_sequence<int, G...>, const float* probs, int64_t L,
                           const float* entries, const int64_t* live, int64_t D, int64_t r, float* out, int64_t rank) {
  ((heads == G + 1 ? value_tile<G + 1>(probs, L, entries, live, D, r, out, rank) : void()), ...);
}

// Heads [h_begin, h_end) of one batch row: out (H, rank) = softmax(q·entriesᵀ·scale + mask) ·
// entries[:, :rank], over the live columns. A row's heads may be split between threads (a lone row would
// otherwise leave every core but one idle); each head's numbers are the same whatever the split.
void latent_attention_row(const float* q_row, int64_t h_begin, int64_t h_end, int64_t D, const float* entries,
                          int64_t S, const float* mask, int64_t mask_heads, int64_t mask_head_stride, float scale,
                          int64_t rank, float* out_row) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const int64_t H = h_end - h_begin;
  const float* q = q_row + h_begin * D;
  float* out = out_row + h_begin * rank;
  // Columns hidden from every head of the row (left padding, not yet written) cost nothing: the static
  // step spans the whole preallocated cache. All of the row's heads decide, so the columns (and with them
  // each head's summation order) do not depend on how the heads are split.
  std::vector<int64_t> live;
  live.reserve(S);
  for (int64_t s = 0; s < S; ++s)
    for (int64_t h = 0; h < mask_heads; ++h)
      if (mask[h * mask_head_stride + s] != kNegInf) {
        live.push_back(s);
        break;
      }
  const int64_t L = static_cast<int64_t>(live.size());
  std::vector<float> probs(H * std::max<int64_t>(L, 1));  // (H, L): scores, then probabilities
  for (int64_t i = 0; i < L; ++i)
    for (int64_t h0 = 0; h0 < H; h0 += kScoreHeads) {
      const int heads = static_cast<int>(std::min<int64_t>(kScoreHeads, H - h0));
      score_dispatch(heads, std::make_integer_sequence<int, kScoreHeads>{}, q + h0 * D, D, entries + live[i] * D,
                     probs.data() + h0 * L + i, L);
    }
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < L; ++i)
      probs[h * L + i] = probs[h * L + i] * scale + mask[(mask_heads == 1 ? 0 : h_begin + h) * mask_head_stride + live[i]];
  std::vector<float> inv_sum(H);
  for (int64_t h = 0; h < H; ++h) {
    float* p = probs.data() + h * L;
    float top = kNegInf;
    for (int64_t i = 0; i < L; ++i) top = std::max(top, p[i]);
    const __m256 vtop = _mm256_set1_ps(top), vneg = _mm256_set1_ps(kNegInf);
    __m256 vsum = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= L; i += 8) {
      const __m256 v = _mm256_loadu_ps(p + i);
      // exp(-inf) is exactly 0 (a column hidden from this head only, as with ALiBi over a padded row).
      const __m256 e = _mm256_andnot_ps(_mm256_cmp_ps(v, vneg, _CMP_EQ_OQ), exp_nonpositive(_mm256_sub_ps(v, vtop)));
      _mm256_storeu_ps(p + i, e);
      vsum = _mm256_add_ps(vsum, e);
    }
    float total = sum8(vsum);
    for (; i < L; ++i) {
      p[i] = p[i] == kNegInf ? 0.0f : std::exp(p[i] - top);
      total += p[i];
    }
    inv_sum[h] = 1.0f / total;  // a row hidden everywhere gives 0/0 = NaN, as torch's softmax does
  }
  for (int64_t h0 = 0; h0 < H; h0 += kValueHeads) {
    const int heads = static_cast<int>(std::min<int64_t>(kValueHeads, H - h0));
    int64_t r = 0;
    for (; r + 16 <= rank; r += 16)
      value_dispatch(heads, std::make_integer_sequence<int, kValueHeads>{}, probs.data() + h0 * L, L, entries,
                     live.data(), D, r, out + h0 * rank, rank);
    for (; r < rank; ++r)  // rank not a multiple of 16
      for (int h = 0; h < heads; ++h) {
        float total = 0.0f;
        for (int64_t i = 0; i < L; ++i) total += probs[(h0 + h) * L + i] * entries[live[i] * D + r];
        out[(h0 + h) * rank + r] = total;
      }
  }
  for (int64_t h = 0; h < H; ++h)  // the softmax's normalisation, once per output
    for (int64_t r = 0; r < rank; ++r) out[h * rank + r] *= inv_sum[h];
}

// MHLA's absorbed decode attention for one new token a row, in one pass over each row's latent cache:
// q (B, H, D) latent-space queries with their RoPE part, entries (B, S, D) the cache [latent | rope key],
// mask (B|1, H|1, S) additive → (B, H, rank). Replaces two bmm calls that packed the whole cache into
// MKL's layout for a handful of query rows, and skips the columns hidden from every head.
at::Tensor latent_attention(const at::Tensor& q, const at::Tensor& entries, const at::Tensor& mask, double scale,
                            int64_t rank) {
  TORCH_CHECK(q.device().is_cpu() && entries.device().is_cpu() && mask.device().is_cpu(), "latent_attention runs on the CPU");
  TORCH_CHECK(q.scalar_type() == at::kFloat && entries.scalar_type() == at::kFloat && mask.scalar_type() == at::kFloat,
              "latent_attention takes fp32 queries, cache and additive mask");
  TORCH_CHECK(q.dim() == 3 && entries.dim() == 3 && mask.dim() == 3, "latent_attention: q (B, H, D), entries (B, S, D), mask (B|1, H|1, S)");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), S = entries.size(1);
  TORCH_CHECK(entries.size(0) == B && entries.size(2) == D && entries.stride(2) == 1 && entries.stride(1) == D,
              "latent_attention: entries must be (B, S, D) with contiguous rows, got ", entries.sizes());
  TORCH_CHECK((mask.size(0) == B || mask.size(0) == 1) && (mask.size(1) == H || mask.size(1) == 1) &&
                  mask.size(2) == S && mask.stride(2) == 1,
              "latent_attention: mask must be (B|1, H|1, S), got ", mask.sizes());
  TORCH_CHECK(rank > 0 && rank <= D, "latent_attention: rank must be in (0, D]");
  const at::Tensor qc = q.contiguous();
  at::Tensor out = at::empty({B, H, rank}, q.options());
  const float* qp = qc.const_data_ptr<float>();
  const float* ep = entries.const_data_ptr<float>();
  const float* mp = mask.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  const int64_t mask_b = mask.size(0) == 1 ? 0 : mask.stride(0), mask_h = mask.stride(1);
  // Work items are (row, group of heads): rows alone when there are enough to go round the threads.
  const int64_t splits = std::clamp<int64_t>(at::get_num_threads() / std::max<int64_t>(B, 1), 1, H);
  const int64_t heads_per_item = (H + splits - 1) / splits;
  at::parallel_for(0, B * splits, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / splits, h_begin = (item % splits) * heads_per_item;
      const int64_t h_end = std::min(H, h_begin + heads_per_item);
      if (h_begin >= h_end) continue;
      latent_attention_row(qp + b * H * D, h_begin, h_end, D, ep + b * entries.stride(0), S, mp + b * mask_b,
                           mask.size(1), mask_h, static_cast<float>(scale), rank, op + b * H * rank);
    }
  });
  return out;
}

// How many threads at::parallel_for runs on here: torch's thread count when the library was built with
// OpenMP, 1 when its pragmas were dropped. A build check, for tests and the worker's start-up log.
int64_t parallel_threads() {
  std::atomic<uint64_t> seen{0};
  at::parallel_for(0, 256, 1, [&](int64_t, int64_t) {
    seen |= uint64_t{1} << std::min(at::get_thread_num(), 63);
  });
  return std::popcount(seen.load());
}

// Shapes only: torch.compile traces with these, so compiled graphs call the kernels straight from C++.
// Symbolic sizes (sym_sizes, not sizes) keep a batch dimension symbolic: one graph for every batch size.
at::Tensor bf16_linear_meta(const at::Tensor& x, const at::Tensor& weight) {
  std::vector<c10::SymInt> shape(x.sym_sizes().begin(), x.sym_sizes().end());
  shape.back() = weight.sym_size(0);
  return at::empty_symint(shape, x.options());
}
at::Tensor int8_linear_meta(const at::Tensor& x, const at::Tensor& weight, const at::Tensor&) {
  return bf16_linear_meta(x, weight);
}
at::Tensor latent_attention_meta(const at::Tensor& q, const at::Tensor&, const at::Tensor&, double, int64_t rank) {
  return at::empty_symint({q.sym_size(0), q.sym_size(1), c10::SymInt(rank)}, q.options());
}
at::Tensor int8_head_linear_meta(const at::Tensor& x, const at::Tensor& weight, const at::Tensor&) {
  return at::empty_symint({x.sym_size(0), x.sym_size(1), weight.sym_size(1)}, x.options());
}

}  // namespace

TORCH_LIBRARY(rujokes_cpu, m) {
  m.def("int8_linear(Tensor x, Tensor weight, Tensor scale) -> Tensor");
  m.def("bf16_linear(Tensor x, Tensor weight) -> Tensor");
  m.def("fp32_linear(Tensor x, Tensor weight) -> Tensor");
  m.def("int8_head_linear(Tensor x, Tensor weight, Tensor scale) -> Tensor");
  m.def("latent_attention(Tensor q, Tensor entries, Tensor mask, float scale, int rank) -> Tensor");
  m.def("parallel_threads() -> int", &parallel_threads);  // no tensor arguments: one kernel for every backend
}

TORCH_LIBRARY_IMPL(rujokes_cpu, CPU, m) {
  m.impl("int8_linear", &int8_linear);
  m.impl("bf16_linear", &bf16_linear);
  m.impl("fp32_linear", &fp32_linear);
  m.impl("int8_head_linear", &int8_head_linear);
  m.impl("latent_attention", &latent_attention);
}

TORCH_LIBRARY_IMPL(rujokes_cpu, Meta, m) {
  m.impl("int8_linear", &int8_linear_meta);
  m.impl("bf16_linear", &bf16_linear_meta);
  m.impl("fp32_linear", &bf16_linear_meta);
  m.impl("int8_head_linear", &int8_head_linear_meta);
  m.impl("latent_attention", &latent_attention_meta);
}
