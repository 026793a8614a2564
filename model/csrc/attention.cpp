// af2cpu's CPU attention kernels: softmax(q k^T * scale + bias + key_bias) v, the core of every attention
// module of AlphaFold2, for its head sizes. af2cpu.model.kernels compiles this file for the CPU it runs on
// and decides, measured once per kind of CPU, where it replaces PyTorch's scaled_dot_product_attention
// (runtime.attention; docs/benchmarks.md, "af2cpu's attention kernels").
//
// attention (fp32 or bf16; head sizes 8, 16, 24, 32, 48, 64; AVX2 or AVX512): one work item is (batch
// element, head, block of queries). Keys are transposed once per (batch, head) into an fp32 buffer, so the
// logits come from an outer-product micro-kernel vectorised along the keys, which starts from the bias
// and keeps each row's running maximum; the softmax is one pass of exp and sum along a row of logits held
// in cache; the values are multiplied in a micro-kernel vectorised along the head size. Everything is
// computed in fp32 whatever the inputs' dtype.
//
// attention_amx (bf16; head sizes 8, 16, 32; CPUs with AMX): the two products on the matrix unit's tiles,
// the softmax in AVX512 on fp32 logits; the probabilities are rounded to bf16 for the second product.
//
// The element-wise work (runtime.elementwise; fp32 or bf16, computed in fp32): layer_norm, AlphaFold2's layer norm
// over the last dimension (rows of up to two strides, or channel-first activations written channel-last); gated,
// a gate a * sigmoid(g) * mask in one pass, with a bias per outer index where asked; add_into, the residual sums
// (an update divided by a count first where asked).
//
// With -DAF2CPU_PROFILE each thread prints its cycles per phase (rdtsc) when the environment has
// AF2CPU_PROFILE set (benchmarks/attention-kernel/compare.py --split); AF2CPU_OPS names the operators'
// namespace (default af2cpu).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#ifdef AF2CPU_PROFILE
#include <x86intrin.h>
#include <cstdio>
#include <cstdlib>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

#ifdef AF2CPU_PROFILE
thread_local uint64_t phase_cycles[6];
#define PHASES_START uint64_t last = __rdtsc();
#define PHASE(i) { const uint64_t now = __rdtsc(); phase_cycles[i] += now - last; last = now; }
// This thread's cycles per phase since the last report, as a line of JSON on stderr (with AF2CPU_PROFILE set).
void report_phases() {
  if (std::getenv("AF2CPU_PROFILE"))
    std::fprintf(stderr, "{\"keys and values\": %.2f, \"queries\": %.2f, \"logits\": %.2f, \"softmax\": %.2f, "
                 "\"values\": %.2f, \"output\": %.2f}\n", phase_cycles[0] / 1e6, phase_cycles[1] / 1e6,
                 phase_cycles[2] / 1e6, phase_cycles[3] / 1e6, phase_cycles[4] / 1e6, phase_cycles[5] / 1e6);
  for (auto& c : phase_cycles) c = 0;
}
#else
#define PHASES_START
#define PHASE(i)
inline void report_phases() {}
#endif

#if defined(__AVX512F__)
constexpr int W = 16;  // floats in a vector
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
inline vf splat(float x) { return _mm512_set1_ps(x); }
inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm512_min_ps(a, b); }
constexpr int QK_ROWS = 12, QK_VECS = 2;  // 24 accumulators of 32 registers
#elif defined(__AVX2__)
constexpr int W = 8;
typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));
inline vf splat(float x) { return _mm256_set1_ps(x); }
inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm256_min_ps(a, b); }
constexpr int QK_ROWS = 6, QK_VECS = 2;  // 12 accumulators of 16 registers
#else
#error "af2cpu's attention kernel needs AVX2 or AVX512"
#endif
typedef float v8 __attribute__((vector_size(32)));
inline v8 splat8(float x) { return _mm256_set1_ps(x); }

inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof(v)); return v; }
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }

// p * 2^n for whole numbers n (as floats) from -127 up: the exponentials' last step.
inline vf times_pow2(vf p, vf n) {
#if defined(__AVX512F__)
  return _mm512_scalef_ps(p, n);
#else
  vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return p * scale;
#endif
}

// exp(x) for x <= 0 (a logit minus its row's maximum), to about 2 ulp; at least exp(-87.3) ~ 1e-38 below
// that, which weighs nothing beside the row's maximum's 1. Cody-Waite reduction by ln 2 and Cephes'
// polynomial.
inline vf vexp(vf x) {
  x = vmax(x, splat(-87.3f));
  vf n = x * splat(1.44269504088896341f) + splat(12582912.0f);  // round to nearest
  n = n - splat(12582912.0f);
  vf r = x - n * splat(0.693359375f);
  r = r - n * splat(-2.12194440e-4f);
  vf p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * (r * r) + r + splat(1.0f);
  return times_pow2(p, n);
}

// exp(x) for x <= 0 to about 3e-6 (relative), for results rounded to bf16 (2^-9) next (the tile kernel's
// probabilities, the bf16 gate's sigmoid): 2^f by its Taylor polynomial of degree 5 on [-1/2, 1/2] after
// x log2(e) = n + f, scaled by 2^n; at least exp(-87.3) ~ 1e-38, which weighs nothing beside a row's maximum's 1.
inline vf vexp_coarse(vf x) {
  const vf t = vmax(x, splat(-87.3f)) * splat(1.44269504088896341f);
#if defined(__AVX512F__)
  const vf n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
  const vf n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#endif
  const vf f = t - n;
  vf p = splat(1.3333558146e-3f);
  p = p * f + splat(9.6181291076e-3f);
  p = p * f + splat(5.5504108665e-2f);
  p = p * f + splat(2.4022650696e-1f);
  p = p * f + splat(6.9314718056e-1f);
  p = p * f + splat(1.0f);
  return times_pow2(p, n);
}

inline float load_f(float x) { return x; }
inline float load_f(at::BFloat16 x) { uint32_t u = uint32_t(x.x) << 16; float f; std::memcpy(&f, &u, 4); return f; }
template <typename T> inline T store_f(float x);
template <> inline float store_f<float>(float x) { return x; }
template <> inline at::BFloat16 store_f<at::BFloat16>(float x) { return at::BFloat16(x); }  // round to nearest even

// W consecutive floats (fp32 or bf16) from p, as fp32.
inline vf load_full(const float* p) { return load(p); }
inline vf load_full(const at::BFloat16* p) {  // one widening load (GCC's vector conversion took four instructions)
#if defined(__AVX512F__)
  return (vf)_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
#else
  return (vf)_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
#endif
}

// W consecutive floats of a row of n (fp32 or bf16) from j, as fp32; -inf past n.
inline vf load_row(const float* p, int64_t j, int64_t n) {
  if (j + W <= n) return load_full(p + j);
  vf v = splat(-INFINITY);
  for (int64_t t = j; t < n; ++t) v[t - j] = p[t];
  return v;
}
inline vf load_row(const at::BFloat16* p, int64_t j, int64_t n) {
  if (j + W <= n) return load_full(p + j);
  vf v = splat(-INFINITY);
  for (int64_t t = j; t < n; ++t) v[t - j] = load_f(p[t]);
  return v;
}

// What is added to a row's logits before the softmax: its bias row and the key bias (either may be
// absent), -inf past the last key.
template <typename T>
struct RowBias {
  const T* bias;          // this row's bias, or null
  const float* key_bias;  // the batch element's key bias, or null
  int64_t n;              // keys
  inline vf at(int64_t j) const {
    if (bias) {
      vf v = load_row(bias, j, n);
      return key_bias ? v + load_row(key_bias, j, n) : v;
    }
    if (key_bias) return load_row(key_bias, j, n);
    if (j + W <= n) return splat(0.f);
    vf v = splat(-INFINITY);
    for (int64_t t = j; t < n; ++t) v[t - j] = 0.f;
    return v;
  }
};

// s[r][j0 : j0 + NV*W] = bias[r] + sum_c qs[r][c] * kt[c][j0 : ...] for R rows, and each row's running
// maximum: the logits' micro-kernel.
template <int R, int NV, typename T>
inline void qk_tile(const float* qs, int d, const float* kt, int64_t kp, float* s, int64_t lds, int64_t j0,
                    const RowBias<T>* rb, vf* mx) {
  vf acc[R][NV];
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 16
    for (int n = 0; n < NV; ++n) acc[r][n] = rb[r].at(j0 + n * W);
#pragma GCC unroll 8
  for (int c = 0; c < d; ++c) {
    vf kv[NV];
    #pragma GCC unroll 16
    for (int n = 0; n < NV; ++n) kv[n] = load(kt + c * kp + j0 + n * W);
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const vf qb = splat(qs[r * d + c]);
      #pragma GCC unroll 16
      for (int n = 0; n < NV; ++n) acc[r][n] += qb * kv[n];
    }
  }
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 16
    for (int n = 0; n < NV; ++n) {
      store(s + r * lds + j0 + n * W, acc[r][n]);
      mx[r] = acc[r][n] > mx[r] ? acc[r][n] : mx[r];
    }
}

template <int R, typename T>
inline void qk_rows(const float* qs, int d, const float* kt, int64_t kp, float* s, const RowBias<T>* rb, vf* mx) {
  int64_t j = 0;
  for (; j + QK_VECS * W <= kp; j += QK_VECS * W) {
    asm("" : "+r"(qs));  // keeps the query broadcasts inside the loop (hoisted, they spill)
    qk_tile<R, QK_VECS>(qs, d, kt, kp, s, kp, j, rb, mx);
  }
  for (; j < kp; j += W) qk_tile<R, 1>(qs, d, kt, kp, s, kp, j, rb, mx);
}

// o[r][:] = sum_j p[r][j] v[j][:] for R rows; V is a vector type of VW floats, D = NV * VW.
template <int R, int D, typename V, int VW, V (*SPLAT)(float)>
inline void pv_tile(const float* p, int64_t ldp, int64_t nk, const float* v, float* o) {
  constexpr int NV = D / VW;
  V acc[R][NV];
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 16
    for (int n = 0; n < NV; ++n) acc[r][n] = SPLAT(0.f);
  for (int64_t j = 0; j < nk; ++j) {
    V vv[NV];
    #pragma GCC unroll 16
    for (int n = 0; n < NV; ++n) std::memcpy(&vv[n], v + j * D + n * VW, sizeof(V));
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const V pb = SPLAT(p[r * ldp + j]);
      #pragma GCC unroll 16
      for (int n = 0; n < NV; ++n) acc[r][n] += pb * vv[n];
    }
  }
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 16
    for (int n = 0; n < NV; ++n) std::memcpy(o + r * D + n * VW, &acc[r][n], sizeof(V));
}

template <int D, typename V, int VW, V (*SPLAT)(float), int R>
void pv_rows_with(const float* p, int64_t ldp, int64_t nk, const float* v, float* o, int64_t rows) {
  int64_t r = 0;
  for (; r + R <= rows; r += R) {
    asm("" : "+r"(v));
    pv_tile<R, D, V, VW, SPLAT>(p + r * ldp, ldp, nk, v, o + r * D);
  }
  for (; r < rows; ++r) pv_tile<1, D, V, VW, SPLAT>(p + r * ldp, ldp, nk, v, o + r * D);
}

// Rows of a values tile: as many accumulators as the registers hold beside the tile's loads and its broadcast
// (16 vector registers with AVX2, 32 with AVX512), at most 12.
constexpr int pv_tile_rows(int vectors, int registers) {
  return (registers - vectors - 1) / vectors < 12 ? (registers - vectors - 1) / vectors : 12;
}

template <int D>
void pv_rows(const float* p, int64_t ldp, int64_t nk, const float* v, float* o, int64_t rows) {
  constexpr int registers = W == 16 ? 32 : 16;
  if constexpr (D % W == 0) {
    pv_rows_with<D, vf, W, splat, pv_tile_rows(D / W, registers)>(p, ldp, nk, v, o, rows);
  } else {
    pv_rows_with<D, v8, 8, splat8, pv_tile_rows(D / 8, registers)>(p, ldp, nk, v, o, rows);
  }
}

bool head_size_supported(int64_t d) { return d == 8 || d == 16 || d == 24 || d == 32 || d == 48 || d == 64; }

void pv_any(int64_t d, const float* p, int64_t ldp, int64_t nk, const float* v, float* o, int64_t rows) {
  switch (d) {
    case 8: pv_rows<8>(p, ldp, nk, v, o, rows); break;
    case 16: pv_rows<16>(p, ldp, nk, v, o, rows); break;
    case 24: pv_rows<24>(p, ldp, nk, v, o, rows); break;
    case 32: pv_rows<32>(p, ldp, nk, v, o, rows); break;
    case 48: pv_rows<48>(p, ldp, nk, v, o, rows); break;
    case 64: pv_rows<64>(p, ldp, nk, v, o, rows); break;
  }
}

// The operands' data and strides (a broadcast axis of the bias: stride 0); the output (B, NQ, H, dv), contiguous.
template <typename T>
struct Operands {
  const T *q, *k, *v, *bias;
  const float* key_bias;
  T* out;
  int64_t qs[3], ks[3], vs[3], bs[3] = {0, 0, 0}, kbs0;
  Operands(const at::Tensor& tq, const at::Tensor& tk, const at::Tensor& tv, const at::Tensor* tbias,
           const at::Tensor* tkey_bias, at::Tensor& tout)
      : q(tq.data_ptr<T>()), k(tk.data_ptr<T>()), v(tv.data_ptr<T>()), bias(tbias ? tbias->data_ptr<T>() : nullptr),
        key_bias(tkey_bias ? tkey_bias->data_ptr<float>() : nullptr), out(tout.data_ptr<T>()),
        kbs0(tkey_bias ? tkey_bias->stride(0) : 0) {
    for (int i = 0; i < 3; ++i) {
      qs[i] = tq.stride(i);
      ks[i] = tk.stride(i);
      vs[i] = tv.stride(i);
      if (tbias) bs[i] = tbias->size(i) == 1 ? 0 : tbias->stride(i);
    }
  }
};

template <typename T>
void attention_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor* bias,
                    const at::Tensor* key_bias, float scale, at::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), NQ = q.size(2), d = q.size(3);
  const int64_t NK = k.size(2), dv = v.size(3);
  const int64_t KP = (NK + W - 1) / W * W;
  // A block of queries: its logits (QB x KP floats) stay within about 32 KiB (L1).
  const int64_t QB = std::max<int64_t>(QK_ROWS, std::min<int64_t>(96, (int64_t(1) << 13) / KP) / QK_ROWS * QK_ROWS);
  const int64_t nqb = (NQ + QB - 1) / QB;
  const Operands<T> o(q, k, v, bias, key_bias, out);
  const T *qp = o.q, *kp = o.k, *vp = o.v, *bp = o.bias;
  const float* kbp = o.key_bias;
  const int64_t qs0 = o.qs[0], qs1 = o.qs[1], qs2 = o.qs[2], ks0 = o.ks[0], ks1 = o.ks[1], ks2 = o.ks[2];
  const int64_t vs0 = o.vs[0], vs1 = o.vs[1], vs2 = o.vs[2], bs0 = o.bs[0], bs1 = o.bs[1], bs2 = o.bs[2];
  const int64_t kbs0 = o.kbs0;
  T* op = o.out;
  at::parallel_for(0, B * H * nqb, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> kt(d * KP), vbuf(NK * dv), qbuf(QB * d), sbuf(QB * KP), obuf(QB * dv), inv(QB);
    std::vector<RowBias<T>> rbias(QB);
    std::vector<vf> rmax(QB);
    float tile[16 * 64];
    int64_t cached = -1;
    PHASES_START
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bh = item / nqb, b = bh / H, h = bh % H;
      if (bh != cached) {  // this (batch, head)'s keys, transposed, and values, as fp32
        cached = bh;
        const T* kb = kp + b * ks0 + h * ks1;
        for (int64_t j0 = 0; j0 < NK; j0 += 16) {
          const int64_t nj = std::min<int64_t>(16, NK - j0);
          for (int64_t jj = 0; jj < nj; ++jj)
            for (int64_t c = 0; c < d; ++c) tile[jj * d + c] = load_f(kb[(j0 + jj) * ks2 + c]);
          for (int64_t c = 0; c < d; ++c)
            for (int64_t jj = 0; jj < nj; ++jj) kt[c * KP + j0 + jj] = tile[jj * d + c];
        }
        for (int64_t c = 0; c < d; ++c)
          for (int64_t j = NK; j < KP; ++j) kt[c * KP + j] = 0.f;
        const T* vb = vp + b * vs0 + h * vs1;
        for (int64_t j = 0; j < NK; ++j)
          for (int64_t c = 0; c < dv; ++c) vbuf[j * dv + c] = load_f(vb[j * vs2 + c]);
      }
      PHASE(0)
      const int64_t i0 = (item % nqb) * QB, rows = std::min(QB, NQ - i0);
      const T* qb = qp + b * qs0 + h * qs1 + i0 * qs2;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < d; ++c) qbuf[r * d + c] = load_f(qb[r * qs2 + c]) * scale;
      PHASE(1)
      for (int64_t r = 0; r < rows; ++r) {
        rbias[r] = RowBias<T>{bp ? bp + b * bs0 + h * bs1 + (i0 + r) * bs2 : nullptr, kbp ? kbp + b * kbs0 : nullptr, NK};
        rmax[r] = splat(-INFINITY);
      }
      int64_t r = 0;
      for (; r + QK_ROWS <= rows; r += QK_ROWS)
        qk_rows<QK_ROWS>(qbuf.data() + r * d, int(d), kt.data(), KP, sbuf.data() + r * KP, rbias.data() + r, rmax.data() + r);
      for (; r < rows; ++r)
        qk_rows<1>(qbuf.data() + r * d, int(d), kt.data(), KP, sbuf.data() + r * KP, rbias.data() + r, rmax.data() + r);
      PHASE(2)
      for (r = 0; r < rows; ++r) {  // the softmax's numerators, unnormalised; 1 / their sum
        float* s = sbuf.data() + r * KP;
        float mx = rmax[r][0];
        for (int t = 1; t < W; ++t) mx = std::max(mx, rmax[r][t]);
        const vf mv = splat(mx);
        vf sum = splat(0.f);
        for (int64_t j = 0; j < KP; j += W) { const vf e = vexp(load(s + j) - mv); store(s + j, e); sum += e; }
        float tot = 0.f;
        for (int t = 0; t < W; ++t) tot += sum[t];
        inv[r] = 1.0f / tot;
      }
      PHASE(3)
      pv_any(dv, sbuf.data(), KP, NK, vbuf.data(), obuf.data(), rows);
      PHASE(4)
      for (r = 0; r < rows; ++r) {
        T* orow = op + ((b * NQ + i0 + r) * H + h) * dv;
        for (int64_t c = 0; c < dv; ++c) orow[c] = store_f<T>(obuf[r * dv + c] * inv[r]);
      }
      PHASE(5)
    }
    report_phases();
  });
}

// Checks of the operands both kernels take (their head sizes apart); the output, (B, NQ, H, dv) in memory, zero
// where there are no keys.
at::Tensor checked_output(const char* name, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& key_bias) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, name, ": q, k, v must be 4-d (batch, heads, seq, c)");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(), name, ": q, k, v dtypes differ");
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16, name, ": fp32 or bf16 only");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(0) == v.size(0) && q.size(1) == k.size(1) && q.size(1) == v.size(1)
              && k.size(2) == v.size(2) && q.size(3) == k.size(3), name, ": q, k, v shapes disagree");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1, name, ": the head dimension must be contiguous");
  if (bias) {
    TORCH_CHECK(bias->dim() == 4 && bias->scalar_type() == q.scalar_type() && bias->size(3) == k.size(2)
                && bias->stride(3) == 1 && (bias->size(0) == 1 || bias->size(0) == q.size(0))
                && (bias->size(1) == 1 || bias->size(1) == q.size(1)) && (bias->size(2) == 1 || bias->size(2) == q.size(2)),
                name, ": bias must broadcast to (batch, heads, queries, keys), keys contiguous, q's dtype");
  }
  if (key_bias) {
    TORCH_CHECK(key_bias->dim() == 2 && key_bias->scalar_type() == at::kFloat && key_bias->size(0) == q.size(0)
                && key_bias->size(1) == k.size(2) && key_bias->stride(1) == 1,
                name, ": key_bias must be fp32 (batch, keys), keys contiguous");
  }
  auto out = at::empty({q.size(0), q.size(2), q.size(1), v.size(3)}, q.options());
  if (k.size(2) == 0) out.zero_();
  return out;
}

// q (B, H, NQ, d), k (B, H, NK, d), v (B, H, NK, dv): any strides with the last dimension contiguous.
// bias broadcastable to (B, H, NQ, NK) with its last dimension contiguous, in q's dtype; key_bias (B, NK)
// fp32, added to every query's logits. Returns (B, H, NQ, dv) whose memory is (B, NQ, H, dv), as
// PyTorch's scaled_dot_product_attention returns it on the CPU.
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& key_bias, double scale) {
  auto out = checked_output("attention", q, k, v, bias, key_bias);
  TORCH_CHECK(head_size_supported(q.size(3)) && head_size_supported(v.size(3)), "attention: unsupported head size");
  const at::Tensor* bp = bias ? &*bias : nullptr;
  const at::Tensor* kbp = key_bias ? &*key_bias : nullptr;
  if (q.numel() > 0 && k.size(2) > 0) {
    if (q.scalar_type() == at::kFloat) attention_impl<float>(q, k, v, bp, kbp, float(scale), out);
    else attention_impl<at::BFloat16>(q, k, v, bp, kbp, float(scale), out);
  }
  return out.permute({0, 2, 1, 3});
}


#if defined(__AMX_BF16__) && defined(__AVX512BF16__)
// bf16 attention on AMX tiles: the logits (16 queries x 16 keys a tile, fp32) and the values' products
// (16 queries x 32 keys of bf16 probabilities a tile) on the matrix unit, the softmax in AVX512 on fp32
// logits. Head sizes 8, 16 and 32. The probabilities are rounded to bf16 for the second product, as
// PyTorch's bf16 kernel does; the logits, the maximum and the sum stay fp32.
struct TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

bool amx_permitted() {
  static const bool ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
  return ok;
}


// The keys of one (batch, head) as AMX's B operand of q k^T: per block of 16 keys, d/2 rows of 16 dwords,
// the dword of row kk, column j being keys[j][2kk : 2kk + 2]. Keys past nk are 0.
void build_keys_vnni(const uint16_t* keys, int64_t stride, int64_t nk, int64_t kp, int64_t d, uint32_t* out) {
  const int64_t words = d / 2;  // dwords in a key
  const __mmask16 mask = __mmask16((1u << words) - 1u);
  for (int64_t j0 = 0; j0 < kp; j0 += 16) {
    __m512i rows[16];
    for (int t = 0; t < 16; ++t)
      rows[t] = j0 + t < nk ? _mm512_maskz_loadu_epi32(mask, keys + (j0 + t) * stride) : _mm512_setzero_si512();
    // 16 x 16 dword transpose
    __m512i a[16], c[16];
    for (int t = 0; t < 16; t += 2) {
      a[t] = _mm512_unpacklo_epi32(rows[t], rows[t + 1]);
      a[t + 1] = _mm512_unpackhi_epi32(rows[t], rows[t + 1]);
    }
    for (int t = 0; t < 16; t += 4) {
      c[t] = _mm512_unpacklo_epi64(a[t], a[t + 2]);
      c[t + 1] = _mm512_unpackhi_epi64(a[t], a[t + 2]);
      c[t + 2] = _mm512_unpacklo_epi64(a[t + 1], a[t + 3]);
      c[t + 3] = _mm512_unpackhi_epi64(a[t + 1], a[t + 3]);
    }
    // c[4g + i] holds, in each 128-bit lane L, dword i of rows 4g..4g+3 of lane L's column block
    for (int t = 0; t < 16; t += 8)
      for (int i = 0; i < 4; ++i) {
        a[t + i] = _mm512_shuffle_i32x4(c[t + i], c[t + 4 + i], 0x88);      // lanes 0, 2 of each
        a[t + 4 + i] = _mm512_shuffle_i32x4(c[t + i], c[t + 4 + i], 0xdd);  // lanes 1, 3 of each
      }
    for (int i = 0; i < 4; ++i)
      for (int hh = 0; hh < 2; ++hh) {
        const __m512i lo = a[hh * 4 + i], hi = a[8 + hh * 4 + i];
        const __m512i x = _mm512_shuffle_i32x4(lo, hi, 0x88), y = _mm512_shuffle_i32x4(lo, hi, 0xdd);
        // x: column 4 * hh + i (lane hh of each row group), y: column 4 * (hh + 2) + i
        const int64_t col_x = hh * 4 + i, col_y = (hh + 2) * 4 + i;
        if (col_x < words) _mm512_storeu_si512(out + (j0 / 16) * words * 16 + col_x * 16, x);
        if (col_y < words) _mm512_storeu_si512(out + (j0 / 16) * words * 16 + col_y * 16, y);
      }
  }
}

// The values of one (batch, head) as AMX's B operand of p v: per block of 32 keys and group of up to 16
// columns, 16 rows of (columns x 2) bf16, row jj holding values[2jj][c], values[2jj + 1][c] side by side.
void build_values_vnni(const uint16_t* values, int64_t stride, int64_t nk, int64_t kp, int64_t dv, uint32_t* out) {
  const int64_t ovec = std::min<int64_t>(dv, 16), groups = dv / ovec;
  const __mmask32 mask = __mmask32(dv >= 32 ? 0xffffffffu : ((1u << dv) - 1u));
  alignas(64) static const uint16_t lo_idx[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                                  8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  alignas(64) static const uint16_t hi_idx[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                                                  24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
  const __m512i il = _mm512_load_si512(lo_idx), ih = _mm512_load_si512(hi_idx);
  for (int64_t j = 0; j < kp; j += 2) {
    const __m512i a = j < nk ? _mm512_maskz_loadu_epi16(mask, values + j * stride) : _mm512_setzero_si512();
    const __m512i b = j + 1 < nk ? _mm512_maskz_loadu_epi16(mask, values + (j + 1) * stride) : _mm512_setzero_si512();
    uint32_t* row = out + ((j / 32) * groups * 16 + (j % 32) / 2) * ovec;
    const __m512i x = _mm512_permutex2var_epi16(a, il, b);
    if (ovec == 16) _mm512_storeu_si512(row, x);
    else _mm256_storeu_si256(reinterpret_cast<__m256i*>(row), _mm512_castsi512_si256(x));
    if (groups == 2) _mm512_storeu_si512(row + 16 * ovec, _mm512_permutex2var_epi16(a, ih, b));
  }
}

void attention_amx_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor* bias,
                        const at::Tensor* key_bias, float scale, at::Tensor& out) {
  typedef uint16_t bf;
  const int64_t B = q.size(0), H = q.size(1), NQ = q.size(2), d = q.size(3);
  const int64_t NK = k.size(2), dv = v.size(3);
  const int64_t KP = (NK + 31) / 32 * 32;  // keys, padded to the values' tile depth
  const int64_t nqb = (NQ + 15) / 16;
  const Operands<at::BFloat16> o(q, k, v, bias, key_bias, out);
  const bf* qp = reinterpret_cast<const bf*>(o.q);
  const bf* kp = reinterpret_cast<const bf*>(o.k);
  const bf* vp = reinterpret_cast<const bf*>(o.v);
  const at::BFloat16* bp = o.bias;
  const float* kbp = o.key_bias;
  const int64_t qs0 = o.qs[0], qs1 = o.qs[1], qs2 = o.qs[2], ks0 = o.ks[0], ks1 = o.ks[1], ks2 = o.ks[2];
  const int64_t vs0 = o.vs[0], vs1 = o.vs[1], vs2 = o.vs[2], bs0 = o.bs[0], bs1 = o.bs[1], bs2 = o.bs[2];
  const int64_t kbs0 = o.kbs0;
  at::BFloat16* op = o.out;
  const int ovec = int(std::min<int64_t>(dv, 16));  // output columns per tile
  at::parallel_for(0, B * H * nqb, 1, [&](int64_t begin, int64_t end) {
    TileConfig cfg;
    cfg.rows[0] = 16; cfg.colsb[0] = 64;                    // logits, 16 x 16 fp32
    cfg.rows[1] = 16; cfg.colsb[1] = uint16_t(d * 2);       // queries, 16 x d bf16
    cfg.rows[2] = uint8_t(d / 2); cfg.colsb[2] = 64;        // keys, pairs along d: (d/2) x 16 keys x 2
    cfg.rows[3] = 16; cfg.colsb[3] = 64;                    // probabilities, 16 x 32 keys bf16
    cfg.rows[4] = 16; cfg.colsb[4] = uint16_t(ovec * 4);    // values, pairs of keys: 16 x ovec x 2
    cfg.rows[5] = 16; cfg.colsb[5] = uint16_t(ovec * 4);
    cfg.rows[6] = 16; cfg.colsb[6] = uint16_t(ovec * 4);    // output, 16 x ovec fp32
    cfg.rows[7] = 16; cfg.colsb[7] = uint16_t(ovec * 4);
    _tile_loadconfig(&cfg);
    std::vector<uint32_t> kvnni(KP * d / 2);   // [key block of 16][d/2][16]
    std::vector<uint32_t> vvnni(KP / 2 * dv);  // [key block of 32][column group of ovec][16][ovec]
    std::vector<float> sbuf(16 * KP), obuf(16 * dv);
    std::vector<bf> pbuf(16 * KP), qpad(16 * d);
    float inv[16];
    int64_t cached = -1;
    PHASES_START
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bh = item / nqb, b = bh / H, h = bh % H;
      if (bh != cached) {
        cached = bh;
        build_keys_vnni(kp + b * ks0 + h * ks1, ks2, NK, KP, d, kvnni.data());
        build_values_vnni(vp + b * vs0 + h * vs1, vs2, NK, KP, dv, vvnni.data());
      }
      PHASE(0)
      const int64_t i0 = (item % nqb) * 16, rows = std::min<int64_t>(16, NQ - i0);
      const bf* qb = qp + b * qs0 + h * qs1 + i0 * qs2;
      if (rows == 16) {
        _tile_loadd(1, qb, qs2 * 2);
      } else {
        std::fill(qpad.begin(), qpad.end(), bf(0));
        for (int64_t r = 0; r < rows; ++r) std::memcpy(qpad.data() + r * d, qb + r * qs2, d * 2);
        _tile_loadd(1, qpad.data(), d * 2);
      }
      PHASE(1)
      for (int64_t j0 = 0; j0 < KP; j0 += 32) {  // KP is a multiple of 32: two logits tiles (0, 3) in turn
        _tile_zero(0);
        _tile_zero(3);
        _tile_loadd(2, kvnni.data() + (j0 / 16) * (d / 2) * 16, 64);
        _tile_dpbf16ps(0, 1, 2);
        _tile_loadd(2, kvnni.data() + (j0 / 16 + 1) * (d / 2) * 16, 64);
        _tile_dpbf16ps(3, 1, 2);
        _tile_stored(0, sbuf.data() + j0, KP * 4);
        _tile_stored(3, sbuf.data() + j0 + 16, KP * 4);
      }
      PHASE(2)
      const vf sv = splat(scale);
      for (int64_t r = 0; r < rows; ++r) {
        float* s = sbuf.data() + r * KP;
        const RowBias<at::BFloat16> rb{bp ? bp + b * bs0 + h * bs1 + (i0 + r) * bs2 : nullptr,
                                       kbp ? kbp + b * kbs0 : nullptr, NK};
        vf m = splat(-INFINITY);
        const int64_t full = NK / W * W;
        int64_t j = 0;
        if (rb.bias && rb.key_bias) {
          for (; j < full; j += W) { const vf x = load(s + j) * sv + load_row(rb.bias, j, NK) + load(rb.key_bias + j); store(s + j, x); m = vmax(m, x); }
        } else if (rb.bias) {
          for (; j < full; j += W) { const vf x = load(s + j) * sv + load_row(rb.bias, j, NK); store(s + j, x); m = vmax(m, x); }
        } else if (rb.key_bias) {
          for (; j < full; j += W) { const vf x = load(s + j) * sv + load(rb.key_bias + j); store(s + j, x); m = vmax(m, x); }
        } else {
          for (; j < full; j += W) { const vf x = load(s + j) * sv; store(s + j, x); m = vmax(m, x); }
        }
        for (; j < KP; j += W) {
          const vf x = load(s + j) * sv + rb.at(j);
          store(s + j, x);
          m = vmax(m, x);
        }
        const vf mv = splat(_mm512_reduce_max_ps(m));
        vf sum = splat(0.f);
        bf* p = pbuf.data() + r * KP;
        for (int64_t j = 0; j < KP; j += W) {
          const vf e = vexp_coarse(load(s + j) - mv);
          sum += e;
          const __m256bh h16 = _mm512_cvtneps_pbh(e);
          std::memcpy(p + j, &h16, 32);
        }
        inv[r] = 1.0f / _mm512_reduce_add_ps(sum);
      }
      for (int64_t r = rows; r < 16; ++r) std::fill(pbuf.begin() + r * KP, pbuf.begin() + (r + 1) * KP, bf(0));
      PHASE(3)
      _tile_zero(6);
      if (dv > 16) _tile_zero(7);
      const int64_t groups = dv / ovec;
      for (int64_t j0 = 0; j0 < KP; j0 += 32) {
        _tile_loadd(3, pbuf.data() + j0, KP * 2);
        const uint32_t* vblk = vvnni.data() + (j0 / 32) * groups * 16 * ovec;
        _tile_loadd(4, vblk, ovec * 4);
        _tile_dpbf16ps(6, 3, 4);
        if (dv > 16) {
          _tile_loadd(5, vblk + 16 * ovec, ovec * 4);
          _tile_dpbf16ps(7, 3, 5);
        }
      }
      PHASE(4)
      _tile_stored(6, obuf.data(), dv * 4);
      if (dv > 16) _tile_stored(7, obuf.data() + 16, dv * 4);
      for (int64_t r = 0; r < rows; ++r) {
        uint16_t* orow = reinterpret_cast<uint16_t*>(op + ((b * NQ + i0 + r) * H + h) * dv);
        const float* o = obuf.data() + r * dv;
        if (dv == 8) {
          const __m128bh x = _mm256_cvtneps_pbh(_mm256_mul_ps(_mm256_loadu_ps(o), _mm256_set1_ps(inv[r])));
          std::memcpy(orow, &x, 16);
        } else {
          for (int64_t c = 0; c < dv; c += 16) {
            const __m256bh x = _mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(o + c), _mm512_set1_ps(inv[r])));
            std::memcpy(orow + c, &x, 32);
          }
        }
      }
      PHASE(5)
    }
    report_phases();
    _tile_release();
  });
}

at::Tensor attention_amx(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& key_bias, double scale) {
  TORCH_CHECK(amx_permitted(), "attention_amx: the kernel refused AMX tile data to this process");
  auto out = checked_output("attention_amx", q, k, v, bias, key_bias);
  TORCH_CHECK(q.scalar_type() == at::kBFloat16, "attention_amx: bf16 only");
  TORCH_CHECK((q.size(3) == 8 || q.size(3) == 16 || q.size(3) == 32) && (v.size(3) == 8 || v.size(3) == 16 || v.size(3) == 32),
              "attention_amx: head sizes 8, 16, 32");
  const at::Tensor* bp = bias ? &*bias : nullptr;
  const at::Tensor* kbp = key_bias ? &*key_bias : nullptr;
  if (q.numel() > 0 && k.size(2) > 0) attention_amx_impl(q, k, v, bp, kbp, float(scale), out);
  return out.permute({0, 2, 1, 3});
}
#endif

// ---- layer_norm: AlphaFold2's layer norm over the last dimension ---------------------------------------------
// y = (x - mean) / sqrt(var + eps) * scale + offset per row of c channels, var = mean((x - mean)^2) (two passes
// over the row, held as fp32 in a per-thread buffer), in fp32 whatever x's dtype; y in x's dtype (bf16 rounded
// to nearest even). PyTorch's CPU layer norm on bf16 rows with fp32 parameters ran at about a quarter of a
// copy's speed; this one reads each row once and writes it once.

inline float hsum(vf v) {  // a tree: the lanes' serial sum is a chain of W dependent additions
#if defined(__AVX512F__)
  return _mm512_reduce_add_ps(v);
#else
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
#endif
}

inline void store_row(float* p, int64_t j, vf v) { store(p + j, v); }
// W floats rounded to bf16 (to nearest even; NaN stays NaN) and written to p: the one rounding of af2cpu's
// element-wise kernels.
inline void store_bf16(at::BFloat16* p, vf v) {
#if defined(__AVX512BF16__)
  const __m256bh h = _mm512_cvtneps_pbh(v);
  std::memcpy(p, &h, sizeof(h));
#else
  typedef uint32_t vu __attribute__((vector_size(W * 4)));
  typedef uint16_t vh __attribute__((vector_size(W * 2)));
  vu u;
  std::memcpy(&u, &v, sizeof(u));
  vu rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  rounded = (v != v) ? vu{} + 0x7FC0u : rounded;
  vh h = __builtin_convertvector(rounded, vh);
  std::memcpy(p, &h, sizeof(h));
#endif
}
inline void store_row(at::BFloat16* p, int64_t j, vf v) { store_bf16(p + j, v); }

template <typename T>
void layer_norm_impl(const T* x, int64_t nb, int64_t nn, int64_t sb, int64_t sn, int64_t c, const float* scale,
                     const float* offset, float eps, T* y) {
  const bool across = nb > 1 && nn > 1 && sb < sn;
  at::parallel_for(0, nb * nn, std::max<int64_t>(1, 16384 / std::max<int64_t>(c, 1)), [=](int64_t r0, int64_t r1) {
    const int64_t full = c / W * W, pairs = c / (2 * W) * (2 * W);
    const float inv_c = 1.f / float(c);
    std::vector<float> buf(c);
    float* const b = buf.data();
    for (int64_t i = r0; i < r1; ++i) {
      // Rows in the order of their addresses: a block of columns (its outer stride the smaller) is read row by row
      // of the representation, each row's columns in turn; the output stays (B, N) in order.
      const int64_t b_ = across ? i % nb : i / nn, n_ = across ? i / nb : i % nn, r = b_ * nn + n_;
      const T* const xr = x + b_ * sb + n_ * sn;
      T* const yr = y + r * c;
      vf acc0 = splat(0.f), acc1 = splat(0.f);  // two chains of additions
      for (int64_t j = 0; j < pairs; j += 2 * W) {
        const vf v0 = load_full(xr + j), v1 = load_full(xr + j + W);
        store(b + j, v0);
        store(b + j + W, v1);
        acc0 += v0;
        acc1 += v1;
      }
      for (int64_t j = pairs; j < full; j += W) {
        const vf v = load_full(xr + j);
        store(b + j, v);
        acc0 += v;
      }
      float sum = hsum(acc0 + acc1);
      for (int64_t j = full; j < c; ++j) sum += (b[j] = load_f(xr[j]));
      const float mean = sum * inv_c;
      const vf m = splat(mean);
      acc0 = acc1 = splat(0.f);
      for (int64_t j = 0; j < pairs; j += 2 * W) {
        const vf d0 = load(b + j) - m, d1 = load(b + j + W) - m;
        acc0 += d0 * d0;
        acc1 += d1 * d1;
      }
      for (int64_t j = pairs; j < full; j += W) {
        const vf d = load(b + j) - m;
        acc0 += d * d;
      }
      float var = hsum(acc0 + acc1);
      for (int64_t j = full; j < c; ++j) var += (b[j] - mean) * (b[j] - mean);
      const float rstd = 1.f / std::sqrt(var * inv_c + eps);
      const vf rs = splat(rstd);
      for (int64_t j = 0; j < full; j += W) store_row(yr, j, (load(b + j) - m) * rs * load(scale + j) + load(offset + j));
      for (int64_t j = full; j < c; ++j) yr[j] = store_f<T>((b[j] - mean) * rstd * scale[j] + offset[j]);
    }
  });
}

// The layer norm of channel-first activations, written channel-last: x is c planes of p positions (plane stride
// ldc, the positions contiguous; the triangle multiplication's sums, (c, rows, L)), y is p rows of c channels.
// Instead of a transposing copy and then the rows' kernel, a tile of 16 positions at a time: the c planes' 16
// values are read into a per-thread buffer (as fp32, one vector lane per position), the statistics of the 16
// positions are summed lane by lane (the same two passes as the rows' kernel), and the normalised tile is
// transposed 8 x 8 in registers as it is written out, scale and offset applied per channel. 8-wide (AVX2)
// vectors in every build: a tile's transposes are 8 x 8.
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const at::BFloat16* p) {  // widened: a bf16 is the high half of its fp32
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
inline void store8(at::BFloat16* p, __m256 v) {  // store_bf16's rounding, of 8 floats
#if defined(__AVX512F__)
  alignas(64) at::BFloat16 h[16];
  store_bf16(h, vf(_mm512_castps256_ps512(v)));  // the upper 8 lanes are not kept
  std::memcpy(p, h, 16);
#else
  store_bf16(p, v);
#endif
}

inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

template <typename T>
void layer_norm_cf_impl(const T* x, int64_t c, int64_t ldc, int64_t p, const float* scale, const float* offset,
                        float eps, T* y) {
  constexpr int64_t TP = 16;  // positions a tile
  const int64_t tiles = (p + TP - 1) / TP;
  at::parallel_for(0, tiles, std::max<int64_t>(1, 1024 / std::max<int64_t>(c, 1)), [=](int64_t t0, int64_t t1) {
    const int64_t groups = c / 8 * 8;
    const float inv_c = 1.f / float(c);
    std::vector<float> buf(c * TP);  // buf[k * TP + t]: channel k of the tile's position t
    float* const b = buf.data();
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t p0 = t * TP, n = std::min(TP, p - p0);
      if (n < TP) {  // the last positions, one at a time
        for (int64_t q = p0; q < p; ++q) {
          float sum = 0.f;
          for (int64_t k = 0; k < c; ++k) sum += (b[k] = load_f(x[k * ldc + q]));
          const float mean = sum * inv_c;
          float var = 0.f;
          for (int64_t k = 0; k < c; ++k) var += (b[k] - mean) * (b[k] - mean);
          const float rstd = 1.f / std::sqrt(var * inv_c + eps);
          for (int64_t k = 0; k < c; ++k) y[q * c + k] = store_f<T>((b[k] - mean) * rstd * scale[k] + offset[k]);
        }
        continue;
      }
      __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
      for (int64_t k = 0; k < c; ++k) {
        const __m256 v0 = load8(x + k * ldc + p0), v1 = load8(x + k * ldc + p0 + 8);
        _mm256_storeu_ps(b + k * TP, v0);
        _mm256_storeu_ps(b + k * TP + 8, v1);
        s0 = _mm256_add_ps(s0, v0);
        s1 = _mm256_add_ps(s1, v1);
      }
      const __m256 vc = _mm256_set1_ps(inv_c);
      const __m256 m0 = _mm256_mul_ps(s0, vc), m1 = _mm256_mul_ps(s1, vc);
      __m256 q0 = _mm256_setzero_ps(), q1 = _mm256_setzero_ps();
      for (int64_t k = 0; k < c; ++k) {
        const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(b + k * TP), m0);
        const __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(b + k * TP + 8), m1);
        q0 = _mm256_add_ps(q0, _mm256_mul_ps(d0, d0));
        q1 = _mm256_add_ps(q1, _mm256_mul_ps(d1, d1));
      }
      const __m256 one = _mm256_set1_ps(1.f), e = _mm256_set1_ps(eps);
      const __m256 r0 = _mm256_div_ps(one, _mm256_sqrt_ps(_mm256_add_ps(_mm256_mul_ps(q0, vc), e)));
      const __m256 r1 = _mm256_div_ps(one, _mm256_sqrt_ps(_mm256_add_ps(_mm256_mul_ps(q1, vc), e)));
      for (int64_t k = 0; k < c; ++k) {
        _mm256_storeu_ps(b + k * TP, _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(b + k * TP), m0), r0));
        _mm256_storeu_ps(b + k * TP + 8, _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(b + k * TP + 8), m1), r1));
      }
      for (int64_t k = 0; k < groups; k += 8) {
        const __m256 sc = _mm256_loadu_ps(scale + k), of = _mm256_loadu_ps(offset + k);
        for (int64_t h = 0; h < TP; h += 8) {
          __m256 r[8];
          for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(b + (k + i) * TP + h);
          transpose8(r);  // r[i]: position p0 + h + i, channels k .. k + 7
          for (int i = 0; i < 8; ++i) store8(y + (p0 + h + i) * c + k, _mm256_add_ps(_mm256_mul_ps(r[i], sc), of));
        }
      }
      for (int64_t k = groups; k < c; ++k)
        for (int64_t i = 0; i < TP; ++i) y[(p0 + i) * c + k] = store_f<T>(b[k * TP + i] * scale[k] + offset[k]);
    }
  });
}

// x: fp32 or bf16; scale, offset: fp32 (c,), c = x's last dimension. Returns a contiguous tensor of x's shape and
// dtype. Three layouts: x (B, N, c) with the channels contiguous and the two outer dimensions of any strides (a
// block of rows or of columns of a representation); x of any other number of dimensions with the channels
// contiguous and the leading dimensions flattening to rows of one stride; or channels that are not contiguous
// but whose positions (the leading dimensions) flatten to one contiguous run in each channel (channel-first
// activations viewed channel-last).
at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& offset, double eps) {
  TORCH_CHECK(x.dim() >= 1 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "layer_norm: x must be fp32 or bf16");
  const int64_t c = x.size(-1);
  TORCH_CHECK(scale.scalar_type() == at::kFloat && offset.scalar_type() == at::kFloat && scale.dim() == 1
              && offset.dim() == 1 && scale.size(0) == c && offset.size(0) == c && scale.is_contiguous()
              && offset.is_contiguous(), "layer_norm: scale and offset must be contiguous fp32 (channels,)");
  auto out = at::empty(x.sizes(), x.options());
  if (x.numel() == 0) return out;
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  if (c > 1 && x.stride(-1) != 1) {
    int64_t expected = 1;  // the positions, innermost first, must be one contiguous run in each channel
    for (int64_t i = x.dim() - 2; i >= 0; --i) {
      if (x.size(i) == 1) continue;
      TORCH_CHECK(x.stride(i) == expected, "layer_norm: the channels must be contiguous, or each channel's positions");
      expected *= x.size(i);
    }
    const int64_t positions = x.numel() / c, ldc = x.stride(-1);
    if (bf16)
      layer_norm_cf_impl<at::BFloat16>(x.data_ptr<at::BFloat16>(), c, ldc, positions, scale.data_ptr<float>(),
                                       offset.data_ptr<float>(), float(eps), out.data_ptr<at::BFloat16>());
    else
      layer_norm_cf_impl<float>(x.data_ptr<float>(), c, ldc, positions, scale.data_ptr<float>(),
                                offset.data_ptr<float>(), float(eps), out.data_ptr<float>());
    return out;
  }
  int64_t nb, nn, sb, sn;
  if (x.dim() == 3) {
    nb = x.size(0), nn = x.size(1), sb = x.stride(0), sn = x.stride(1);
  } else {
    const auto rows_view = x.view({-1, c});  // an error where the leading dimensions do not flatten
    nb = rows_view.size(0), nn = 1, sb = nb > 1 ? rows_view.stride(0) : c, sn = 0;
  }
  if (bf16)
    layer_norm_impl<at::BFloat16>(x.data_ptr<at::BFloat16>(), nb, nn, sb, sn, c, scale.data_ptr<float>(),
                                  offset.data_ptr<float>(), float(eps), out.data_ptr<at::BFloat16>());
  else
    layer_norm_impl<float>(x.data_ptr<float>(), nb, nn, sb, sn, c, scale.data_ptr<float>(),
                           offset.data_ptr<float>(), float(eps), out.data_ptr<float>());
  return out;
}

// ---- gated: out = a * sigmoid(g) [* mask], AlphaFold2's gates ------------------------------------------------
// a, g, out: (B, N, M) with M contiguous and the two outer dimensions of any strides (a permuted attention
// output, a gate that is a slice of a wider projection, a block of a larger output); mask: (M,) fp32, the same
// for every (b, n), or absent. Computed in fp32, out rounded once to its dtype. sigmoid(x) = 1 / (1 + e^-x)
// from e = exp(-|x|) <= 1, so the exponential never overflows.
// For bf16 results (coarse): vexp_coarse and 1 / (1 + e) from the reciprocal instruction and one Newton
// step, 2 ulp of fp32 (the division is a tenth of the bf16 gate's time; fp32's gate, bound by memory, keeps it).
template <bool coarse>
inline vf vsigmoid(vf x) {
  vf e, r;
  if constexpr (coarse) {
    e = vexp_coarse(vmin(x, -x));
    const vf d = splat(1.f) + e;
#if defined(__AVX512F__)
    r = _mm512_rcp14_ps(d);
#else
    r = _mm256_rcp_ps(d);
#endif
    r = r * (splat(2.f) - d * r);
  } else {
    e = vexp(vmin(x, -x));
    r = splat(1.f) / (splat(1.f) + e);
  }
  return x >= splat(0.f) ? r : e * r;
}

struct Rows3 {  // the outer strides of a (B, N, M) operand, in elements
  int64_t sb, sn;
  int64_t at(int64_t b, int64_t n) const { return b * sb + n * sn; }
};

// fn(b, n, j0, j1) over the rows of a (B, N, M) loop cut into pieces of at most PIECE elements (whole vectors),
// shared among the threads a few pieces each: one long row (a whole representation viewed as one) is split too.
template <typename F>
void for_pieces(int64_t nb, int64_t nn, int64_t m, const F& fn) {
  constexpr int64_t PIECE = 8192;
  const int64_t per_row = std::max<int64_t>(1, (m + PIECE - 1) / PIECE);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, std::min(m, PIECE)));
  at::parallel_for(0, nb * nn * per_row, grain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t r = i / per_row, piece = i % per_row;
      fn(r / nn, r % nn, piece * PIECE, std::min(m, (piece + 1) * PIECE));
    }
  });
}

// With biases (fp32, one per b), out = (a + a_bias[b]) * sigmoid(g + g_bias[b]) [* mask]: the triangle
// multiplication's channel-first projections, whose bias is one per channel (b), added here instead of by the
// product. Without, nothing is added (a zero would turn -0 into +0).
template <typename T>
void gated_impl(const T* a, Rows3 ra, const T* g, Rows3 rg, const float* mask, const float* a_bias,
                const float* g_bias, T* out, Rows3 ro, int64_t nb, int64_t nn, int64_t m) {
  for_pieces(nb, nn, m, [=](int64_t b, int64_t n, int64_t j0, int64_t j1) {
    const T* ar = a + ra.at(b, n);
    const T* gr = g + rg.at(b, n);
    T* orow = out + ro.at(b, n);
    const bool biased = a_bias != nullptr;
    const float ab = biased ? a_bias[b] : 0.f, gb = biased ? g_bias[b] : 0.f;
    const vf vab = splat(ab), vgb = splat(gb);
    int64_t j = j0;
    for (; j + W <= j1; j += W) {
      vf av = load_full(ar + j), gv = load_full(gr + j);
      if (biased) {
        av += vab;
        gv += vgb;
      }
      vf y = av * vsigmoid<std::is_same_v<T, at::BFloat16>>(gv);
      if (mask) y *= load(mask + j);
      store_row(orow, j, y);
    }
    for (; j < j1; ++j) {
      float av = load_f(ar[j]), gv = load_f(gr[j]);
      if (biased) {
        av += ab;
        gv += gb;
      }
      float y = av / (1.f + std::exp(-gv));
      if (mask) y *= mask[j];
      orow[j] = store_f<T>(y);
    }
  });
}

// An operand of the element-wise operators: (B, N, M) as ``first``, of its dtype, M contiguous.
void check_rows3(const char* op, const char* what, const at::Tensor& t, const at::Tensor& first) {
  TORCH_CHECK(t.dim() == 3 && t.sizes() == first.sizes() && t.scalar_type() == first.scalar_type()
              && (t.size(2) <= 1 || t.stride(2) == 1),
              op, ": ", what, " must be (B, N, M) as the first operand, of its dtype, its last dimension contiguous");
}

// out = (a + a_bias) * sigmoid(g + g_bias) * mask, written into out; a, g, out (B, N, M) fp32 or bf16 as above,
// mask (M,) fp32 or None, a_bias and g_bias (B,) fp32, both or neither.
void gated(const at::Tensor& a, const at::Tensor& g, const std::optional<at::Tensor>& mask, at::Tensor out,
           const std::optional<at::Tensor>& a_bias, const std::optional<at::Tensor>& g_bias) {
  TORCH_CHECK(a.dim() == 3 && (a.scalar_type() == at::kFloat || a.scalar_type() == at::kBFloat16),
              "gated: a must be (B, N, M), fp32 or bf16");
  check_rows3("gated", "a", a, a);
  check_rows3("gated", "g", g, a);
  check_rows3("gated", "out", out, a);
  const int64_t nb = a.size(0), nn = a.size(1), m = a.size(2);
  const float* mp = nullptr;
  if (mask) {
    TORCH_CHECK(mask->dim() == 1 && mask->size(0) == m && mask->scalar_type() == at::kFloat && mask->is_contiguous(),
                "gated: mask must be contiguous fp32 (M,)");
    mp = mask->data_ptr<float>();
  }
  TORCH_CHECK(a_bias.has_value() == g_bias.has_value(), "gated: give both biases or neither");
  const float *ab = nullptr, *gb = nullptr;
  if (a_bias) {
    for (const auto* bias : {&*a_bias, &*g_bias})
      TORCH_CHECK(bias->dim() == 1 && bias->size(0) == nb && bias->scalar_type() == at::kFloat
                  && bias->is_contiguous(), "gated: a_bias and g_bias must be contiguous fp32 (B,)");
    ab = a_bias->data_ptr<float>();
    gb = g_bias->data_ptr<float>();
  }
  if (a.numel() == 0) return;
  const Rows3 ra{a.stride(0), a.stride(1)}, rg{g.stride(0), g.stride(1)}, ro{out.stride(0), out.stride(1)};
  if (a.scalar_type() == at::kFloat)
    gated_impl<float>(a.data_ptr<float>(), ra, g.data_ptr<float>(), rg, mp, ab, gb, out.data_ptr<float>(), ro, nb,
                      nn, m);
  else
    gated_impl<at::BFloat16>(a.data_ptr<at::BFloat16>(), ra, g.data_ptr<at::BFloat16>(), rg, mp, ab, gb,
                             out.data_ptr<at::BFloat16>(), ro, nb, nn, m);
}

// ---- add_into: act += update, the residual sums -------------------------------------------------------------
// act, update: (B, N, M) of one dtype with M contiguous and outer dimensions of any strides (act may be a block of
// the representation). Summed in fp32 and rounded once, as PyTorch's bf16 sum: the same numbers, in one pass
// without PyTorch's per-element conversions. With a divisor (fp32, one per (b, n): the outer product mean's count
// of sequence pairs), act += round(update / divisor): the quotient rounded to act's dtype first, as dividing the
// update in place and then adding it rounds, bit for bit.
inline vf rounded_as(const float*, vf v) { return v; }
inline vf rounded_as(const at::BFloat16*, vf v) {  // v rounded to bf16 (to nearest even) and widened back
  at::BFloat16 h[W];
  store_row(h, 0, v);
  return load_full(h);
}

template <typename T>
void add_impl(T* act, Rows3 ra, const T* u, Rows3 ru, const float* divisor, int64_t nb, int64_t nn, int64_t m) {
  for_pieces(nb, nn, m, [=](int64_t b, int64_t n, int64_t j0, int64_t j1) {
    T* ar = act + ra.at(b, n);
    const T* ur = u + ru.at(b, n);
    int64_t j = j0;
    if (divisor) {
      const float d = divisor[b * nn + n];
      const vf dv = splat(d);
      for (; j + W <= j1; j += W) store_row(ar, j, load_full(ar + j) + rounded_as(ur, load_full(ur + j) / dv));
      for (; j < j1; ++j) ar[j] = store_f<T>(load_f(ar[j]) + load_f(store_f<T>(load_f(ur[j]) / d)));
      return;
    }
    for (; j + W <= j1; j += W) store_row(ar, j, load_full(ar + j) + load_full(ur + j));
    for (; j < j1; ++j) ar[j] = store_f<T>(load_f(ar[j]) + load_f(ur[j]));
  });
}

// divisor: (B, N) fp32, contiguous, or absent.
void add_into(at::Tensor act, const at::Tensor& update, const std::optional<at::Tensor>& divisor) {
  TORCH_CHECK(act.dim() == 3 && (act.scalar_type() == at::kFloat || act.scalar_type() == at::kBFloat16),
              "add_into: act must be (B, N, M), fp32 or bf16");
  check_rows3("add_into", "act", act, act);
  check_rows3("add_into", "update", update, act);
  const float* dp = nullptr;
  if (divisor) {
    TORCH_CHECK(divisor->dim() == 2 && divisor->size(0) == act.size(0) && divisor->size(1) == act.size(1)
                && divisor->scalar_type() == at::kFloat && divisor->is_contiguous(),
                "add_into: divisor must be contiguous fp32 (B, N)");
    dp = divisor->data_ptr<float>();
  }
  if (act.numel() == 0) return;
  const Rows3 ra{act.stride(0), act.stride(1)}, ru{update.stride(0), update.stride(1)};
  if (act.scalar_type() == at::kFloat)
    add_impl<float>(act.data_ptr<float>(), ra, update.data_ptr<float>(), ru, dp, act.size(0), act.size(1),
                    act.size(2));
  else
    add_impl<at::BFloat16>(act.data_ptr<at::BFloat16>(), ra, update.data_ptr<at::BFloat16>(), ru, dp, act.size(0),
                           act.size(1), act.size(2));
}

}  // namespace

#ifndef AF2CPU_OPS
#define AF2CPU_OPS af2cpu
#endif
#define AF2CPU_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define AF2CPU_LIBRARY_IMPL(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)
// The schemas, and the kernels for CPU tensors: registered for the CPU dispatch key, so that Python's dispatch
// modes (torch's flop counter: af2cpu bench) see the operators as they see PyTorch's own.
AF2CPU_LIBRARY(AF2CPU_OPS, m) {
  m.def("attention(Tensor q, Tensor k, Tensor v, Tensor? bias, Tensor? key_bias, float scale) -> Tensor");
  m.def("layer_norm(Tensor x, Tensor scale, Tensor offset, float eps) -> Tensor");
  m.def("gated(Tensor a, Tensor g, Tensor? mask, Tensor(a!) out, Tensor? a_bias=None, Tensor? g_bias=None) -> ()");
  m.def("add_into(Tensor(a!) act, Tensor update, Tensor? divisor=None) -> ()");
#if defined(__AMX_BF16__) && defined(__AVX512BF16__)
  m.def("attention_amx(Tensor q, Tensor k, Tensor v, Tensor? bias, Tensor? key_bias, float scale) -> Tensor");
#endif
}

AF2CPU_LIBRARY_IMPL(AF2CPU_OPS, CPU, m) {
  m.impl("attention", &attention);
  m.impl("layer_norm", &layer_norm);
  m.impl("gated", &gated);
  m.impl("add_into", &add_into);
#if defined(__AMX_BF16__) && defined(__AVX512BF16__)
  m.impl("attention_amx", &attention_amx);
#endif
}
