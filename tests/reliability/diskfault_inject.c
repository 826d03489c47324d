/*
 * A passthrough FUSE filesystem that returns EIO on command: the stand-in for a disk
 * whose sectors stop reading when the kernel has no device-mapper (no dm-error or
 * dm-flakey target) to do it at the block layer.
 *
 *   diskfault_inject BACKING MOUNTPOINT [libfuse options, e.g. -f]
 *
 * Every operation on MOUNTPOINT/<p> is carried out on BACKING/<p> (a real filesystem,
 * usually a loop-mounted ext4 image) unless the fault mode says otherwise. The mode is
 * set by writing one line to the control file MOUNTPOINT/.diskfault, which is not
 * listed by readdir and never reaches BACKING:
 *
 *   ok                 pass everything through (the initial mode)
 *   eio                every operation on every path fails with EIO: a dead disk
 *   eio-read PREFIX    reads of files whose path starts with PREFIX fail (bad sectors)
 *   eio-write PREFIX   writes, creates, renames, removals, syncs under PREFIX fail
 *
 * The write returns once the mode is in force. Reading the control file gives
 * "<mode> <prefix> injected=<n>", n being how many operations were failed so far.
 *
 * Files are opened with direct_io and attribute/entry caching is off, so reads through
 * read() reach this process. sendfile() may still be served from pages already in the
 * kernel's cache, as on a real disk: a test that breaks the reads of a file first drops
 * its cached pages (POSIX_FADV_DONTNEED). Locks (flock) are left to the kernel.
 *
 * Build: gcc -O2 -Wall diskfault_inject.c $(pkg-config --cflags --libs fuse3)
 * (Debian: libfuse3-dev, which brings libfuse3-3; fuse3 for fusermount3.)
 */

#define FUSE_USE_VERSION 31
#define _GNU_SOURCE

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#define CONTROL "/.diskfault"

enum mode { MODE_OK, MODE_EIO, MODE_EIO_READ, MODE_EIO_WRITE };
static const char *mode_names[] = {"ok", "eio", "eio-read", "eio-write"};

static char backing[PATH_MAX];
static pthread_mutex_t mode_lock = PTHREAD_MUTEX_INITIALIZER;
static enum mode cur_mode = MODE_OK;
static char cur_prefix[PATH_MAX] = "/";
static atomic_long injected;

struct handle {
    int fd;
    char path[]; /* as opened, for prefix checks after an unlink or rename */
};

static const char *full(const char *path, char *buf) {
    snprintf(buf, PATH_MAX, "%s%s", backing, path);
    return buf;
}

static int under(const char *path, const char *prefix) {
    return path != NULL && strncmp(path, prefix, strlen(prefix)) == 0;
}

/* Should this operation on ``path`` fail? ``kind`` is 'r' (read), 'w' (write) or 'm'
 * (metadata: lookups, listings; fails only in mode eio). */
static int fault(const char *path, char kind) {
    int hit;
    pthread_mutex_lock(&mode_lock);
    switch (cur_mode) {
    case MODE_EIO:
        hit = 1;
        break;
    case MODE_EIO_READ:
        hit = kind == 'r' && under(path, cur_prefix);
        break;
    case MODE_EIO_WRITE:
        hit = kind == 'w' && under(path, cur_prefix);
        break;
    default:
        hit = 0;
    }
    pthread_mutex_unlock(&mode_lock);
    if (hit)
        atomic_fetch_add(&injected, 1);
    return hit;
}

#define FAULT(path, kind)                                                                      \
    do {                                                                                       \
        if (fault((path), (kind)))                                                             \
            return -EIO;                                                                       \
    } while (0)

static int is_control(const char *path) { return path != NULL && strcmp(path, CONTROL) == 0; }

static int control_text(char *buf, size_t size) {
    pthread_mutex_lock(&mode_lock);
    int n = snprintf(buf, size, "%s %s injected=%ld\n", mode_names[cur_mode], cur_prefix,
                     atomic_load(&injected));
    pthread_mutex_unlock(&mode_lock);
    return n;
}

static int set_control(const char *data, size_t size) {
    char line[PATH_MAX + 32];
    if (size >= sizeof(line))
        return -EINVAL;
    memcpy(line, data, size);
    line[size] = '\0';
    line[strcspn(line, "\r\n")] = '\0';
    char *sp = strchr(line, ' ');
    const char *prefix = "/";
    if (sp != NULL) {
        *sp = '\0';
        prefix = sp + 1;
    }
    int m = -1;
    for (int i = 0; i < 4; i++)
        if (strcmp(line, mode_names[i]) == 0)
            m = i;
    if (m < 0 || prefix[0] != '/')
        return -EINVAL;
    pthread_mutex_lock(&mode_lock);
    cur_mode = (enum mode)m;
    snprintf(cur_prefix, sizeof(cur_prefix), "%s", prefix);
    pthread_mutex_unlock(&mode_lock);
    fprintf(stderr, "diskfault: mode %s %s\n", mode_names[m], prefix);
    return (int)size;
}

static void *fs_init(struct fuse_conn_info *conn, struct fuse_config *cfg) {
    (void)conn;
    cfg->use_ino = 1;
    cfg->nullpath_ok = 1;
    cfg->hard_remove = 1;
    cfg->direct_io = 1;
    cfg->entry_timeout = 0;
    cfg->attr_timeout = 0;
    cfg->negative_timeout = 0;
    return NULL;
}

static int fs_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    char b[PATH_MAX];
    if (is_control(path)) {
        memset(st, 0, sizeof(*st));
        st->st_mode = S_IFREG | 0600;
        st->st_nlink = 1;
        st->st_size = 0;
        return 0;
    }
    FAULT(path, 'm');
    int r = fi != NULL ? fstat(((struct handle *)(uintptr_t)fi->fh)->fd, st)
                       : lstat(full(path, b), st);
    return r == -1 ? -errno : 0;
}

static int fs_access(const char *path, int mask) {
    char b[PATH_MAX];
    if (is_control(path))
        return 0;
    FAULT(path, 'm');
    return access(full(path, b), mask) == -1 ? -errno : 0;
}

static int fs_opendir(const char *path, struct fuse_file_info *fi) {
    char b[PATH_MAX];
    FAULT(path, 'm');
    DIR *d = opendir(full(path, b));
    if (d == NULL)
        return -errno;
    fi->fh = (uintptr_t)d;
    return 0;
}

static int fs_readdir(const char *path, void *buf, fuse_fill_dir_t filler, off_t off,
                      struct fuse_file_info *fi, enum fuse_readdir_flags flags) {
    (void)off;
    (void)flags;
    FAULT(path, 'm');
    DIR *d = (DIR *)(uintptr_t)fi->fh;
    rewinddir(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        struct stat st;
        memset(&st, 0, sizeof(st));
        st.st_ino = e->d_ino;
        st.st_mode = (mode_t)DTTOIF(e->d_type);
        if (filler(buf, e->d_name, &st, 0, 0))
            break;
    }
    return 0;
}

static int fs_releasedir(const char *path, struct fuse_file_info *fi) {
    (void)path;
    closedir((DIR *)(uintptr_t)fi->fh);
    return 0;
}

static int fs_mkdir(const char *path, mode_t mode) {
    char b[PATH_MAX];
    FAULT(path, 'w');
    return mkdir(full(path, b), mode) == -1 ? -errno : 0;
}

static int fs_unlink(const char *path) {
    char b[PATH_MAX];
    FAULT(path, 'w');
    return unlink(full(path, b)) == -1 ? -errno : 0;
}

static int fs_rmdir(const char *path) {
    char b[PATH_MAX];
    FAULT(path, 'w');
    return rmdir(full(path, b)) == -1 ? -errno : 0;
}

static int fs_rename(const char *from, const char *to, unsigned int flags) {
    char a[PATH_MAX], b[PATH_MAX];
    FAULT(from, 'w');
    FAULT(to, 'w');
    long r = syscall(SYS_renameat2, AT_FDCWD, full(from, a), AT_FDCWD, full(to, b), flags);
    return r == -1 ? -errno : 0;
}

static int fs_chmod(const char *path, mode_t mode, struct fuse_file_info *fi) {
    char b[PATH_MAX];
    FAULT(path, 'w');
    int r = fi != NULL ? fchmod(((struct handle *)(uintptr_t)fi->fh)->fd, mode)
                       : chmod(full(path, b), mode);
    return r == -1 ? -errno : 0;
}

static int fs_truncate(const char *path, off_t size, struct fuse_file_info *fi) {
    char b[PATH_MAX];
    if (is_control(path))
        return 0;
    FAULT(fi != NULL ? ((struct handle *)(uintptr_t)fi->fh)->path : path, 'w');
    int r = fi != NULL ? ftruncate(((struct handle *)(uintptr_t)fi->fh)->fd, size)
                       : truncate(full(path, b), size);
    return r == -1 ? -errno : 0;
}

static int fs_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi) {
    char b[PATH_MAX];
    FAULT(fi != NULL ? ((struct handle *)(uintptr_t)fi->fh)->path : path, 'w');
    int r = fi != NULL ? futimens(((struct handle *)(uintptr_t)fi->fh)->fd, tv)
                       : utimensat(AT_FDCWD, full(path, b), tv, AT_SYMLINK_NOFOLLOW);
    return r == -1 ? -errno : 0;
}

static int attach(const char *path, int fd, struct fuse_file_info *fi) {
    size_t n = strlen(path) + 1;
    struct handle *h = malloc(sizeof(*h) + n);
    if (h == NULL) {
        close(fd);
        return -ENOMEM;
    }
    h->fd = fd;
    memcpy(h->path, path, n);
    fi->fh = (uintptr_t)h;
    fi->direct_io = 1;
    return 0;
}

static int fs_open(const char *path, struct fuse_file_info *fi) {
    char b[PATH_MAX];
    if (is_control(path)) {
        fi->fh = 0;
        fi->direct_io = 1;
        return 0;
    }
    FAULT(path, (fi->flags & O_ACCMODE) == O_RDONLY ? 'm' : 'w');
    int fd = open(full(path, b), fi->flags & ~O_NOFOLLOW);
    if (fd == -1)
        return -errno;
    return attach(path, fd, fi);
}

static int fs_create(const char *path, mode_t mode, struct fuse_file_info *fi) {
    char b[PATH_MAX];
    FAULT(path, 'w');
    int fd = open(full(path, b), fi->flags, mode);
    if (fd == -1)
        return -errno;
    return attach(path, fd, fi);
}

static int fs_read(const char *path, char *buf, size_t size, off_t off,
                   struct fuse_file_info *fi) {
    if (fi->fh == 0) {
        char text[PATH_MAX + 64];
        int n = control_text(text, sizeof(text));
        if (off >= n)
            return 0;
        size_t k = (size_t)(n - off) < size ? (size_t)(n - off) : size;
        memcpy(buf, text + off, k);
        return (int)k;
    }
    struct handle *h = (struct handle *)(uintptr_t)fi->fh;
    (void)path;
    FAULT(h->path, 'r');
    ssize_t r = pread(h->fd, buf, size, off);
    return r == -1 ? -errno : (int)r;
}

static int fs_write(const char *path, const char *buf, size_t size, off_t off,
                    struct fuse_file_info *fi) {
    (void)path;
    if (fi->fh == 0)
        return set_control(buf, size);
    struct handle *h = (struct handle *)(uintptr_t)fi->fh;
    FAULT(h->path, 'w');
    ssize_t r = pwrite(h->fd, buf, size, off);
    return r == -1 ? -errno : (int)r;
}

static int fs_statfs(const char *path, struct statvfs *st) {
    (void)path;
    FAULT("/", 'm');
    return statvfs(backing, st) == -1 ? -errno : 0;
}

static int fs_release(const char *path, struct fuse_file_info *fi) {
    (void)path;
    if (fi->fh != 0) {
        struct handle *h = (struct handle *)(uintptr_t)fi->fh;
        close(h->fd);
        free(h);
    }
    return 0;
}

static int fs_fsync(const char *path, int datasync, struct fuse_file_info *fi) {
    (void)path;
    if (fi->fh == 0)
        return 0;
    struct handle *h = (struct handle *)(uintptr_t)fi->fh;
    FAULT(h->path, 'w');
    int r = datasync ? fdatasync(h->fd) : fsync(h->fd);
    return r == -1 ? -errno : 0;
}

static int fs_fsyncdir(const char *path, int datasync, struct fuse_file_info *fi) {
    FAULT(path, 'w');
    int fd = dirfd((DIR *)(uintptr_t)fi->fh);
    int r = datasync ? fdatasync(fd) : fsync(fd);
    return r == -1 ? -errno : 0;
}

static int fs_setxattr(const char *path, const char *name, const char *value, size_t size,
                       int flags) {
    char b[PATH_MAX];
    FAULT(path, 'w');
    return lsetxattr(full(path, b), name, value, size, flags) == -1 ? -errno : 0;
}

static int fs_getxattr(const char *path, const char *name, char *value, size_t size) {
    char b[PATH_MAX];
    if (is_control(path))
        return -ENODATA;
    FAULT(path, 'r');
    ssize_t r = lgetxattr(full(path, b), name, value, size);
    return r == -1 ? -errno : (int)r;
}

static int fs_listxattr(const char *path, char *list, size_t size) {
    char b[PATH_MAX];
    FAULT(path, 'm');
    ssize_t r = llistxattr(full(path, b), list, size);
    return r == -1 ? -errno : (int)r;
}

static int fs_removexattr(const char *path, const char *name) {
    char b[PATH_MAX];
    FAULT(path, 'w');
    return lremovexattr(full(path, b), name) == -1 ? -errno : 0;
}

static const struct fuse_operations ops = {
    .init = fs_init,
    .getattr = fs_getattr,
    .access = fs_access,
    .opendir = fs_opendir,
    .readdir = fs_readdir,
    .releasedir = fs_releasedir,
    .mkdir = fs_mkdir,
    .unlink = fs_unlink,
    .rmdir = fs_rmdir,
    .rename = fs_rename,
    .chmod = fs_chmod,
    .truncate = fs_truncate,
    .utimens = fs_utimens,
    .open = fs_open,
    .create = fs_create,
    .read = fs_read,
    .write = fs_write,
    .statfs = fs_statfs,
    .release = fs_release,
    .fsync = fs_fsync,
    .fsyncdir = fs_fsyncdir,
    .setxattr = fs_setxattr,
    .getxattr = fs_getxattr,
    .listxattr = fs_listxattr,
    .removexattr = fs_removexattr,
};

int main(int argc, char *argv[]) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s BACKING MOUNTPOINT [fuse options]\n", argv[0]);
        return 2;
    }
    if (realpath(argv[1], backing) == NULL) {
        perror(argv[1]);
        return 2;
    }
    umask(0);
    /* argv for libfuse: program name, then everything after BACKING. */
    argv[1] = argv[0];
    return fuse_main(argc - 1, argv + 1, &ops, NULL);
}
