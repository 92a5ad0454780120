// Fused LilNetX training terms of one latent group, in one pass over its latents (forward) and one pass
// back (backward); the C++ path of lilnetx/fused.py, whose eager PyTorch code is the reference.
//
// Forward, per latent z (row r, column c of the group's (N, w) rows, members read in place, no concatenation):
//   u   = uniform draw in [0, 1)          (counter-based, below; or an explicit draws tensor for tests)
//   pos = ((u + z) - (lo + 1/2)) * res    (noise off: (z - lo) * res), k = floor(pos), frac = pos - k
//   histogram of (c, k): count and sum of frac; per-element slope table[c, k + 1] - table[c, k] saved for
//   the backward; Σz², and the slice lasso Σ|z| (w = 1) or Σ‖row‖₂ (w > 1); round(z) (+0.0 for -0.0), and
//   given the group's decoder, directly the decoded weights: round(z) * d[c] for scale decoders ((1, 1) or
//   (1, w); exactly the eager decode), or round(rows) @ D for a full (w, w) one (BlockProducts, per block of
//   rows; the eager decode's matrix product may sum in another order, so the two agree to float rounding).
// The rate Σ table[c, k] + frac * slope is summed from the histograms, which also give the table's gradient.
// The pass also returns the latents' (min, max) -- the caller's next table range -- and whether the table covered
// every position: 0 <= pos < points - 1, tested on the float (so NaN and infinity are outside on every CPU). A table
// on the exact range (floor(min) - 1, ceil(max) + 1) always does; one built from an earlier step's range may not,
// and the caller then rebuilds and reruns. The positions use the eager path's float operations in its order, so
// with the same draws and table range they are equal bit for bit; sums are accumulated in double (except a full
// decoder's gradient: float within a block of rows, double across blocks, so it varies with the thread split).
//
// Noise: draw i of a step is the i-th output of SplitMix64 (Steele, Lea & Flood 2014) from the 64-bit seed
// the Python side takes from torch's default generator once per group and step:
//   mix64(seed + (i + 1) * 0x9E3779B97F4A7C15), top 24 bits * 2^-24
// (24 bits, as torch.rand's float draws). Each draw depends only on (seed, i), so the values do not depend on
// the number of threads, and the loop stays vectorisable. Threads come from ATen's pool.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#if (defined(__AVX2__) || defined(__AVX512F__)) && __has_include(<sleef.h>)
#define LILNETX_SLEEF 1
#include <immintrin.h>
#include <sleef.h>  // shipped with torch; libtorch_cpu exports its functions
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

namespace {

constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ULL;
constexpr int64_t kBlock = 1024;  // elements per inner block (rows of the block fit it)
constexpr int64_t kGrainElements = 16384;

inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

inline float draw(uint64_t seed, uint64_t i) {
  return static_cast<float>(mix64(seed + (i + 1) * kGamma) >> 40) * (1.0f / 16777216.0f);
}

// The group's members as consecutive row ranges of its (N, w) rows.
struct Members {
  std::vector<const float*> z;
  std::vector<int64_t> row_start;  // size M + 1
  int64_t width;

  Members(const std::vector<at::Tensor>& tensors, int64_t w) : width(w) {
    row_start.push_back(0);
    for (const auto& t : tensors) {
      TORCH_CHECK(t.scalar_type() == at::kFloat && t.device().is_cpu() && t.is_contiguous(),
                  "fused_terms: latents must be contiguous float32 CPU tensors");
      TORCH_CHECK(t.numel() % w == 0, "fused_terms: a latent's size is not a multiple of the group width");
      z.push_back(t.data_ptr<float>());
      row_start.push_back(row_start.back() + t.numel() / w);
    }
  }
  int64_t rows() const { return row_start.back(); }

  // Calls fn(member, first row in member, rows) for the blocks of global rows [r0, r1).
  template <typename F>
  void for_blocks(int64_t r0, int64_t r1, F&& fn) const {
    const int64_t block_rows = std::max<int64_t>(1, kBlock / width);
    size_t m = std::upper_bound(row_start.begin(), row_start.end(), r0) - row_start.begin() - 1;
    for (int64_t r = r0; r < r1;) {
      while (row_start[m + 1] <= r) ++m;
      const int64_t n = std::min({r1, row_start[m + 1], r + block_rows}) - r;
      fn(m, r - row_start[m], r, n);
      r += n;
    }
  }
};

// Adds a block's grid positions (cell k, fraction) to the histograms of (channel, cell) counts and fraction sums,
// and writes each value's slope; true if a position lies outside the table (cell -1). Value j goes to copy
// j % per_thread of the thread's histograms (each `hist` long; per_thread is 1 or kCopies): latents crowd into a
// few cells, and updates of one cell by consecutive values would wait for each other (store-to-load forwarding);
// kCopies copies make independent chains. Rows of kCopies or more channels need one: consecutive values fall in
// different channels. Not inlined:
// inside the caller's lambda its pointers were spilled to the stack and reloaded for every value. Both measured:
// the pass over LeNet5's 400,000-latent dense group, one thread, 1.06 -> 0.94 ms (best of 600).
constexpr int64_t kCopies = 4;

__attribute__((noinline)) bool histogram(const int32_t* __restrict ks, const float* __restrict fracs, int64_t n,
                                         int64_t w, int64_t points, int64_t hist, int64_t per_thread,
                                         const float* __restrict slopes,
                                         int32_t* __restrict counts, double* __restrict upper,
                                         float* __restrict slope) {
  bool outside = false;
  for (int64_t j = 0, c = 0; j < n; ++j) {
    const int32_t k = ks[j];
    if (k < 0) {
      outside = true;
      slope[j] = 0.0f;
    } else {
      const int64_t t = c * points + k;
      const int64_t copy = (j & (per_thread - 1)) * hist;
      counts[copy + t] += 1;
      upper[copy + t] += fracs[j];
      slope[j] = slopes[t];
    }
    if (++c == w) c = 0;
  }
  return outside;
}

// One block's grid positions (cell k, or -1 outside the table, and fraction), Σz² and Σ|z| (added to l2 and
// abs_sum), (min, max) and round(z) * out_scale. Written so that it vectorises (it ran as a scalar loop before):
// a function of its own with restrict pointers and scalars by value, 16 lanes of partial sums written out
// instead of `omp simd` reductions, the float -> int conversion of an in-range value only, and -fno-trapping-math
// (lilnetx/native.py) so the compiler may select between the two sides of a float comparison. Measured on
// LeNet5's 400,000-latent group, one thread: the whole forward pass 1.9 -> 1.0 ms.
template <typename Position>
inline void block_positions(const float* __restrict z, int64_t n, Position position, float last, float out_scale,
                            int32_t* __restrict ks, float* __restrict fracs, float* __restrict out, double& l2,
                            double& abs_sum, float& zmin, float& zmax) {
  constexpr int kLanes = 16;
  float lo[kLanes], hi[kLanes];
  double sq[kLanes], ab[kLanes];
  for (int k = 0; k < kLanes; ++k) lo[k] = zmin, hi[k] = zmax, sq[k] = 0.0, ab[k] = 0.0;
  auto value = [&](int64_t j, int k) {
    const float zj = z[j];
    lo[k] = zj < lo[k] ? zj : lo[k];
    hi[k] = zj > hi[k] ? zj : hi[k];
    const float pos = position(zj, j);
    // truncation == floor, of an in-range value only (out of range the conversion is undefined)
    const bool inside = (pos >= 0.0f) & (pos < last);  // false for NaN
    const int32_t truncated = static_cast<int32_t>(inside ? pos : 0.0f);
    const int32_t cell = inside ? truncated : -1;
    ks[j] = cell;
    fracs[j] = pos - static_cast<float>(cell);
    sq[k] += static_cast<double>(zj) * zj;
    ab[k] += std::fabs(static_cast<double>(zj));
    out[j] = (std::nearbyint(zj) + 0.0f) * out_scale;
  };
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int k = 0; k < kLanes; ++k) value(j + k, k);
  }
  for (; j < n; ++j) value(j, 0);
  for (int k = 0; k < kLanes; ++k) {
    zmin = std::min(zmin, lo[k]);
    zmax = std::max(zmax, hi[k]);
    l2 += sq[k];
    abs_sum += ab[k];
  }
}

int64_t grain_rows(int64_t width) { return std::max<int64_t>(1, kGrainElements / width); }
int64_t block_elements(int64_t width) { return std::max<int64_t>(1, kBlock / width) * width; }

// A full decoder's products on one block of `rows` rows of width w (row-major, in L1), vectorised across rows: a
// block is loaded transposed, (w, rows), so that each of the w * w multiply-adds runs over contiguous rows.
// (ATen's matrix products had cost a call per member and direction, and in a step the first one after the
// network's convolutions took ~0.1 ms more than the next.)
struct BlockProducts {
  int64_t w, rows = 0;
  std::vector<float> a_t, b_t, c_t;  // (w, rows) each, block_elements(w) long

  explicit BlockProducts(int64_t width)
      : w(width), a_t(block_elements(width)), b_t(block_elements(width)), c_t(block_elements(width)) {}

  // a_t or b_t = f(in)ᵀ for a block of rows
  template <typename F>
  void load(const float* in, int64_t n_rows, std::vector<float>& dst, F f) {
    rows = n_rows;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k = 0; k < w; ++k) dst[k * rows + r] = f(in[r * w + k]);
  }
  void load(const float* in, int64_t n_rows, std::vector<float>& dst) {
    load(in, n_rows, dst, [](float v) { return v; });
  }

  // out (+)= src @ M (M[k][c] = m[k * w + c]), or src @ Mᵀ (`transposed`); src: a loaded block.
  void times(const std::vector<float>& src, const float* m, bool transposed, bool add, float* out) {
    for (int64_t c = 0; c < w; ++c) {
      float* o = c_t.data() + c * rows;
      std::fill(o, o + rows, 0.0f);
      for (int64_t k = 0; k < w; ++k) {
        const float d = transposed ? m[c * w + k] : m[k * w + c];
        const float* x = src.data() + k * rows;
#pragma omp simd
        for (int64_t r = 0; r < rows; ++r) o[r] += d * x[r];
      }
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < w; ++c) out[r * w + c] = (add ? out[r * w + c] : 0.0f) + c_t[c * rows + r];
  }

  // acc[k * w + c] += Σ_rows a[r][k] * b[r][c] of the loaded a_t, b_t (float within the block, double across).
  void outer(double* acc) const {
    for (int64_t k = 0; k < w; ++k) {
      const float* x = a_t.data() + k * rows;
      for (int64_t c = 0; c < w; ++c) {
        const float* y = b_t.data() + c * rows;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t r = 0; r < rows; ++r) sum += x[r] * y[r];
        acc[k * w + c] += sum;
      }
    }
  }
};

}  // namespace

// Returns [bits, ΣZ², lasso (0-dim float), slopes (N*w), table weights (w, points), (min, max) of the latents,
// covered (0-dim bool), outputs...]: the outputs are the decoded weights of every member (shaped as the member)
// when `decoder` is given ((1, 1) or (1, w) scales, or a full (w, w) matrix), else one (N, w) tensor of the
// rounded rows. Where `covered` is false the other values are meaningless.
std::vector<at::Tensor> group_forward(const std::vector<at::Tensor>& latents, int64_t width, const at::Tensor& table,
                                      const c10::optional<at::Tensor>& decoder, double lo, int64_t resolution,
                                      int64_t seed, bool noise, const c10::optional<at::Tensor>& draws, bool lasso) {
  const Members mem(latents, width);
  const int64_t w = width, N = mem.rows(), total = N * w;
  TORCH_CHECK(table.scalar_type() == at::kFloat && table.dim() == 2 && table.size(0) == w && table.is_contiguous(),
              "fused_terms: table must be a contiguous float32 (width, points) tensor");
  const int64_t points = table.size(1);
  const float* tab = table.data_ptr<float>();
  std::vector<float> slopes(w * points);
  for (int64_t c = 0; c < w; ++c) {
    for (int64_t p = 0; p + 1 < points; ++p) slopes[c * points + p] = tab[c * points + p + 1] - tab[c * points + p];
    slopes[c * points + points - 1] = 0.0f;
  }
  const float* dec = nullptr;
  bool diagonal = false, full = false;
  if (decoder.has_value()) {
    TORCH_CHECK(decoder->scalar_type() == at::kFloat && decoder->is_contiguous() &&
                (decoder->numel() == 1 || decoder->numel() == w || decoder->numel() == w * w),
                "fused_terms: a decoder has 1, w or w * w values");
    dec = decoder->data_ptr<float>();
    full = w > 1 && decoder->numel() == w * w;
    diagonal = w > 1 && decoder->numel() == w;
  }
  const float* drawp = nullptr;
  if (draws.has_value()) {
    TORCH_CHECK(draws->scalar_type() == at::kFloat && draws->is_contiguous() && draws->numel() == total,
                "fused_terms: draws must be contiguous float32 with one value per latent");
    drawp = draws->data_ptr<float>();
  }

  auto fopt = at::TensorOptions().dtype(at::kFloat);
  at::Tensor slope_out = at::empty({total}, fopt);
  std::vector<at::Tensor> outs;
  std::vector<float*> outp;
  if (dec) {
    for (const auto& t : latents) {
      outs.push_back(at::empty_like(t));
      outp.push_back(outs.back().data_ptr<float>());
    }
  } else {
    outs.push_back(at::empty({N, w}, fopt));
    for (size_t m = 0; m < latents.size(); ++m) outp.push_back(outs[0].data_ptr<float>() + mem.row_start[m] * w);
  }
  float* sp = slope_out.data_ptr<float>();

  const int threads = at::get_num_threads();
  const int64_t hist = w * points;
  const int64_t per_thread = w < kCopies ? kCopies : 1;  // histogram copies of each thread (see histogram())
  const int64_t copies = threads * per_thread;
  std::vector<int32_t> counts(copies * hist, 0);
  std::vector<double> upper(copies * hist, 0.0), sums(threads * 2, 0.0);
  std::vector<float> mins(threads, INFINITY), maxs(threads, -INFINITY);
  std::vector<char> bad(threads, 0);
  const float lo_half = static_cast<float>(lo + 0.5), lo_f = static_cast<float>(lo);
  const float res = static_cast<float>(resolution), last = static_cast<float>(points - 1);
  const uint64_t useed = static_cast<uint64_t>(seed);
  const float out_scale = dec && !diagonal && !full ? dec[0] : 1.0f;  // round(z) * d exactly as the eager decode

  at::parallel_for(0, N, grain_rows(w), [&](int64_t r0, int64_t r1) {
    const int tid = at::get_thread_num();
    int32_t* cnt = counts.data() + tid * per_thread * hist;
    double* upp = upper.data() + tid * per_thread * hist;
    double l2 = 0.0, l1 = 0.0;
    float zmin = INFINITY, zmax = -INFINITY;
    bool outside = false;
    std::vector<float> frac_v(block_elements(w)), rounded_v(full ? block_elements(w) : 0);
    std::vector<int32_t> k_v(block_elements(w));
    float* fracs = frac_v.data();
    int32_t* ks = k_v.data();
    std::optional<BlockProducts> products;
    if (full) products.emplace(w);
    mem.for_blocks(r0, r1, [&](size_t m, int64_t local_row, int64_t global_row, int64_t rows) {
      const int64_t n = rows * w;
      const float* z = mem.z[m] + local_row * w;
      float* out = full ? rounded_v.data() : outp[m] + local_row * w;  // a full decoder decodes the block below
      const uint64_t base = static_cast<uint64_t>(global_row * w);
      const float* u = drawp ? drawp + base : nullptr;
      float* slope = sp + base;
      double abs_sum = 0.0;
      auto positions = [&](auto position) {
        block_positions(z, n, position, last, out_scale, ks, fracs, out, l2, abs_sum, zmin, zmax);
      };
      if (!noise) {
        positions([lo_f, res](float zj, int64_t) { return (zj - lo_f) * res; });
      } else if (u) {
        positions([u, lo_half, res](float zj, int64_t j) { return ((u[j] + zj) - lo_half) * res; });
      } else {
        positions([useed, base, lo_half, res](float zj, int64_t j) {
          return ((draw(useed, base + j) + zj) - lo_half) * res;
        });
      }
      if (diagonal) {
        for (int64_t j = 0; j < n; ++j) out[j] *= dec[j % w];
      } else if (full) {
        products->load(out, rows, products->a_t);
        products->times(products->a_t, dec, false, false, outp[m] + local_row * w);
      }
      if (lasso && w == 1) {
        l1 += abs_sum;
      } else if (lasso) {
        for (int64_t row = 0; row < rows; ++row) {
          double sq = 0.0;
          for (int64_t c = 0; c < w; ++c) sq += static_cast<double>(z[row * w + c]) * z[row * w + c];
          l1 += std::sqrt(sq);
        }
      }
      outside |= histogram(ks, fracs, n, w, points, hist, per_thread, slopes.data(), cnt, upp, slope);
    });
    bad[tid] |= outside;
    sums[2 * tid] += l2;
    sums[2 * tid + 1] += l1;
    mins[tid] = std::min(mins[tid], zmin);
    maxs[tid] = std::max(maxs[tid], zmax);
  });
  const bool covered = std::none_of(bad.begin(), bad.end(), [](char b) { return b != 0; });
  at::Tensor bounds = at::empty({2}, fopt);
  bounds.data_ptr<float>()[0] = *std::min_element(mins.begin(), mins.end());
  bounds.data_ptr<float>()[1] = *std::max_element(maxs.begin(), maxs.end());

  at::Tensor weights = at::empty({w, points}, fopt);
  float* wp = weights.data_ptr<float>();
  double bits = 0.0, l2 = 0.0, l1 = 0.0;
  for (int t = 0; t < threads; ++t) {
    l2 += sums[2 * t];
    l1 += sums[2 * t + 1];
  }
  for (int64_t c = 0; c < w; ++c) {
    double prev_upper = 0.0;
    for (int64_t p = 0; p < points; ++p) {
      const int64_t i = c * points + p;
      double cn = 0.0, up = 0.0;
      for (int64_t t = 0; t < copies; ++t) {
        cn += counts[t * hist + i];
        up += upper[t * hist + i];
      }
      bits += cn * tab[i] + up * slopes[i];
      wp[i] = static_cast<float>(cn - up + prev_upper);  // the next grid point of a channel takes `upper`
      prev_upper = up;
    }
  }
  std::vector<at::Tensor> result{at::scalar_tensor(bits, fopt), at::scalar_tensor(l2, fopt),
                                 at::scalar_tensor(lasso ? l1 : 0.0, fopt), slope_out, weights, bounds,
                                 at::scalar_tensor(covered, at::TensorOptions().dtype(at::kBool))};
  result.insert(result.end(), outs.begin(), outs.end());
  return result;
}

// Gradient w.r.t. every member: slope * g_bits_res + g_l2x2 * z + g_lasso * (sign(z) or z / ‖row‖) + the
// gradient of the outputs (through the decoder where the outputs are decoded weights: times its scale, or
// grad_out @ Dᵀ); and the decoder's gradient Σ grad_out * round(z) per scale, or Σ round(z)ᵀ grad_out.
// `grad_outs`: one tensor per member (decoded outputs) or a single (N * w) tensor (rounded rows); undefined ones
// count as zero.
std::vector<at::Tensor> group_backward(const std::vector<at::Tensor>& latents, int64_t width, const at::Tensor& slope,
                                       const c10::optional<at::Tensor>& decoder,
                                       const std::vector<c10::optional<at::Tensor>>& grad_outs, double g_bits_res,
                                       double g_l2x2, double g_lasso, bool lasso) {
  const Members mem(latents, width);
  const int64_t w = width, N = mem.rows();
  TORCH_CHECK(slope.scalar_type() == at::kFloat && slope.is_contiguous() && slope.numel() == N * w,
              "fused_terms: slope must be the forward's, one float32 per latent");
  const float* sp = slope.data_ptr<float>();
  TORCH_CHECK(!decoder.has_value() || (decoder->scalar_type() == at::kFloat && decoder->is_contiguous() &&
                                       (decoder->numel() == 1 || decoder->numel() == w || decoder->numel() == w * w)),
              "fused_terms: a decoder has 1, w or w * w contiguous float32 values");
  const float* dec = decoder.has_value() ? decoder->data_ptr<float>() : nullptr;
  const int64_t nscale = dec ? decoder->numel() : 0;
  const bool full = w > 1 && nscale == w * w;
  TORCH_CHECK(grad_outs.size() == (dec ? latents.size() : 1), "fused_terms: one gradient per output");
  std::vector<const float*> gp(latents.size(), nullptr);
  for (size_t m = 0; m < latents.size(); ++m) {
    const auto& g = dec ? grad_outs[m] : grad_outs[0];
    if (g.has_value() && g->defined()) {
      TORCH_CHECK(g->scalar_type() == at::kFloat && g->is_contiguous() &&
                  g->numel() == (dec ? latents[m].numel() : N * w),
                  "fused_terms: gradients must be contiguous float32, shaped as their outputs");
      gp[m] = g->data_ptr<float>() + (dec ? 0 : mem.row_start[m] * w);
    }
  }
  std::vector<at::Tensor> grads;
  std::vector<float*> grad_p;
  for (const auto& t : latents) {
    grads.push_back(at::empty_like(t));
    grad_p.push_back(grads.back().data_ptr<float>());
  }
  const int threads = at::get_num_threads();
  const int64_t sums = std::max<int64_t>(nscale, 1);  // the decoder's gradient (w * w for a full one), per thread
  std::vector<double> dsum(threads * sums, 0.0);
  const float a = static_cast<float>(g_bits_res), b = static_cast<float>(g_l2x2), gl = static_cast<float>(g_lasso);
  const float out_scale = nscale == 1 ? dec[0] : 1.0f;  // gradient of round(z) from that of round(z) * d

  at::parallel_for(0, N, grain_rows(w), [&](int64_t r0, int64_t r1) {
    const int tid = at::get_thread_num();
    double* ds = dsum.data() + tid * sums;
    std::vector<float> scale_v(block_elements(w));
    float* scale = scale_v.data();
    std::optional<BlockProducts> products;
    if (full) products.emplace(w);
    mem.for_blocks(r0, r1, [&](size_t m, int64_t local_row, int64_t global_row, int64_t rows) {
      const int64_t n = rows * w;
      const float* z = mem.z[m] + local_row * w;
      const float* s = sp + global_row * w;
      const float* go = gp[m] ? gp[m] + local_row * w : nullptr;
      float* g = grad_p[m] + local_row * w;
      if (lasso && w > 1) {  // z / ‖row‖ (0 for an all-zero row, the subgradient torch's norm uses)
        for (int64_t row = 0; row < rows; ++row) {
          double sq = 0.0;
          for (int64_t c = 0; c < w; ++c) sq += static_cast<double>(z[row * w + c]) * z[row * w + c];
          const float norm = static_cast<float>(std::sqrt(sq));
          const float f = norm == 0.0f ? 0.0f : gl / norm;
          for (int64_t c = 0; c < w; ++c) scale[row * w + c] = f;
        }
      }
      auto gradient = [&](auto extra) {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          const float zj = z[j];
          float gj = s[j] * a + b * zj;
          if (lasso && w == 1) gj += gl * static_cast<float>((zj > 0.0f) - (zj < 0.0f));
          if (lasso && w > 1) gj += zj * scale[j];
          g[j] = gj + extra(j);
        }
      };
      if (go && nscale <= 1) {
        gradient([&](int64_t j) { return go[j] * out_scale; });
      } else {
        gradient([&](int64_t) { return 0.0f; });
      }
      if (go && full) {  // the rounded rows' gradient go @ Dᵀ, and the decoder's Σ round(rows)ᵀ go
        products->load(go, rows, products->b_t);
        products->times(products->b_t, dec, true, true, g);
        products->load(z, rows, products->a_t, [](float v) { return std::nearbyint(v) + 0.0f; });
        products->outer(ds);
      } else if (go && nscale > 1) {
        for (int64_t j = 0; j < n; ++j) {
          g[j] += go[j] * dec[j % w];
          ds[j % w] += static_cast<double>(go[j]) * (std::nearbyint(z[j]) + 0.0f);
        }
      } else if (go && nscale == 1) {
        double acc = 0.0;
#pragma omp simd reduction(+ : acc)
        for (int64_t j = 0; j < n; ++j) acc += static_cast<double>(go[j]) * std::nearbyint(z[j]);
        ds[0] += acc;
      }
    });
  });
  std::vector<at::Tensor> result;
  if (dec) {
    at::Tensor gd = at::zeros_like(*decoder);
    float* gdp = gd.data_ptr<float>();
    for (int64_t i = 0; i < nscale; ++i) {
      double acc = 0.0;
      for (int t = 0; t < threads; ++t) acc += dsum[t * nscale + i];
      gdp[i] = static_cast<float>(acc);
    }
    result.push_back(gd);
  } else {
    result.push_back(at::Tensor());
  }
  result.insert(result.end(), grads.begin(), grads.end());
  return result;
}

// (min, max) of every group's latents (rows of a (G, 2) float tensor), in one pass over all of them; NaN
// where a group holds a NaN or an infinity.
at::Tensor group_ranges(const std::vector<std::vector<at::Tensor>>& groups) {
  at::Tensor out = at::empty({static_cast<int64_t>(groups.size()), 2}, at::TensorOptions().dtype(at::kFloat));
  float* op = out.data_ptr<float>();
  for (size_t g = 0; g < groups.size(); ++g) {
    float lo = INFINITY, hi = -INFINITY;
    bool nan = false;
    for (const auto& t : groups[g]) {
      TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous(), "fused_terms: latents must be contiguous float32");
      const float* z = t.data_ptr<float>();
      const int64_t n = t.numel();
      // 16 lanes written out so the compiler vectorises (min / max of floats are not reassociable otherwise);
      // probe: z - z is NaN exactly for NaN and infinite z.
      float l[16], h[16], probe[16];
      for (int k = 0; k < 16; ++k) l[k] = lo, h[k] = hi, probe[k] = 0.0f;
      int64_t j = 0;
      for (; j + 16 <= n; j += 16) {
        for (int k = 0; k < 16; ++k) {
          const float v = z[j + k];
          l[k] = v < l[k] ? v : l[k];
          h[k] = v > h[k] ? v : h[k];
          probe[k] += v - v;
        }
      }
      for (; j < n; ++j) {
        l[0] = z[j] < l[0] ? z[j] : l[0];
        h[0] = z[j] > h[0] ? z[j] : h[0];
        probe[0] += z[j] - z[j];
      }
      for (int k = 0; k < 16; ++k) {
        lo = std::min(lo, l[k]);
        hi = std::max(hi, h[k]);
        nan |= probe[k] != 0.0f;
      }
    }
    op[2 * g] = nan ? NAN : lo;
    op[2 * g + 1] = nan ? NAN : hi;
  }
  return out;
}

// ---- The density's bits on a grid (FactorizedDensity.bits_grid), forward and backward, in double. ----
// Per channel c, the monotone network maps an edge x to a CDF logit: a_0 = x; h_i = softplus(W_i) a_{i-1} + b_i;
// a_i = h_i + tanh(f_i) tanh(h_i) except for the last layer (a_L = h_L). The bits of grid point p are
// -log2(max(|σ(s u) - σ(s l)|, 1e-9)) with l, u the logits of edges p and p + shift and s = -sign(l + u).
namespace {

struct Net {
  int64_t layers = 0, channels = 0, width = 1;  // width: the largest layer
  std::vector<int64_t> dims;                     // d_0 = 1, ..., d_L = 1
  std::vector<int64_t> w_at, b_at, f_at;         // where each layer's matrix / bias / factor starts in `flat`
  const float* values = nullptr;                 // the flat parameters

  // `flat`: the density's matrices (channels, d_i+1, d_i), biases (channels, d_i+1, 1) and factors (channels,
  // d_i+1, 1) of the layers in that order, concatenated (FactorizedDensity.flat); `filters`: d_1 .. d_L-1.
  Net(const at::Tensor& flat, const std::vector<int64_t>& filters) {
    dims.push_back(1);
    dims.insert(dims.end(), filters.begin(), filters.end());
    dims.push_back(1);
    layers = static_cast<int64_t>(dims.size()) - 1;
    int64_t per_channel = 0;
    for (int64_t i = 0; i < layers; ++i) {
      TORCH_CHECK(dims[i + 1] > 0, "fused_terms: a density layer has no units");
      per_channel += dims[i + 1] * dims[i] + dims[i + 1] + (i + 1 < layers ? dims[i + 1] : 0);
      width = std::max(width, dims[i + 1]);
    }
    TORCH_CHECK(flat.scalar_type() == at::kFloat && flat.is_contiguous() && flat.dim() == 1 &&
                flat.numel() > 0 && flat.numel() % per_channel == 0,
                "fused_terms: a density's flat parameters do not fit its filters");
    channels = flat.numel() / per_channel;
    int64_t at = 0;
    for (int64_t i = 0; i < layers; ++i) w_at.push_back(at), at += channels * dims[i + 1] * dims[i];
    for (int64_t i = 0; i < layers; ++i) b_at.push_back(at), at += channels * dims[i + 1];
    for (int64_t i = 0; i + 1 < layers; ++i) f_at.push_back(at), at += channels * dims[i + 1];
    values = flat.data_ptr<float>();
  }

  // Offset of channel c's block of layer i's matrix / bias / factor.
  int64_t w_off(int64_t i, int64_t c) const { return c * dims[i + 1] * dims[i]; }
  int64_t b_off(int64_t i, int64_t c) const { return c * dims[i + 1]; }
};

inline double softplus(double x) { return x > 20.0 ? x : std::log1p(std::exp(x)); }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// Channel c's parameters in double: softplus(W), b, tanh(f).
struct ChannelParams {
  std::vector<std::vector<double>> sw, b, tf, sig_w;
  ChannelParams(const Net& net, int64_t c) {
    for (int64_t i = 0; i < net.layers; ++i) {
      const int64_t nw = net.dims[i + 1] * net.dims[i], nb = net.dims[i + 1];
      std::vector<double> s(nw), g(nw), bb(nb), t(nb);
      for (int64_t k = 0; k < nw; ++k) {
        const double x = net.values[net.w_at[i] + net.w_off(i, c) + k];
        s[k] = softplus(x);
        g[k] = x > 20.0 ? 1.0 : sigmoid(x);  // softplus' (torch's threshold: identity above 20)
      }
      for (int64_t k = 0; k < nb; ++k) {
        bb[k] = net.values[net.b_at[i] + net.b_off(i, c) + k];
        t[k] = i + 1 < net.layers ? std::tanh(static_cast<double>(net.values[net.f_at[i] + net.b_off(i, c) + k])) : 0.0;
      }
      sw.push_back(std::move(s));
      sig_w.push_back(std::move(g));
      b.push_back(std::move(bb));
      tf.push_back(std::move(t));
    }
  }
};

// tanh / exp / log2 of n values: SLEEF's vectorised functions (shipped in libtorch) where the CPU has AVX-512 or
// AVX2, the C library's otherwise. exp within 1 ulp of double, tanh and log2 within 3.5 ulp, far below the float32
// bits they feed (tanh had been 2/3 of the grid's time in its 1-ulp version).
#if defined(LILNETX_SLEEF) && defined(__AVX512F__)
#define LILNETX_MAP_N(name, scalar, avx512, avx2)                                                              \
  inline void name(const double* in, double* out, int64_t n) {                                                \
    int64_t j = 0;                                                                                            \
    for (; j + 8 <= n; j += 8) _mm512_storeu_pd(out + j, avx512(_mm512_loadu_pd(in + j)));                    \
    for (; j < n; ++j) out[j] = scalar(in[j]);                                                                \
  }
#elif defined(LILNETX_SLEEF)
#define LILNETX_MAP_N(name, scalar, avx512, avx2)                                                              \
  inline void name(const double* in, double* out, int64_t n) {                                                \
    int64_t j = 0;                                                                                            \
    for (; j + 4 <= n; j += 4) _mm256_storeu_pd(out + j, avx2(_mm256_loadu_pd(in + j)));                      \
    for (; j < n; ++j) out[j] = scalar(in[j]);                                                                \
  }
#else
#define LILNETX_MAP_N(name, scalar, avx512, avx2)                                                              \
  inline void name(const double* in, double* out, int64_t n) {                                                \
    for (int64_t j = 0; j < n; ++j) out[j] = scalar(in[j]);                                                   \
  }
#endif
LILNETX_MAP_N(tanh_n, std::tanh, Sleef_tanhd8_u35avx512f, Sleef_tanhd4_u35avx2)
LILNETX_MAP_N(exp_n, std::exp, Sleef_expd8_u10avx512f, Sleef_expd4_u10avx2)
LILNETX_MAP_N(log2_n, std::log2, Sleef_log2d8_u35avx512f, Sleef_log2d4_u35avx2)

// Row `which` (0: tanh(h), 1: a) of unit o of layer i in a channel's saved activations over n edges (the layout
// cdf_logits writes and channel_backward reads).
template <typename T>
T* activation_row(T* saved, int64_t width, int64_t n, int64_t i, int64_t o, int64_t which) {
  return saved + (2 * (i * width + o) + which) * n;
}

// Forward of all edges x[0..n) of one channel, layer by layer and vectorised across edges. saved is the
// channel's (2 * layers * width, n) block: row 2 (i * width + o) holds tanh(h_i,o) of every edge (0 for the last
// layer), the next row a_i,o, the input of layer i + 1; the logits are the last layer's a.
const double* cdf_logits(const Net& net, const ChannelParams& p, const double* x, int64_t n, double* saved) {
  std::vector<double> h(n);
  auto row = [&](int64_t i, int64_t o, int64_t which) { return activation_row(saved, net.width, n, i, o, which); };
  for (int64_t i = 0; i < net.layers; ++i) {
    const int64_t din = net.dims[i], dout = net.dims[i + 1];
    for (int64_t o = 0; o < dout; ++o) {
      const double bias = p.b[i][o];
      for (int64_t e = 0; e < n; ++e) h[e] = bias;
      for (int64_t k = 0; k < din; ++k) {  // the order of the scalar code: bias, then inputs in order
        const double w = p.sw[i][o * din + k];
        const double* in = i == 0 ? x : row(i - 1, k, 1);
        for (int64_t e = 0; e < n; ++e) h[e] += w * in[e];
      }
      double* th = row(i, o, 0);
      double* a = row(i, o, 1);
      if (i + 1 < net.layers) {
        tanh_n(h.data(), th, n);
        const double f = p.tf[i][o];
        for (int64_t e = 0; e < n; ++e) a[e] = h[e] + f * th[e];
      } else {
        std::fill(th, th + n, 0.0);
        std::copy(h.begin(), h.end(), a);
      }
    }
  }
  return row(net.layers - 1, 0, 1);
}

constexpr double kFloor = 1e-9;  // LIKELIHOOD_FLOOR of lilnetx/density.py

inline void edge_values(int64_t n, int64_t resolution, double lo, std::vector<double>& x) {
  const float res = static_cast<float>(resolution), base = static_cast<float>(lo - 0.5);
  for (int64_t e = 0; e < n; ++e) x[e] = static_cast<double>(static_cast<float>(e) / res + base);  // as the eager grid
}

// Σ a[e] b[e] (b = nullptr: Σ a[e]) in 16 independent partial sums: the loop vectorises and the additions of
// one vector register do not wait for each other (one 4-lane chain had been the grid backward's bottleneck).
inline double dot(const double* __restrict a, const double* __restrict b, int64_t n) {
  constexpr int kLanes = 16;
  double s[kLanes] = {};
  int64_t e = 0;
  if (b) {
    for (; e + kLanes <= n; e += kLanes) {
      for (int k = 0; k < kLanes; ++k) s[k] += a[e + k] * b[e + k];
    }
  } else {
    for (; e + kLanes <= n; e += kLanes) {
      for (int k = 0; k < kLanes; ++k) s[k] += a[e + k];
    }
  }
  double r = 0.0;
  for (int k = 0; k < kLanes; ++k) r += s[k];
  for (; e < n; ++e) r += b ? a[e] * b[e] : a[e];
  return r;
}

// One group's grid: its density network, its points lo, lo + 1/resolution, ..., hi and where their values go.
struct Grid {
  Net net;
  int64_t lo, points, edges, act;

  Grid(const at::Tensor& flat, const std::vector<int64_t>& filters, int64_t lo_, int64_t hi, int64_t resolution)
      : net(flat, filters),
        lo(lo_), points((hi - lo_) * resolution + 1), edges(points + resolution), act(net.layers * net.width) {}
  // Channel c's block of the saved activations (2 * act rows of `edges`).
  int64_t saved_off(int64_t c) const { return c * edges * 2 * act; }
};

// Calls fn(grid, channel) for every channel of every grid, the channels spread over ATen's threads.
template <typename F>
void for_channels(const std::vector<Grid>& grids, F&& fn) {
  std::vector<std::pair<int64_t, int64_t>> all;
  for (size_t g = 0; g < grids.size(); ++g) {
    for (int64_t c = 0; c < grids[g].net.channels; ++c) all.emplace_back(g, c);
  }
  at::parallel_for(0, static_cast<int64_t>(all.size()), 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) fn(all[i].first, all[i].second);
  });
}

void channel_forward(const Grid& grid, int64_t c, int64_t resolution, float* op, double* sp, double* cp) {
  const int64_t points = grid.points, edges = grid.edges;
  std::vector<double> x(edges), sign(points), ex(2 * points), clamped(points);
  edge_values(edges, resolution, static_cast<double>(grid.lo), x);
  const ChannelParams p(grid.net, c);
  const double* logit = cdf_logits(grid.net, p, x.data(), edges, sp + grid.saved_off(c));
  for (int64_t q = 0; q < points; ++q) {  // sigmoid(s u) = 1 / (1 + exp(-s u)), same for l
    const double l = logit[q], u = logit[q + resolution];
    sign[q] = (l + u > 0) ? -1.0 : (l + u < 0 ? 1.0 : 0.0);
    ex[q] = -sign[q] * u;
    ex[points + q] = -sign[q] * l;
  }
  exp_n(ex.data(), ex.data(), 2 * points);
  for (int64_t q = 0; q < points; ++q) {
    const double su = 1.0 / (1.0 + ex[q]), sl = 1.0 / (1.0 + ex[points + q]), diff = su - sl;
    const double prob = std::fabs(diff), s = sign[q];
    clamped[q] = std::max(prob, kFloor);
    double* cq = cp + (c * points + q) * 2;
    if (prob < kFloor || diff == 0.0) {  // the clamp (or |.| at 0) passes no gradient
      cq[0] = cq[1] = 0.0;
    } else {
      const double g = (diff > 0 ? -1.0 : 1.0) / (prob * std::log(2.0));  // d bits / d diff
      cq[0] = -g * s * sl * (1.0 - sl);  // d bits / d lower logit
      cq[1] = g * s * su * (1.0 - su);   // d bits / d upper logit
    }
  }
  log2_n(clamped.data(), clamped.data(), points);
  for (int64_t q = 0; q < points; ++q) op[c * points + q] = static_cast<float>(-clamped[q]);
}

// Channel c's parameter gradients (written into `grad`, laid out as the flat parameters) from the gradient of its
// bits, scaled by `scale`:
// back through the layers with every edge at once (vectorised like the forward).
void channel_backward(const Grid& grid, int64_t c, int64_t resolution, const double* sp, const double* cp,
                      const float* gp, double scale, float* grad) {
  const Net& net = grid.net;
  const int64_t L = net.layers, Wd = net.width, points = grid.points, edges = grid.edges;
  const ChannelParams p(net, c);
  const double* sc = sp + grid.saved_off(c);
  auto row = [&](int64_t i, int64_t o, int64_t which) { return activation_row(sc, Wd, edges, i, o, which); };
  std::vector<double> x(edges), ga(Wd * edges, 0.0), gh(Wd * edges), gprev(Wd * edges);
  edge_values(edges, resolution, static_cast<double>(grid.lo), x);
  for (int64_t q = 0; q < points; ++q) {  // the logits' gradient: edge q is point q's lower, q + res its upper
    const double g = gp[c * points + q] * scale;
    const double* cq = cp + (c * points + q) * 2;
    ga[q] += g * cq[0];
    ga[q + resolution] += g * cq[1];
  }
  for (int64_t i = L - 1; i >= 0; --i) {
    const int64_t din = net.dims[i], dout = net.dims[i + 1];
    std::vector<double> acc_w(dout * din), acc_b(dout), acc_f(dout);
    for (int64_t o = 0; o < dout; ++o) {
      const double* go = ga.data() + o * edges;
      double* h = gh.data() + o * edges;
      if (i + 1 < L) {
        const double* th = row(i, o, 0);
        const double t = p.tf[i][o];
        acc_f[o] = dot(go, th, edges);  // times 1 - tanh(f)^2 below
        for (int64_t e = 0; e < edges; ++e) h[e] = go[e] * (1.0 + t * (1.0 - th[e] * th[e]));
      } else {
        std::copy(go, go + edges, h);
      }
      acc_b[o] = dot(h, nullptr, edges);
    }
    for (int64_t k = 0; k < din; ++k) {
      const double* a_in = i > 0 ? row(i - 1, k, 1) : x.data();  // a_0: the edge
      double* g = gprev.data() + k * edges;
      std::fill(g, g + edges, 0.0);
      for (int64_t o = 0; o < dout; ++o) {
        const double* h = gh.data() + o * edges;
        acc_w[o * din + k] = dot(h, a_in, edges);
        const double w = p.sw[i][o * din + k];
        for (int64_t e = 0; e < edges; ++e) g[e] += w * h[e];
      }
    }
    std::copy(gprev.begin(), gprev.begin() + din * edges, ga.begin());
    float* w = grad + net.w_at[i] + net.w_off(i, c);
    for (size_t k = 0; k < acc_w.size(); ++k) w[k] = static_cast<float>(acc_w[k] * p.sig_w[i][k]);
    float* b = grad + net.b_at[i] + net.b_off(i, c);
    for (size_t k = 0; k < acc_b.size(); ++k) b[k] = static_cast<float>(acc_b[k]);
    if (i + 1 < L) {
      float* f = grad + net.f_at[i] + net.b_off(i, c);
      for (size_t k = 0; k < acc_f.size(); ++k) f[k] = static_cast<float>(acc_f[k] * (1.0 - p.tf[i][k] * p.tf[i][k]));
    }
  }
}

std::vector<Grid> make_grids(const std::vector<at::Tensor>& flats, const std::vector<std::vector<int64_t>>& filters,
                             const std::vector<int64_t>& los, const std::vector<int64_t>& his, int64_t resolution) {
  TORCH_CHECK(filters.size() == flats.size() && los.size() == flats.size() && his.size() == flats.size(),
              "fused_terms: one (parameters, filters, lo, hi) per grid");
  std::vector<Grid> grids;
  for (size_t g = 0; g < flats.size(); ++g) {
    TORCH_CHECK(his[g] >= los[g], "fused_terms: a grid's range is empty");
    grids.emplace_back(flats[g], filters[g], los[g], his[g], resolution);
  }
  return grids;
}

}  // namespace

// Bits of the grid points lo, lo + 1/resolution, ..., hi of every channel of every grid g (its density's flat
// parameters flats[g] and hidden layer sizes filters[g], see Net), all grids' channels in one parallel loop.
// Returns per grid [(channels, points) float bits, (channels, 2 * layers * width, edges) float64 activations,
// (channels, points, 2) float64 derivatives of the bits w.r.t. the lower and upper logits], the last two kept
// for the backward.
std::vector<at::Tensor> grids_forward(const std::vector<at::Tensor>& flats,
                                      const std::vector<std::vector<int64_t>>& filters,
                                      const std::vector<int64_t>& los, const std::vector<int64_t>& his,
                                      int64_t resolution) {
  const std::vector<Grid> grids = make_grids(flats, filters, los, his, resolution);
  std::vector<at::Tensor> result;
  std::vector<float*> op;
  std::vector<double*> sp, cp;
  for (const Grid& g : grids) {
    const int64_t channels = g.net.channels;
    result.push_back(at::empty({channels, g.points}, at::TensorOptions().dtype(at::kFloat)));
    result.push_back(at::empty({channels, 2 * g.act, g.edges}, at::TensorOptions().dtype(at::kDouble)));
    result.push_back(at::empty({channels, g.points, 2}, at::TensorOptions().dtype(at::kDouble)));
    op.push_back(result[result.size() - 3].data_ptr<float>());
    sp.push_back(result[result.size() - 2].data_ptr<double>());
    cp.push_back(result.back().data_ptr<double>());
  }
  for_channels(grids, [&](int64_t g, int64_t c) { channel_forward(grids[g], c, resolution, op[g], sp[g], cp[g]); });
  return result;
}

// Gradients of Σ_g scale * sum(grads[g] * bits of grid g) w.r.t. every grid's flat parameters (one float tensor
// per grid, laid out as flats[g]), from grids_forward's activations and derivatives: arithmetic only.
std::vector<at::Tensor> grids_backward(const std::vector<at::Tensor>& flats,
                                       const std::vector<std::vector<int64_t>>& filters,
                                       const std::vector<int64_t>& los, const std::vector<int64_t>& his,
                                       int64_t resolution, const std::vector<at::Tensor>& saved,
                                       const std::vector<at::Tensor>& coef, const std::vector<at::Tensor>& grads,
                                       double scale) {
  const std::vector<Grid> grids = make_grids(flats, filters, los, his, resolution);
  TORCH_CHECK(saved.size() == grids.size() && coef.size() == grids.size() && grads.size() == grids.size(),
              "fused_terms: one saved, coef and grad tensor per grid");
  std::vector<at::Tensor> result;
  for (size_t g = 0; g < grids.size(); ++g) {
    const Grid& grid = grids[g];
    TORCH_CHECK(grads[g].scalar_type() == at::kFloat && grads[g].is_contiguous() &&
                grads[g].numel() == grid.net.channels * grid.points, "fused_terms: a grid's gradient has the wrong shape");
    TORCH_CHECK(saved[g].scalar_type() == at::kDouble && saved[g].is_contiguous() &&
                saved[g].numel() == grid.net.channels * 2 * grid.act * grid.edges &&
                coef[g].scalar_type() == at::kDouble && coef[g].is_contiguous() &&
                coef[g].numel() == grid.net.channels * grid.points * 2,
                "fused_terms: a grid's saved activations do not fit");
    result.push_back(at::empty_like(flats[g]));
  }
  for_channels(grids, [&](int64_t g, int64_t c) {
    channel_backward(grids[g], c, resolution, saved[g].data_ptr<double>(), coef[g].data_ptr<double>(),
                     grads[g].data_ptr<float>(), scale, result[g].data_ptr<float>());
  });
  return result;
}

// The first n draws of the stream `seed`, as the forward pass uses them (for tests).
at::Tensor uniform_draws(int64_t seed, int64_t n) {
  at::Tensor out = at::empty({n}, at::TensorOptions().dtype(at::kFloat));
  float* op = out.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) op[i] = draw(static_cast<uint64_t>(seed), static_cast<uint64_t>(i));
  return out;
}

// Whether every tensor is one the passes take: contiguous float32 on the CPU (one call for a step's ~100-300
// tensors; the same test in Python took ~1 µs a tensor).
bool all_usable(const std::vector<at::Tensor>& tensors) {
  return std::all_of(tensors.begin(), tensors.end(), [](const at::Tensor& t) {
    return t.scalar_type() == at::kFloat && t.device().is_cpu() && t.is_contiguous();
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("group_forward", &group_forward, "fused rate / L2 / lasso / rounding pass of one latent group");
  m.def("group_backward", &group_backward, "gradient of the fused pass w.r.t. the group's latents and decoder");
  m.def("group_ranges", &group_ranges, "(min, max) of each group's latents");
  m.def("all_usable", &all_usable, "are all these tensors contiguous float32 CPU tensors");
  m.def("uniform_draws", &uniform_draws, "the kernel's noise draws in [0, 1) of one seed");
  m.def("grids_forward", &grids_forward, "bits of factorised densities on grids (double inside), and for backward");
  m.def("grids_backward", &grids_backward, "gradient of the grids' bits w.r.t. the densities' parameters");
}
