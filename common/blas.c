/* blas.c -- make OpenBLAS use the kernels the CPU can run (see blas.h). */
#include "common/blas.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <cblas.h>

#include "common/log.h"

const char *blas_core(void) { return openblas_get_corename(); }

int blas_has_small_gemm(void)
{
    static const char *const cores[] = { "SkylakeX", "Cooperlake", "SapphireRapids" };
    const char *core = openblas_get_corename();
    for (size_t i = 0; core && i < sizeof cores / sizeof cores[0]; i++)
        if (strcasecmp(core, cores[i]) == 0)
            return 1;
    return 0;
}

void blas_fix_core(char **argv)
{
    if (getenv("OPENBLAS_CORETYPE"))
        return; /* the user chose, or we already re-executed */
    const char *core = openblas_get_corename();
    if (!core || strcasecmp(core, "Prescott") != 0)
        return;
    const char *want = NULL;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        want = "SkylakeX";
    else if (__builtin_cpu_supports("avx2"))
        want = "Haswell";
    if (!want)
        return;
    if (setenv("OPENBLAS_CORETYPE", want, 1) != 0)
        return;
    log_debug("OpenBLAS chose %s kernels on a CPU with %s support: restarting with "
              "OPENBLAS_CORETYPE=%s", core, want, want);
    /* the real path, not /proc/self/exe, so the process keeps its name */
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = 0;
        execv(self, argv);
    }
    log_warn("could not restart with OPENBLAS_CORETYPE=%s (%s): running on slow %s kernels; "
             "set OPENBLAS_CORETYPE yourself", want, strerror(errno), core);
}
