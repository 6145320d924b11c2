// Deliberate defect for checking scripts/soak: every 50th free() of a block
// of 1 KiB or more is skipped, so the server leaks heap.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
static int n;
extern void __libc_free(void *);
void free(void *p) {
    if (p && malloc_usable_size(p) >= 1024 && __atomic_add_fetch(&n, 1, __ATOMIC_RELAXED) % 50 == 0)
        return;
    __libc_free(p);
}
