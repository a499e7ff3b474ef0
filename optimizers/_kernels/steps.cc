// One-pass optimizer steps for lists of float32 buffers on the CPU, as XLA FFI custom calls.
//
// XLA:CPU emits one loop per output of a jitted optimizer step (the param and
// each moment), each re-reading the gradient: Adam moves ~40 bytes per param
// where one pass needs 28, and pays a few microseconds per leaf. These kernels do
// the single pass, in place (the outputs alias the param and moment inputs), over a
// whole list of n float32 leaves of any sizes and shapes (scalars and empty leaves
// included) per call, in chunks shared by the calling thread and XLA's intra-op
// thread pool. optimizers/_fused.py holds the same formulas in jnp (used off the CPU,
// under vmap and for derivatives; optimizers/_multi.py makes the calls); tests check
// that both agree with float64 NumPy references.
//
// FnnAdamMultiF32 (coef, flags, g_1..g_n, p_1..p_n, m_1..m_n, v_1..v_n)
//   -> (p_1..p_n, m_1..m_n, v_1..v_n),
//   coef = [b1, 1 - b1, b2, 1 - b2, step, inv_sqrt_c2, eps, decay]; per leaf i:
//   m ← b1 m + (1 − b1) g;  v ← b2 v + (1 − b2) g²
//   p ← p − step · m / (√v · inv_sqrt_c2 + eps) − decay · flags[i] · p
//   (step = η / (1 − β₁ᵗ), inv_sqrt_c2 = 1 / √(1 − β₂ᵗ), decay = η λ for AdamW;
//   flags[i] is 1 where AdamW's weight decay applies to leaf i, 0 where a mask turns it off).
// FnnScaledMultiF32 (coef, flags, g.., p.., s..) -> (p.., s..), AdaGrad and RMSProp,
//   coef = [keep, add, lr, eps, eps_in_sqrt]:
//   s ← keep · s + add · g²;  p ← p − lr · g / (√s + eps)   (eps_in_sqrt: / √(s + eps)).
// FnnMomentumMultiF32 (coef, flags, g.., p.., u..) -> (p.., u..),
//   coef = [momentum, lr, nesterov]:
//   u ← momentum · u + g;  p ← p − lr · u   (nesterov: p ← p − lr · (g + momentum · u)).
// AdaGrad/RMSProp and Momentum have no decay term; their flags (n entries) are checked and
// otherwise unused, so that the three kernels share one operand layout.
// Where a denominator is 0 (eps = 0 and a gradient that was always 0) the quotient is
// 0, the limit, not 0/0 = NaN: the denominator is replaced by +inf (one select).
// FnnSumsF32 (x_1..x_n) -> f32[2]: [Σ x², Σ x · 0] over every element of every leaf, in
//   one parallel pass (global_norm and skip_nonfinite's test, optimizers/_sums.py). The
//   squares are summed in float32 lanes over at most 2 · kFlush / 8 elements, then in double;
//   the second entry is 0 when every element is finite and NaN otherwise.
// The leaves are read as one concatenated range of elements cut into equal chunks
// (a chunk may span leaf boundaries), so the intra-op thread pool shares the work
// by bytes, whatever the mix of leaf sizes. Each piece of a chunk that lies in one leaf
// runs the per-range function of its rule (AdamRange, ScaledRange, MomentumRange,
// SumsRange), so every element gets the same arithmetic wherever the chunks fall.

#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>
#include <algorithm>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kChunk = 1 << 16;  // elements per task: 256 KiB of each array

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

// In place (out == in) each element is read before it is written and no other
// element is touched, so the restrict promise holds element by element.
#define R __restrict__

// x, or +inf where x is 0, so that a / NonZero(x) is 0 there (see _fused.divide_or_zero).
inline float NonZero(float x) { return x == 0.0f ? INFINITY : x; }

void AdamRange(const float* R g, const float* R p, const float* R m, const float* R v,
               float* R p_out, float* R m_out, float* R v_out, int64_t n, const float* c) {
  const float b1 = c[0], k1 = c[1], b2 = c[2], k2 = c[3];
  const float step = c[4], inv_sqrt_c2 = c[5], eps = c[6], decay = c[7];
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i], pi = p[i];
    const float mi = b1 * m[i] + k1 * gi;
    const float vi = b2 * v[i] + k2 * gi * gi;
    m_out[i] = mi;
    v_out[i] = vi;
    p_out[i] = pi - step * (mi / NonZero(std::sqrt(vi) * inv_sqrt_c2 + eps)) - decay * pi;
  }
}

void ScaledRange(const float* R g, const float* R p, const float* R s, float* R p_out,
                 float* R s_out, int64_t n, const float* c) {
  const float keep = c[0], add = c[1], lr = c[2], eps = c[3];
  if (c[4] != 0.0f) {  // eps inside the square root (optax's convention)
    for (int64_t i = 0; i < n; ++i) {
      const float gi = g[i], si = keep * s[i] + add * gi * gi;
      s_out[i] = si;
      p_out[i] = p[i] - lr * (gi / NonZero(std::sqrt(si + eps)));
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const float gi = g[i], si = keep * s[i] + add * gi * gi;
      s_out[i] = si;
      p_out[i] = p[i] - lr * (gi / NonZero(std::sqrt(si) + eps));
    }
  }
}

void MomentumRange(const float* R g, const float* R p, const float* R u, float* R p_out,
                   float* R u_out, int64_t n, const float* c) {
  const float mu = c[0], lr = c[1];
  if (c[2] != 0.0f) {  // Nesterov
    for (int64_t i = 0; i < n; ++i) {
      const float gi = g[i], ui = mu * u[i] + gi;
      u_out[i] = ui;
      p_out[i] = p[i] - lr * (gi + mu * ui);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const float ui = mu * u[i] + g[i];
      u_out[i] = ui;
      p_out[i] = p[i] - lr * ui;
    }
  }
}

// Runs body(lo, len) over [0, n) in chunks, on the calling thread and the pool.
template <typename Body>
void Parallel(ffi::ThreadPool& pool, int64_t n, Body body) {
  struct Job {
    explicit Job(Body b) : body(std::move(b)) {}
    Body body;
    int64_t n = 0, chunks = 0;
    std::atomic<int64_t> next{0}, done{0};
    void Run() {  // claims chunks until none is left; any number of threads may call it
      for (int64_t c; (c = next.fetch_add(1)) < chunks;) {
        const int64_t lo = c * kChunk;
        body(lo, lo + kChunk < n ? kChunk : n - lo);
        done.fetch_add(1, std::memory_order_release);
      }
    }
  };
  // Shared with pool tasks that may start after this call returned (they then
  // find no chunk left), hence the shared_ptr.
  auto job = std::make_shared<Job>(std::move(body));
  job->n = n;
  job->chunks = (n + kChunk - 1) / kChunk;
  // The calling thread works too, so one helper fewer than the pool has threads
  // (measured: as many helpers as pool threads oversubscribe two cores, 4.4 vs 4.2 ms
  // for a 10M Adam step).
  int64_t helpers = pool.num_threads() - 1;
  if (helpers > job->chunks - 1) helpers = job->chunks - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([job] { job->Run(); });
  job->Run();
  // Wait for chunks still running on helpers; yield, so that on an oversubscribed machine
  // the helper we wait for gets the core instead of this thread spinning its time slice away.
  while (job->done.load(std::memory_order_acquire) < job->chunks) std::this_thread::yield();
}

// --------------------------------------------------------------------------- multi-tensor

// The leaves of one multi-tensor call: `inputs` arrays per leaf (g, p, then the
// moments) are read, the last `inputs - 1` of them (p and the moments) written.
struct Leaves {
  int64_t n = 0;                  // leaves
  int inputs = 0;                 // arrays read per leaf
  std::vector<const float*> in;   // in[a * n + i]: array a of leaf i
  std::vector<float*> out;        // out[a * n + i]: result a (p, moments) of leaf i
  std::vector<int64_t> start;     // leaf i holds elements [start[i], start[i + 1])
};

// Decodes and checks the variadic operands and results into `leaves`.
ffi::Error DecodeLeaves(const char* name, int inputs, size_t flags, ffi::RemainingArgs args,
                        ffi::RemainingRets rets, Leaves& leaves) {
  const size_t outputs = inputs - 1;
  const std::string who = std::string(name) + ": ";
  if (rets.size() % outputs != 0 || args.size() != rets.size() / outputs * inputs) {
    return ffi::Error::InvalidArgument(
        who + "expected " + std::to_string(inputs) + " arrays per leaf after coef and flags and " +
        std::to_string(outputs) + " results per leaf; got " + std::to_string(args.size()) +
        " and " + std::to_string(rets.size()));
  }
  const int64_t n = static_cast<int64_t>(rets.size() / outputs);
  if (flags != static_cast<size_t>(n)) {
    return ffi::Error::InvalidArgument(who + "flags must have one entry per leaf (" +
                                       std::to_string(n) + "), got " + std::to_string(flags));
  }
  leaves.n = n;
  leaves.inputs = inputs;
  leaves.in.assign(inputs * n, nullptr);
  leaves.out.assign(outputs * n, nullptr);
  leaves.start.assign(n + 1, 0);
  std::vector<size_t> sizes(n, 0);
  for (int a = 0; a < inputs; ++a) {
    for (int64_t i = 0; i < n; ++i) {
      auto buffer = args.get<F32>(a * n + i);
      if (!buffer.has_value()) {
        return ffi::Error::InvalidArgument(who + "operand " + std::to_string(2 + a * n + i) +
                                           " is not a float32 buffer");
      }
      const size_t size = buffer->element_count();
      if (a == 0) {
        sizes[i] = size;
      } else if (size != sizes[i]) {
        return ffi::Error::InvalidArgument(who + "the arrays of leaf " + std::to_string(i) +
                                           " must have one size");
      }
      leaves.in[a * n + i] = buffer->typed_data();
    }
  }
  for (size_t a = 0; a < outputs; ++a) {
    for (int64_t i = 0; i < n; ++i) {
      auto result = rets.get<F32>(a * n + i);
      if (!result.has_value() || (*result)->element_count() != sizes[i]) {
        return ffi::Error::InvalidArgument(who + "result " + std::to_string(a * n + i) +
                                           " must be a float32 buffer shaped like its leaf");
      }
      leaves.out[a * n + i] = (*result)->typed_data();
    }
  }
  for (int64_t i = 0; i < n; ++i) leaves.start[i + 1] = leaves.start[i] + sizes[i];
  return ffi::Error::Success();
}

// Runs step(leaf, offset, count) over every element of every leaf, in chunks of
// kChunk elements of the concatenated leaves (split across the pool by bytes).
template <typename Step>
void ParallelLeaves(ffi::ThreadPool& pool, const Leaves& leaves, Step step) {
  const int64_t* start = leaves.start.data();
  const int64_t n = leaves.n;
  Parallel(pool, start[n], [=](int64_t lo, int64_t len) {
    // The leaf holding element lo: the last i with start[i] <= lo (a non-empty leaf).
    int64_t i = std::upper_bound(start, start + n + 1, lo) - start - 1;
    for (; len > 0; ++i) {
      const int64_t take = std::min(len, start[i + 1] - lo);
      if (take > 0) step(i, lo - start[i], take);
      lo += take;
      len -= take;
    }
  });
}

ffi::Error AdamMulti(ffi::ThreadPool pool, F32 coef, F32 flags, ffi::RemainingArgs args,
                     ffi::RemainingRets rets) {
  if (coef.element_count() != 8) {
    return ffi::Error::InvalidArgument("fnn_adam_multi_f32: coef must have 8 entries");
  }
  Leaves leaves;
  ffi::Error error = DecodeLeaves("fnn_adam_multi_f32", 4, flags.element_count(), args, rets,
                                  leaves);
  if (error.failure()) return error;
  const int64_t n = leaves.n;
  // Leaf i's coefficients: coef with its decay scaled by flags[i].
  std::vector<float> coefs(8 * n);
  const float *c = coef.typed_data(), *f = flags.typed_data();
  for (int64_t i = 0; i < n; ++i) {
    std::copy(c, c + 8, coefs.data() + 8 * i);
    coefs[8 * i + 7] = c[7] * f[i];
  }
  const float* const* in = leaves.in.data();
  float* const* out = leaves.out.data();
  const float* cs = coefs.data();
  ParallelLeaves(pool, leaves, [=](int64_t i, int64_t o, int64_t len) {
    AdamRange(in[i] + o, in[n + i] + o, in[2 * n + i] + o, in[3 * n + i] + o, out[i] + o,
              out[n + i] + o, out[2 * n + i] + o, len, cs + 8 * i);
  });
  return ffi::Error::Success();
}

// Multi-tensor AdaGrad/RMSProp and Momentum: one moment, `coefs` scalars, `Range` per piece.
template <void (*Range)(const float*, const float*, const float*, float*, float*, int64_t,
                        const float*),
          int64_t coefs>
ffi::Error OneMomentMulti(ffi::ThreadPool pool, F32 coef, F32 flags, ffi::RemainingArgs args,
                          ffi::RemainingRets rets) {
  if (coef.element_count() != static_cast<size_t>(coefs)) {
    return ffi::Error::InvalidArgument("fnn one-moment multi step: coef must have the "
                                       "kernel's count of scalars");
  }
  Leaves leaves;
  ffi::Error error = DecodeLeaves("fnn one-moment multi step", 3, flags.element_count(), args,
                                  rets, leaves);
  if (error.failure()) return error;
  const int64_t n = leaves.n;
  const float* const* in = leaves.in.data();
  float* const* out = leaves.out.data();
  const float* c = coef.typed_data();
  ParallelLeaves(pool, leaves, [=](int64_t i, int64_t o, int64_t len) {
    Range(in[i] + o, in[n + i] + o, in[2 * n + i] + o, out[i] + o, out[n + i] + o, len, c);
  });
  return ffi::Error::Success();
}

// --------------------------------------------------------------------------- sums

// Eight float lanes (GCC/Clang vector extensions: AVX on x86, two NEON registers on ARM);
// written with plain arrays, GCC kept the lanes in memory and ran at half the bandwidth.
typedef float Lanes __attribute__((vector_size(32)));
constexpr int kStreams = 4;       // parts of a block read side by side (measured, one thread,
                                  // 10M elements: 1 stream 4.6 ms, 2: 3.6, 4: 3.1, 8: 3.1)
constexpr int64_t kFlush = 4096;  // elements per stream summed in float32 before the double total

// Adds Σ x² of x[0, n) to *squares and Σ x · 0 (0, or NaN if any x is not finite) to *zero.
void SumsRange(const float* R x, int64_t n, double* squares, float* zero) {
  for (int64_t lo = 0; lo < n; lo += kStreams * kFlush) {
    const float* R b = x + lo;
    const int64_t len = std::min(n - lo, kStreams * kFlush);
    const int64_t part = len / kStreams / 16 * 16;
    Lanes sq[kStreams] = {}, z[kStreams] = {};
    for (int64_t i = 0; i < part; i += 16) {
      for (int k = 0; k < kStreams; ++k) {
        Lanes u, v;
        std::memcpy(&u, b + k * part + i, sizeof u);  // unaligned loads
        std::memcpy(&v, b + k * part + i + 8, sizeof v);
        sq[k] += u * u + v * v;
        z[k] += u * 0.0f + v * 0.0f;
      }
    }
    float tail = 0.0f, zeros = 0.0f;
    for (int64_t i = kStreams * part; i < len; ++i) {
      tail += b[i] * b[i];
      zeros += b[i] * 0.0f;
    }
    double total = tail;
    for (int k = 0; k < kStreams; ++k) {
      for (int j = 0; j < 8; ++j) {
        total += sq[k][j];
        zeros += z[k][j];
      }
    }
    *squares += total;
    *zero += zeros;
  }
}

ffi::Error Sums(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::Result<F32> out) {
  if (out->element_count() != 2) {
    return ffi::Error::InvalidArgument("fnn_sums_f32: the result must have 2 entries");
  }
  Leaves leaves;
  leaves.n = static_cast<int64_t>(args.size());
  leaves.inputs = 1;
  leaves.in.assign(leaves.n, nullptr);
  leaves.start.assign(leaves.n + 1, 0);
  for (int64_t i = 0; i < leaves.n; ++i) {
    auto buffer = args.get<F32>(i);
    if (!buffer.has_value()) {
      return ffi::Error::InvalidArgument("fnn_sums_f32: operand " + std::to_string(i) +
                                         " is not a float32 buffer");
    }
    leaves.in[i] = buffer->typed_data();
    leaves.start[i + 1] = leaves.start[i] + static_cast<int64_t>(buffer->element_count());
  }
  // One slot per chunk: a chunk runs on one thread, so its pieces add to its slot in turn.
  const int64_t chunks = (leaves.start[leaves.n] + kChunk - 1) / kChunk;
  std::vector<double> squares(chunks, 0.0);
  std::vector<float> zeros(chunks, 0.0f);
  const float* const* in = leaves.in.data();
  const int64_t* start = leaves.start.data();
  double* sq = squares.data();
  float* z = zeros.data();
  ParallelLeaves(pool, leaves, [=](int64_t i, int64_t o, int64_t len) {
    const int64_t chunk = (start[i] + o) / kChunk;
    SumsRange(in[i] + o, len, sq + chunk, z + chunk);
  });
  double total = 0.0;
  float zero = 0.0f;
  for (int64_t c = 0; c < chunks; ++c) {
    total += squares[c];
    zero += zeros[c];
  }
  out->typed_data()[0] = static_cast<float>(total);
  out->typed_data()[1] = zero;
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FnnSumsF32, Sums,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().RemainingArgs().Ret<F32>());

#define FNN_MULTI_BINDING \
  ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>().RemainingArgs().RemainingRets()

XLA_FFI_DEFINE_HANDLER_SYMBOL(FnnAdamMultiF32, AdamMulti, FNN_MULTI_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(FnnScaledMultiF32, (OneMomentMulti<ScaledRange, 5>),
                              FNN_MULTI_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(FnnMomentumMultiF32, (OneMomentMulti<MomentumRange, 3>),
                              FNN_MULTI_BINDING);
