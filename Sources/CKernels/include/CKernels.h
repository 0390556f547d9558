// OpenCL C sources of kernels/*.cl, embedded into the binary at build time.
#pragma once
#include <stddef.h>

typedef struct {
    const char *name;    // file name without ".cl", e.g. "gemm"
    const char *source;  // NUL-terminated OpenCL C source
    size_t length;       // bytes, without the NUL
} SheafKernelSource;

// Number of embedded files and the file at `index` (0 ..< count).
size_t sheaf_kernel_count(void);
const SheafKernelSource *sheaf_kernel_at(size_t index);
