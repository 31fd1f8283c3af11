// im2col and its adjoint col2im, with the layouts of base.py:
//   x   : (N, C, H, W), C-contiguous
//   col : (N*Ho*Wo, C*kh*kw), row (n, oy, ox), column (c, i, j), C-contiguous
// Output pixel (oy, ox) with kernel offset (i, j) reads input pixel
//   (h, w) = (oy*sh + i - pt, ox*sw + j - pl),
// which lies in the padding (value 0) when it falls outside [0, H) x [0, W).

// One thread per element of col: decode (n, oy, ox, c, i, j) from the flat index and copy.
// Consecutive threads write consecutive addresses. (A thread per kh*kw patch decodes less but
// strides its writes across a warp, and measured slower on an H100.)
template <typename T>
__global__ void im2col(const T* x, T* col,
                       long long C, long long H, long long W, long long Ho, long long Wo,
                       long long kh, long long kw, long long sh, long long sw,
                       long long pt, long long pl, long long total)
{
    for (long long t = first_index(); t < total; t += grid_stride()) {
        long long rest = t;
        const long long j = rest % kw;  rest /= kw;
        const long long i = rest % kh;  rest /= kh;
        const long long c = rest % C;   rest /= C;
        const long long ox = rest % Wo; rest /= Wo;
        const long long oy = rest % Ho;
        const long long n = rest / Ho;
        const long long h = oy * sh + i - pt;
        const long long w = ox * sw + j - pl;
        const bool inside = h >= 0 && h < H && w >= 0 && w < W;
        col[t] = inside ? x[((n * C + c) * H + h) * W + w] : T(0);
    }
}

// One thread per input pixel (a gather, so no atomics): the pixel sums every col entry that
// copied it. It walks the covering windows from last to first, so the kernel offset
// (i, j) = (hp - oy*sh, wp - ox*sw) rises in row-major order -- the order base.py adds them
// in, which makes the sum deterministic and even bitwise equal to the NumPy reference.
template <typename T>
__global__ void col2im(const T* col, T* x,
                       long long C, long long H, long long W, long long Ho, long long Wo,
                       long long kh, long long kw, long long sh, long long sw,
                       long long pt, long long pl, long long total)
{
    for (long long t = first_index(); t < total; t += grid_stride()) {
        long long rest = t;
        const long long w = rest % W; rest /= W;
        const long long h = rest % H; rest /= H;
        const long long c = rest % C;
        const long long n = rest / C;
        const long long hp = h + pt, wp = w + pl;  // position in the padded image
        const long long oy_first = first_window(hp, kh, sh), oy_last = last_window(hp, sh, Ho);
        const long long ox_first = first_window(wp, kw, sw), ox_last = last_window(wp, sw, Wo);
        T sum = T(0);
        for (long long oy = oy_last; oy >= oy_first; --oy) {
            const long long i = hp - oy * sh;
            for (long long ox = ox_last; ox >= ox_first; --ox) {
                const long long j = wp - ox * sw;
                const long long row = (n * Ho + oy) * Wo + ox;
                sum += col[((row * C + c) * kh + i) * kw + j];
            }
        }
        x[t] = sum;
    }
}
