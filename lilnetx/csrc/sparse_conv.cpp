// The inference kernels (fp32): slice-sparse direct 2-D convolution (NCHW), where every output channel visits only
// its non-zero kernel taps; a linear layer over its non-zero weights; max pooling.
//
// One source, compiled once per instruction set: LNX_VW is the vector width in floats (8: AVX2 with 16 vector
// registers, 16: AVX-512 with 32; 4 elsewhere) and LNX_NREG the register count; lilnetx/native.py builds each
// variant with its own -march and lilnetx/kernels.py loads the best one the CPU runs. Register blocks (R output rows
// x NV vectors) are chosen per layer shape so that the accumulators, the weights and one input vector fit the
// register file (pick_block).
//
// For each (sample, output channel) a block of R rows x NV*LNX_VW columns is accumulated in registers over the
// channel's non-zero taps and stored once. 3x3 and 5x5 kernels at stride 1 and 3x3 at stride 2 visit whole
// slices: each loaded input vector feeds every output row it touches. Each sample's input is zero-padded into a
// thread-local buffer (strided layers: every row split into stride phases, so that every tap reads contiguous
// vectors), so borders need no branches. Threads come from ATen's pool (torch.set_num_threads).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/TracerMode.h>

#include "sparse_conv_kernels.h"

using namespace lnx;

// A layer's plan for one input size, built once (sparse_conv2d_plan) and reused by every call with that size
// (sparse_conv2d_run): where each non-zero tap (or K x K slice) reads the padded input, its weights, and the meta
// row below (geometry, register block, layout; M_SLICE_FORM is the SLICE_FORMS index + 1, 0 for the tap loop).
enum Meta { M_C, M_H, M_W, M_O, M_HO, M_WO, M_HP, M_WP, M_WQ, M_PAD_H, M_PAD_W, M_STRIDE_H, M_STRIDE_W, M_BLOCK,
            M_SLICE_FORM, M_POINTWISE, M_OUT_H, M_OUT_W, M_SIZE };

// tap_ptr: (O + 1) int64 CSR row pointers over taps; tap_chan/tap_kh/tap_kw: int64 input channel and kernel
// position of each non-zero tap; tap_w: fp32 weight of each tap; (C, H, W): the input size planned for.
// use_slices: kernels with a slice loop (SLICE_FORMS) run it (false: the per-tap loop, for comparison).
// Returns (offsets int64, per-channel pointers int64, weights fp32, meta int64).
std::vector<torch::Tensor> sparse_conv2d_plan(torch::Tensor tap_ptr, torch::Tensor tap_chan, torch::Tensor tap_kh,
                                              torch::Tensor tap_kw, torch::Tensor tap_w, int64_t C, int64_t H,
                                              int64_t W, int64_t KH, int64_t KW, int64_t stride_h, int64_t stride_w,
                                              int64_t pad_h, int64_t pad_w, int64_t dil_h, int64_t dil_w,
                                              bool use_slices) {
  // Called from Python even while torch.jit.trace runs: the tensors made here must be constants of the trace,
  // not traced operations on this function's local memory.
  at::tracer::impl::NoTracerDispatchMode no_tracing;
  TORCH_CHECK(stride_h >= 1 && stride_w >= 1 && dil_h >= 1 && dil_w >= 1 && pad_h >= 0 && pad_w >= 0,
              "sparse_conv2d: stride and dilation must be >= 1, padding >= 0");
  Geometry g;
  g.C = C; g.H = H; g.W = W;
  const bool pointwise = KH == 1 && KW == 1 && stride_h == 1 && stride_w == 1 && pad_h == 0 && pad_w == 0;
  if (pointwise) {  // a 1x1 convolution reads each plane as one long row: fewer, fuller register blocks
    g.W = g.H * g.W;
    g.H = 1;
  }
  g.O = tap_ptr.size(0) - 1;
  g.stride_h = stride_h; g.stride_w = stride_w; g.pad_h = pad_h; g.pad_w = pad_w;
  g.Ho = (g.H + 2 * pad_h - dil_h * (KH - 1) - 1) / stride_h + 1;
  g.Wo = (g.W + 2 * pad_w - dil_w * (KW - 1) - 1) / stride_w + 1;
  TORCH_CHECK(g.Ho > 0 && g.Wo > 0, "sparse_conv2d: input smaller than the kernel");
  const int64_t n_taps = tap_w.size(0);
  const int form = use_slices ? slice_form(KH, KW, stride_h, stride_w, dil_h, dil_w) : -1;  // -1: the tap loop
  const bool slices = form >= 0;
  const int64_t slice_k = slices ? SLICE_FORMS[form].k : 0;
  const int64_t taps_per_channel = std::max<int64_t>(1, n_taps / std::max<int64_t>(1, g.O));
  const Block& block = pick_block(g.Ho, g.Wo, form, slices ? slice_k * slice_k : taps_per_channel);
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
  if (slices) {  // taps (sorted by output, input channel, kh, kw) grouped into K x K slices
    const int64_t area = slice_k * slice_k;
    for (int64_t o = 0; o < g.O; ++o) {
      ptr_v[o] = static_cast<int64_t>(offs.size());
      int64_t last = -1;
      for (int64_t t = tptr[o]; t < tptr[o + 1]; ++t) {
        if (chan[t] != last) {
          last = chan[t];
          offs.push_back(chan[t] * g.Hp * g.Wp);
          w_v.resize(w_v.size() + area, 0.0f);
        }
        w_v[w_v.size() - area + kh[t] * slice_k + kw[t]] = tw[t];
      }
    }
    ptr_v[g.O] = static_cast<int64_t>(offs.size());
  } else {
    offs.resize(n_taps);
    for (int64_t t = 0; t < n_taps; ++t) {
      const int64_t col = kw[t] * dil_w;
      offs[t] = (chan[t] * g.Hp + kh[t] * dil_h) * g.Wp + (col % stride_w) * g.Wq + col / stride_w;
    }
    std::copy(tptr, tptr + g.O + 1, ptr_v.begin());
    w_v.assign(tw, tw + n_taps);
  }
  const std::vector<int64_t> meta = {g.C, g.H, g.W, g.O, g.Ho, g.Wo, g.Hp, g.Wp, g.Wq, g.pad_h, g.pad_w, g.stride_h,
                                g.stride_w, &block - BLOCKS, form + 1, pointwise, pointwise ? H : g.Ho, pointwise ? W : g.Wo};
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  return {torch::tensor(offs, i64), torch::tensor(ptr_v, i64), torch::tensor(w_v, torch::kFloat32),
          torch::tensor(meta, i64)};
}

// This thread's buffer for a zero-padded sample, of at least `floats` floats: kept between calls (pad_sample writes
// every element, margins included, so it needs no clearing), as allocating and clearing it cost more than the
// arithmetic of a small layer.
float* padding_buffer(int64_t floats) {
  static thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < floats) buffer.resize(floats);
  return buffer.data();
}

// The epilogue of an activation code: 0 none, 1 ReLU, 2 ReLU6 (clamp to [0, hi]); any other code is refused.
struct Clamp {
  bool on;
  float hi;
};

Clamp activation_clamp(int64_t activation, const char* op) {
  TORCH_CHECK(activation >= 0 && activation <= 2, op, ": activation must be 0 (none), 1 (ReLU) or 2 (ReLU6)");
  return {activation != 0, activation == 2 ? 6.0f : std::numeric_limits<float>::infinity()};
}

// x: (N, C, H, W) fp32 of the planned size; offsets, pointers, weights, meta: its plan; bias: (O) fp32 or empty.
// residual: a tensor of the output's shape added before the activation, or empty; activation: 0 none, 1 ReLU,
// 2 ReLU6; parallel: split the work over ATen's threads (false: run on the calling thread, which is faster where
// the work is too small to pay for waking the others: measured per layer).
torch::Tensor sparse_conv2d_run(torch::Tensor x, torch::Tensor offsets, torch::Tensor pointers,
                                torch::Tensor weights, torch::Tensor meta, torch::Tensor bias, torch::Tensor residual,
                                int64_t activation, bool parallel) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == torch::kFloat32, "sparse_conv2d: x must be a 4-D float32 tensor");
  TORCH_CHECK(meta.numel() == M_SIZE && meta.scalar_type() == torch::kInt64, "sparse_conv2d: not a plan");
  const int64_t* m = meta.data_ptr<int64_t>();
  TORCH_CHECK(m[M_BLOCK] >= 0 && m[M_BLOCK] < int64_t(sizeof(BLOCKS) / sizeof(BLOCKS[0])),
              "sparse_conv2d: the plan was made by another build");
  TORCH_CHECK(x.size(1) == m[M_C] && (m[M_POINTWISE] ? x.size(2) == m[M_OUT_H] && x.size(3) == m[M_OUT_W]
                                                     : x.size(2) == m[M_H] && x.size(3) == m[M_W]),
              "sparse_conv2d: the input's size is not the one planned for");
  const Clamp clamp = activation_clamp(activation, "sparse_conv2d");
  x = x.contiguous();
  Geometry g{m[M_C], m[M_H], m[M_W], m[M_O], m[M_HO], m[M_WO], m[M_HP], m[M_WP], m[M_WQ], m[M_PAD_H], m[M_PAD_W],
             m[M_STRIDE_H], m[M_STRIDE_W]};
  const Block& block = BLOCKS[m[M_BLOCK]];
  const int64_t form = m[M_SLICE_FORM] - 1;  // -1: the tap loop
  TORCH_CHECK(form >= -1 && form < N_SLICE_FORMS &&
                  (form < 0 || (SLICE_FORMS[form].s == g.stride_h && SLICE_FORMS[form].s == g.stride_w)),
              "sparse_conv2d: the plan was made by another build");
  const ChannelFn fn = form >= 0 ? block.slices[form] : block.taps;
  const int64_t slice_k = form >= 0 ? SLICE_FORMS[form].k : 0;
  const int64_t N = x.size(0);
  auto out = torch::empty({N, g.O, m[M_OUT_H], m[M_OUT_W]}, x.options());
  if (residual.numel()) {
    TORCH_CHECK(residual.sizes() == out.sizes() && residual.scalar_type() == torch::kFloat32,
                "sparse_conv2d: the residual must be a float32 tensor of the output's shape");
    residual = residual.contiguous();
  }
  const float* rp = residual.numel() ? residual.data_ptr<float>() : nullptr;
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t* ptr = pointers.data_ptr<int64_t>();
  const int64_t* offs = offsets.data_ptr<int64_t>();
  const float* wp = weights.data_ptr<float>();
  const float* bp = bias.numel() ? bias.data_ptr<float>() : nullptr;
  const int64_t w_step = slice_k ? slice_k * slice_k : 1;  // weights per slice / per tap
  TORCH_CHECK(pointers.numel() == g.O + 1 && offsets.numel() == ptr[g.O] && weights.numel() == ptr[g.O] * w_step,
              "sparse_conv2d: the plan's tensors do not match each other");
  const int64_t plane = g.C * g.Hp * g.Wp;
  const int64_t in_plane = g.C * g.H * g.W;
  const int64_t out_plane = g.O * g.Ho * g.Wo;
  auto run_channels = [&](const float* buf, int64_t n, int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      const int64_t at = n * out_plane + o * g.Ho * g.Wo;
      fn(buf, Sink{op + at, rp ? rp + at : nullptr, clamp.on, 0.0f, clamp.hi}, g, offs + ptr[o],
         wp + ptr[o] * w_step, ptr[o + 1] - ptr[o], bp ? bp[o] : 0.0f);
    }
  };
  if (!parallel || N >= at::get_num_threads()) {
    // a grain larger than the range runs inline, on the calling thread
    at::parallel_for(0, N, parallel ? 1 : N + 1, [&](int64_t n0, int64_t n1) {
      float* buf = padding_buffer(plane);
      for (int64_t n = n0; n < n1; ++n) {
        pad_sample(xp + n * in_plane, buf, g);
        run_channels(buf, n, 0, g.O);
      }
    });
  } else {
    float* buf = padding_buffer(plane);
    for (int64_t n = 0; n < N; ++n) {
      pad_sample(xp + n * in_plane, buf, g);
      at::parallel_for(0, g.O, 1, [&](int64_t o0, int64_t o1) { run_channels(buf, n, o0, o1); });
    }
  }
  return out;
}

// y = x W^T + b for x (N, I) fp32, W given by its non-zeros per output row: ptr (O + 1) int64 row pointers, col
// int64 input index and val fp32 weight of each; bias (O) fp32 or empty; activation: 0 none, 1 ReLU, 2 ReLU6;
// parallel: as for sparse_conv2d_run.
torch::Tensor sparse_linear(torch::Tensor x, torch::Tensor ptr, torch::Tensor col, torch::Tensor val,
                            torch::Tensor bias, int64_t activation, bool parallel) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32, "sparse_linear: x must be a 2-D float32 tensor");
  const Clamp clamp = activation_clamp(activation, "sparse_linear");
  x = x.contiguous();
  const int64_t N = x.size(0), I = x.size(1), O = ptr.size(0) - 1;
  auto y = torch::empty({N, O}, x.options());
  torch::Tensor xt = N >= VW ? x.t().contiguous() : torch::Tensor();
  const float* xp = x.data_ptr<float>();
  const float* xtp = xt.defined() ? xt.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const int64_t* pp = ptr.data_ptr<int64_t>();
  const int64_t* cp = col.data_ptr<int64_t>();
  const float* vp = val.data_ptr<float>();
  const float* bp = bias.numel() ? bias.data_ptr<float>() : nullptr;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, N * (pp[O] / std::max<int64_t>(1, O))));
  at::parallel_for(0, O, parallel ? grain : O + 1, [&](int64_t o0, int64_t o1) {
    csr_linear_rows(xp, xtp, yp, N, I, O, pp, cp, vp, bp, clamp.on, clamp.hi, o0, o1);
  });
  return y;
}

// Max pooling of x (N, C, H, W) fp32: kernel (kh, kw), stride (sh, sw), padding (ph, pw), no dilation, floor mode.
torch::Tensor max_pool2d(torch::Tensor x, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == torch::kFloat32, "max_pool2d: x must be a 4-D float32 tensor");
  TORCH_CHECK(kh >= 1 && kw >= 1 && sh >= 1 && sw >= 1 && ph >= 0 && pw >= 0 && 2 * ph <= kh && 2 * pw <= kw,
              "max_pool2d: kernel and stride must be >= 1, padding at most half the kernel");
  x = x.contiguous();
  PoolGeometry g{x.size(2), x.size(3), 0, 0, kh, kw, sh, sw, ph, pw};
  g.Ho = (g.H + 2 * ph - kh) / sh + 1;
  g.Wo = (g.W + 2 * pw - kw) / sw + 1;
  TORCH_CHECK(g.Ho > 0 && g.Wo > 0, "max_pool2d: input smaller than the window");
  auto out = torch::empty({x.size(0), x.size(1), g.Ho, g.Wo}, x.options());
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t planes = x.size(0) * x.size(1);
  at::parallel_for(0, planes, std::max<int64_t>(1, 16384 / (g.H * g.W)), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) max_pool_plane(xp + p * g.H * g.W, op + p * g.Ho * g.Wo, g);
  });
  return out;
}

// The three kernels as TorchScript-visible operators, in a namespace named after this build
// (torch.ops.<module name>.<op>), so traced models run them without Python. The plan is not one: it is made
// outside any trace and held by the traced graph as constants. LNX_LIBRARY lets TORCH_EXTENSION_NAME expand before
// TORCH_LIBRARY pastes its argument.
#define LNX_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
LNX_LIBRARY(TORCH_EXTENSION_NAME, m) {
  m.def("sparse_conv2d_run(Tensor x, Tensor offsets, Tensor pointers, Tensor weights, Tensor meta, Tensor bias, "
        "Tensor residual, int activation, bool parallel) -> Tensor",
        &sparse_conv2d_run);
  m.def("sparse_linear(Tensor x, Tensor ptr, Tensor col, Tensor val, Tensor bias, int activation, bool parallel) "
        "-> Tensor", &sparse_linear);
  m.def("max_pool2d(Tensor x, int kh, int kw, int sh, int sw, int ph, int pw) -> Tensor", &max_pool2d);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sparse_conv2d_plan", &sparse_conv2d_plan, "a layer's plan for one input size");
  m.def("sparse_conv2d_run", &sparse_conv2d_run, "slice-sparse direct conv2d (fp32, NCHW) by its plan");
  m.def("sparse_linear", &sparse_linear, "linear layer over its non-zero weights (fp32, CSR by output row)");
  m.def("max_pool2d", &max_pool2d, "max pooling (fp32, NCHW, no dilation, floor mode)");
  m.attr("vector_width") = VW;
}
