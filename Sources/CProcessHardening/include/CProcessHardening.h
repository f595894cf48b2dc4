#ifndef C_PROCESS_HARDENING_H
#define C_PROCESS_HARDENING_H

#include <sys/prctl.h>
#include <sys/resource.h>

/// No core dump of this process, whatever the system's core_pattern (a pipe to systemd-coredump or apport ignores
/// RLIMIT_CORE), and no ptrace attach or /proc/PID/environ read by other processes of the same user: the process
/// holds the API key, the inspection CA's key, proxy tokens and decrypted traffic. prctl is variadic, which Swift
/// cannot call; this is its one non-variadic use here.
static inline int kz_process_not_dumpable(void) {
    return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

/// Whether the process may be dumped (1) or not (0); -1 on error.
static inline int kz_process_dumpable(void) {
    return prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
}

#endif
