// Elementwise kernels: one thread per element of a C-contiguous array of `total` elements.

// Dense and convolution layers: y = z + b with b broadcast along the last axis of z (M, O),
// then ReLU when relu != 0 -- one pass over memory instead of two.
template <typename T>
__global__ void bias_activation(const T* z, const T* b, T* y, long long O, int relu,
                                long long total)
{
    for (long long t = first_index(); t < total; t += grid_stride()) {
        const T v = z[t] + b[t % O];
        // v <= 0, not v < 0: -0.0 becomes +0.0 and NaN passes through, as in maximum(v, 0)
        y[t] = (relu && v <= T(0)) ? T(0) : v;
    }
}

// dz = dy * [y > 0], written as a product (not a select) so that NaN and the sign of zero come
// out exactly as base.py's `dy * (y > 0)`.
template <typename T>
__global__ void relu_backward(const T* dy, const T* y, T* dz, long long total)
{
    for (long long t = first_index(); t < total; t += grid_stride()) {
        dz[t] = dy[t] * T(y[t] > T(0));
    }
}

// The optimizer updates come in two forms that share one body per element (the *_at
// functions): the plain kernels take the learning rate (and Adam's bias corrections) as
// arguments; the *_device_scalars kernels read them from a small device array instead, so a
// CUDA graph that captured the launch picks up a new rate at every replay (an argument would
// be frozen into the graph). See cnnx/graph.py.

// SGD with momentum, in place (PyTorch's convention, as base.py):
//   g' = g + wd*w;  v = mu*v + g';  w -= lr*v
template <typename T>
__device__ __forceinline__ void sgd_momentum_at(long long t, T* w, const T* g, T* v, T lr,
                                                T mu, T wd)
{
    const T grad = wd != T(0) ? g[t] + wd * w[t] : g[t];
    const T vel = mu * v[t] + grad;
    v[t] = vel;
    w[t] -= lr * vel;
}

template <typename T>
__global__ void sgd_momentum(T* w, const T* g, T* v, T lr, T mu, T wd, long long total)
{
    for (long long t = first_index(); t < total; t += grid_stride()) {
        sgd_momentum_at(t, w, g, v, lr, mu, wd);
    }
}

// scalars = {lr}
template <typename T>
__global__ void sgd_momentum_device_scalars(T* w, const T* g, T* v, const T* scalars, T mu,
                                            T wd, long long total)
{
    const T lr = scalars[0];
    for (long long t = first_index(); t < total; t += grid_stride()) {
        sgd_momentum_at(t, w, g, v, lr, mu, wd);
    }
}

// Plain SGD (momentum 0, so no velocity buffer): w -= lr * (g + wd*w).
template <typename T>
__device__ __forceinline__ void sgd_plain_at(long long t, T* w, const T* g, T lr, T wd)
{
    const T grad = wd != T(0) ? g[t] + wd * w[t] : g[t];
    w[t] -= lr * grad;
}

template <typename T>
__global__ void sgd_plain(T* w, const T* g, T lr, T wd, long long total)
{
    for (long long t = first_index(); t < total; t += grid_stride()) {
        sgd_plain_at(t, w, g, lr, wd);
    }
}

// scalars = {lr}
template <typename T>
__global__ void sgd_plain_device_scalars(T* w, const T* g, const T* scalars, T wd,
                                         long long total)
{
    const T lr = scalars[0];
    for (long long t = first_index(); t < total; t += grid_stride()) {
        sgd_plain_at(t, w, g, lr, wd);
    }
}

// Adam, in place, with L2 (decoupled == 0) or decoupled (AdamW) weight decay, in base.py's
// order of operations (so the CPU shim equals NumPy bit for bit):
//   g' = g + wd*w (L2 only);   m = b1*m + (1-b1)*g';   v = b2*v + (1-b2)*g'*g'
//   w -= lr * [ (m / c1) / (sqrt(v / c2) + eps)  (+ wd*w if decoupled) ]
// The host passes 1-b1 and 1-b2 rounded from double, as NumPy's scalars are, and the bias
// corrections c1 = 1 - b1^t, c2 = 1 - b2^t of step t.
template <typename T>
__device__ __forceinline__ void adam_at(long long t, T* w, const T* g, T* m, T* v, T lr, T b1,
                                        T one_minus_b1, T b2, T one_minus_b2, T eps, T wd,
                                        int decoupled, T c1, T c2)
{
    const T grad = (wd != T(0) && !decoupled) ? g[t] + wd * w[t] : g[t];
    const T mean = b1 * m[t] + one_minus_b1 * grad;
    const T square = b2 * v[t] + one_minus_b2 * grad * grad;
    m[t] = mean;
    v[t] = square;
    T update = (mean / c1) / (sqrt_of(square / c2) + eps);
    if (wd != T(0) && decoupled) {
        update = update + wd * w[t];
    }
    w[t] -= lr * update;
}

template <typename T>
__global__ void adam_update(T* w, const T* g, T* m, T* v, T lr, T b1, T one_minus_b1, T b2,
                            T one_minus_b2, T eps, T wd, int decoupled, T c1, T c2,
                            long long total)
{
    for (long long t = first_index(); t < total; t += grid_stride()) {
        adam_at(t, w, g, m, v, lr, b1, one_minus_b1, b2, one_minus_b2, eps, wd, decoupled, c1, c2);
    }
}

// scalars = {lr, c1, c2}
template <typename T>
__global__ void adam_update_device_scalars(T* w, const T* g, T* m, T* v, const T* scalars,
                                           T b1, T one_minus_b1, T b2, T one_minus_b2, T eps,
                                           T wd, int decoupled, long long total)
{
    const T lr = scalars[0], c1 = scalars[1], c2 = scalars[2];
    for (long long t = first_index(); t < total; t += grid_stride()) {
        adam_at(t, w, g, m, v, lr, b1, one_minus_b1, b2, one_minus_b2, eps, wd, decoupled, c1, c2);
    }
}
