/* Preloaded into the processes of gVisor sandboxes (LD_PRELOAD, see
 * crates/cove-runtime/src/gvisor/statx.rs). Debian's runsc (2022) answers statx(2) with
 * EINVAL when its flags hold AT_NO_AUTOMOUNT, which GNU coreutils (ls, stat, cp, ...) always
 * pass, so they fail on every file. Its sentry has no automount points, so the flag means
 * nothing there: a call refused for it is made again without it. Every other call, and
 * every other answer, is left as it is. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *buf) {
    long answer = syscall(SYS_statx, dirfd, path, flags, mask, buf);
    if (answer == -1 && errno == EINVAL && (flags & AT_NO_AUTOMOUNT)) {
        answer = syscall(SYS_statx, dirfd, path, flags & ~AT_NO_AUTOMOUNT, mask, buf);
    }
    return (int)answer;
}
