/* The floor of exec supervision by seccomp user-notify on this machine: a minimal C
 * supervisor that answers every execve with CONTINUE, optionally doing the reads a real
 * supervisor needs. bench/notify_floor.py builds and runs it; see there.
 *
 *   notify-floor MODE PROGRAM [ARG]...
 *
 * MODE: 0 no filter; 1 notify, CONTINUE at once; 2 as 1 with SYNC_WAKE_UP; 3 as 2 and
 * read the path with process_vm_readv; 4 as 2 and read path and argv through
 * /proc/PID/mem; 5 as 4 and resolve the path (openat2, fstat, readlink) and check the
 * id is still valid; 6 as 5 but path and argv read with process_vm_readv; 7 as 6 and
 * check at the exec boundary (PTRACE_SEIZE before the answer, wait for the
 * PTRACE_EVENT_EXEC stop, read /proc/PID/exe, PTRACE_DETACH), the sequence agentsh's
 * `verify` runs.
 *
 *   notify-floor files PROGRAM [ARG]...
 *
 * runs PROGRAM with the file calls the notify file monitor traps for the built-in
 * policy (opens, unlink/rmdir, rename, link, symlink, mkdir, truncate, chmod, chown)
 * handed to a supervisor that answers each with CONTINUE at once (SYNC_WAKE_UP): the
 * least any user-notify file monitor costs, checking nothing.
 *
 *   notify-floor wake CPU_A CPU_B
 *
 * prints the microseconds of one pipe round trip between a process on CPU_A and one
 * on CPU_B (two wake-ups of a sleeping process): what any supervisor that answers
 * from another CPU pays on top of its own work. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NOTIF_SET_FLAGS 0x40082104UL /* SECCOMP_IOCTL_NOTIF_SET_FLAGS, flag by value */

static int send_fd(int sock, int fd)
{
	char c = 'x', ctl[CMSG_SPACE(sizeof(int))];
	struct iovec io = {&c, 1};
	struct msghdr m = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = ctl,
			   .msg_controllen = sizeof ctl};
	struct cmsghdr *h = CMSG_FIRSTHDR(&m);
	h->cmsg_level = SOL_SOCKET;
	h->cmsg_type = SCM_RIGHTS;
	h->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(h), &fd, sizeof fd);
	return sendmsg(sock, &m, 0) == 1 ? 0 : -1;
}

static int recv_fd(int sock)
{
	char c, ctl[CMSG_SPACE(sizeof(int))];
	struct iovec io = {&c, 1};
	struct msghdr m = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = ctl,
			   .msg_controllen = sizeof ctl};
	int fd = -1;
	if (recvmsg(sock, &m, 0) == 1 && CMSG_FIRSTHDR(&m) != NULL)
		memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&m)), sizeof fd);
	return fd;
}

static void look(int mode, int listener, const struct seccomp_notif *n)
{
	char path[4096], arg[256], proc[64];
	unsigned long ptrs[8];
	if (mode == 3) {
		struct iovec l = {path, 256}, r = {(void *)n->data.args[0], 256};
		process_vm_readv(n->pid, &l, 1, &r, 1, 0);
	}
	if (mode >= 6) {
		struct iovec l = {path, 256}, r = {(void *)n->data.args[0], 256};
		struct iovec lp = {ptrs, sizeof ptrs}, rp = {(void *)n->data.args[1], sizeof ptrs};
		if (process_vm_readv(n->pid, &l, 1, &r, 1, 0) > 0 &&
		    process_vm_readv(n->pid, &lp, 1, &rp, 1, 0) > 0) {
			struct iovec la = {arg, sizeof arg}, ra = {(void *)ptrs[0], sizeof arg};
			process_vm_readv(n->pid, &la, 1, &ra, 1, 0);
		}
		path[255] = 0;
	} else if (mode >= 4) {
		snprintf(proc, sizeof proc, "/proc/%u/mem", n->pid);
		int mem = open(proc, O_RDONLY | O_CLOEXEC);
		if (pread(mem, path, 256, (off_t)n->data.args[0]) > 0 &&
		    pread(mem, ptrs, sizeof ptrs, (off_t)n->data.args[1]) > 0)
			pread(mem, arg, sizeof arg, (off_t)ptrs[0]);
		close(mem);
		path[255] = 0;
	}
	if (mode >= 5) {
		struct open_how how = {.flags = O_PATH | O_CLOEXEC,
				       .resolve = RESOLVE_NO_MAGICLINKS};
		struct stat st;
		char canon[4096];
		unsigned long long id = n->id;
		int fd = (int)syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof how);
		if (fd >= 0) {
			fstat(fd, &st);
			snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
			if (readlink(proc, canon, sizeof canon) < 0)
				canon[0] = 0;
			close(fd);
		}
		ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id);
	}
}

/* Mode 7, after the answer: the seized thread's PTRACE_EVENT_EXEC stop (other stops
 * are resumed with their signal), /proc/PID/exe read there, then detach. */
static void boundary(pid_t tid)
{
	char proc[64], exe[4096];
	int status;
	while (waitpid(tid, &status, __WALL) == tid && WIFSTOPPED(status)) {
		if (status >> 8 == (SIGTRAP | (PTRACE_EVENT_EXEC << 8))) {
			snprintf(proc, sizeof proc, "/proc/%d/exe", tid);
			if (readlink(proc, exe, sizeof exe) < 0)
				exe[0] = 0;
			ptrace(PTRACE_DETACH, tid, 0, 0);
			return;
		}
		int sig = WSTOPSIG(status) == SIGTRAP ? 0 : WSTOPSIG(status);
		ptrace(PTRACE_CONT, tid, 0, sig);
	}
}

static void serve(int mode, int listener)
{
	struct seccomp_notif n;
	struct seccomp_notif_resp r;
	if (mode >= 2)
		ioctl(listener, NOTIF_SET_FLAGS, 1UL); /* SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP */
	for (;;) {
		memset(&n, 0, sizeof n);
		if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &n) != 0)
			_exit(0); /* every governed task is gone */
		look(mode, listener, &n);
		int seized = mode >= 7 && ptrace(PTRACE_SEIZE, n.pid, 0,
						 PTRACE_O_TRACEEXEC | PTRACE_O_EXITKILL) == 0;
		memset(&r, 0, sizeof r);
		r.id = n.id;
		r.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
		ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &r);
		if (seized)
			boundary((pid_t)n.pid);
	}
}

static void pin(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof set, &set) != 0)
		_exit(1);
}

/* Pipe ping-pong between CPUs a and b; returns 0 after printing us per round trip. */
static int wake(int a, int b)
{
	enum { ROUNDS = 20000 };
	int there[2], back[2];
	char c = 'x';
	struct timespec t0, t1;
	if (pipe(there) != 0 || pipe(back) != 0)
		return 1;
	pid_t peer = fork();
	if (peer == 0) {
		pin(b);
		for (int i = 0; i < ROUNDS; i++)
			if (read(there[0], &c, 1) != 1 || write(back[1], &c, 1) != 1)
				_exit(1);
		_exit(0);
	}
	pin(a);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int i = 0; i < ROUNDS; i++)
		if (write(there[1], &c, 1) != 1 || read(back[0], &c, 1) != 1)
			return 1;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	waitpid(peer, NULL, 0);
	double ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
	printf("%.1f\n", ns / ROUNDS / 1e3);
	return 0;
}

/* x86_64 numbers of the file calls filemon.FAMILIES and filemon.OPENS name. */
static const int FILE_CALLS[] = {2, 85, 257, 437, 87, 84, 263, 82, 264, 316, 86, 265, 88,
				 266, 83, 258, 76, 90, 91, 268, 452, 92, 93, 94, 260};
#define NFILE (sizeof FILE_CALLS / sizeof FILE_CALLS[0])

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "wake") == 0)
		return wake(atoi(argv[2]), atoi(argv[3]));
	if (argc < 3)
		return 2;
	int files = strcmp(argv[1], "files") == 0;
	int mode = files ? 2 : atoi(argv[1]), sv[2], status;
	if (mode == 0) {
		execv(argv[2], argv + 2);
		return 127;
	}
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
		return 1;
	if (fork() == 0) {
		close(sv[0]);
		serve(mode, recv_fd(sv[1]));
	}
	close(sv[1]);
	/* load nr; one JEQ per trapped call, jumping to the NOTIF return; else ALLOW */
	struct sock_filter f[NFILE + 3];
	unsigned short n = files ? NFILE : 1;
	f[0] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
					    offsetof(struct seccomp_data, nr));
	for (unsigned short i = 0; i < n; i++)
		f[1 + i] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
							 files ? FILE_CALLS[i] : SYS_execve,
							 (unsigned char)(n - i), 0);
	f[1 + n] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	f[2 + n] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF);
	struct sock_fprog prog = {(unsigned short)(n + 3), f};
	prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
	int listener = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
				    SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
	if (listener < 0 || send_fd(sv[0], listener) != 0)
		return 1;
	close(listener);
	close(sv[0]);
	pid_t child = fork();
	if (child == 0) {
		execv(argv[2], argv + 2);
		_exit(127);
	}
	waitpid(child, &status, 0);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
