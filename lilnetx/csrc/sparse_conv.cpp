// Slice-sparse direct 2-D convolution (fp32, NCHW): every output channel visits only its non-zero kernel taps.
//
// One source, compiled once per instruction set: LNX_VW is the vector width in floats (8: AVX2 with 16 vector
// registers, 16: AVX-512 with 32; 4 elsewhere) and LNX_NREG the register count; lilnetx/native.py builds each
// variant with its own -march and picks the one the CPU runs. Register blocks (R output rows x NV vectors) are
// chosen per layer shape so that the accumulators, three weights and one input vector fit the register file.
//
// For each (sample, output channel) a block of R rows x NV*LNX_VW columns is accumulated in registers over the
// channel's non-zero taps and stored once. 3x3 stride-1 kernels visit whole slices: each loaded input vector
// feeds the (up to) three output rows it touches. Each sample's input is zero-padded into a thread-local buffer
// (strided layers: every row split into stride phases, so that every tap reads contiguous vectors), so borders
// need no branches. Threads come from ATen's pool (torch.set_num_threads).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "sparse_conv_kernels.h"

using namespace lnx;

// x: (N, C, H, W) fp32; tap_ptr: (O + 1) int64 CSR row pointers over taps; tap_chan/tap_kh/tap_kw: int64 input
// channel and kernel position of each non-zero tap; tap_w: fp32 weight of each tap; bias: (O) fp32 or empty.
// use_slices: 3x3 stride-1 kernels run the slice kernel (false: the per-tap loop, for comparison).
// residual: a tensor of the output's shape added before the activation, or empty; activation: 0 none, 1 ReLU,
// 2 ReLU6.
torch::Tensor sparse_conv2d(torch::Tensor x, torch::Tensor tap_ptr, torch::Tensor tap_chan, torch::Tensor tap_kh,
                            torch::Tensor tap_kw, torch::Tensor tap_w, torch::Tensor bias, int64_t KH, int64_t KW,
                            int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dil_h,
                            int64_t dil_w, bool use_slices, torch::Tensor residual, int64_t activation) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == torch::kFloat32, "sparse_conv2d: x must be a 4-D float32 tensor");
  TORCH_CHECK(stride_h >= 1 && stride_w >= 1 && dil_h >= 1 && dil_w >= 1 && pad_h >= 0 && pad_w >= 0,
              "sparse_conv2d: stride and dilation must be >= 1, padding >= 0");
  x = x.contiguous();
  Geometry g;
  g.C = x.size(1); g.H = x.size(2); g.W = x.size(3);
  const bool pointwise = KH == 1 && KW == 1 && stride_h == 1 && stride_w == 1 && pad_h == 0 && pad_w == 0;
  const int64_t out_h = g.H, out_w = g.W;
  if (pointwise) {  // a 1x1 convolution reads each plane as one long row: fewer, fuller register blocks
    g.W = g.H * g.W;
    g.H = 1;
  }
  g.O = tap_ptr.size(0) - 1;
  g.stride_h = stride_h; g.stride_w = stride_w; g.pad_h = pad_h; g.pad_w = pad_w;
  g.Ho = (g.H + 2 * pad_h - dil_h * (KH - 1) - 1) / stride_h + 1;
  g.Wo = (g.W + 2 * pad_w - dil_w * (KW - 1) - 1) / stride_w + 1;
  TORCH_CHECK(g.Ho > 0 && g.Wo > 0, "sparse_conv2d: input smaller than the kernel");
  const int64_t N = x.size(0);
  const int64_t n_taps = tap_w.size(0);
  const bool slices = use_slices && KH == 3 && KW == 3 && stride_h == 1 && stride_w == 1 && dil_h == 1 &&
                      dil_w == 1;
  const int64_t taps_per_channel = std::max<int64_t>(1, n_taps / std::max<int64_t>(1, g.O));
  const Block& block = pick_block(g.Ho, g.Wo, slices, slices ? 9 : taps_per_channel);
  const int64_t Ho_pad = (g.Ho + block.R - 1) / block.R * block.R;
  const int64_t Wo_pad = (g.Wo + block.NV * VW - 1) / (block.NV * VW) * (block.NV * VW);
  // Room for the rounded-up block of rows / columns: reads beyond the real input see zeros.
  g.Hp = std::max<int64_t>(g.H + 2 * pad_h, (Ho_pad - 1) * stride_h + dil_h * (KH - 1) + 1);
  g.Wq = std::max<int64_t>((g.W + 2 * pad_w + stride_w - 1) / stride_w, Wo_pad + dil_w * (KW - 1) / stride_w + 1);
  g.Wp = g.Wq * stride_w;

  const int64_t* chan = tap_chan.data_ptr<int64_t>();
  const int64_t* kh = tap_kh.data_ptr<int64_t>();
  const int64_t* kw = tap_kw.data_ptr<int64_t>();
  const int64_t* tptr = tap_ptr.data_ptr<int64_t>();
  const float* tw = tap_w.data_ptr<float>();
  std::vector<int64_t> offs, ptr_v(g.O + 1);
  std::vector<float> w_v;
  ChannelFn fn;
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
    fn = block.slices;
  } else {
    offs.resize(n_taps);
    for (int64_t t = 0; t < n_taps; ++t) {
      const int64_t col = kw[t] * dil_w;
      offs[t] = (chan[t] * g.Hp + kh[t] * dil_h) * g.Wp + (col % stride_w) * g.Wq + col / stride_w;
    }
    std::copy(tptr, tptr + g.O + 1, ptr_v.begin());
    w_v.assign(tw, tw + n_taps);
    fn = block.taps;
  }

  auto out = pointwise ? torch::empty({N, g.O, out_h, out_w}, x.options()) : torch::empty({N, g.O, g.Ho, g.Wo}, x.options());
  if (residual.numel()) {
    TORCH_CHECK(residual.sizes() == out.sizes() && residual.scalar_type() == torch::kFloat32,
                "sparse_conv2d: the residual must be a float32 tensor of the output's shape");
    residual = residual.contiguous();
  }
  const float* rp = residual.numel() ? residual.data_ptr<float>() : nullptr;
  TORCH_CHECK(activation >= 0 && activation <= 2, "sparse_conv2d: activation must be 0 (none), 1 (ReLU) or 2 (ReLU6)");
  const float hi = activation == 2 ? 6.0f : std::numeric_limits<float>::infinity();
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
      const int64_t at = n * out_plane + o * g.Ho * g.Wo;
      fn(buf, Sink{op + at, rp ? rp + at : nullptr, activation != 0, 0.0f, hi}, g, offs.data() + ptr[o], wp + ptr[o] * w_step,
         ptr[o + 1] - ptr[o], bp ? bp[o] : 0.0f);
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

// The register block (rows, vectors) and the vector width the kernel uses for an Ho x Wo output.
std::vector<int64_t> block_for(int64_t Ho, int64_t Wo, bool slices, int64_t taps_per_channel) {
  const Block& b = pick_block(Ho, Wo, slices, slices ? 9 : taps_per_channel);
  return {b.R, b.NV, VW};
}

// The same function as a TorchScript-visible operator, in a namespace named after this build
// (torch.ops.<module name>.sparse_conv2d), so traced models run it without Python.
#define LNX_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
LNX_LIBRARY(TORCH_EXTENSION_NAME, m) {
  m.def("sparse_conv2d(Tensor x, Tensor tap_ptr, Tensor tap_chan, Tensor tap_kh, Tensor tap_kw, Tensor tap_w, "
        "Tensor bias, int KH, int KW, int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, "
        "bool use_slices, Tensor residual, int activation) -> Tensor",
        &sparse_conv2d);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sparse_conv2d", &sparse_conv2d, "slice-sparse direct conv2d (fp32, NCHW)");
  m.def("block_for", &block_for, "register block (rows, vectors, vector width) chosen for an output size");
  m.attr("vector_width") = VW;
}
