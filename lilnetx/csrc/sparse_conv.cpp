// Slice-sparse direct 2-D convolution (fp32, NCHW): every output channel visits only its non-zero
// kernel taps (3x3 stride-1 kernels: its non-zero slices, each input row loaded once for three taps). For each (sample, output channel) a block of R output rows x NV*16 columns is accumulated in
// vector registers over the channel's non-zero taps (one broadcast weight, one unaligned row load per
// accumulator), then stored once. Each sample's input is zero-padded into a thread-local buffer that stays
// in cache, so borders need no branches. Threads come from ATen's pool (torch.set_num_threads).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace {

typedef float v16 __attribute__((vector_size(64)));

inline v16 load16(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline v16 load16_strided(const float* p, int64_t s) {
  v16 v;
  for (int k = 0; k < 16; ++k) v[k] = p[k * s];
  return v;
}

struct Geometry {
  int64_t C, H, W, O, Ho, Wo, Hp, Wp, pad_h, pad_w, stride_h, stride_w;
};

// Zero-pad one sample's (C, H, W) planes into buf (C, Hp, Wp).
void pad_sample(const float* x, float* buf, const Geometry& g) {
  std::fill(buf, buf + g.C * g.Hp * g.Wp, 0.0f);
  for (int64_t c = 0; c < g.C; ++c) {
    for (int64_t h = 0; h < g.H; ++h) {
      std::memcpy(buf + (c * g.Hp + h + g.pad_h) * g.Wp + g.pad_w, x + (c * g.H + h) * g.W, g.W * sizeof(float));
    }
  }
}

template <int R, int NV, bool UNIT>
void conv_channel(const float* buf, float* out, const Geometry& g, const int64_t* offs, const float* wts,
                  int64_t n_taps, float bias) {
  constexpr int64_t COLS = NV * 16;
  const int64_t row_step = g.stride_h * g.Wp;
  for (int64_t oh0 = 0; oh0 < g.Ho; oh0 += R) {
    for (int64_t ow0 = 0; ow0 < g.Wo; ow0 += COLS) {
      v16 acc[R][NV];
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = v16{} + bias;
      const float* base = buf + oh0 * row_step + ow0 * g.stride_w;
      for (int64_t t = 0; t < n_taps; ++t) {
        const float* src = base + offs[t];
        const v16 w = v16{} + wts[t];
        for (int r = 0; r < R; ++r) {
          for (int v = 0; v < NV; ++v) {
            if (UNIT) {
              acc[r][v] += w * load16(src + r * row_step + v * 16);
            } else {
              acc[r][v] += w * load16_strided(src + r * row_step + v * 16 * g.stride_w, g.stride_w);
            }
          }
        }
      }
      const int64_t rows = std::min<int64_t>(R, g.Ho - oh0);
      const int64_t cols = std::min<int64_t>(COLS, g.Wo - ow0);
      for (int r = 0; r < rows; ++r) {
        float tmp[COLS];
        std::memcpy(tmp, acc[r], sizeof(tmp));
        std::memcpy(out + (oh0 + r) * g.Wo + ow0, tmp, cols * sizeof(float));
      }
    }
  }
}

// 3x3, stride 1, dilation 1: iterate over each non-zero slice's (R + 2) input rows x 3 column shifts once and
// feed every loaded vector to the (up to 3) output rows it touches: half the loads of the per-tap loop.
template <int R, int NV>
void conv3x3_channel(const float* buf, float* out, const Geometry& g, const int64_t* offs, const float* wts,
                     int64_t n_slices, float bias) {
  constexpr int64_t COLS = NV * 16;
  const int64_t Wp = g.Wp;
  for (int64_t oh0 = 0; oh0 < g.Ho; oh0 += R) {
    for (int64_t ow0 = 0; ow0 < g.Wo; ow0 += COLS) {
      v16 acc[R][NV];
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = v16{} + bias;
      const float* base = buf + oh0 * Wp + ow0;
      for (int64_t s = 0; s < n_slices; ++s) {
        const float* src = base + offs[s];
        const float* w = wts + 9 * s;
        v16 wv[9];
        for (int k = 0; k < 9; ++k) wv[k] = v16{} + w[k];
#pragma GCC unroll 16
        for (int j = 0; j < R + 2; ++j) {
#pragma GCC unroll 3
          for (int kw = 0; kw < 3; ++kw) {
#pragma GCC unroll 2
            for (int v = 0; v < NV; ++v) {
              const v16 xv = load16(src + j * Wp + kw + v * 16);
#pragma GCC unroll 3
              for (int kh = 0; kh < 3; ++kh) {
                const int r = j - kh;
                if (r >= 0 && r < R) acc[r][v] += wv[kh * 3 + kw] * xv;
              }
            }
          }
        }
      }
      const int64_t rows = std::min<int64_t>(R, g.Ho - oh0);
      const int64_t cols = std::min<int64_t>(COLS, g.Wo - ow0);
      for (int r = 0; r < rows; ++r) {
        float tmp[COLS];
        std::memcpy(tmp, acc[r], sizeof(tmp));
        std::memcpy(out + (oh0 + r) * g.Wo + ow0, tmp, cols * sizeof(float));
      }
    }
  }
}

using ChannelFn = void (*)(const float*, float*, const Geometry&, const int64_t*, const float*, int64_t, float);

template <bool UNIT>
ChannelFn pick(int64_t Wo) {
  if (Wo <= 16) return conv_channel<8, 1, UNIT>;
  return conv_channel<4, 2, UNIT>;
}

ChannelFn pick3x3(int64_t Wo) {
  if (Wo <= 16) return conv3x3_channel<8, 1>;
  return conv3x3_channel<4, 2>;
}

}  // namespace

// x: (N, C, H, W) fp32; tap_ptr: (O + 1) int64 CSR row pointers over taps; tap_chan/tap_kh/tap_kw: int64 input
// channel and kernel position of each non-zero tap; tap_w: fp32 weight of each tap; bias: (O) fp32 or empty.
// use_slices: 3x3 stride-1 kernels run the slice kernel (false: the per-tap loop, for comparison).
torch::Tensor sparse_conv2d(torch::Tensor x, torch::Tensor tap_ptr, torch::Tensor tap_chan, torch::Tensor tap_kh,
                            torch::Tensor tap_kw, torch::Tensor tap_w, torch::Tensor bias, int64_t KH, int64_t KW,
                            int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dil_h,
                            int64_t dil_w, bool use_slices) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == torch::kFloat32, "sparse_conv2d: x must be a 4-D float32 tensor");
  x = x.contiguous();
  Geometry g;
  g.C = x.size(1); g.H = x.size(2); g.W = x.size(3);
  g.O = tap_ptr.size(0) - 1;
  g.stride_h = stride_h; g.stride_w = stride_w; g.pad_h = pad_h; g.pad_w = pad_w;
  g.Ho = (g.H + 2 * pad_h - dil_h * (KH - 1) - 1) / stride_h + 1;
  g.Wo = (g.W + 2 * pad_w - dil_w * (KW - 1) - 1) / stride_w + 1;
  TORCH_CHECK(g.Ho > 0 && g.Wo > 0, "sparse_conv2d: input smaller than the kernel");
  const int64_t N = x.size(0);
  const int64_t cols = g.Wo <= 16 ? 16 : 32;
  const int64_t rows = g.Wo <= 16 ? 8 : 4;
  const int64_t Ho_pad = (g.Ho + rows - 1) / rows * rows;
  const int64_t Wo_pad = (g.Wo + cols - 1) / cols * cols;
  // Room for the rounded-up block of rows / columns: reads beyond the real input see zeros.
  g.Hp = std::max<int64_t>(g.H + 2 * pad_h, (Ho_pad - 1) * stride_h + dil_h * (KH - 1) + 1);
  g.Wp = std::max<int64_t>(g.W + 2 * pad_w, (Wo_pad - 1) * stride_w + dil_w * (KW - 1) + 1);

  const int64_t n_taps = tap_w.size(0);
  const int64_t* chan = tap_chan.data_ptr<int64_t>();
  const int64_t* kh = tap_kh.data_ptr<int64_t>();
  const int64_t* kw = tap_kw.data_ptr<int64_t>();
  const int64_t* tptr = tap_ptr.data_ptr<int64_t>();
  const float* tw = tap_w.data_ptr<float>();
  std::vector<int64_t> offs, ptr_v(g.O + 1);
  std::vector<float> w_v;
  ChannelFn fn;
  const bool slices = use_slices && KH == 3 && KW == 3 && stride_h == 1 && stride_w == 1 && dil_h == 1 &&
                      dil_w == 1;
  if (slices) {  // taps (sorted by output, input channel, kh, kw) grouped into 3x3 slices
    for (int64_t o = 0; o < g.O; ++o) {
      ptr_v[o] = static_cast<int64_t>(offs.size());
      int64_t last = -1;
      for (int64_t t = tptr[o]; t < tptr[o + 1]; ++t) {
        if (chan[t] != last) {
          last = chan[t];
          offs.push_back(chan[t] * g.Hp * g.Wp);
          w_v.resize(w_v.size() + 9, 0.0f);
        }
        w_v[w_v.size() - 9 + kh[t] * 3 + kw[t]] = tw[t];
      }
    }
    ptr_v[g.O] = static_cast<int64_t>(offs.size());
    fn = pick3x3(g.Wo);
  } else {
    offs.resize(n_taps);
    for (int64_t t = 0; t < n_taps; ++t) offs[t] = (chan[t] * g.Hp + kh[t] * dil_h) * g.Wp + kw[t] * dil_w;
    std::copy(tptr, tptr + g.O + 1, ptr_v.begin());
    w_v.assign(tw, tw + n_taps);
    fn = (stride_w == 1) ? pick<true>(g.Wo) : pick<false>(g.Wo);
  }

  auto out = torch::empty({N, g.O, g.Ho, g.Wo}, x.options());
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t* ptr = ptr_v.data();
  const float* wp = w_v.data();
  const float* bp = bias.numel() ? bias.data_ptr<float>() : nullptr;
  const int64_t w_step = slices ? 9 : 1;  // weights per slice / per tap
  const int64_t plane = g.C * g.Hp * g.Wp;
  const int64_t in_plane = g.C * g.H * g.W;
  const int64_t out_plane = g.O * g.Ho * g.Wo;
  auto run_channels = [&](const float* buf, int64_t n, int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      fn(buf, op + n * out_plane + o * g.Ho * g.Wo, g, offs.data() + ptr[o], wp + ptr[o] * w_step, ptr[o + 1] - ptr[o],
         bp ? bp[o] : 0.0f);
    }
  };
  if (N >= at::get_num_threads()) {
    at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
      std::vector<float> buf(plane);
      for (int64_t n = n0; n < n1; ++n) {
        pad_sample(xp + n * in_plane, buf.data(), g);
        run_channels(buf.data(), n, 0, g.O);
      }
    });
  } else {
    std::vector<float> buf(plane);
    for (int64_t n = 0; n < N; ++n) {
      pad_sample(xp + n * in_plane, buf.data(), g);
      at::parallel_for(0, g.O, 1, [&](int64_t o0, int64_t o1) { run_channels(buf.data(), n, o0, o1); });
    }
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sparse_conv2d", &sparse_conv2d, "slice-sparse direct conv2d (fp32, NCHW)");
}
