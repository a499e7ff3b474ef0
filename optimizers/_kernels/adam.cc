// One-pass Adam/AdamW step for float32 buffers on the CPU, an XLA FFI custom call.
//
// XLA:CPU emits one loop per output (p, m, v), each re-reading the gradient:
// about 40 bytes of memory traffic per param instead of the 28 a single pass
// needs (read g, p, m, v; write p, m, v). This kernel does the single pass,
// in place (the outputs alias p, m, v), split into chunks shared by the
// calling thread and XLA's intra-op thread pool.
//
// coef = [b1, 1 - b1, b2, 1 - b2, step, inv_sqrt_c2, eps, decay], computed by
// optimizers/_fused.py from the hyperparameters and the step count:
//   m ← b1 m + (1 − b1) g;  v ← b2 v + (1 − b2) g²
//   p ← p − step · m / (√v · inv_sqrt_c2 + eps) − decay · p
// with step = η / (1 − β₁ᵗ), inv_sqrt_c2 = 1 / √(1 − β₂ᵗ), decay = η λ (AdamW).
// optimizers/_fused.py holds the same formula in jnp (used off the CPU, under
// vmap and for derivatives); tests check that the two agree.

#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kChunk = 1 << 16;  // elements per task: 256 KiB of each array

void AdamRange(const float* __restrict__ g, const float* __restrict__ p,
               const float* __restrict__ m, const float* __restrict__ v,
               float* __restrict__ p_out, float* __restrict__ m_out, float* __restrict__ v_out,
               int64_t n, const float* c) {
  const float b1 = c[0], k1 = c[1], b2 = c[2], k2 = c[3];
  const float step = c[4], inv_sqrt_c2 = c[5], eps = c[6], decay = c[7];
  // In place (p_out == p, ...) each element is read before it is written and no
  // other element is touched, so the restrict promise holds element by element.
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i], pi = p[i];
    const float mi = b1 * m[i] + k1 * gi;
    const float vi = b2 * v[i] + k2 * gi * gi;
    m_out[i] = mi;
    v_out[i] = vi;
    p_out[i] = pi - step * mi / (std::sqrt(vi) * inv_sqrt_c2 + eps) - decay * pi;
  }
}

struct Job {
  const float *g, *p, *m, *v, *coef;
  float *p_out, *m_out, *v_out;
  int64_t n = 0, chunks = 0;
  std::atomic<int64_t> next{0}, done{0};

  // Claims chunks until none is left; any number of threads may call it.
  void Run() {
    for (int64_t c; (c = next.fetch_add(1)) < chunks;) {
      const int64_t lo = c * kChunk, len = (lo + kChunk < n ? kChunk : n - lo);
      AdamRange(g + lo, p + lo, m + lo, v + lo, p_out + lo, m_out + lo, v_out + lo, len, coef);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error AdamImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> p,
                    ffi::Buffer<ffi::F32> m, ffi::Buffer<ffi::F32> v,
                    ffi::Buffer<ffi::F32> coef, ffi::ResultBuffer<ffi::F32> p_out,
                    ffi::ResultBuffer<ffi::F32> m_out, ffi::ResultBuffer<ffi::F32> v_out) {
  const int64_t n = g.element_count();
  if (p.element_count() != n || m.element_count() != n || v.element_count() != n ||
      coef.element_count() != 8) {
    return ffi::Error::InvalidArgument("fnn_adam_f32: g, p, m, v must have equal sizes, coef 8");
  }
  // Shared with pool tasks that may start after this call returned (they then
  // find no chunk left), hence the shared_ptr.
  auto job = std::make_shared<Job>();
  job->g = g.typed_data();
  job->p = p.typed_data();
  job->m = m.typed_data();
  job->v = v.typed_data();
  job->coef = coef.typed_data();
  job->p_out = p_out->typed_data();
  job->m_out = m_out->typed_data();
  job->v_out = v_out->typed_data();
  job->n = n;
  job->chunks = (n + kChunk - 1) / kChunk;
  // The calling thread works too, so one helper fewer than the pool has threads
  // (measured: pool size helpers oversubscribe two cores, 4.4 vs 4.2 ms at 10M).
  int64_t helpers = pool.num_threads() - 1;
  if (helpers > job->chunks - 1) helpers = job->chunks - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([job] { job->Run(); });
  job->Run();
  while (job->done.load(std::memory_order_acquire) < job->chunks) {
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FnnAdamF32, AdamImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
