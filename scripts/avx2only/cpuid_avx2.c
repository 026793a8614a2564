/*
 * An AVX2-only CPU on a CPU with AVX512: every library in the process (PyTorch's kernel dispatch,
 * MKL, oneDNN, OpenBLAS, XLA and YNNPACK through cpuinfo) asks the CPUID instruction what the CPU
 * can do, and only some of them have a switch to cap what they use.  Loaded with LD_PRELOAD, this
 * library turns on Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, which needs the CPU's
 * `cpuid_fault` flag), so that each CPUID instruction traps; the SIGSEGV handler runs the real
 * CPUID and clears the bits of AVX512 (all its subsets), AVX10, AVX512-BF16/FP16 and AMX, and of
 * the AVX-VNNI family that AMD's AVX2 CPUs lack, before resuming after the instruction.
 *
 * Faulting is a per-thread flag that threads inherit and exec clears; the preload sets it again in
 * each new program.  A handler another library installs for SIGSEGV is kept and called for every
 * fault that is not a CPUID.  AF2CPU_CPUID_TRACE=1 prints how many CPUIDs were answered at exit.
 *
 * Programs that read the flags in /proc/cpuinfo instead (af2cpu's precision choice does) open the
 * copy named by AF2CPU_AVX2_CPUINFO, which the `run` script writes with the same flags removed.
 *
 * Build: gcc -O2 -shared -fPIC -o cpuid_avx2.so cpuid_avx2.c -ldl
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define ARCH_GET_CPUID 0x1011
#define ARCH_SET_CPUID 0x1012

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);

static int as_amd;                     /* AF2CPU_CPUID_VENDOR=amd: an AMD EPYC 7003 (Zen 3, family 19h) */
static struct sigaction chained;       /* the SIGSEGV handler the program asked for */
static atomic_long answered;

static long set_cpuid(int allowed) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, allowed); }

static sigaction_fn real_sigaction(void) {
    static sigaction_fn fn;
    if (!fn) fn = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    return fn;
}

static void mask(unsigned leaf, unsigned sub, unsigned *a, unsigned *b, unsigned *c, unsigned *d) {
    if (as_amd && leaf == 0) {
        *b = 0x68747541u; /* "AuthenticAMD" */
        *d = 0x69746e65u;
        *c = 0x444d4163u;
    } else if (as_amd && leaf == 1) {
        *a = 0x00a00f11u; /* family 19h, model 01h, stepping 1 */
    } else if (leaf == 7 && sub == 0) {
        /* EBX: AVX512 F, DQ, IFMA, PF, ER, CD, BW, VL */
        *b &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) |
                (1u << 30) | (1u << 31));
        /* ECX: AVX512 VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ */
        *c &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        /* EDX: AVX512 4VNNIW, 4FMAPS, VP2INTERSECT; AMX-BF16, AVX512-FP16, AMX-TILE, AMX-INT8 */
        *d &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) |
                (1u << 25));
    } else if (leaf == 7 && sub == 1) {
        /* EAX: AVX-VNNI, AVX512-BF16, AMX-FP16, AVX-IFMA */
        *a &= ~((1u << 4) | (1u << 5) | (1u << 21) | (1u << 23));
        /* EDX: AVX-VNNI-INT8, AVX-NE-CONVERT, AMX-COMPLEX, AVX-VNNI-INT16, AVX10 */
        *d &= ~((1u << 4) | (1u << 5) | (1u << 8) | (1u << 10) | (1u << 19));
    } else if (leaf == 0xd && sub == 0) {
        /* XSAVE components the CPU offers: opmask, ZMM halves, AMX tiles */
        *a &= ~((1u << 5) | (1u << 6) | (1u << 7) | (1u << 17) | (1u << 18));
    } else if (leaf == 0x1d || leaf == 0x1e || leaf == 0x24) {
        /* AMX tile and TMUL information; AVX10 */
        *a = *b = *c = *d = 0;
    }
}

static void on_segv(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = (ucontext_t *)context;
    greg_t *regs = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)regs[REG_RIP];
    if (info->si_code == SI_KERNEL && ip[0] == 0x0f && ip[1] == 0xa2) {
        unsigned leaf = (unsigned)regs[REG_RAX], sub = (unsigned)regs[REG_RCX];
        unsigned a, b, c, d;
        set_cpuid(1);
        __cpuid_count(leaf, sub, a, b, c, d);
        set_cpuid(0);
        mask(leaf, sub, &a, &b, &c, &d);
        regs[REG_RAX] = a;
        regs[REG_RBX] = b;
        regs[REG_RCX] = c;
        regs[REG_RDX] = d;
        regs[REG_RIP] += 2;
        atomic_fetch_add(&answered, 1);
        return;
    }
    if (chained.sa_flags & SA_SIGINFO) {
        chained.sa_sigaction(sig, info, context);
    } else if (chained.sa_handler == SIG_IGN) {
        return;
    } else if (chained.sa_handler != SIG_DFL) {
        chained.sa_handler(sig);
    } else {
        /* the default action: the faulting instruction runs again and ends the process */
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        real_sigaction()(SIGSEGV, &dfl, NULL);
    }
}

/* Programs (Python's faulthandler, JAX) install SIGSEGV handlers of their own: keep ours first. */
int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (sig != SIGSEGV) return real_sigaction()(sig, act, old);
    if (old) *old = chained;
    if (act) chained = *act;
    return 0;
}

sighandler_t signal(int sig, sighandler_t handler) {
    if (sig != SIGSEGV) {
        struct sigaction act, old;
        memset(&act, 0, sizeof act);
        act.sa_handler = handler;
        act.sa_flags = SA_RESTART;
        sigemptyset(&act.sa_mask);
        if (real_sigaction()(sig, &act, &old) != 0) return SIG_ERR;
        return old.sa_handler;
    }
    sighandler_t before = (chained.sa_flags & SA_SIGINFO) ? SIG_DFL : chained.sa_handler;
    memset(&chained, 0, sizeof chained);
    chained.sa_handler = handler;
    return before;
}

/* /proc/cpuinfo opened by name: the copy without the flags */
static const char *cpuinfo(const char *path) {
    const char *copy = getenv("AF2CPU_AVX2_CPUINFO");
    return (copy && path && strcmp(path, "/proc/cpuinfo") == 0) ? copy : path;
}

/* open's third argument, which only O_CREAT and O_TMPFILE pass */
#define MODE_ARGUMENT(flags, mode)                                                                 \
    do {                                                                                           \
        if ((flags) & (O_CREAT | O_TMPFILE)) {                                                     \
            va_list args;                                                                          \
            va_start(args, flags);                                                                 \
            mode = va_arg(args, mode_t);                                                           \
            va_end(args);                                                                          \
        }                                                                                          \
    } while (0)

#define OPEN_WRAPPER(name)                                                                         \
    int name(const char *path, int flags, ...) {                                                   \
        static int (*real)(const char *, int, ...);                                                \
        if (!real) real = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, #name);                \
        mode_t mode = 0;                                                                           \
        MODE_ARGUMENT(flags, mode);                                                                \
        return real(cpuinfo(path), flags, mode);                                                   \
    }
OPEN_WRAPPER(open)
OPEN_WRAPPER(open64)

#define OPENAT_WRAPPER(name)                                                                       \
    int name(int dir, const char *path, int flags, ...) {                                          \
        static int (*real)(int, const char *, int, ...);                                           \
        if (!real) real = (int (*)(int, const char *, int, ...))dlsym(RTLD_NEXT, #name);           \
        mode_t mode = 0;                                                                           \
        MODE_ARGUMENT(flags, mode);                                                                \
        return real(dir, cpuinfo(path), flags, mode);                                              \
    }
OPENAT_WRAPPER(openat)
OPENAT_WRAPPER(openat64)

#define FOPEN_WRAPPER(name)                                                                        \
    FILE *name(const char *path, const char *how) {                                                \
        static FILE *(*real)(const char *, const char *);                                          \
        if (!real) real = (FILE * (*)(const char *, const char *)) dlsym(RTLD_NEXT, #name);        \
        return real(cpuinfo(path), how);                                                           \
    }
FOPEN_WRAPPER(fopen)
FOPEN_WRAPPER(fopen64)

static void report(void) {
    fprintf(stderr, "cpuid_avx2: %ld CPUID instructions answered as an AVX2-only CPU (pid %d)\n",
            atomic_load(&answered), (int)getpid());
}

__attribute__((constructor)) static void start(void) {
    struct sigaction act;
    memset(&act, 0, sizeof act);
    act.sa_sigaction = on_segv;
    act.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&act.sa_mask);
    chained.sa_handler = SIG_DFL;
    if (real_sigaction()(SIGSEGV, &act, NULL) != 0 || set_cpuid(0) != 0) {
        fprintf(stderr, "cpuid_avx2: this CPU or kernel cannot fault on CPUID (no cpuid_fault "
                        "flag): the process would see every instruction set; stopping\n");
        _exit(3);
    }
    const char *vendor = getenv("AF2CPU_CPUID_VENDOR");
    as_amd = vendor && strcmp(vendor, "amd") == 0;
    const char *trace = getenv("AF2CPU_CPUID_TRACE");
    if (trace && trace[0] == '1') atexit(report);
}
