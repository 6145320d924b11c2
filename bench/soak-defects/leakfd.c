// Deliberate defect for checking scripts/soak: every 20th close() of a
// socket is skipped, so the server leaks file descriptors.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/stat.h>
#include <unistd.h>
static int n;
int close(int fd) {
    static int (*real)(int);
    if (!real) real = dlsym(RTLD_NEXT, "close");
    struct stat st;
    if (fd > 2 && fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) && __atomic_add_fetch(&n, 1, __ATOMIC_RELAXED) % 20 == 0)
        return 0;
    return real(fd);
}
