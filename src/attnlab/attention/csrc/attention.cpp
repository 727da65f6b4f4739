// attnlab's native CPU attention kernel: exact attention, forward and backward, blockwise with the
// online softmax. It has the meaning of attnlab/attention/tiled.py (read that file's docstring
// first); attnlab/attention/native.py builds this file, lays the tensors out and calls it.
//
// Built on the machine that runs it (-O3 -march=native -fopenmp), so the vector width is the
// machine's: 16 floats with AVX-512, 8 with AVX2. The two matrix products of each tile run in one
// register-blocked micro-kernel (C += A * B with A read by rows or by columns); the softmax's
// exponentials in a vectorised exp. float32 and float64 (for gradcheck); bf16/fp16 inputs are
// widened to float32 by the caller.
//
// Layouts (all contiguous; D and Dv padded with zeros to a multiple of the vector width, Lk to
// Lkp, a multiple of it too; padded keys are masked, padded values are zero):
//   q   (NHk, G, Lq, Dp)    queries already multiplied by the scale
//   kt  (NHk, Lkp/bk, Dp, bk) keys transposed, one (Dp, bk) panel per key block: a tile of
//                           scores reads one contiguous panel (rows of the whole transposed
//                           keys lie Lkp apart, which at n = 32768 costs a TLB miss per row)
//   k   (NHk, Lkp, Dp)      keys (backward: dQ = dS K)
//   v   (NHk, Lkp, Dvp)     values (forward: O = P V)
//   vt  (NHk, Lkp/bk, Dvp, bk) values transposed, in panels too (backward: dP = dO V^T)
//   out (NHk, G, Lq, Dvp), lse (NHk, G, Lq), dout like out, delta like lse
//   dq  (chunks, NHk, G, Lq, Dp) (the caller sums the chunks), dk like k, dv like v
// Positions: query i sits at q_offset + i; key j at j. Key tiles start on multiples of bk (the
// key block rounded up to the vector width); Lkp is a multiple of bk.

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
constexpr int kRows = 12;  // micro-kernel rows: 12 x 2 accumulators = 24 of the 32 registers
#elif defined(__AVX__)
constexpr int kVectorBytes = 32;
constexpr int kRows = 6;  // 6 x 2 = 12 of the 16 registers, leaving room for B and A
#else
constexpr int kVectorBytes = 16;
constexpr int kRows = 6;
#endif
constexpr int kColVectors = 2;
constexpr int64_t kUnlimited = std::numeric_limits<int64_t>::max() / 4;
// Tiles whose scores were computed, forward and backward: lets the tests see the skipping.
std::atomic<int64_t> g_tiles{0};

template <typename T>
struct Simd {
  static constexpr int W = kVectorBytes / sizeof(T);
  typedef T V __attribute__((vector_size(kVectorBytes)));
};

template <typename T>
inline typename Simd<T>::V load(const T* p) {
  typename Simd<T>::V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
inline void store(T* p, typename Simd<T>::V v) {
  std::memcpy(p, &v, sizeof v);
}

template <typename T>
inline typename Simd<T>::V splat(T x) {
  return typename Simd<T>::V{} + x;
}

// ---- the micro-kernel: C (R x NV*W) (+)= A (R x K) * B (K x NV*W) -------------------------------
// A's element (r, k) is A[r * a_r + k * a_k], so one kernel serves A and A^T.

template <typename T, int R, int NV>
void micro(T* __restrict C, int64_t ldc, const T* __restrict A, int64_t a_r, int64_t a_k,
           const T* __restrict B, int64_t ldb, int64_t K, bool accumulate) {
  using V = typename Simd<T>::V;
  constexpr int W = Simd<T>::W;
  V acc[R][NV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < NV; ++c) acc[r][c] = accumulate ? load(C + r * ldc + c * W) : V{};
  for (int64_t k = 0; k < K; ++k) {
    V b[NV];
#pragma GCC unroll 4
    for (int c = 0; c < NV; ++c) b[c] = load(B + k * ldb + c * W);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const T a = A[r * a_r + k * a_k];
#pragma GCC unroll 4
      for (int c = 0; c < NV; ++c) acc[r][c] += a * b[c];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < NV; ++c) store(C + r * ldc + c * W, acc[r][c]);
}

template <typename T, int NV>
void micro_rows(int rows, T* C, int64_t ldc, const T* A, int64_t a_r, int64_t a_k, const T* B,
                int64_t ldb, int64_t K, bool accumulate) {
  switch (rows) {
#define ATTNLAB_CASE(n) \
  case n: micro<T, n, NV>(C, ldc, A, a_r, a_k, B, ldb, K, accumulate); break;
    ATTNLAB_CASE(1) ATTNLAB_CASE(2) ATTNLAB_CASE(3) ATTNLAB_CASE(4) ATTNLAB_CASE(5)
    ATTNLAB_CASE(6) ATTNLAB_CASE(7) ATTNLAB_CASE(8) ATTNLAB_CASE(9) ATTNLAB_CASE(10)
    ATTNLAB_CASE(11) ATTNLAB_CASE(12)
#undef ATTNLAB_CASE
    default: break;
  }
}

// C (M x N) (+)= A (M x K) * B (K x N, row stride ldb); N is a multiple of the vector width.
// Column strips outside, rows inside: one strip of B (K x 2W) stays in L1 for every row group.
template <typename T>
void gemm(T* C, int64_t ldc, const T* A, int64_t a_r, int64_t a_k, const T* B, int64_t ldb,
          int64_t M, int64_t N, int64_t K, bool accumulate) {
  constexpr int W = Simd<T>::W;
  for (int64_t j = 0; j < N; j += kColVectors * W) {
    const bool both = N - j >= kColVectors * W;
    for (int64_t i = 0; i < M; i += kRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kRows, M - i));
      if (both)
        micro_rows<T, 2>(rows, C + i * ldc + j, ldc, A + i * a_r, a_r, a_k, B + j, ldb, K, accumulate);
      else
        micro_rows<T, 1>(rows, C + i * ldc + j, ldc, A + i * a_r, a_r, a_k, B + j, ldb, K, accumulate);
    }
  }
}

// ---- exp, max, sum over a row of n (a multiple of W) elements -----------------------------------

typedef int32_t VInt __attribute__((vector_size(kVectorBytes)));

// exp(x) for float vectors: Cody-Waite reduction x = n ln2 + r, a degree-6 polynomial for e^r on
// |r| <= ln2/2 (Cephes' expf coefficients, ~1 ulp), and 2^n put into the exponent bits. Anything
// below -87.3 (e^x under float's smallest normal), -inf included, gives exactly 0.
inline Simd<float>::V exp_vector(Simd<float>::V x) {
  using V = Simd<float>::V;
  const V low = splat(-87.3f);
  V y = x < low ? low : x;
  y = y > splat(88.3f) ? splat(88.3f) : y;
  const V magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to the nearest integer
  const V n = (y * 1.44269504088896341f + magic) - magic;
  V r = y - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const VInt bits = (__builtin_convertvector(n, VInt) + 127) << 23;
  V two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return x < low ? V{} : p * two_n;
}

// x[i] = exp(x[i] - shift); returns the sum.
inline float exp_shift_sum(float* x, int64_t n, float shift) {
  using V = Simd<float>::V;
  constexpr int W = Simd<float>::W;
  V sum{};
  const V s = splat(shift);
  for (int64_t i = 0; i < n; i += W) {
    const V e = exp_vector(load(x + i) - s);
    store(x + i, e);
    sum += e;
  }
  float total = 0;
  for (int c = 0; c < W; ++c) total += sum[c];
  return total;
}

inline double exp_shift_sum(double* x, int64_t n, double shift) {
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += (x[i] = std::exp(x[i] - shift));
  return total;
}

template <typename T>
inline T row_max(const T* x, int64_t n) {
  using V = typename Simd<T>::V;
  constexpr int W = Simd<T>::W;
  V best = splat(-std::numeric_limits<T>::infinity());
  for (int64_t i = 0; i < n; i += W) {
    const V v = load(x + i);
    best = v > best ? v : best;
  }
  T top = best[0];
  for (int c = 1; c < W; ++c) top = std::max(top, best[c]);
  return top;
}

// ---- the request ---------------------------------------------------------------------------------

// Mirrors attnlab.attention.native._Args field for field (ctypes): 8-byte fields only.
struct Args {
  const void* q;
  const void* kt;
  const void* k;
  const void* v;
  const void* vt;
  void* out;
  void* lse;
  const void* dout;
  const void* delta;
  void* dq;
  void* dk;
  void* dv;
  const void* mask;       // bool (1 byte) or T, element (b, hk, g, i, j) at the strides below
  const void* neg_slopes;  // (Hq,) T: -ALiBi slope per query head (hk * G + g), or null
  int64_t mask_kind;       // 0 none, 1 bool, 2 additive
  int64_t mask_strides[5];
  int64_t nhk, kv_heads, groups, lq, lk, dp, dvp, lkp;
  int64_t q_offset, left, right, global_tokens, causal;  // left/right < 0: unlimited
  int64_t block_q, block_k, threads, chunks;
  double softcap;  // 0: none
};

struct Geometry {
  int64_t lk, q_offset, left, right, global_tokens;
  bool causal;

  explicit Geometry(const Args& a)
      : lk(a.lk), q_offset(a.q_offset), left(a.left < 0 ? kUnlimited : a.left),
        right(a.right < 0 ? kUnlimited : a.right), global_tokens(a.global_tokens),
        causal(a.causal != 0) {}

  // May the query at position qp see key j? (The window holds causality: right = 0.)
  bool allowed(int64_t qp, int64_t j) const {
    if (j >= lk) return false;
    if (j - qp <= right && qp - j <= left) return true;
    const int64_t g = global_tokens;
    return g > 0 && (j < g || qp < g) && (!causal || j <= qp);
  }

  // Is every pair of queries [qp0, qp1) and keys [j0, j1) allowed?
  bool all_allowed(int64_t qp0, int64_t qp1, int64_t j0, int64_t j1) const {
    if (j1 > lk) return false;
    if (j1 - 1 - qp0 <= right && qp1 - 1 - j0 <= left) return true;
    const int64_t g = global_tokens;
    return g > 0 && (j1 <= g || qp1 <= g) && (!causal || j1 - 1 <= qp0);
  }

  // The key ranges queries [qp0, qp1) may see: at most two [lo, hi), lo a multiple of W (the
  // key block: tiles then fall on whole panels of kt).
  int spans(int64_t qp0, int64_t qp1, int64_t W, int64_t out[2][2]) const {
    const int64_t g = global_tokens;
    int count = 0;
    auto add = [&](int64_t lo, int64_t hi) {
      if (hi > lo) {
        out[count][0] = lo;
        out[count][1] = hi;
        ++count;
      }
    };
    if (g > 0 && qp0 < g) {  // a global query sees every (causal) key
      add(0, causal ? std::min(lk, qp1) : lk);
      return count;
    }
    int64_t lo = left >= kUnlimited ? 0 : std::max<int64_t>(0, qp0 - left);
    const int64_t hi = right >= kUnlimited ? lk : std::min(lk, std::max<int64_t>(0, qp1 + right));
    lo = lo / W * W;
    if (g > 0 && lo > 0) {
      if (lo <= g) {
        add(0, hi);
      } else {
        add(0, std::min(g, lk));
        add(lo, hi);
      }
    } else {
      add(lo, hi);
    }
    return count;
  }
};

template <typename T>
struct Tile {
  const Args& a;
  const Geometry& geo;
  int64_t b, hk, g, i0, rows, j0, cols;  // cols: a multiple of W; keys j0 .. j0 + cols

  int64_t mask_index(int64_t i, int64_t j) const {
    const int64_t* s = a.mask_strides;
    return b * s[0] + hk * s[1] + g * s[2] + i * s[3] + j * s[4];
  }

  // 0: a bool mask forbids every pair of the tile, 1: allows every pair, 2: some.
  int bool_mask_state() const {
    if (a.mask_kind != 1) return 1;
    const auto* mask = static_cast<const uint8_t*>(a.mask);
    const int64_t j1 = std::min(j0 + cols, a.lk);
    bool any = false, all = true;
    for (int64_t i = i0; i < i0 + rows; ++i)
      for (int64_t j = j0; j < j1; ++j) {
        const bool m = mask[mask_index(i, j)] != 0;
        any |= m;
        all &= m;
      }
    return any ? (all ? 1 : 2) : 0;
  }

  // Raw products q.k of the tile (rows x cols, row stride lds) -> masked scores, in place; with a
  // softcap, tanh(x / cap) goes to `tanh` for the backward's derivative.
  void finish(T* S, int64_t lds, T* tanh, int mask_state) const {
    const int64_t qp0 = a.q_offset + i0, j1 = std::min(j0 + cols, a.lk);
    if (a.softcap > 0) {
      const T cap = static_cast<T>(a.softcap);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) {
          const T t = std::tanh(S[r * lds + c] / cap);
          if (tanh) tanh[r * lds + c] = t;
          S[r * lds + c] = cap * t;
        }
    }
    if (a.neg_slopes) {
      const T slope = static_cast<const T*>(a.neg_slopes)[hk * a.groups + g];
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c)
          S[r * lds + c] += slope * static_cast<T>(std::llabs(j0 + c - (qp0 + r)));
    }
    if (a.mask_kind == 2) {
      const T* mask = static_cast<const T*>(a.mask);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = j0; j < j1; ++j) S[r * lds + (j - j0)] += mask[mask_index(i0 + r, j)];
    }
    const bool window = !geo.all_allowed(qp0, qp0 + rows, j0, j0 + cols);
    if (!window && mask_state == 1) return;
    const auto* bool_mask = static_cast<const uint8_t*>(a.mask);
    const bool use_bool = a.mask_kind == 1 && mask_state == 2;
    const T minus_inf = -std::numeric_limits<T>::infinity();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t j = j0 + c;
        bool ok = geo.allowed(qp0 + r, j);
        if (ok && use_bool) ok = bool_mask[mask_index(i0 + r, j)] != 0;
        if (!ok) S[r * lds + c] = minus_inf;
      }
  }
};

inline int64_t round_up(int64_t x, int64_t m) {
  return (x + m - 1) / m * m;
}

// ---- forward -------------------------------------------------------------------------------------

template <typename T>
void forward(const Args& a) {
  constexpr int W = Simd<T>::W;
  const Geometry geo(a);
  const int64_t bq = a.block_q, bk = round_up(a.block_k, W);  // tiles start on a vector
  const int64_t q_blocks = (a.lq + bq - 1) / bq;
  const int64_t items = a.nhk * a.groups * q_blocks;
  const T minus_inf = -std::numeric_limits<T>::infinity();
#pragma omp parallel num_threads(static_cast<int>(a.threads))
  {
    std::vector<T> scores(bq * bk), acc(bq * a.dvp), m(bq), l(bq);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      // Last query blocks first: under causality they are the longest, and a dynamic schedule
      // balances best when the big pieces go out early.
      const int64_t qb = q_blocks - 1 - item % q_blocks;
      const int64_t head = item / q_blocks;  // bh * G + g
      const int64_t bh = head / a.groups, g = head % a.groups;
      const int64_t i0 = qb * bq, rows = std::min(bq, a.lq - i0);
      const int64_t qp0 = a.q_offset + i0;
      const T* q = static_cast<const T*>(a.q) + (head * a.lq + i0) * a.dp;
      const T* kt = static_cast<const T*>(a.kt) + bh * a.dp * a.lkp;
      const T* v = static_cast<const T*>(a.v) + bh * a.lkp * a.dvp;
      std::fill(m.begin(), m.end(), minus_inf);
      std::fill(l.begin(), l.end(), T(0));
      std::fill(acc.begin(), acc.end(), T(0));
      int64_t spans[2][2];
      const int count = geo.spans(qp0, qp0 + rows, bk, spans);
      for (int s = 0; s < count; ++s)
        for (int64_t j0 = spans[s][0]; j0 < spans[s][1]; j0 += bk) {
          const int64_t cols = round_up(std::min(j0 + bk, spans[s][1]) - j0, W);
          const Tile<T> tile{a, geo, bh / a.kv_heads, bh % a.kv_heads, g, i0, rows, j0, cols};
          const int state = tile.bool_mask_state();
          if (state == 0) continue;
          T* S = scores.data();
          g_tiles.fetch_add(1, std::memory_order_relaxed);
          gemm<T>(S, bk, q, a.dp, 1, kt + (j0 / bk) * a.dp * bk, bk, rows, cols, a.dp, false);
          tile.finish(S, bk, nullptr, state);
          for (int64_t r = 0; r < rows; ++r) {
            T* row = S + r * bk;
            const T m_new = std::max(m[r], row_max(row, cols));
            if (m_new == minus_inf) {  // no key visible to this row yet
              std::fill(row, row + cols, T(0));
              continue;
            }
            const T sum = exp_shift_sum(row, cols, m_new);
            const T alpha = m[r] == minus_inf ? T(0) : std::exp(m[r] - m_new);
            if (alpha != T(1)) {
              T* out_row = acc.data() + r * a.dvp;
              for (int64_t c = 0; c < a.dvp; ++c) out_row[c] *= alpha;
            }
            l[r] = l[r] * alpha + sum;
            m[r] = m_new;
          }
          gemm<T>(acc.data(), a.dvp, S, bk, 1, v + j0 * a.dvp, a.dvp, rows, a.dvp, cols, true);
        }
      T* out = static_cast<T*>(a.out) + (head * a.lq + i0) * a.dvp;
      T* lse = static_cast<T*>(a.lse) + head * a.lq + i0;
      for (int64_t r = 0; r < rows; ++r) {
        const bool empty = l[r] == T(0);
        const T inv = empty ? T(0) : T(1) / l[r];
        for (int64_t c = 0; c < a.dvp; ++c) out[r * a.dvp + c] = acc[r * a.dvp + c] * inv;
        // Empty rows get lse = +inf, so that the backward's exp(s - lse) is 0 there, never NaN.
        lse[r] = empty ? std::numeric_limits<T>::infinity() : m[r] + std::log(l[r]);
      }
    }
  }
}

// ---- backward ------------------------------------------------------------------------------------
// One work item per (key/value head, chunk of keys): it owns its rows of dK and dV, so no two
// threads write the same gradient; dQ goes to the chunk's own slice, summed by the caller.

template <typename T>
void backward(const Args& a) {
  using V = typename Simd<T>::V;
  constexpr int W = Simd<T>::W;
  const Geometry geo(a);
  const int64_t bq = a.block_q, bk = round_up(a.block_k, W);  // tiles start on a vector
  const int64_t q_blocks = (a.lq + bq - 1) / bq;
  const int64_t chunk_keys = round_up((a.lk + a.chunks - 1) / a.chunks, bk);
  const int64_t items = a.nhk * a.chunks;
#pragma omp parallel num_threads(static_cast<int>(a.threads))
  {
    std::vector<T> prob(bq * bk), dprob(bq * bk), tanh_buf(bq * bk), dq_rows(bq * a.dp);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t bh = item / a.chunks, chunk = item % a.chunks;
      const int64_t k0 = chunk * chunk_keys, k1 = std::min(a.lk, k0 + chunk_keys);
      if (k0 >= k1) continue;
      const T* kt = static_cast<const T*>(a.kt) + bh * a.dp * a.lkp;
      const T* k = static_cast<const T*>(a.k) + bh * a.lkp * a.dp;
      const T* vt = static_cast<const T*>(a.vt) + bh * a.dvp * a.lkp;
      T* dk = static_cast<T*>(a.dk) + bh * a.lkp * a.dp;
      T* dv = static_cast<T*>(a.dv) + bh * a.lkp * a.dvp;
      for (int64_t g = 0; g < a.groups; ++g) {
        const int64_t head = bh * a.groups + g;
        for (int64_t qb = 0; qb < q_blocks; ++qb) {
          const int64_t i0 = qb * bq, rows = std::min(bq, a.lq - i0);
          const int64_t qp0 = a.q_offset + i0;
          int64_t spans[2][2];
          const int count = geo.spans(qp0, qp0 + rows, bk, spans);
          const T* q = static_cast<const T*>(a.q) + (head * a.lq + i0) * a.dp;
          const T* dout = static_cast<const T*>(a.dout) + (head * a.lq + i0) * a.dvp;
          const T* lse = static_cast<const T*>(a.lse) + head * a.lq + i0;
          const T* delta = static_cast<const T*>(a.delta) + head * a.lq + i0;
          bool touched = false;
          for (int s = 0; s < count; ++s) {
            const int64_t lo = std::max(spans[s][0], k0), hi = std::min(spans[s][1], k1);
            for (int64_t j0 = lo; j0 < hi; j0 += bk) {
              const int64_t cols = round_up(std::min(j0 + bk, hi) - j0, W);
              const Tile<T> tile{a, geo, bh / a.kv_heads, bh % a.kv_heads, g, i0, rows, j0, cols};
              const int state = tile.bool_mask_state();
              if (state == 0) continue;
              if (!touched) {
                std::fill(dq_rows.begin(), dq_rows.end(), T(0));
                touched = true;
              }
              T* P = prob.data();
              T* dP = dprob.data();
              T* th = a.softcap > 0 ? tanh_buf.data() : nullptr;
              g_tiles.fetch_add(1, std::memory_order_relaxed);
              gemm<T>(P, bk, q, a.dp, 1, kt + (j0 / bk) * a.dp * bk, bk, rows, cols, a.dp, false);
              tile.finish(P, bk, th, state);
              for (int64_t r = 0; r < rows; ++r) exp_shift_sum(P + r * bk, cols, lse[r]);
              // dV += P^T dO
              gemm<T>(dv + j0 * a.dvp, a.dvp, P, 1, bk, dout, a.dvp, cols, a.dvp, rows, true);
              // dP = dO V^T, then dS = P * (dP - delta) (* the softcap's 1 - tanh^2)
              gemm<T>(dP, bk, dout, a.dvp, 1, vt + (j0 / bk) * a.dvp * bk, bk, rows, cols, a.dvp,
                      false);
              for (int64_t r = 0; r < rows; ++r) {
                const V d = splat(delta[r]);
                for (int64_t c = 0; c < cols; c += W) {
                  V ds = load(P + r * bk + c) * (load(dP + r * bk + c) - d);
                  if (th) {
                    const V t = load(th + r * bk + c);
                    ds *= splat(T(1)) - t * t;
                  }
                  store(dP + r * bk + c, ds);
                }
              }
              // dQ += dS K;  dK += dS^T Q
              gemm<T>(dq_rows.data(), a.dp, dP, bk, 1, k + j0 * a.dp, a.dp, rows, a.dp, cols, true);
              gemm<T>(dk + j0 * a.dp, a.dp, dP, 1, bk, q, a.dp, cols, a.dp, rows, true);
            }
          }
          if (!touched) continue;
          T* dq = static_cast<T*>(a.dq) + ((chunk * a.nhk * a.groups + head) * a.lq + i0) * a.dp;
          for (int64_t x = 0; x < rows * a.dp; ++x) dq[x] += dq_rows[x];
        }
      }
    }
  }
}

}  // namespace

extern "C" {

// The vector width in bytes this build uses (the caller pads D, Dv and Lk to it).
int64_t attnlab_vector_bytes() { return kVectorBytes; }

// Tiles computed since the last call (forward and backward together).
int64_t attnlab_take_tile_count() { return g_tiles.exchange(0); }

int attnlab_forward_f32(const Args* a) {
  forward<float>(*a);
  return 0;
}
int attnlab_forward_f64(const Args* a) {
  forward<double>(*a);
  return 0;
}
int attnlab_backward_f32(const Args* a) {
  backward<float>(*a);
  return 0;
}
int attnlab_backward_f64(const Args* a) {
  backward<double>(*a);
  return 0;
}

}  // extern "C"
