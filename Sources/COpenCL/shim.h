// OpenCL 1.2 API through the ICD loader (ocl-icd-opencl-dev, opencl-c-headers).
#pragma once
#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
