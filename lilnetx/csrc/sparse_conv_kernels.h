// The inference kernels, free of torch: register-blocked direct convolution loops over the non-zero taps of each
// output channel, a linear layer over its non-zero weights (CSR) and max pooling (see sparse_conv.cpp). Kept apart
// so that lilnetx.native.compile_check can compile them for an instruction set this CPU lacks in seconds, without
// torch's headers.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#ifndef LNX_VW
#define LNX_VW 16
#endif
#ifndef LNX_NREG
#define LNX_NREG 32
#endif

namespace lnx {

constexpr int VW = LNX_VW;
typedef float vf __attribute__((vector_size(VW * sizeof(float))));

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

struct Geometry {
  int64_t C, H, W, O, Ho, Wo, Hp, Wp, Wq, pad_h, pad_w, stride_h, stride_w;
};

// Zero-pad one sample's (C, H, W) planes into buf (C, Hp, Wp), writing every element (the buffer is reused
// between calls without clearing); with stride_w > 1 padded column c of a row is stored at
// (c % stride_w) * Wq + c / stride_w. Plain loops: the rows of a small layer are a few floats, where a memset /
// memcpy call each costs more than the copy (the kernels are built with -fno-tree-loop-distribute-patterns, so
// the compiler does not turn these loops back into such calls).
inline void pad_sample(const float* x, float* buf, const Geometry& g) {
  const int64_t row_end = g.pad_w + g.W;
  for (int64_t c = 0; c < g.C; ++c) {
    float* plane = buf + c * g.Hp * g.Wp;
    for (int64_t i = 0; i < g.pad_h * g.Wp; ++i) plane[i] = 0.0f;
    for (int64_t i = (g.pad_h + g.H) * g.Wp; i < g.Hp * g.Wp; ++i) plane[i] = 0.0f;
    for (int64_t h = 0; h < g.H; ++h) {
      const float* src = x + (c * g.H + h) * g.W;
      float* row = plane + (h + g.pad_h) * g.Wp;
      if (g.stride_w == 1) {
        for (int64_t w = 0; w < g.pad_w; ++w) row[w] = 0.0f;
        for (int64_t w = 0; w < g.W; ++w) row[g.pad_w + w] = src[w];
        for (int64_t w = row_end; w < g.Wp; ++w) row[w] = 0.0f;
      } else {
        for (int64_t phase = 0; phase < g.stride_w; ++phase) {
          // dst[j] holds source column phase + j * stride_w - pad_w: zeros, then the row's columns, then zeros
          float* dst = row + phase * g.Wq;
          const int64_t first = (g.pad_w - phase + g.stride_w - 1) / g.stride_w;  // >= 0: phase < stride_w
          const int64_t last = (g.W + g.pad_w - phase + g.stride_w - 1) / g.stride_w;  // one past the row's end
          const int64_t end = std::min(g.Wq, std::max(first, last));
          const float* from = src + phase + first * g.stride_w - g.pad_w;
          for (int64_t j = 0; j < first; ++j) dst[j] = 0.0f;
          for (int64_t j = first; j < end; ++j) dst[j] = from[(j - first) * g.stride_w];
          for (int64_t j = end; j < g.Wq; ++j) dst[j] = 0.0f;
        }
      }
    }
  }
}

// The output of one channel and what is fused into its store: a residual added (same shape; or null), then the
// activation clamp(value, lo, hi) where clamp is set (ReLU: lo 0, hi +inf; ReLU6: lo 0, hi 6).
struct Sink {
  float* out;
  const float* residual;
  bool clamp;
  float lo, hi;
};

template <int R, int NV>
inline void store_block(vf (&acc)[R][NV], const Sink& sink, const Geometry& g, int64_t oh0, int64_t ow0) {
  constexpr int64_t COLS = NV * VW;
  const int64_t rows = std::min<int64_t>(R, g.Ho - oh0);
  const int64_t cols = std::min<int64_t>(COLS, g.Wo - ow0);
  for (int r = 0; r < rows; ++r) {
    const int64_t at = (oh0 + r) * g.Wo + ow0;
    if (cols == COLS) {
      for (int v = 0; v < NV; ++v) {
        if (sink.residual) acc[r][v] += load(sink.residual + at + v * VW);
        if (sink.clamp) {
          const vf lo = vf{} + sink.lo, hi = vf{} + sink.hi;
          acc[r][v] = acc[r][v] < lo ? lo : acc[r][v];
          acc[r][v] = acc[r][v] > hi ? hi : acc[r][v];
        }
      }
      std::memcpy(sink.out + at, acc[r], sizeof(acc[r]));
    } else {
      float tmp[COLS];
      std::memcpy(tmp, acc[r], sizeof(tmp));
      for (int64_t c = 0; c < cols; ++c) {
        float value = tmp[c] + (sink.residual ? sink.residual[at + c] : 0.0f);
        sink.out[at + c] = sink.clamp ? std::min(std::max(value, sink.lo), sink.hi) : value;
      }
    }
  }
}

// Any kernel, stride and dilation: one broadcast weight and one contiguous load per accumulator and tap.
template <int R, int NV>
void taps_channel(const float* buf, const Sink& out, const Geometry& g, const int64_t* offs, const float* wts,
                  int64_t n_taps, float bias) {
  const int64_t row_step = g.stride_h * g.Wp;
  for (int64_t oh0 = 0; oh0 < g.Ho; oh0 += R) {
    for (int64_t ow0 = 0; ow0 < g.Wo; ow0 += NV * VW) {
      vf acc[R][NV];
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = vf{} + bias;
      const float* base = buf + oh0 * row_step + ow0;
      for (int64_t t = 0; t < n_taps; ++t) {
        const float* src = base + offs[t];
        const vf w = vf{} + wts[t];
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) acc[r][v] += w * load(src + r * row_step + v * VW);
      }
      store_block<R, NV>(acc, out, g, oh0, ow0);
    }
  }
}

// K x K slices at stride S (no dilation): per non-zero slice and kernel column, K weights stay in registers while
// the slice's S (R - 1) + K input rows stream past, each row feeding the output rows it touches (up to K at stride
// 1, up to ceil(K / S) at stride S). Strided rows are stored in stride phases (pad_sample), so each read is contiguous.
template <int K, int S, int R, int NV>
void slice_channel(const float* buf, const Sink& out, const Geometry& g, const int64_t* offs, const float* wts,
                   int64_t n_slices, float bias) {
  constexpr int ROWS = S * (R - 1) + K;  // the input rows a block of R output rows reads
  const int64_t Wp = g.Wp;
  for (int64_t oh0 = 0; oh0 < g.Ho; oh0 += R) {
    for (int64_t ow0 = 0; ow0 < g.Wo; ow0 += NV * VW) {
      vf acc[R][NV];
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = vf{} + bias;
      const float* base = buf + oh0 * S * Wp + ow0;
      for (int64_t s = 0; s < n_slices; ++s) {
        const float* w = wts + K * K * s;
#pragma GCC unroll 5
        for (int kw = 0; kw < K; ++kw) {
          const float* src = base + offs[s] + (kw % S) * g.Wq + kw / S;
          vf wk[K];
#pragma GCC unroll 5
          for (int kh = 0; kh < K; ++kh) wk[kh] = vf{} + w[kh * K + kw];
#pragma GCC unroll 32
          for (int j = 0; j < ROWS; ++j) {
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) {
              const vf x = load(src + j * Wp + v * VW);
#pragma GCC unroll 5
              for (int kh = 0; kh < K; ++kh) {
                const int d = j - kh;  // S times the output row this input row feeds through kernel row kh
                if (d >= 0 && d % S == 0 && d / S < R) acc[d / S][v] += wk[kh] * x;
              }
            }
          }
        }
      }
      store_block<R, NV>(acc, out, g, oh0, ow0);
    }
  }
}

using ChannelFn = void (*)(const float*, const Sink&, const Geometry&, const int64_t*, const float*, int64_t, float);

// The slice loops: kernel size K and stride S (the same in both directions, no dilation). Other convolutions run
// the tap loop.
struct SliceForm {
  int k, s;
};
constexpr SliceForm SLICE_FORMS[] = {{3, 1}, {5, 1}, {3, 2}};
constexpr int N_SLICE_FORMS = sizeof(SLICE_FORMS) / sizeof(SLICE_FORMS[0]);

struct Block {
  int R, NV;
  ChannelFn taps;
  ChannelFn slices[N_SLICE_FORMS];  // by SLICE_FORMS index
};

#define LNX_BLOCK(R, NV)        \
  Block{R, NV, taps_channel<R, NV>, \
        {slice_channel<3, 1, R, NV>, slice_channel<5, 1, R, NV>, slice_channel<3, 2, R, NV>}}
// Accumulator budgets (pick_block): R * NV <= LNX_NREG - K - 2 for a K x K slice loop (K weights, an input, a
// spare), <= LNX_NREG - 3 for the tap loop (a weight, an input, a spare): 11 (3x3) / 9 (5x5) / 13 with 16
// registers, 27 / 25 / 29 with 32.
const Block BLOCKS[] = {
    LNX_BLOCK(1, 1), LNX_BLOCK(2, 1), LNX_BLOCK(3, 1), LNX_BLOCK(4, 1), LNX_BLOCK(5, 1), LNX_BLOCK(6, 1),
    LNX_BLOCK(7, 1), LNX_BLOCK(8, 1), LNX_BLOCK(12, 1), LNX_BLOCK(1, 2), LNX_BLOCK(2, 2), LNX_BLOCK(3, 2),
    LNX_BLOCK(4, 2), LNX_BLOCK(6, 2), LNX_BLOCK(1, 3), LNX_BLOCK(2, 3), LNX_BLOCK(4, 3), LNX_BLOCK(1, 4),
    LNX_BLOCK(2, 4), LNX_BLOCK(5, 2), LNX_BLOCK(2, 5),
#if LNX_NREG >= 32
    LNX_BLOCK(7, 2), LNX_BLOCK(8, 2), LNX_BLOCK(12, 2), LNX_BLOCK(6, 3), LNX_BLOCK(7, 3), LNX_BLOCK(8, 3),
    LNX_BLOCK(4, 4), LNX_BLOCK(6, 4),
#endif
};

// The slice loop for a K x K kernel at stride (sh, sw) and dilation (dh, dw): its SLICE_FORMS index, or -1.
inline int slice_form(int64_t K, int64_t KW, int64_t sh, int64_t sw, int64_t dh, int64_t dw) {
  for (int i = 0; i < N_SLICE_FORMS; ++i)
    if (K == SLICE_FORMS[i].k && KW == K && sh == SLICE_FORMS[i].s && sw == sh && dh == 1 && dw == 1) return i;
  return -1;
}

// The block with the least modelled work for an Ho x Wo output: padded outputs times the multiply-adds per
// output vector, plus the loads that exceed them and a per-block cost for setting up and storing. Blocks whose
// accumulators leave no room for the weights, the input vector and a spare register are not considered.
// form: the slice loop's SLICE_FORMS index (-1: the tap loop); taps_per_unit: taps per slice, or per output channel.
inline const Block& pick_block(int64_t Ho, int64_t Wo, int form, int64_t taps_per_unit) {
  const bool slices = form >= 0;
  const int k = slices ? SLICE_FORMS[form].k : 1, stride = slices ? SLICE_FORMS[form].s : 1;
  const int budget = LNX_NREG - (slices ? k + 2 : 3);
  const Block* best = &BLOCKS[0];
  double best_cost = 1e300;
  for (const Block& b : BLOCKS) {
    if (b.R * b.NV > budget) continue;
    const double blocks = double((Ho + b.R - 1) / b.R) * double((Wo + b.NV * VW - 1) / (b.NV * VW));
    const double fma = double(b.R * b.NV) * taps_per_unit;
    const double loads = slices ? double(k) * (stride * (b.R - 1) + k) * b.NV + taps_per_unit
                                : double(b.R * b.NV + 1) * taps_per_unit;
    const double cost = blocks * (std::max(fma, loads) + 2.0 * b.R * b.NV + 12.0);
    if (cost < best_cost) {
      best_cost = cost;
      best = &b;
    }
  }
  return *best;
}

// Rows o0..o1 of y = x W^T + b over W's non-zeros, stored by output row (CSR: ptr, col, val). x is (N, I) and y
// (N, O), row-major; xt is x transposed to (I, N) where N >= VW (null otherwise): there each weight is broadcast
// once over VW samples, up to four vectors at a time. Remaining samples sum each row with four partial sums.
// With clamp set, every output is clamped to [0, hi] (ReLU: hi = +inf; ReLU6: 6).
inline void csr_linear_rows(const float* x, const float* xt, float* y, int64_t N, int64_t I, int64_t O,
                            const int64_t* ptr, const int64_t* col, const float* val, const float* bias, bool clamp,
                            float hi, int64_t o0, int64_t o1) {
  auto act = [clamp, hi](float v) { return clamp ? std::min(std::max(v, 0.0f), hi) : v; };
  for (int64_t o = o0; o < o1; ++o) {
    const float b = bias ? bias[o] : 0.0f;
    const int64_t t0 = ptr[o], t1 = ptr[o + 1];
    int64_t n = 0;
    float tmp[4 * VW];
    if (xt) {
      for (; n + 4 * VW <= N; n += 4 * VW) {
        vf acc[4] = {vf{} + b, vf{} + b, vf{} + b, vf{} + b};
        for (int64_t t = t0; t < t1; ++t) {
          const vf w = vf{} + val[t];
          const float* src = xt + col[t] * N + n;
#pragma GCC unroll 4
          for (int v = 0; v < 4; ++v) acc[v] += w * load(src + v * VW);
        }
        std::memcpy(tmp, acc, sizeof(acc));
        for (int k = 0; k < 4 * VW; ++k) y[(n + k) * O + o] = act(tmp[k]);
      }
      for (; n + VW <= N; n += VW) {
        vf even = vf{} + b, odd = vf{};
        int64_t t = t0;
        for (; t + 1 < t1; t += 2) {
          even += (vf{} + val[t]) * load(xt + col[t] * N + n);
          odd += (vf{} + val[t + 1]) * load(xt + col[t + 1] * N + n);
        }
        if (t < t1) even += (vf{} + val[t]) * load(xt + col[t] * N + n);
        even += odd;
        std::memcpy(tmp, &even, sizeof(even));
        for (int k = 0; k < VW; ++k) y[(n + k) * O + o] = act(tmp[k]);
      }
    }
    for (; n < N; ++n) {
      const float* row = x + n * I;
      float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
      int64_t t = t0;
      for (; t + 3 < t1; t += 4) {
        s0 += val[t] * row[col[t]];
        s1 += val[t + 1] * row[col[t + 1]];
        s2 += val[t + 2] * row[col[t + 2]];
        s3 += val[t + 3] * row[col[t + 3]];
      }
      for (; t < t1; ++t) s0 += val[t] * row[col[t]];
      y[n * O + o] = act(b + ((s0 + s1) + (s2 + s3)));
    }
  }
}

struct PoolGeometry {
  int64_t H, W, Ho, Wo, kh, kw, sh, sw, ph, pw;
};

// Lane-wise max of a and b, a NaN in a winning (as in torch's max pooling); branch-free.
inline vf nan_max(vf a, vf b) { return ((a > b) | (a != a)) ? a : b; }

typedef int32_t vi __attribute__((vector_size(VW * sizeof(int32_t))));

// The even lanes of the 2 * VW lanes of (a, b), then the odd ones.
inline vf even_lanes(vf a, vf b) {
  vi idx;
  for (int k = 0; k < VW; ++k) idx[k] = 2 * k;
  return __builtin_shuffle(a, b, idx);
}
inline vf odd_lanes(vf a, vf b) {
  vi idx;
  for (int k = 0; k < VW; ++k) idx[k] = 2 * k + 1;
  return __builtin_shuffle(a, b, idx);
}

// The max of a window's values with NaN winning, branch-free: a running max (maxss) and a NaN flag.
struct WindowMax {
  float best = -std::numeric_limits<float>::infinity();
  bool nan = false;
  void add(float v) {
    best = v > best ? v : best;
    nan |= v != v;
  }
  float value() const { return nan ? std::numeric_limits<float>::quiet_NaN() : best; }
};

// One (H, W) plane max-pooled into (Ho, Wo): windows of kh x kw at stride (sh, sw), padded with -inf by (ph, pw)
// (no dilation); a NaN in a window wins. The common 2x2 stride-2 window without padding takes VW outputs at a
// time (the last few one by one); other windows are clipped to the plane and scanned.
inline void max_pool_plane(const float* in, float* out, const PoolGeometry& g) {
  if (g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2 && g.ph == 0 && g.pw == 0) {
    const int64_t vector_end = g.Wo / VW * VW;
    for (int64_t oh = 0; oh < g.Ho; ++oh) {
      const float* r0 = in + 2 * oh * g.W;
      const float* r1 = r0 + g.W;
      float* o = out + oh * g.Wo;
      for (int64_t ow = 0; ow < vector_end; ow += VW) {
        const vf lo = nan_max(load(r0 + 2 * ow), load(r1 + 2 * ow));
        const vf hi = nan_max(load(r0 + 2 * ow + VW), load(r1 + 2 * ow + VW));
        const vf m = nan_max(even_lanes(lo, hi), odd_lanes(lo, hi));
        std::memcpy(o + ow, &m, sizeof(m));
      }
      for (int64_t ow = vector_end; ow < g.Wo; ++ow) {
        WindowMax m;
        m.add(r0[2 * ow]);
        m.add(r0[2 * ow + 1]);
        m.add(r1[2 * ow]);
        m.add(r1[2 * ow + 1]);
        o[ow] = m.value();
      }
    }
    return;
  }
  for (int64_t oh = 0; oh < g.Ho; ++oh) {
    const int64_t h0 = std::max<int64_t>(oh * g.sh - g.ph, 0), h1 = std::min(oh * g.sh - g.ph + g.kh, g.H);
    for (int64_t ow = 0; ow < g.Wo; ++ow) {
      const int64_t w0 = std::max<int64_t>(ow * g.sw - g.pw, 0), w1 = std::min(ow * g.sw - g.pw + g.kw, g.W);
      WindowMax m;
      for (int64_t h = h0; h < h1; ++h)
        for (int64_t w = w0; w < w1; ++w) m.add(in[h * g.W + w]);
      out[oh * g.Wo + ow] = m.value();
    }
  }
}

}  // namespace lnx
