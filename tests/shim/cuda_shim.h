// Just enough of CUDA for cnnx's kernels to compile as plain C++ and run on the CPU, one CUDA
// thread after another. Used only by tests/test_kernels_cpu_shim.py (CI has no GPU).
//
// Honest about what it can run: the kernels use no shared memory, no __syncthreads and no
// atomics, so running the threads of a grid one by one computes what the GPU computes.
#pragma once

#include <math.h>     // expf, exp, logf, log: the device built-ins the kernels call
#include <cstddef>
#include <cstring>
#include <utility>

#define __global__
#define __device__
#define __forceinline__ inline

struct ShimDim3 {
    unsigned int x = 0, y = 0, z = 0;
};

// The built-in thread coordinates, set by launch() before each simulated thread runs.
static ShimDim3 blockIdx, threadIdx, blockDim, gridDim;

// CUDA's bit-reinterpreting intrinsics.
inline float __int_as_float(int bits)
{
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
}

inline double __longlong_as_double(long long bits)
{
    double value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
}

// Call kernel(args...) where args[I] points at the I-th argument: the calling convention of
// cuLaunchKernel (and so of CuPy), which lets Python pass any parameter list through one C ABI.
template <typename... Params, std::size_t... I>
void shim_call(void (*kernel)(Params...), void** args, std::index_sequence<I...>)
{
    kernel(*static_cast<Params*>(args[I])...);
}

// Run every thread of a 1-D grid of `grid` blocks of `block` threads.
template <typename... Params>
void shim_launch(void (*kernel)(Params...), unsigned grid, unsigned block, void** args)
{
    gridDim.x = grid;
    blockDim.x = block;
    for (unsigned b = 0; b < grid; ++b) {
        for (unsigned t = 0; t < block; ++t) {
            blockIdx.x = b;
            threadIdx.x = t;
            shim_call(kernel, args, std::index_sequence_for<Params...>{});
        }
    }
}

// extern "C" entry points <kernel>_float and <kernel>_double for ctypes.
#define SHIM_EXPORT(name)                                                              \
    extern "C" void name##_float(unsigned grid, unsigned block, void** args)          \
    {                                                                                  \
        shim_launch(name<float>, grid, block, args);                                   \
    }                                                                                  \
    extern "C" void name##_double(unsigned grid, unsigned block, void** args)         \
    {                                                                                  \
        shim_launch(name<double>, grid, block, args);                                  \
    }
