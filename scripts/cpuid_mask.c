// LD_PRELOAD shim: the process sees this x86 CPU without AVX-512, AVX-VNNI or AMX, natively.
//
// Linux CPUID faulting (arch_prctl ARCH_SET_CPUID; "cpuid_fault" in /proc/cpuinfo) makes every
// CPUID instruction raise SIGSEGV; the handler runs the real CPUID and clears those feature bits.
// Libraries that pick kernels from CPUID (XNNPACK via cpuinfo, ONNX Runtime's MLAS, numpy) then
// run their AVX2+FMA kernels at native speed: real timings of the AVX2 code path on this core
// (not of an AVX2 CPU's cores), where avx2-emu's are emulated. /proc/cpuinfo still shows the host.
//
//   gcc -O2 -shared -fPIC -o /tmp/cpuid_mask.so scripts/cpuid_mask.c
//   LD_PRELOAD=/tmp/cpuid_mask.so edgekit bench DIR --formats tflite
//
// Exits with code 3 at start when the CPU or kernel has no CPUID faulting. docs/int8.md uses it.
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static long set_cpuid(int enabled) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, enabled); }

static void mask(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
  if (leaf == 7 && sub == 0) {
    r[1] &= ~(0xFu << 16 | 1u << 21 | 0x7u << 26 | 0x3u << 30);  // AVX512F/DQ/IFMA/PF/ER/CD/BW/VL
    r[2] &= ~(1u << 1 | 1u << 6 | 1u << 11 | 1u << 12 | 1u << 14);  // VBMI/VBMI2/VNNI/BITALG/VPOPCNTDQ
    r[3] &= ~(0x3u << 2 | 1u << 8 | 0xFu << 22);  // 4VNNIW/4FMAPS/VP2INTERSECT/AMX-BF16/FP16/TILE/INT8
  } else if (leaf == 7 && sub == 1) {
    r[0] &= ~(1u << 4 | 1u << 5 | 1u << 21 | 1u << 23);  // AVX-VNNI, AVX512_BF16, AMX-FP16, AVX-IFMA
    r[3] &= ~(1u << 4 | 1u << 5 | 1u << 10 | 1u << 19);  // AVX-VNNI-INT8, NE-CONVERT, VNNI-INT16, AVX10
  } else if (leaf == 0xD && sub == 0) {
    r[0] &= ~(0x7u << 5 | 0x3u << 17);  // XSAVE components: opmask/ZMM, AMX tiles
  } else if (leaf == 0x1D || leaf == 0x1E || leaf == 0x24) {
    r[0] = r[1] = r[2] = r[3] = 0;  // AMX palettes, TMUL, AVX10
  }
}

static void on_sigsegv(int sig, siginfo_t* info, void* context) {
  greg_t* g = ((ucontext_t*) context)->uc_mcontext.gregs;
  const uint8_t* ip = (const uint8_t*) g[REG_RIP];
  if (info->si_code != SI_KERNEL || ip[0] != 0x0F || ip[1] != 0xA2) {
    signal(sig, SIG_DFL);  // a real fault: let it kill the process as usual
    return;
  }
  uint32_t r[4], leaf = (uint32_t) g[REG_RAX], sub = (uint32_t) g[REG_RCX];
  set_cpuid(1);
  __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
  set_cpuid(0);
  mask(leaf, sub, r);
  g[REG_RAX] = r[0], g[REG_RBX] = r[1], g[REG_RCX] = r[2], g[REG_RDX] = r[3];
  g[REG_RIP] += 2;
}

__attribute__((constructor)) static void install(void) {
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_sigaction = on_sigsegv;
  action.sa_flags = SA_SIGINFO;
  sigaction(SIGSEGV, &action, NULL);
  if (set_cpuid(0) != 0) {
    static const char msg[] = "cpuid_mask: CPUID faulting is not available on this CPU/kernel\n";
    write(2, msg, sizeof msg - 1);
    _exit(3);
  }
}
