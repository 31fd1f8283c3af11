// Elementwise kernels: one thread per element of a C-contiguous array of `total` elements.

// Dense and convolution layers: y = z + b with b broadcast along the last axis of z (M, O),
// then ReLU when relu != 0 -- one pass over memory instead of two.
template <typename T>
__global__ void bias_activation(const T* z, const T* b, T* y, long long O, int relu,
                                long long total)
{
    for (long long t = first_index(); t < total; t += grid_stride()) {
        const T v = z[t] + b[t % O];
        y[t] = (relu && v < T(0)) ? T(0) : v;
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

// SGD with momentum, in place (PyTorch's convention, as base.py):
//   g' = g + wd*w;  v = mu*v + g';  w -= lr*v
template <typename T>
__global__ void sgd_momentum(T* w, const T* g, T* v, T lr, T mu, T wd, long long total)
{
    for (long long t = first_index(); t < total; t += grid_stride()) {
        const T grad = wd != T(0) ? g[t] + wd * w[t] : g[t];
        const T vel = mu * v[t] + grad;
        v[t] = vel;
        w[t] -= lr * vel;
    }
}

// Plain SGD (momentum 0, so no velocity buffer): w -= lr * (g + wd*w).
template <typename T>
__global__ void sgd_plain(T* w, const T* g, T lr, T wd, long long total)
{
    for (long long t = first_index(); t < total; t += grid_stride()) {
        const T grad = wd != T(0) ? g[t] + wd * w[t] : g[t];
        w[t] -= lr * grad;
    }
}
