// CPU kernels of the selective layer (phase 1) in the MLP's units-first layout: a
// contiguous [units, batch] buffer, one row per unit.  Built by smartmixed_core/kernels.py for
// this machine's vector instructions (ATen's CPU_CAPABILITY); the activation codes are
// ActivationSpec.kernel in activations.py.
//
// select_forward / select_backward take each unit's choice.  Every row goes through its own
// activation in one vectorised loop (ATen's vector formulas), rows spread over ATen's
// threads; backward computes, in the same pass over a row, the input gradient and the row's
// sum of grad * act_k(x) for every pool member k (the gradient of the straight-through
// sample).  No sorting, no [K, units, batch] stack.  A row's values do not depend on the
// number of threads.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <vector>

namespace {

enum Code : int64_t { kRelu, kSigmoid, kTanh, kLeakyRelu, kElu, kSelu };
constexpr size_t kMaxPool = 6;  // one per code

constexpr double kLeakySlope = 0.01;  // the registry's leaky_relu
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kSeluScale = 1.0507009873554804934193349852946;

using at::vec::Vectorized;

// f on every vector of a row: whole vectors, then the short last one zero-filled.
template <typename T, typename F>
inline void each_vector(int64_t cols, const F& f) {
  using V = Vectorized<T>;
  int64_t i = 0;
  for (; i + V::size() <= cols; i += V::size()) f(i, V::size());
  if (i < cols) f(i, cols - i);
}

// The activations' constants as vectors.
template <typename T>
struct Constants {
  using V = Vectorized<T>;
  const V zero = V(T(0)), one = V(T(1)), slope = V(static_cast<T>(kLeakySlope));
  const V selu_neg = V(static_cast<T>(kSeluAlpha * kSeluScale));
  const V selu_pos = V(static_cast<T>(kSeluScale));
};

// Calls body(op) with op the vector form of activation `code` (ATen's vector formulas).
template <typename T, typename Body>
void with_activation(int64_t code, const Body& body) {
  using V = Vectorized<T>;
  const Constants<T> c;
  switch (code) {
    case kRelu: return body([=](V x) { return at::vec::maximum(x, c.zero); });
    case kSigmoid: return body([=](V x) { return (c.one + (c.zero - x).exp()).reciprocal(); });
    case kTanh: return body([=](V x) { return x.tanh(); });
    case kLeakyRelu: return body([=](V x) { return V::blendv(x * c.slope, x, x > c.zero); });
    case kElu: return body([=](V x) { return V::blendv(x.expm1(), x, x > c.zero); });
    case kSelu:
      return body([=](V x) {
        return V::blendv(x.expm1() * c.selu_neg, x * c.selu_pos, x > c.zero);
      });
  }
}

// Calls body(op) with op(g, y) the input gradient of activation `code` from its output y.
template <typename T, typename Body>
void with_gradient(int64_t code, const Body& body) {
  using V = Vectorized<T>;
  const Constants<T> c;
  switch (code) {
    case kRelu: return body([=](V g, V y) { return V::blendv(c.zero, g, y > c.zero); });
    case kSigmoid: return body([=](V g, V y) { return g * (c.one - y) * y; });
    case kTanh: return body([=](V g, V y) { return g * (c.one - y * y); });
    case kLeakyRelu: return body([=](V g, V y) { return V::blendv(g * c.slope, g, y > c.zero); });
    case kElu: return body([=](V g, V y) { return V::blendv(g * (y + c.one), g, y > c.zero); });
    case kSelu:
      return body([=](V g, V y) {
        return V::blendv(g * (y + c.selu_neg), g * c.selu_pos, y > c.zero);
      });
  }
}

// The candidate sums' basis: every pool member is a combination of
//   pos = max(x, 0), neg = min(x, 0), em1 = expm1(min(x, 0)), sigmoid(x), tanh(x),
// (leaky = pos + 0.01 neg, elu = pos + em1, selu = scale (pos + alpha em1)).  All three
// transcendental ones come from one e = exp(-|x|): em1 = e - 1 for x < 0,
// sigmoid = 1 / (1 + e) or e / (1 + e), tanh = +-(1 - e^2) / (1 + e^2).  These sums are the
// logits' gradient only; their terms are exact to a few units of the last place of 1
// (about 1e-7 in float32), where the accurate forms would cost several times more.
constexpr int kBasis = 5;

template <typename T>
inline void basis(Vectorized<T> x, Vectorized<T>* b) {
  using V = Vectorized<T>;
  const V zero = V(T(0)), one = V(T(1));
  const V nonneg = x >= zero;
  const V e = (zero - x.abs()).exp();
  const V r = (one + e).reciprocal();
  const V e2 = e * e;
  const V t = (one - e2) / (one + e2);
  b[0] = at::vec::maximum(x, zero);
  b[1] = at::vec::minimum(x, zero);
  b[2] = V::blendv(e - one, zero, nonneg);
  b[3] = V::blendv(e * r, r, nonneg);
  b[4] = V::blendv(zero - t, t, nonneg);
}

// Row of pool member k's sum from the basis sums s (pos, neg, em1, sigmoid, tanh).
template <typename T>
T member_sum(int64_t code, const std::array<T, kBasis>& s) {
  switch (code) {
    case kRelu: return s[0];
    case kSigmoid: return s[3];
    case kTanh: return s[4];
    case kLeakyRelu: return s[0] + T(kLeakySlope) * s[1];
    case kElu: return s[0] + s[2];
    case kSelu: return T(kSeluScale) * (s[0] + T(kSeluAlpha) * s[2]);
  }
  return T(0);
}

// Rows per task: about 8192 elements, so small layers stay on one thread.
int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(cols, 1)); }

std::vector<int64_t> checked_pool(at::IntArrayRef codes) {
  TORCH_CHECK(!codes.empty() && codes.size() <= kMaxPool, "smartmixed: 1 to 6 pool members");
  for (int64_t c : codes) {
    TORCH_CHECK(c >= kRelu && c <= kSelu, "smartmixed: no kernel for activation code ", c);
  }
  return {codes.begin(), codes.end()};
}

// The codes of each row's chosen activation.
std::vector<int64_t> row_codes(const at::Tensor& choice, const at::Tensor& x,
                               const std::vector<int64_t>& pool) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "smartmixed: [units, batch] contiguous input");
  TORCH_CHECK(choice.dim() == 1 && choice.size(0) == x.size(0),
              "smartmixed: one choice per unit (row)");
  const at::Tensor c = choice.to(at::kLong).contiguous();
  const int64_t* cp = c.data_ptr<int64_t>();
  std::vector<int64_t> codes(x.size(0));
  for (size_t r = 0; r < codes.size(); ++r) {
    TORCH_CHECK(cp[r] >= 0 && cp[r] < static_cast<int64_t>(pool.size()),
                "smartmixed: choice ", cp[r], " outside the pool");
    codes[r] = pool[cp[r]];
  }
  return codes;
}

at::Tensor select_forward(const at::Tensor& x, const at::Tensor& choice, at::IntArrayRef codes) {
  const std::vector<int64_t> pool = checked_pool(codes);
  const std::vector<int64_t> code = row_codes(choice, x, pool);
  at::Tensor out = at::empty_like(x);
  const int64_t cols = x.size(1);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "smartmixed_select_forward", [&] {
    using V = Vectorized<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, x.size(0), row_grain(cols), [&](int64_t first, int64_t last) {
      for (int64_t r = first; r < last; ++r) {
        const scalar_t* src = xp + r * cols;
        scalar_t* dst = op + r * cols;
        with_activation<scalar_t>(code[r], [&](const auto& f) {
          each_vector<scalar_t>(cols, [&](int64_t i, int64_t n) {
            f(V::loadu(src + i, n)).store(dst + i, n);
          });
        });
      }
    });
  });
  return out;
}

// (grad_x, sums): the input gradient through each unit's chosen activation (from the saved
// output) and sums[u, k] = sum over the batch of grad[u, b] * act_k(x[u, b]).
std::tuple<at::Tensor, at::Tensor> select_backward(const at::Tensor& grad_in, const at::Tensor& x,
                                                   const at::Tensor& out, const at::Tensor& choice,
                                                   at::IntArrayRef codes) {
  const std::vector<int64_t> pool = checked_pool(codes);
  const std::vector<int64_t> code = row_codes(choice, x, pool);
  TORCH_CHECK(grad_in.sizes() == x.sizes() && out.sizes() == x.sizes() && out.is_contiguous(),
              "smartmixed: grad, x and out of one shape");
  const at::Tensor grad = grad_in.contiguous();
  const int64_t cols = x.size(1), k = pool.size();
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor sums = at::empty({x.size(0), k}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "smartmixed_select_backward", [&] {
    using V = Vectorized<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* yp = out.data_ptr<scalar_t>();
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.data_ptr<scalar_t>();
    scalar_t* sp = sums.data_ptr<scalar_t>();
    at::parallel_for(0, x.size(0), row_grain(cols), [&](int64_t first, int64_t last) {
      for (int64_t r = first; r < last; ++r) {
        const int64_t off = r * cols;
        std::array<V, kBasis> acc, b;
        acc.fill(V(scalar_t(0)));
        with_gradient<scalar_t>(code[r], [&](const auto& df) {
          each_vector<scalar_t>(cols, [&](int64_t i, int64_t n) {
            // A short last vector is zero-filled: zero gradients add nothing to the sums.
            const V g = V::loadu(gp + off + i, n);
            df(g, V::loadu(yp + off + i, n)).store(gxp + off + i, n);
            basis<scalar_t>(V::loadu(xp + off + i, n), b.data());
            for (int j = 0; j < kBasis; ++j) acc[j] = at::vec::fmadd(g, b[j], acc[j]);
          });
        });
        std::array<scalar_t, kBasis> s;
        for (int j = 0; j < kBasis; ++j) {  // lanes summed in a fixed order: reproducible
          std::array<scalar_t, V::size()> lanes;
          acc[j].store(lanes.data());
          s[j] = 0;
          for (scalar_t lane : lanes) s[j] += lane;
        }
        for (int64_t j = 0; j < k; ++j) sp[r * k + j] = member_sum<scalar_t>(pool[j], s);
      }
    });
  });
  return {grad_x, sums};
}

}  // namespace

TORCH_LIBRARY(smartmixed, m) {
  m.def("select_forward(Tensor x, Tensor choice, int[] codes) -> Tensor");
  m.def("select_backward(Tensor grad, Tensor x, Tensor out, Tensor choice, int[] codes)"
        " -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(smartmixed, CPU, m) {
  m.impl("select_forward", &select_forward);
  m.impl("select_backward", &select_backward);
}
