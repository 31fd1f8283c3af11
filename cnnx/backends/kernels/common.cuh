// Helpers shared by every kernel file. The loader (kernel_source.py) puts this text in front of
// each .cu file, so the kernels need no #include: NVRTC compiles them without any system header.
//
// Every kernel runs one logical thread per work item (an output element; an input pixel for the
// gathers; a row for the loss). A thread may own several items: it starts at its global index
// and strides by the total number of threads in the grid, so a grid smaller than the work
// (capped by the launcher) still covers it all. Indices are 64-bit
// throughout: an im2col matrix passes 2^31 elements long before memory runs out.

__device__ __forceinline__ long long first_index()
{
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ long long grid_stride()
{
    return (long long)gridDim.x * blockDim.x;
}

// The output rows (or columns) whose window covers padded position p, for a window of k taps
// at stride s over n outputs: o*s <= p <= o*s + k - 1, i.e. o in [first, last]. Two divisions
// per axis, instead of one per kernel offset. (Empty when first > last.)
__device__ __forceinline__ long long first_window(long long p, long long k, long long s)
{
    return p < k ? 0 : (p - k) / s + 1;
}

__device__ __forceinline__ long long last_window(long long p, long long s, long long n)
{
    return p / s < n - 1 ? p / s : n - 1;
}

// exp, log and sqrt for the two float types. Overloads, so templates pick the right one;
// NVRTC provides expf/exp/logf/log as built-ins.
__device__ __forceinline__ float exp_of(float v) { return expf(v); }
__device__ __forceinline__ double exp_of(double v) { return exp(v); }
__device__ __forceinline__ float log_of(float v) { return logf(v); }
__device__ __forceinline__ double log_of(double v) { return log(v); }
__device__ __forceinline__ float sqrt_of(float v) { return sqrtf(v); }
__device__ __forceinline__ double sqrt_of(double v) { return sqrt(v); }

// -infinity and NaN from their IEEE 754 bit patterns. Not as -1/0 or 0/0: NVVM does not fold a
// division by zero, so that would be a real (slow-path) division on every use.
__device__ __forceinline__ float negative_infinity_of(float) { return __int_as_float(0xff800000); }
__device__ __forceinline__ double negative_infinity_of(double)
{
    return __longlong_as_double(0xfff0000000000000LL);
}
__device__ __forceinline__ float not_a_number_of(float) { return __int_as_float(0x7fc00000); }
__device__ __forceinline__ double not_a_number_of(double)
{
    return __longlong_as_double(0x7ff8000000000000LL);
}

template <typename T>
__device__ __forceinline__ T negative_infinity()
{
    return negative_infinity_of(T());
}

template <typename T>
__device__ __forceinline__ T not_a_number()
{
    return not_a_number_of(T());
}
