// Softmax cross-entropy, forward and gradient in one pass. One thread per row: the rows are
// class scores (10 wide for MNIST), too short to share among threads, and a thread-per-row
// kernel needs no shared memory, so it runs unchanged in the CPU test shim.
//
//   m = max_k z_k,  s = sum_k exp(z_k - m),  loss_row = -(z_y - m - log s)
//   dz_k = (exp(z_k - m) / s - [k == y]) / B
//
// The mean over rows is left to the caller (a reduction). A label outside [0, K) has no
// defined loss: its row gets NaN, loud rather than an out-of-bounds read.
template <typename T>
__global__ void softmax_cross_entropy(const T* logits, const long long* labels, T* row_loss,
                                      T* dlogits, long long B, long long K)
{
    for (long long r = first_index(); r < B; r += grid_stride()) {
        const T* z = logits + r * K;
        T* g = dlogits + r * K;
        T m = z[0];
        for (long long k = 1; k < K; ++k) m = z[k] > m ? z[k] : m;
        T s = T(0);
        for (long long k = 0; k < K; ++k) {
            g[k] = exp_of(z[k] - m);  // keep exp(z - m) in the output; normalized below
            s += g[k];
        }
        const long long y = labels[r];
        const bool valid = y >= 0 && y < K;
        row_loss[r] = valid ? -(z[y] - m - log_of(s)) : not_a_number<T>();
        for (long long k = 0; k < K; ++k) {
            T p = g[k] / s;
            if (k == y) p -= T(1);
            g[k] = valid ? p / T(B) : not_a_number<T>();
        }
    }
}
