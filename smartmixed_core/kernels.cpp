// CPU kernels of the selective (phase 1) and mixed (phase 2) layers in the MLP's units-first
// layout: a contiguous [units, batch] buffer, one row per unit.  Built by
// smartmixed_core/kernels.py for this machine's vector instructions (ATen's CPU_CAPABILITY);
// the activation codes are ActivationSpec.kernel in activations.py.
//
// select_forward / select_backward take each unit's choice.  Every row goes through its own
// activation in one vectorised loop, rows spread over ATen's threads; backward computes, in
// the same pass over a row, the input gradient and the row's sum of grad * act_k(x) for every
// pool member k (the gradient of the straight-through sample).  No sorting, no
// [K, units, batch] stack.  groups_forward / groups_backward do the same for a mixed layer's
// contiguous groups of rows (the layer's bias added on the way in), all groups in one pass
// each way, with the backward pass registered for autograd here.  A row's values do not depend on the number of threads.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>
#include <type_traits>
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

// Fast, accurate float32 forms of the transcendental activations.  ATen's vector exp, expm1
// and tanh are Sleef's (about 2 ns per element here, in double-float arithmetic); these cost
// a fraction of that with errors of a few units in the last place (tested against float64
// references).  Every exp they need has a non-positive argument.  float64 keeps ATen's forms.

// exp(x) - 1 and exp(x) for x <= 0, from x = n ln2 + r with |r| <= ln2 / 2 (ln2 in two
// parts; n ln2's first part is exact): m = expm1(r) by its Taylor polynomial to degree 8 (the
// rest is below 2e-9 relative), then expm1(x) = 2^n m + (2^n - 1), exp(x) = 2^n m + 2^n, with
// 2^n from its exponent bits.  For n = 0 that is m itself, so expm1 keeps its relative
// accuracy near 0; elsewhere |expm1(x)| > 0.29 and one fused rounding follows.  Below
// ln(FLT_MIN) (where 2^n would be subnormal) expm1 is -1 and exp is flushed to 0.
constexpr float kLogFloatMin = -87.33654f;
struct Pow2Expm1 {
  Vectorized<float> scale, m;  // 2^n, expm1(r)
};

inline Pow2Expm1 split_exp(Vectorized<float> x) {
  using V = Vectorized<float>;
  x = at::vec::maximum(x, V(kLogFloatMin));
  const V n = (x * V(1.44269504f)).round();
  const V r = at::vec::fmadd(n, V(-1.42860677e-6f), at::vec::fmadd(n, V(-0.693145752f), x));
  V p = V(1.0f / 40320);
  for (float c : {1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f}) {
    p = at::vec::fmadd(p, r, V(c));
  }
  const auto bits = at::vec::convert_to_int_of_same_size(n + V(127.0f)) << Vectorized<int32_t>(23);
  return {at::vec::cast<float>(bits), at::vec::fmadd(p, r * r, r)};
}

template <typename T>
inline Vectorized<T> exp_nonpos(Vectorized<T> x) {
  if constexpr (!std::is_same_v<T, float>) {
    return x.exp();
  } else {
    const Pow2Expm1 e = split_exp(x);
    const Vectorized<float> zero(0.0f);
    return Vectorized<float>::blendv(at::vec::fmadd(e.scale, e.m, e.scale), zero,
                                     x < Vectorized<float>(kLogFloatMin));
  }
}

template <typename T>
inline Vectorized<T> expm1_nonpos(Vectorized<T> x) {
  if constexpr (!std::is_same_v<T, float>) {
    return x.expm1();
  } else {
    const Pow2Expm1 e = split_exp(x);
    return at::vec::fmadd(e.scale, e.m, e.scale - Vectorized<float>(1.0f));
  }
}

// sigmoid(x) = 1 / (1 + e) for x >= 0, e / (1 + e) below, with e = exp(-|x|).
template <typename T>
inline Vectorized<T> sigmoid(Vectorized<T> x) {
  using V = Vectorized<T>;
  if constexpr (!std::is_same_v<T, float>) {
    return (V(T(1)) + (V(T(0)) - x).exp()).reciprocal();
  } else {
    const V e = exp_nonpos(V(0.0f) - x.abs());
    const V r = (V(1.0f) + e).reciprocal();
    return V::blendv(e * r, r, x >= V(0.0f));
  }
}

// tanh(x) = -m / (2 + m) with m = expm1(-2 |x|), sign restored.
template <typename T>
inline Vectorized<T> tanh(Vectorized<T> x) {
  using V = Vectorized<T>;
  if constexpr (!std::is_same_v<T, float>) {
    return x.tanh();
  } else {
    const V m = expm1_nonpos(V(-2.0f) * x.abs());
    const V t = (V(0.0f) - m) / (V(2.0f) + m);
    return V::blendv(V(0.0f) - t, t, x >= V(0.0f));
  }
}

// Calls body(op) with op the vector form of activation `code` (the forms above).
template <typename T, typename Body>
void with_activation(int64_t code, const Body& body) {
  using V = Vectorized<T>;
  const Constants<T> c;
  switch (code) {
    case kRelu: return body([=](V x) { return at::vec::maximum(x, c.zero); });
    case kSigmoid: return body([=](V x) { return sigmoid(x); });
    case kTanh: return body([=](V x) { return tanh(x); });
    case kLeakyRelu: return body([=](V x) { return V::blendv(x * c.slope, x, x > c.zero); });
    case kElu: return body([=](V x) { return V::blendv(expm1_nonpos(at::vec::minimum(x, c.zero)), x, x > c.zero); });
    case kSelu:
      return body([=](V x) {
        return V::blendv(expm1_nonpos(at::vec::minimum(x, c.zero)) * c.selu_neg, x * c.selu_pos, x > c.zero);
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
  const V e = exp_nonpos(zero - x.abs());
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

// The sum of a vector's lanes in a fixed order: reproducible whatever the thread.
template <typename T>
T lane_sum(const Vectorized<T>& v) {
  std::array<T, Vectorized<T>::size()> lanes;
  v.store(lanes.data());
  T sum = 0;
  for (T lane : lanes) sum += lane;
  return sum;
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

// Row r of src ([rows, cols], contiguous), plus bias[r] when a bias is given, through
// activation code[r] into dst, which may be src itself.
void rows_forward(const at::Tensor& src, const at::Tensor& dst, const std::vector<int64_t>& code,
                  const std::optional<at::Tensor>& bias = std::nullopt) {
  const int64_t cols = src.size(1);
  at::Tensor b;
  if (bias.has_value()) {
    b = bias->contiguous();
    TORCH_CHECK(b.dim() == 1 && b.size(0) == src.size(0) && b.scalar_type() == src.scalar_type(),
                "smartmixed: one bias per unit (row), of the input's dtype");
  }
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "smartmixed_rows_forward", [&] {
    using V = Vectorized<scalar_t>;
    const scalar_t* xp = src.data_ptr<scalar_t>();
    const scalar_t* bp = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    scalar_t* op = dst.data_ptr<scalar_t>();
    at::parallel_for(0, src.size(0), row_grain(cols), [&](int64_t first, int64_t last) {
      for (int64_t r = first; r < last; ++r) {
        const scalar_t* in = xp + r * cols;
        scalar_t* out = op + r * cols;
        with_activation<scalar_t>(code[r], [&](const auto& f) {
          if (bp == nullptr) {
            each_vector<scalar_t>(cols, [&](int64_t i, int64_t n) {
              f(V::loadu(in + i, n)).store(out + i, n);
            });
          } else {
            const V shift(bp[r]);
            each_vector<scalar_t>(cols, [&](int64_t i, int64_t n) {
              f(V::loadu(in + i, n) + shift).store(out + i, n);
            });
          }
        });
      }
    });
  });
}

at::Tensor select_forward(const at::Tensor& x, const at::Tensor& choice, at::IntArrayRef codes) {
  const std::vector<int64_t> pool = checked_pool(codes);
  at::Tensor out = at::empty_like(x);
  rows_forward(x, out, row_codes(choice, x, pool));
  return out;
}

// The codes of each row of x when contiguous blocks of sizes[g] rows use codes[g] (a mixed
// layer's activation groups).
std::vector<int64_t> group_codes(const at::Tensor& x, at::IntArrayRef sizes,
                                 at::IntArrayRef codes) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "smartmixed: [units, batch] contiguous input");
  TORCH_CHECK(sizes.size() == codes.size(), "smartmixed: one code per group size");
  std::vector<int64_t> code;
  code.reserve(x.size(0));
  for (size_t g = 0; g < sizes.size(); ++g) {
    TORCH_CHECK(codes[g] >= kRelu && codes[g] <= kSelu, "smartmixed: no kernel for activation code ",
                codes[g]);
    TORCH_CHECK(sizes[g] >= 0, "smartmixed: negative group size");
    code.insert(code.end(), sizes[g], codes[g]);
  }
  TORCH_CHECK(static_cast<int64_t>(code.size()) == x.size(0), "smartmixed: group sizes add up to ",
              code.size(), ", not ", x.size(0), " units");
  return code;
}

at::Tensor groups_forward(const at::Tensor& x, const std::optional<at::Tensor>& bias,
                          at::IntArrayRef sizes, at::IntArrayRef codes) {
  at::Tensor out = at::empty_like(x);
  rows_forward(x, out, group_codes(x, sizes, codes), bias);
  return out;
}

at::Tensor& groups_forward_(at::Tensor& x, const std::optional<at::Tensor>& bias,
                            at::IntArrayRef sizes, at::IntArrayRef codes) {
  rows_forward(x, x, group_codes(x, sizes, codes), bias);
  return x;
}

// (grad_x, grad_bias): the input gradient of groups_forward from its output, and its sum
// over each row (the bias's gradient), in one pass.
std::tuple<at::Tensor, at::Tensor> groups_backward(const at::Tensor& grad_in,
                                                   const at::Tensor& out, at::IntArrayRef sizes,
                                                   at::IntArrayRef codes) {
  const std::vector<int64_t> code = group_codes(out, sizes, codes);
  TORCH_CHECK(grad_in.sizes() == out.sizes(), "smartmixed: grad and out of one shape");
  const at::Tensor grad = grad_in.contiguous();
  at::Tensor grad_x = at::empty_like(out);
  at::Tensor grad_bias = at::empty({out.size(0)}, out.options());
  const int64_t cols = out.size(1);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "smartmixed_groups_backward", [&] {
    using V = Vectorized<scalar_t>;
    const scalar_t* yp = out.data_ptr<scalar_t>();
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.data_ptr<scalar_t>();
    scalar_t* gbp = grad_bias.data_ptr<scalar_t>();
    at::parallel_for(0, out.size(0), row_grain(cols), [&](int64_t first, int64_t last) {
      for (int64_t r = first; r < last; ++r) {
        const int64_t off = r * cols;
        V acc(scalar_t(0));
        with_gradient<scalar_t>(code[r], [&](const auto& df) {
          each_vector<scalar_t>(cols, [&](int64_t i, int64_t n) {
            // A short last vector is zero-filled: zero gradients add nothing to the sum.
            const V gx = df(V::loadu(gp + off + i, n), V::loadu(yp + off + i, n));
            gx.store(gxp + off + i, n);
            acc = acc + gx;
          });
        });
        gbp[r] = lane_sum(acc);
      }
    });
  });
  return {grad_x, grad_bias};
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
        for (int j = 0; j < kBasis; ++j) s[j] = lane_sum(acc[j]);
        for (int64_t j = 0; j < k; ++j) sp[r * k + j] = member_sum<scalar_t>(pool[j], s);
      }
    });
  });
  return {grad_x, sums};
}

// groups_forward as an autograd node written in C++: the backward pass calls groups_backward
// on the saved output without going through Python (a Python autograd.Function costs tens
// of microseconds per layer and step, a few percent of a small net's train step).
class Groups : public torch::autograd::Function<Groups> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const std::optional<at::Tensor>& bias, std::vector<int64_t> sizes,
                            std::vector<int64_t> codes) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor out = groups_forward(x, bias, sizes, codes);
    ctx->save_for_backward({out});
    ctx->saved_data["sizes"] = std::move(sizes);
    ctx->saved_data["codes"] = std::move(codes);
    ctx->saved_data["bias"] = bias.has_value();
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor out = ctx->get_saved_variables()[0];
    auto [grad_x, grad_bias] = groups_backward(grads[0], out,
                                               ctx->saved_data["sizes"].toIntVector(),
                                               ctx->saved_data["codes"].toIntVector());
    if (!ctx->saved_data["bias"].toBool()) grad_bias = at::Tensor();
    return {grad_x, grad_bias, at::Tensor(), at::Tensor()};
  }
};

at::Tensor groups_forward_autograd(const at::Tensor& x, const std::optional<at::Tensor>& bias,
                                   at::IntArrayRef sizes, at::IntArrayRef codes) {
  return Groups::apply(x, bias, sizes.vec(), codes.vec());
}

}  // namespace

TORCH_LIBRARY(smartmixed, m) {
  m.def("select_forward(Tensor x, Tensor choice, int[] codes) -> Tensor");
  m.def("select_backward(Tensor grad, Tensor x, Tensor out, Tensor choice, int[] codes)"
        " -> (Tensor, Tensor)");
  m.def("groups_forward(Tensor x, Tensor? bias, int[] sizes, int[] codes) -> Tensor");
  m.def("groups_forward_(Tensor(a!) x, Tensor? bias, int[] sizes, int[] codes) -> Tensor(a!)");
  m.def("groups_backward(Tensor grad, Tensor out, int[] sizes, int[] codes)"
        " -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(smartmixed, CPU, m) {
  m.impl("select_forward", &select_forward);
  m.impl("select_backward", &select_backward);
  m.impl("groups_forward", &groups_forward);
  m.impl("groups_forward_", &groups_forward_);
  m.impl("groups_backward", &groups_backward);
}

TORCH_LIBRARY_IMPL(smartmixed, Autograd, m) {
  m.impl("groups_forward", &groups_forward_autograd);
}
