#ifndef C_HEAP_TRIM_H
#define C_HEAP_TRIM_H

#include <stddef.h>
#include <stdlib.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

/// Whether this C library can report its heap and give freed pages back (glibc 2.33 or later: mallinfo2).
static inline int kz_heap_trim_supported(void) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
    return 1;
#else
    return 0;
#endif
}

/// Bytes malloc holds in free chunks, and bytes handed out (glibc's mallinfo2, every arena); 0 and 0 elsewhere.
static inline void kz_heap_usage(size_t *free_bytes, size_t *in_use_bytes) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
    struct mallinfo2 info = mallinfo2();
    *free_bytes = info.fordblks;  // fastbin chunks (fsmblks) included
    *in_use_bytes = info.uordblks;
#else
    *free_bytes = 0;
    *in_use_bytes = 0;
#endif
}

/// Gives the pages of every free chunk in every arena back to the system (glibc's malloc_trim(0), which, unlike
/// the automatic trim, also releases pages in the middle of an arena). Returns 1 when memory was released.
static inline int kz_heap_trim(void) {
#if defined(__GLIBC__)
    return malloc_trim(0);
#else
    return 0;
#endif
}

#endif
