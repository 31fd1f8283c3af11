// Max and average pooling over (N, C, H, W) inputs, C-contiguous, outputs (N, C, Ho, Wo).
// Window geometry as in conv.cu: output (oy, ox) with offset (i, j) reads input
// (oy*sh + i - pt, ox*sw + j - pl). The general backward kernels are gathers: one thread per
// input pixel walks the windows that cover it, in the same offset order as base.py, so no
// atomics; when windows cannot overlap, the *_tiled kernels at the end of the file do less.
// All share conv.cu's parameter list (C included, though a flat (n, c) plane index is all
// they need), so the launcher builds the geometry arguments one way for every window kernel.

// One thread per output. Padding reads as -inf so it never wins; the strict '>' keeps the
// first maximum in row-major offset order. A NaN in the window makes the maximum NaN (as
// NumPy's maximum) but, never comparing greater, does not move the argmax: both as base.py.
template <typename T>
__global__ void max_pool_forward(const T* x, T* y, int* argmax,
                                 long long C, long long H, long long W, long long Ho, long long Wo,
                                 long long kh, long long kw, long long sh, long long sw,
                                 long long pt, long long pl, long long total)
{
    for (long long t = first_index(); t < total; t += grid_stride()) {
        const long long ox = t % Wo;
        const long long oy = (t / Wo) % Ho;
        const T* plane = x + (t / (Wo * Ho)) * H * W;  // image n, channel c
        T best = negative_infinity<T>();
        int best_k = 0;
        for (long long i = 0; i < kh; ++i) {
            for (long long j = 0; j < kw; ++j) {
                const long long h = oy * sh + i - pt;
                const long long w = ox * sw + j - pl;
                const bool inside = h >= 0 && h < H && w >= 0 && w < W;
                const T v = inside ? plane[h * W + w] : negative_infinity<T>();
                if (v > best) {
                    best = v;
                    best_k = (int)(i * kw + j);
                } else if (v != v) {
                    best = v;  // NaN: propagate the value, keep the argmax
                }
            }
        }
        y[t] = best;
        argmax[t] = best_k;
    }
}

// One thread per input pixel: sum dy over the windows whose argmax is this pixel. Windows are
// walked from last to first so the offset i*kw + j rises, the order base.py adds them in.
template <typename T>
__global__ void max_pool_backward(const T* dy, const int* argmax, T* dx,
                                  long long C, long long H, long long W, long long Ho, long long Wo,
                                  long long kh, long long kw, long long sh, long long sw,
                                  long long pt, long long pl, long long total)
{
    for (long long t = first_index(); t < total; t += grid_stride()) {
        const long long w = t % W;
        const long long h = (t / W) % H;
        const long long plane = (t / (W * H)) * Ho * Wo;  // offset of image n, channel c in dy
        const long long hp = h + pt, wp = w + pl;  // position in the padded image
        const long long oy_first = first_window(hp, kh, sh), oy_last = last_window(hp, sh, Ho);
        const long long ox_first = first_window(wp, kw, sw), ox_last = last_window(wp, sw, Wo);
        T sum = T(0);
        for (long long oy = oy_last; oy >= oy_first; --oy) {
            for (long long ox = ox_last; ox >= ox_first; --ox) {
                const long long out = plane + oy * Wo + ox;
                if (argmax[out] == (hp - oy * sh) * kw + (wp - ox * sw)) sum += dy[out];
            }
        }
        dx[t] = sum;
    }
}

// One thread per output: the window sum in row-major offset order (padding adds 0), divided
// by kh*kw, so zero padding counts in the divisor.
template <typename T>
__global__ void avg_pool_forward(const T* x, T* y,
                                 long long C, long long H, long long W, long long Ho, long long Wo,
                                 long long kh, long long kw, long long sh, long long sw,
                                 long long pt, long long pl, long long total)
{
    for (long long t = first_index(); t < total; t += grid_stride()) {
        const long long ox = t % Wo;
        const long long oy = (t / Wo) % Ho;
        const T* plane = x + (t / (Wo * Ho)) * H * W;
        T sum = T(0);
        for (long long i = 0; i < kh; ++i) {
            for (long long j = 0; j < kw; ++j) {
                const long long h = oy * sh + i - pt;
                const long long w = ox * sw + j - pl;
                if (h >= 0 && h < H && w >= 0 && w < W) sum += plane[h * W + w];
            }
        }
        y[t] = sum / T(kh * kw);
    }
}

// One thread per input pixel: each covering window passes on dy / (kh*kw), added in the same
// order as in max_pool_backward.
template <typename T>
__global__ void avg_pool_backward(const T* dy, T* dx,
                                  long long C, long long H, long long W, long long Ho, long long Wo,
                                  long long kh, long long kw, long long sh, long long sw,
                                  long long pt, long long pl, long long total)
{
    for (long long t = first_index(); t < total; t += grid_stride()) {
        const long long w = t % W;
        const long long h = (t / W) % H;
        const long long plane = (t / (W * H)) * Ho * Wo;
        const long long hp = h + pt, wp = w + pl;
        const long long oy_first = first_window(hp, kh, sh), oy_last = last_window(hp, sh, Ho);
        const long long ox_first = first_window(wp, kw, sw), ox_last = last_window(wp, sw, Wo);
        const T area = T(kh * kw);
        T sum = T(0);
        for (long long oy = oy_last; oy >= oy_first; --oy) {
            for (long long ox = ox_last; ox >= ox_first; --ox) {
                sum += dy[plane + oy * Wo + ox] / area;
            }
        }
        dx[t] = sum;
    }
}

// ---- Non-overlapping windows (stride >= kernel on both axes, as in the usual 2x2/2 pool) ----
// Every input pixel then lies in at most one window, so one thread per *output* can write its
// window's pixels directly: no sum, no race, and a quarter of the index arithmetic of the
// gathers above (integer division is what bounds these kernels). The caller zeroes dx first,
// so pixels that no window covers stay 0. Results equal the gathers' exactly.

template <typename T>
__global__ void max_pool_backward_tiled(const T* dy, const int* argmax, T* dx,
                                        long long C, long long H, long long W, long long Ho,
                                        long long Wo, long long kh, long long kw, long long sh,
                                        long long sw, long long pt, long long pl, long long total)
{
    for (long long t = first_index(); t < total; t += grid_stride()) {  // total = outputs
        const long long ox = t % Wo;
        const long long oy = (t / Wo) % Ho;
        const long long k = argmax[t];
        const long long h = oy * sh + k / kw - pt;
        const long long w = ox * sw + k % kw - pl;
        if (h >= 0 && h < H && w >= 0 && w < W) dx[(t / (Wo * Ho)) * H * W + h * W + w] = dy[t];
    }
}

template <typename T>
__global__ void avg_pool_backward_tiled(const T* dy, T* dx,
                                        long long C, long long H, long long W, long long Ho,
                                        long long Wo, long long kh, long long kw, long long sh,
                                        long long sw, long long pt, long long pl, long long total)
{
    for (long long t = first_index(); t < total; t += grid_stride()) {  // total = outputs
        const long long ox = t % Wo;
        const long long oy = (t / Wo) % Ho;
        T* plane = dx + (t / (Wo * Ho)) * H * W;
        const T share = dy[t] / T(kh * kw);
        for (long long i = 0; i < kh; ++i) {
            for (long long j = 0; j < kw; ++j) {
                const long long h = oy * sh + i - pt;
                const long long w = ox * sw + j - pl;
                if (h >= 0 && h < H && w >= 0 && w < W) plane[h * W + w] = share;
            }
        }
    }
}
