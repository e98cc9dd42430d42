/*
 * libagentsh-boundary.so: the hot path of the exec-boundary check of the
 * user-notify supervisor (enforce/boundary.py; issue 3 item 2). It holds no
 * policy: Python has already judged the exec and says what the approved
 * image (device, inode) and argv are. One call does, in this order:
 *
 *   1  PTRACE_SEIZE the waiting thread (TRACEEXEC | EXITKILL), before the
 *      answer: a thread that cannot be seized is not answered (UNARMED);
 *   2  SECCOMP_IOCTL_NOTIF_SEND with FLAG_CONTINUE (ENOENT or EINPROGRESS:
 *      the answer was not delivered; the thread is still detached below);
 *   3  PTRACE_INTERRUPT, so that an exec that fails stops too;
 *   4  wait (waitpid __WALL, woken by the caller's SIGCHLD wake-up fd, at
 *      most timeout_ms) for the thread's stop. At PTRACE_EVENT_EXEC (after
 *      the point of no return, before the new image's first instruction)
 *      compare /proc/PID/exe and /proc/PID/cmdline with what was approved:
 *      equal, PTRACE_DETACH; different, SIGKILL (MISMATCH, still stopped).
 *      Any other stop (the exec failed): PTRACE_DETACH, handing back the
 *      signal of a signal-delivery stop.
 *
 * Whatever it cannot settle (the wait timed out, another tracee's stop came
 * first) it hands back to Python, which then holds the thread and reaps it
 * from its loop exactly as without this library (PENDING, OTHER). Python
 * loads it with ctypes when `make setup` has built it; without it Python
 * runs the same steps itself. Built with the system gcc as a shared object.
 *
 * ab_next() is the user-notify transport for the common exec: RECV, then,
 * for an execve only, read path and argv (/proc/PID/mem, within the pages
 * they start in), resolve the path as Python's same-view fast path does
 * (openat2 RESOLVE_NO_MAGICLINKS from / or the tracee's cwd), and look the
 * exec up in a table of verdicts Python has put there (ab_put). A hit must
 * match the path as written, the argv, the canonical path and the file's
 * (dev, ino, size, mtime, ctime) exactly; Python only puts allowed execs of
 * an ELF file whose verdict is a pure function of those, and only files not
 * changed in the last seconds (ctime cannot be set back, so any later change
 * of the file misses). A hit is re-checked with NOTIF_ID_VALID and then
 * answered through ab_continue(). Anything else (another syscall, execveat,
 * an unusual path or argv, a miss) returns the notification to Python, which
 * reads and judges it from scratch.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <linux/ptrace.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sys/types.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Result codes; enforce/boundary.py mirrors them. */
enum {
	AB_VERIFIED = 0,  /* exec'd the approved image and argv; detached */
	AB_MISMATCH = 1,  /* exec'd something else; killed at its exec stop */
	AB_DETACHED = 2,  /* stopped without an exec to check; detached */
	AB_GONE = 3,      /* the thread died; nothing held */
	AB_UNARMED = 4,   /* could not be seized (err); no answer was sent */
	AB_PENDING = 5,   /* no stop within the timeout; the caller holds it */
	AB_OTHER = 6,     /* another tracee stopped first (wpid, status) */
	AB_ERROR = 7,     /* the answer failed unexpectedly (err) */
	AB_NOTE = 8,      /* not answered: Python handles the notification */
	AB_STALE = 9,     /* a hit whose thread no longer waits; nothing sent */
	AB_RECV = 10,     /* RECV failed (err) */
	AB_IDLE = 11,     /* ab_serve: idle (or the hit buffer full): Python audits */
	AB_WAKE = 12,     /* ab_serve: a SIGCHLD to handle: Python reaps */
	AB_HUP = 13,      /* ab_serve: the listener hung up: no member left */
	AB_REAPED = 14,   /* ab_serve: a stop or exit (wpid, status) for Python */
	AB_POLL = 15,     /* ab_serve: poll failed (err) */
};

struct ab_result {
	int32_t code;
	int32_t err;       /* errno for UNARMED and ERROR */
	int32_t wpid;      /* the pid the stop was reported for */
	int32_t status;    /* its wait status (OTHER) */
	int32_t delivered; /* the CONTINUE reached the thread */
	int32_t got_len;   /* bytes of its cmdline in got (MISMATCH) */
	int32_t slot;      /* ab_next: the table slot of a hit, else -1 */
	int32_t cwd_len;   /* ab_next: bytes of the tracee's cwd in got (a hit) */
	int32_t base;      /* ab_serve: where in got this result's cwd starts */
};

struct ab_hit {            /* ab_serve: an exec answered from the table */
	int32_t slot, pid; /* the table slot, the thread */
	int32_t cwd_off, cwd_len;
	double when;       /* CLOCK_REALTIME, seconds */
};

static long pt(long req, pid_t pid, unsigned long addr, unsigned long data)
{
	return syscall(SYS_ptrace, req, pid, addr, data);
}

static long ms_left(const struct timespec *deadline)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (deadline->tv_sec - now.tv_sec) * 1000 +
	       (deadline->tv_nsec - now.tv_nsec) / 1000000;
}

/* Read /proc/PID/cmdline into got (at most cap bytes); returns its length,
 * or -1 when the process is gone. */
static ssize_t read_cmdline(pid_t pid, char *got, size_t cap)
{
	char path[48];
	snprintf(path, sizeof path, "/proc/%d/cmdline", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t len = 0;
	while (len < cap) {
		ssize_t n = read(fd, got + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	return (ssize_t)len;
}

/* At an exec stop: does pid run the approved image with the approved argv?
 * got receives its cmdline (cap must exceed expect_len, so that a longer
 * cmdline cannot compare equal by being cut). */
static int runs_approved(pid_t pid, uint64_t dev, uint64_t ino, const char *expect,
			 size_t expect_len, char *got, size_t cap, int32_t *got_len)
{
	char path[48];
	struct stat st;
	snprintf(path, sizeof path, "/proc/%d/exe", pid);
	ssize_t len = read_cmdline(pid, got, cap);
	*got_len = len < 0 ? 0 : (int32_t)len;
	if (len < 0 || stat(path, &st) != 0)
		return 0;
	return (uint64_t)st.st_dev == dev && (uint64_t)st.st_ino == ino &&
	       (size_t)len == expect_len && memcmp(got, expect, expect_len) == 0;
}

/* The thread's stop arrived as (wpid, status): settle it. */
static int settle(pid_t wpid, int status, int delivered, uint64_t dev, uint64_t ino,
		  const char *expect, size_t expect_len, char *got, size_t cap,
		  struct ab_result *res)
{
	int event = status >> 16, sig = 0;
	res->wpid = wpid;
	if (!WIFSTOPPED(status))
		return AB_GONE;
	if (event == PTRACE_EVENT_EXEC && delivered &&
	    !runs_approved(wpid, dev, ino, expect, expect_len, got, cap, &res->got_len)) {
		kill(wpid, SIGKILL); /* still stopped at the exec event: nothing ran */
		return AB_MISMATCH;
	}
	if (event == 0)
		sig = WSTOPSIG(status); /* a signal-delivery stop: hand it back */
	pt(PTRACE_DETACH, wpid, 0, (unsigned long)sig); /* may have died meanwhile */
	return event == PTRACE_EVENT_EXEC && delivered ? AB_VERIFIED : AB_DETACHED;
}

/* Is the stop (wpid, status) the one of tid? An exec by a non-leader thread
 * is reported under the leader's pid; PTRACE_GETEVENTMSG names the old tid. */
static int is_ours(pid_t tid, pid_t wpid, int status)
{
	unsigned long former = 0;
	if (wpid == tid)
		return 1;
	if (!WIFSTOPPED(status) || status >> 16 != PTRACE_EVENT_EXEC)
		return 0;
	return pt(PTRACE_GETEVENTMSG, wpid, 0, (unsigned long)&former) == 0 &&
	       (pid_t)former == tid;
}

static void drain(int fd)
{
	char buf[256];
	while (read(fd, buf, sizeof buf) > 0)
		;
}

static int wait_stop(pid_t tid, int delivered, uint64_t dev, uint64_t ino,
		     const char *expect, size_t expect_len, int wake_fd, int timeout_ms,
		     char *got, size_t cap, struct ab_result *res)
{
	struct timespec deadline;
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += timeout_ms / 1000;
	deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (deadline.tv_nsec >= 1000000000) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000;
	}
	for (;;) {
		int status = 0;
		pid_t wpid = waitpid(-1, &status, WNOHANG | __WALL);
		if (wpid < 0 && errno == EINTR)
			continue;
		if (wpid < 0)
			return AB_GONE; /* ECHILD: no tracee left, tid included */
		if (wpid > 0 && is_ours(tid, wpid, status))
			return settle(wpid, status, delivered, dev, ino, expect, expect_len,
				      got, cap, res);
		if (wpid > 0) {
			res->wpid = wpid;
			res->status = status;
			return AB_OTHER;
		}
		long left = ms_left(&deadline);
		if (left <= 0)
			return AB_PENDING;
		struct pollfd pfd = {.fd = wake_fd, .events = POLLIN};
		if (poll(&pfd, 1, (int)left) > 0)
			drain(wake_fd);
	}
}

int ab_continue(int listener, uint64_t id, int tid, uint64_t dev, uint64_t ino,
		const char *expect, size_t expect_len, int wake_fd, int timeout_ms,
		char *got, size_t cap, struct ab_result *res)
{
	struct seccomp_notif_resp resp;
	memset(res, 0, sizeof *res);
	if (pt(PTRACE_SEIZE, tid, 0, PTRACE_O_TRACEEXEC | PTRACE_O_EXITKILL) != 0) {
		res->err = errno;
		return res->code = AB_UNARMED;
	}
	memset(&resp, 0, sizeof resp);
	resp.id = id;
	resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
	if (ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) == 0) {
		res->delivered = 1;
	} else if (errno != ENOENT && errno != EINPROGRESS) {
		res->err = errno; /* the thread stays seized: EXITKILL if we give up */
		return res->code = AB_ERROR;
	}
	if (pt(PTRACE_INTERRUPT, tid, 0, 0) != 0)
		return res->code = AB_GONE; /* died in the meantime */
	return res->code = wait_stop(tid, res->delivered, dev, ino, expect, expect_len,
				     wake_fd, timeout_ms, got, cap, res);
}

/* ------------------------------------------------------------ verdict table */

#define AB_SLOTS 1024 /* direct-mapped; worst case ~12 MiB of keys */
#define AB_MAX_ARGC 64
#define AB_KEY_MAX 8192 /* path + argv bytes of an exec that may be put */
#define AB_PATH_MAX 4096
#define AUDIT_ARCH_X86_64_ 0xC000003Eu

struct ab_entry {
	int used;
	uint64_t dev, ino, size;
	int64_t mtime_ns, ctime_ns;
	uint32_t raw_len, argv_len, canon_len;
	char *key; /* raw path, then argv (NUL-terminated strings), then canonical */
};

struct ab_table {
	int enabled;
	struct ab_entry e[AB_SLOTS];
};

static uint64_t hash(const char *a, size_t alen, const char *b, size_t blen)
{
	uint64_t h = 1469598103934665603ull; /* FNV-1a */
	for (size_t i = 0; i < alen; i++)
		h = (h ^ (unsigned char)a[i]) * 1099511628211ull;
	h = (h ^ 0xff) * 1099511628211ull;
	for (size_t i = 0; i < blen; i++)
		h = (h ^ (unsigned char)b[i]) * 1099511628211ull;
	return h;
}

struct ab_table *ab_table_new(void)
{
	return calloc(1, sizeof(struct ab_table));
}

void ab_table_enable(struct ab_table *t, int on)
{
	t->enabled = on;
}

/* Remember an allowed exec (see the header); returns its slot, or -1. */
int ab_put(struct ab_table *t, const char *raw, size_t raw_len, const char *argv,
	   size_t argv_len, const char *canon, size_t canon_len, uint64_t dev, uint64_t ino,
	   uint64_t size, int64_t mtime_ns, int64_t ctime_ns)
{
	if (raw_len + argv_len > AB_KEY_MAX || canon_len >= AB_PATH_MAX)
		return -1;
	int slot = (int)(hash(raw, raw_len, argv, argv_len) % AB_SLOTS);
	struct ab_entry *e = &t->e[slot];
	char *key = malloc(raw_len + argv_len + canon_len);
	if (key == NULL)
		return -1;
	memcpy(key, raw, raw_len);
	memcpy(key + raw_len, argv, argv_len);
	memcpy(key + raw_len + argv_len, canon, canon_len);
	free(e->key);
	*e = (struct ab_entry){1, dev, ino, size, mtime_ns, ctime_ns,
			       (uint32_t)raw_len, (uint32_t)argv_len, (uint32_t)canon_len, key};
	return slot;
}

/* ------------------------------------------------------------ reading the exec */

struct exec_read {
	char path[AB_PATH_MAX];
	size_t path_len;
	char argv[AB_KEY_MAX];
	size_t argv_len;
	int argc;
};

/* The NUL-terminated string at addr, within the page it starts in: its first
 * 256 bytes, then (rarely) the rest of the page. */
static ssize_t page_string(int mem, uint64_t addr, char *out, size_t cap)
{
	size_t rest = 4096 - (size_t)(addr % 4096), first = 256;
	if (rest > cap)
		rest = cap;
	if (first > rest)
		first = rest;
	ssize_t n = addr == 0 ? -1 : pread(mem, out, first, (off_t)addr);
	char *nul = n > 0 ? memchr(out, 0, (size_t)n) : NULL;
	if (nul == NULL && n == (ssize_t)first && rest > first) {
		ssize_t more = pread(mem, out + first, rest - first, (off_t)(addr + first));
		nul = more > 0 ? memchr(out + first, 0, (size_t)more) : NULL;
	}
	return nul == NULL ? -1 : nul - out;
}

/* Path and argv of the execve, or -1 for anything Python must look at. */
static int read_exec(pid_t tid, uint64_t path_ptr, uint64_t argv_ptr, struct exec_read *x)
{
	char proc[48];
	uint64_t ptrs[AB_MAX_ARGC + 1];
	snprintf(proc, sizeof proc, "/proc/%d/mem", tid);
	int mem = open(proc, O_RDONLY | O_CLOEXEC);
	if (mem < 0)
		return -1;
	int ok = 0;
	ssize_t n = page_string(mem, path_ptr, x->path, sizeof x->path);
	size_t rest = 4096 - (size_t)(argv_ptr % 4096);
	if (rest > sizeof ptrs)
		rest = sizeof ptrs;
	ssize_t got = n > 0 && argv_ptr ? pread(mem, ptrs, rest, (off_t)argv_ptr) : -1;
	x->path_len = (size_t)n;
	x->argc = 0;
	x->argv_len = 0;
	for (ssize_t i = 0; got > 0 && i < got / 8; i++) {
		if (ptrs[i] == 0) {
			ok = x->argc > 0;
			break;
		}
		ssize_t len = page_string(mem, ptrs[i], x->argv + x->argv_len,
					  sizeof x->argv - x->argv_len);
		if (len < 0)
			break;
		x->argv_len += (size_t)len + 1;
		x->argc++;
	}
	close(mem);
	return ok ? 0 : -1;
}

/* ------------------------------------------------------------ resolving it */

/* An O_PATH fd of the file the execve names, resolved from / or the tracee's
 * cwd without magic links; -1 for anything Python must resolve itself. */
static int open_target(pid_t tid, const char *path)
{
	struct open_how how = {.flags = O_PATH | O_CLOEXEC, .resolve = RESOLVE_NO_MAGICLINKS};
	int start = AT_FDCWD;
	if (path[0] != '/') {
		char proc[48];
		snprintf(proc, sizeof proc, "/proc/%d/cwd", tid);
		start = open(proc, O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (start < 0)
			return -1;
	}
	int fd = (int)syscall(SYS_openat2, start, path, &how, sizeof how);
	if (start >= 0)
		close(start);
	return fd;
}

static int lookup(struct ab_table *t, pid_t tid, const struct exec_read *x,
		  struct stat *st)
{
	int slot = (int)(hash(x->path, x->path_len, x->argv, x->argv_len) % AB_SLOTS);
	const struct ab_entry *e = &t->e[slot];
	if (!e->used || e->raw_len != x->path_len || e->argv_len != x->argv_len ||
	    memcmp(e->key, x->path, x->path_len) != 0 ||
	    memcmp(e->key + e->raw_len, x->argv, x->argv_len) != 0)
		return -1;
	int fd = open_target(tid, x->path);
	if (fd < 0)
		return -1;
	char proc[48], canon[AB_PATH_MAX];
	snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
	ssize_t clen = fstat(fd, st) == 0 && S_ISREG(st->st_mode)
			       ? readlink(proc, canon, sizeof canon) : -1;
	close(fd);
	if (clen < 0 || (size_t)clen != e->canon_len ||
	    memcmp(canon, e->key + e->raw_len + e->argv_len, (size_t)clen) != 0)
		return -1;
	int64_t mtime = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
	int64_t ctime = (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec;
	if ((uint64_t)st->st_dev != e->dev || (uint64_t)st->st_ino != e->ino ||
	    (uint64_t)st->st_size != e->size || mtime != e->mtime_ns || ctime != e->ctime_ns)
		return -1;
	return slot;
}

/* ------------------------------------------------------------ the transport */

int ab_next(int listener, struct ab_table *t, struct seccomp_notif *note, int wake_fd,
	    int timeout_ms, char *got, size_t cap, struct ab_result *res)
{
	static struct exec_read x;
	struct stat st;
	memset(res, 0, sizeof *res);
	res->slot = -1;
	memset(note, 0, sizeof *note);
	if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, note) != 0) {
		res->err = errno;
		return res->code = AB_RECV;
	}
	pid_t tid = (pid_t)note->pid;
	if (!t->enabled || note->data.nr != SYS_execve ||
	    note->data.arch != AUDIT_ARCH_X86_64_ ||
	    read_exec(tid, note->data.args[0], note->data.args[1], &x) != 0)
		return res->code = AB_NOTE;
	int slot = lookup(t, tid, &x, &st);
	char proc[48];
	snprintf(proc, sizeof proc, "/proc/%d/cwd", tid);
	ssize_t clen = slot < 0 ? -1 : readlink(proc, got, cap);
	if (clen < 0 || (size_t)clen >= cap)
		return res->code = AB_NOTE;
	/* The reads are the tracee's only if it still waits (its pid not reused). */
	uint64_t id = note->id;
	if (ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) != 0)
		return res->code = AB_STALE;
	ab_continue(listener, note->id, tid, (uint64_t)st.st_dev, (uint64_t)st.st_ino, x.argv,
		    x.argv_len, wake_fd, timeout_ms, got + clen, cap - (size_t)clen, res);
	res->slot = slot;
	res->cwd_len = (int32_t)clen;
	return res->code;
}

/* Serve notifications until one needs Python, answering table hits meanwhile
 * (their records go to hits[], their cwds to got): returns when a notification
 * is not a plain hit (its outcome, as ab_next; res->base tells where in got its
 * data starts), when the listener hangs up, when the SIGCHLD wake-up fd is
 * readable, when a hit's aftermath left a stop or exit to collect (REAPED), when
 * hits[] or got is full, or after idle_ms without a notification while hits are
 * buffered or `flush` asks for it. Python calls it only while it holds no thread
 * at its exec boundary, so every SIGCHLD meanwhile is one of these execs'. */
int ab_serve(int listener, struct ab_table *t, struct seccomp_notif *note, int wake_fd,
	     int timeout_ms, int idle_ms, int flush, char *got, size_t cap,
	     struct ab_result *res, struct ab_hit *hits, int max_hits, int32_t *nhits)
{
	size_t used = 0;
	*nhits = 0;
	memset(res, 0, sizeof *res);
	res->slot = -1;
	for (;;) {
		struct pollfd p[2] = {{.fd = listener, .events = POLLIN},
				      {.fd = wake_fd, .events = POLLIN}};
		if (*nhits == max_hits || cap - used < 2 * AB_KEY_MAX + AB_PATH_MAX)
			return res->code = AB_IDLE;
		int n = poll(p, 2, *nhits || flush ? idle_ms : -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			res->err = errno;
			return res->code = AB_POLL;
		}
		if (n == 0)
			return res->code = AB_IDLE;
		if (p[1].revents)
			return res->code = AB_WAKE;
		if (!(p[0].revents & POLLIN))
			return res->code = AB_HUP;
		int code = ab_next(listener, t, note, wake_fd, timeout_ms, got + used, cap - used,
				   res);
		res->base = (int32_t)used;
		if (res->slot < 0 || (code != AB_VERIFIED && code != AB_DETACHED && code != AB_GONE))
			return code;
		struct timespec now;
		clock_gettime(CLOCK_REALTIME, &now);
		hits[(*nhits)++] = (struct ab_hit){res->slot, (int32_t)note->pid, (int32_t)used,
						   res->cwd_len, now.tv_sec + now.tv_nsec / 1e9};
		used += (size_t)res->cwd_len;
		/* Consume this exec's SIGCHLD, then collect-check: a stop or exit that
		 * happened before the drain is waitable now and goes to Python. */
		drain(wake_fd);
		int status = 0;
		pid_t w = waitpid(-1, &status, WNOHANG | __WALL);
		if (w > 0) {
			res->wpid = w;
			res->status = status;
			return res->code = AB_REAPED;
		}
	}
}
