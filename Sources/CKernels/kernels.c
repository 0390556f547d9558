// Embeds kernels/*.cl (C23 #embed). Editing a .cl file rebuilds this file through clang's
// dependency output. Add a new kernel file here and in the table below.
#include "CKernels.h"

static const char common_cl[] = {
#embed "../../kernels/common.cl"
    , 0};
static const char gemm_cl[] = {
#embed "../../kernels/gemm.cl"
    , 0};
static const char gram_cl[] = {
#embed "../../kernels/gram.cl"
    , 0};
static const char whiten_cl[] = {
#embed "../../kernels/whiten.cl"
    , 0};
static const char kmeans_cl[] = {
#embed "../../kernels/kmeans.cl"
    , 0};
static const char forward_cl[] = {
#embed "../../kernels/forward.cl"
    , 0};

#define ENTRY(n) {#n, n##_cl, sizeof(n##_cl) - 1}
static const SheafKernelSource table[] = {
    ENTRY(common), ENTRY(gemm), ENTRY(gram), ENTRY(whiten), ENTRY(kmeans), ENTRY(forward),
};

size_t sheaf_kernel_count(void) { return sizeof(table) / sizeof(table[0]); }

const SheafKernelSource *sheaf_kernel_at(size_t index) {
    return index < sheaf_kernel_count() ? &table[index] : NULL;
}
