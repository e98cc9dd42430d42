/* The floor of exec supervision by seccomp user-notify on this machine: a minimal C
 * supervisor that answers every execve with CONTINUE, optionally doing the reads a real
 * supervisor needs. bench/notify_floor.py builds and runs it; see there.
 *
 *   notify-floor MODE PROGRAM [ARG]...
 *
 * MODE: 0 no filter; 1 notify, CONTINUE at once; 2 as 1 with SYNC_WAKE_UP; 3 as 2 and
 * read the path with process_vm_readv; 4 as 2 and read path and argv through
 * /proc/PID/mem; 5 as 4 and resolve the path (openat2, fstat, readlink) and check the
 * id is still valid.
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
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
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
	if (mode >= 4) {
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
		memset(&r, 0, sizeof r);
		r.id = n.id;
		r.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
		ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &r);
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

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "wake") == 0)
		return wake(atoi(argv[2]), atoi(argv[3]));
	if (argc < 3)
		return 2;
	int mode = atoi(argv[1]), sv[2], status;
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
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_execve, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {sizeof f / sizeof f[0], f};
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
