// Contiguous activation groups on a CPU, split across ATen's intra-op threads.
//
// A mixed (or sorted selective) layer in the MLP's units-first layout holds its
// pre-activations as one contiguous [units, batch] buffer whose activation groups are
// contiguous blocks of rows.  At small batches every block is smaller than ATen's parallel
// grain, so each in-place activation runs on one thread, one after the other.  These ops give
// every thread its share of every block instead and call the same ATen kernels on the
// shares: the values of one ATen call per block, all threads busy.  Built on first use by
// smartmixed_core/kernels.py; the codes are ActivationSpec.kernel in activations.py.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace {

enum Code : int64_t { kRelu, kSigmoid, kTanh, kLeakyRelu, kElu, kSelu, kSilu, kMish };

constexpr double kLeakySlope = 0.01;  // the registry's leaky_relu
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kSeluScale = 1.0507009873554804934193349852946;
// Fewer elements per thread than this cost more in thread hand-off than they save.
constexpr int64_t kMinShare = 16384;

void activate(at::Tensor x, int64_t code) {
  switch (code) {
    case kRelu: at::relu_(x); break;
    case kSigmoid: at::sigmoid_(x); break;
    case kTanh: at::tanh_(x); break;
    case kLeakyRelu: at::leaky_relu_(x, kLeakySlope); break;
    case kElu: at::elu_(x); break;
    case kSelu: at::selu_(x); break;
    case kSilu: at::silu_(x); break;
    case kMish: at::mish_(x); break;
    default: TORCH_CHECK(false, "smartmixed: no kernel for activation code ", code);
  }
}

// The input gradient from the activation's output, written into grad_x (ATen's backward
// kernels, as autograd uses them for the in-place forms).
void gradient(at::Tensor grad_x, const at::Tensor& grad, const at::Tensor& out, int64_t code) {
  switch (code) {
    case kRelu: at::threshold_backward_out(grad_x, grad, out, 0); break;
    case kSigmoid: at::sigmoid_backward_out(grad_x, grad, out); break;
    case kTanh: at::tanh_backward_out(grad_x, grad, out); break;
    case kLeakyRelu: at::leaky_relu_backward_out(grad_x, grad, out, kLeakySlope, true); break;
    case kElu: at::elu_backward_out(grad_x, grad, 1.0, 1.0, 1.0, true, out); break;
    case kSelu: at::elu_backward_out(grad_x, grad, kSeluAlpha, kSeluScale, 1.0, true, out); break;
    default: TORCH_CHECK(false, "smartmixed: no output gradient for activation code ", code);
  }
}

// ATen's elementwise loops run whole vectors from a tensor's start and finish its last
// elements with scalar code, whose rounding can differ.  Shares that start at multiples of
// this many elements into their group (a multiple of every vector length, float or double)
// therefore give exactly the values of one serial ATen call on the whole group, whatever
// the number of threads.
constexpr int64_t kAlign = 64;
constexpr int64_t aligned(int64_t offset) { return offset / kAlign * kAlign; }

// Calls body(group, lo, hi) on every thread's share [lo, hi) of every group's flat elements.
template <typename Body>
void for_each_share(const at::Tensor& x, at::IntArrayRef sizes, at::IntArrayRef codes,
                    const Body& body) {
  TORCH_CHECK(sizes.size() == codes.size(), "smartmixed: one code per group size");
  TORCH_CHECK(x.dim() >= 1 && x.is_contiguous(), "smartmixed: units-first contiguous input");
  int64_t rows = 0;
  for (int64_t s : sizes) rows += s;
  TORCH_CHECK(rows == x.size(0), "smartmixed: group sizes add up to ", rows, ", not ",
              x.size(0), " units");
  const int64_t row = rows ? x.numel() / rows : 0;
  const int64_t shares = std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(), x.numel() / kMinShare));
  at::parallel_for(0, shares, 1, [&](int64_t first, int64_t last) {
    // Worker threads start with autograd's default thread-local state: stay below it, as
    // the calling thread is inside this op.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t share = first; share < last; ++share) {
      int64_t start = 0;
      for (size_t g = 0; g < sizes.size(); ++g) {
        const int64_t n = sizes[g] * row;
        const int64_t lo = start + aligned(n * share / shares);
        const int64_t hi = start + (share + 1 == shares ? n : aligned(n * (share + 1) / shares));
        if (lo < hi) body(g, lo, hi);
        start += n;
      }
    }
  });
}

at::Tensor activate_groups_(at::Tensor x, at::IntArrayRef sizes, at::IntArrayRef codes) {
  at::Tensor flat = x.view(-1);
  for_each_share(x, sizes, codes, [&](size_t g, int64_t lo, int64_t hi) {
    activate(flat.slice(0, lo, hi), codes[g]);
  });
  return x;
}

at::Tensor grad_groups(const at::Tensor& grad, const at::Tensor& out, at::IntArrayRef sizes,
                       at::IntArrayRef codes) {
  TORCH_CHECK(grad.sizes() == out.sizes(), "smartmixed: grad and out differ in shape");
  at::Tensor grad_x = at::empty_like(out, at::MemoryFormat::Contiguous);
  at::Tensor g = grad.contiguous().view(-1), y = out.view(-1), gx = grad_x.view(-1);
  for_each_share(out, sizes, codes, [&](size_t k, int64_t lo, int64_t hi) {
    gradient(gx.slice(0, lo, hi), g.slice(0, lo, hi), y.slice(0, lo, hi), codes[k]);
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY(smartmixed, m) {
  m.def("activate_groups_(Tensor(a!) x, int[] sizes, int[] codes) -> Tensor(a!)");
  m.def("grad_groups(Tensor grad, Tensor out, int[] sizes, int[] codes) -> Tensor");
}

TORCH_LIBRARY_IMPL(smartmixed, CPU, m) {
  m.impl("activate_groups_", &activate_groups_);
  m.impl("grad_groups", &grad_groups);
}
