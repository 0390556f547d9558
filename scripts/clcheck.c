/* clcheck: build COMMON.cl + FILE.cl with -cl-std=CL1.2 on every OpenCL device; print PASS/FAIL and build logs. */
#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CL_PLATFORM_NOT_FOUND_KHR_ (-1001) /* ICD loader: no platforms installed */
#define CHECK(call, err) do { if ((err) != CL_SUCCESS) { \
    printf("FAIL %s on %s: %s returned %d\n", argv[2], name, (call), (int)(err)); failures++; goto next; } } while (0)

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); return NULL; }
    char *buf = NULL; size_t cap = 0, n = 0, got;
    do {
        if (n + 4096 + 1 > cap) { cap = (n + 4096 + 1) * 2; char *b = realloc(buf, cap); if (!b) { free(buf); fclose(f); return NULL; } buf = b; }
        got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
    } while (got > 0);
    int bad = ferror(f);
    fclose(f);
    if (bad) { fprintf(stderr, "clcheck: read error on %s\n", path); free(buf); return NULL; }
    buf[n] = '\0'; *len = n;
    return buf;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: clcheck COMMON.cl FILE.cl [extra build options...]\n"); return 2; }
    size_t lc = 0, lf = 0;
    char *common = read_file(argv[1], &lc), *file = read_file(argv[2], &lf);
    if (!common || !file) return 2;
    /* common + "\n" + file; the #line makes build-log line numbers point into FILE.cl */
    const char *base = strrchr(argv[2], '/') ? strrchr(argv[2], '/') + 1 : argv[2];
    size_t cap = lc + lf + strlen(base) + 32;
    char *src = malloc(cap);
    if (!src) return 2;
    memcpy(src, common, lc);
    int hl = snprintf(src + lc, cap - lc, "\n#line 1 \"%s\"\n", strchr(base, '"') ? "kernel.cl" : base);
    memcpy(src + lc + hl, file, lf); src[lc + hl + lf] = '\0';

    size_t olen = strlen("-cl-std=CL1.2") + 1;
    for (int i = 3; i < argc; i++) olen += strlen(argv[i]) + 1;
    char *opts = malloc(olen);
    if (!opts) return 2;
    strcpy(opts, "-cl-std=CL1.2");
    for (int i = 3; i < argc; i++) { strcat(opts, " "); strcat(opts, argv[i]); }

    cl_uint np = 0;
    cl_int err = clGetPlatformIDs(0, NULL, &np);
    if (err != CL_SUCCESS && err != CL_PLATFORM_NOT_FOUND_KHR_) {
        fprintf(stderr, "clcheck: clGetPlatformIDs failed with code %d\n", (int)err);
    }
    if (err != CL_SUCCESS || np == 0) {
        fprintf(stderr, "clcheck: no OpenCL platforms found (install an ICD such as pocl-opencl-icd; "
                        "check POCL_CACHE_DIR is writable)\n");
        return 1;
    }
    cl_platform_id *plats = malloc(np * sizeof *plats);
    if (!plats) return 2;
    err = clGetPlatformIDs(np, plats, NULL);
    if (err != CL_SUCCESS) { fprintf(stderr, "clcheck: clGetPlatformIDs failed with code %d\n", (int)err); return 1; }

    int devices = 0, failures = 0;
    for (cl_uint p = 0; p < np; p++) {
        cl_uint nd = 0;
        err = clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, 0, NULL, &nd);
        if (err == CL_DEVICE_NOT_FOUND || (err == CL_SUCCESS && nd == 0)) continue;
        if (err != CL_SUCCESS) { fprintf(stderr, "clcheck: clGetDeviceIDs (platform %u) failed with code %d\n", p, (int)err); continue; }
        cl_device_id *devs = malloc(nd * sizeof *devs);
        if (!devs) return 2;
        err = clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, nd, devs, NULL);
        if (err != CL_SUCCESS) { fprintf(stderr, "clcheck: clGetDeviceIDs (platform %u) failed with code %d\n", p, (int)err); free(devs); continue; }
        for (cl_uint d = 0; d < nd; d++) {
            cl_context ctx = NULL; cl_program prog = NULL; char *log = NULL;
            char name[256] = "?";
            devices++;
            err = clGetDeviceInfo(devs[d], CL_DEVICE_NAME, sizeof name - 1, name, NULL);
            CHECK("clGetDeviceInfo(CL_DEVICE_NAME)", err);
            ctx = clCreateContext(NULL, 1, &devs[d], NULL, NULL, &err);
            CHECK("clCreateContext", err);
            const char *srcs[1] = { src };
            prog = clCreateProgramWithSource(ctx, 1, srcs, NULL, &err);
            CHECK("clCreateProgramWithSource", err);
            cl_int berr = clBuildProgram(prog, 1, &devs[d], opts, NULL, NULL);
            size_t loglen = 0;
            err = clGetProgramBuildInfo(prog, devs[d], CL_PROGRAM_BUILD_LOG, 0, NULL, &loglen);
            CHECK("clGetProgramBuildInfo(CL_PROGRAM_BUILD_LOG size)", err);
            log = malloc(loglen + 1);
            if (!log) { failures++; goto next; }
            err = clGetProgramBuildInfo(prog, devs[d], CL_PROGRAM_BUILD_LOG, loglen, log, NULL);
            CHECK("clGetProgramBuildInfo(CL_PROGRAM_BUILD_LOG)", err);
            log[loglen] = '\0';
            if (berr == CL_SUCCESS) {
                printf("PASS %s on %s\n", argv[2], name);
            } else {
                failures++;
                printf("FAIL %s on %s (clBuildProgram code %d, options \"%s\")\n%s\n", argv[2], name, (int)berr, opts, log);
            }
        next:
            free(log);
            if (prog) clReleaseProgram(prog);
            if (ctx) clReleaseContext(ctx);
        }
        free(devs);
    }
    if (devices == 0) {
        fprintf(stderr, "clcheck: no OpenCL devices found on %u platform(s) (for PoCL, check POCL_CACHE_DIR is writable)\n", np);
        return 1;
    }
    free(plats); free(opts); free(src); free(common); free(file);
    return failures ? 1 : 0;
}
