// The elementwise steps between the quantized matmuls of a decoder layer, one C++ loop each.
//
// In PyTorch each is five to eight small ops (an RMS norm: a cast, a square, a mean, an add, a
// reciprocal square root, two products and a cast back), and on a decode step of one token their
// dispatch costs more than their arithmetic. Every output element depends only on its own row,
// in a fixed order, so results do not depend on the batch. float32 and bfloat16 inputs.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

namespace {

constexpr int64_t kRowsPerTask = 16;  // rows per thread task: one token's rows stay on one thread
constexpr int64_t kLanes = 16;        // partial sums of a row's squares

template <typename T>
inline float load(const T* p, int64_t i) {
  return static_cast<float>(p[i]);
}

// rms_norm(x, w) = w · dtype(x / sqrt(mean(x²) + eps)), the normalisation in float32 (as the
// reference implementations), the scaling in x's dtype.
template <typename T>
void rms_norm_rows(const T* x, const T* w, T* out, int64_t rows, int64_t h, float eps) {
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * h;
      T* yr = out + r * h;
      float part[kLanes] = {};  // independent partial sums, added in a fixed order
      int64_t i = 0;
      for (; i + kLanes <= h; i += kLanes) {
        for (int64_t l = 0; l < kLanes; ++l) part[l] += load(xr, i + l) * load(xr, i + l);
      }
      for (; i < h; ++i) part[0] += load(xr, i) * load(xr, i);
      float sum = 0.f;
      for (int64_t l = 0; l < kLanes; ++l) sum += part[l];
      const float inv = 1.f / std::sqrt(sum / static_cast<float>(h) + eps);
      for (i = 0; i < h; ++i) {
        const T normed = static_cast<T>(load(xr, i) * inv);
        yr[i] = static_cast<T>(load(w, i) * static_cast<float>(normed));
      }
    }
  });
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const int64_t h = x.size(-1);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == h, "rms_norm: weight must be [", h, "]");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "rms_norm: x and weight must share a dtype");
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  at::Tensor out = at::empty_like(xc);
  const int64_t rows = h ? xc.numel() / h : 0;
  if (x.scalar_type() == at::kFloat) {
    rms_norm_rows(xc.data_ptr<float>(), wc.data_ptr<float>(), out.data_ptr<float>(), rows, h, static_cast<float>(eps));
  } else {
    TORCH_CHECK(x.scalar_type() == at::kBFloat16, "rms_norm: float32 or bfloat16, not ", x.scalar_type());
    rms_norm_rows(xc.data_ptr<at::BFloat16>(), wc.data_ptr<at::BFloat16>(), out.data_ptr<at::BFloat16>(), rows, h,
                  static_cast<float>(eps));
  }
  return out;
}

// Rotary embedding by half-split pairs (the HF convention): with x = (x1, x2),
// out = (x1·cos − x2·sin, x2·cos + x1·sin), each product and the sum rounded to x's dtype as
// PyTorch's x·cos + rotate_half(x)·sin rounds them. x [B, heads, T, hd] in any strides (a view
// of the QKV output); cos, sin [B, 1, T, hd]. Returns [B, heads, T, hd], contiguous.
template <typename T>
void rotate(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& out) {
  const int64_t b = x.size(0), heads = x.size(1), t = x.size(2), hd = x.size(3), half = hd / 2;
  const T* xp = x.data_ptr<T>();
  const T* cp = cos.data_ptr<T>();
  const T* sp = sin.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t sb = x.stride(0), sh = x.stride(1), st = x.stride(2), se = x.stride(3);
  at::parallel_for(0, b * heads * t, kRowsPerTask, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t bi = r / (heads * t), hi = r / t % heads, ti = r % t;
      const T* xr = xp + bi * sb + hi * sh + ti * st;
      const T* cr = cp + (bi * t + ti) * hd;
      const T* sr = sp + (bi * t + ti) * hd;
      T* yr = op + r * hd;
      for (int64_t i = 0; i < hd; ++i) {
        const float other = i < half ? -load(xr, (i + half) * se) : load(xr, (i - half) * se);
        const T a = static_cast<T>(load(xr, i * se) * load(cr, i));
        const T c = static_cast<T>(static_cast<float>(static_cast<T>(other)) * load(sr, i));
        yr[i] = static_cast<T>(static_cast<float>(a) + static_cast<float>(c));
      }
    }
  });
}

at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(x.dim() == 4 && x.size(3) % 2 == 0, "rotary: x must be [B, heads, T, even head_dim]");
  TORCH_CHECK(cos.dim() == 4 && cos.size(0) == x.size(0) && cos.size(1) == 1 && cos.size(2) == x.size(2) &&
                  cos.size(3) == x.size(3) && sin.sizes() == cos.sizes(),
              "rotary: cos and sin must be [B, 1, T, head_dim]");
  TORCH_CHECK(x.scalar_type() == cos.scalar_type() && x.scalar_type() == sin.scalar_type(),
              "rotary: x, cos and sin must share a dtype");
  const at::Tensor cc = cos.contiguous(), sc = sin.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  if (x.scalar_type() == at::kFloat) {
    rotate<float>(x, cc, sc, out);
  } else {
    TORCH_CHECK(x.scalar_type() == at::kBFloat16, "rotary: float32 or bfloat16, not ", x.scalar_type());
    rotate<at::BFloat16>(x, cc, sc, out);
  }
  return out;
}

// k and v [B, kv_heads, T, hd] (any strides: views of the QKV output) into rows 0..B-1 of a
// layer's cache [rows, kv_heads, capacity, hd] at slots [B, T]: what KVCache.write does with
// advanced indexing, without building index tensors.
void kv_write(at::Tensor cache_k, at::Tensor cache_v, const at::Tensor& slots, const at::Tensor& k,
              const at::Tensor& v) {
  TORCH_CHECK(cache_k.dim() == 4 && cache_k.sizes() == cache_v.sizes() && cache_k.is_contiguous() &&
                  cache_v.is_contiguous(), "kv_write: caches must be matching contiguous [rows, heads, capacity, hd]");
  TORCH_CHECK(k.dim() == 4 && k.sizes() == v.sizes(), "kv_write: k and v must be matching [B, heads, T, hd]");
  const int64_t b = k.size(0), heads = k.size(1), t = k.size(2), hd = k.size(3), cap = cache_k.size(2);
  TORCH_CHECK(b <= cache_k.size(0) && heads == cache_k.size(1) && hd == cache_k.size(3),
              "kv_write: k and v do not fit the cache");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.dim() == 2 && slots.size(0) == b && slots.size(1) == t,
              "kv_write: slots must be int64 [B, T]");
  TORCH_CHECK(k.scalar_type() == cache_k.scalar_type() && v.scalar_type() == cache_k.scalar_type(),
              "kv_write: k, v and the cache must share a dtype");
  const at::Tensor sl = slots.contiguous();
  const int64_t* sp = sl.data_ptr<int64_t>();
  for (int64_t i = 0; i < b * t; ++i) {
    TORCH_CHECK(sp[i] >= 0 && sp[i] < cap, "kv_write: slot ", sp[i], " is outside the cache's ", cap, " slots");
  }
  const int64_t item = cache_k.element_size();
  for (const auto& [src, dst] : {std::pair<const at::Tensor&, at::Tensor&>{k, cache_k}, {v, cache_v}}) {
    const char* from = static_cast<const char*>(src.data_ptr());
    char* to = static_cast<char*>(dst.data_ptr());
    const int64_t s0 = src.stride(0), s1 = src.stride(1), s2 = src.stride(2), s3 = src.stride(3);
    for (int64_t bi = 0; bi < b; ++bi) {
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t ti = 0; ti < t; ++ti) {
          const char* row = from + (bi * s0 + h * s1 + ti * s2) * item;
          char* slot = to + (((bi * heads + h) * cap + sp[bi * t + ti]) * hd) * item;
          if (s3 == 1) {
            std::memcpy(slot, row, hd * item);
          } else {
            for (int64_t e = 0; e < hd; ++e) std::memcpy(slot + e * item, row + e * s3 * item, item);
          }
        }
      }
    }
  }
}

}  // namespace

TORCH_LIBRARY(saguaro_glue, m) {
  m.def("rms_norm", &rms_norm);
  m.def("rotary", &rotary);
  m.def("kv_write(Tensor(a!) cache_k, Tensor(b!) cache_v, Tensor slots, Tensor k, Tensor v) -> ()", &kv_write);
}
