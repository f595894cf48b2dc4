#ifndef C_PROCESS_HARDENING_H
#define C_PROCESS_HARDENING_H

#include <sys/resource.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

/// No core dump of this process, whatever the system's core_pattern (a pipe to systemd-coredump or apport ignores
/// RLIMIT_CORE), and no ptrace attach or /proc/PID/environ read by other processes of the same user: the process
/// holds the API key, the inspection CA's key, proxy tokens and decrypted traffic. prctl is variadic, which Swift
/// cannot call; this is its one non-variadic use here.
/// Linux only; elsewhere it does nothing and returns 0.
static inline int kz_process_not_dumpable(void) {
#ifdef __linux__
    return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
#else
    return 0;
#endif
}

#endif
