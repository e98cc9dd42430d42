/*
 * agentsh-shell-shim: the static launcher installed as /usr/bin/bash (and
 * /usr/bin/sh). It holds no policy. It decides whether this invocation goes
 * to the real shell untouched or to the Python frontend, and it never runs
 * anything else: every failure is one line on stderr and exit 127.
 * See agentsh-shim(8) and ARCHITECTURE §4.
 *
 * Built static: no dynamic loader, so no LD_* variable of the caller applies
 * to it. Built against musl where available: glibc's static start-up probes
 * the CPU with dozens of cpuid instructions, each a VM exit, which alone adds
 * ~0.5 ms to every bash on a VM. The source is plain POSIX for either libc.
 *
 * main() is the decision table, in this order:
 *   -  the real shell is /proc/self/exe + ".real" (installed as bash it runs
 *      bash.real, as sh it runs sh.real); it must exist before anything runs.
 *   1  shim.conf present but untrusted (unreadable, not a root-owned regular
 *      file, writable by group/others, or /etc/agentsh not root-owned and
 *      root-only-writable): ignore its contents, frontend= too, and force.
 *   2  a malformed line, an unknown or repeated key, an invalid value: 127.
 *      Force = force=true OR $AGENTSH_SHIM_FORCE: the environment only tightens.
 *   3  the kernel marker proves we already run governed (our seccomp filter
 *      answers it): the real shell, the outer supervisor governs it.
 *   4  stdin is not a TTY and nothing forces: the real shell, untouched, with
 *      the caller's argv[0] ("-bash" stays a login shell) and environment.
 *   5  otherwise: `<frontend> -I -m agentsh.shell --argv0 A --real R -- ARGS`,
 *      in place (same PID, fds and TTY).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define CONF_DIR "/etc/agentsh"
#define CONF_PATH CONF_DIR "/shim.conf"
#define CONF_MAX 4096
#define INSTALL_HINT "run: agentsh shim install-shell"

/* The governed marker (agentsh.enforce.govern): an unassigned syscall number with two
 * magic arguments, which only agentsh's seccomp filter answers, with this errno. */
#define MARKER_NR 0x3FFFA65EL
#define MARKER_ARG0 0x68736761L /* "agsh" */
#define MARKER_ARG1 0x65766F67L /* "gove" */
#define MARKER_ERRNO 2661

struct conf {
	bool present;            /* shim.conf exists and is trusted */
	bool force;              /* its force= */
	bool seen_force;         /* a repeated key is an error, not "last wins" */
	bool seen_frontend;
	char why[256];           /* non-empty: shim.conf is ignored, and this forces */
	char frontend[PATH_MAX]; /* empty: none configured */
};

/* Every refusal: one line on stderr, exit 127, nothing exec'd. */
__attribute__((noreturn, format(printf, 1, 2)))
static void die(const char *fmt, ...)
{
	va_list ap;

	fputs("agentsh: shim: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(127);
}

/* Only root may be able to change what we trust. */
static bool root_only_writable(const struct stat *st)
{
	return st->st_uid == 0 && (st->st_mode & (S_IWGRP | S_IWOTH)) == 0;
}

/*
 * Row 1: open shim.conf if it may be trusted. Returns the fd; -1 when it is
 * absent (c->why stays empty) or must be ignored (c->why says why).
 * The directory first: whoever can write /etc/agentsh can swap the file after
 * we checked it. O_NOFOLLOW: a symlink is not trusted either. O_NONBLOCK: a
 * FIFO planted there must not hang every bash on the machine.
 */
static int open_conf(struct conf *c)
{
	struct stat st;
	int fd;

	if (lstat(CONF_DIR, &st) != 0) {
		if (errno != ENOENT)
			snprintf(c->why, sizeof c->why, "cannot stat %s: %s", CONF_DIR, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode) || !root_only_writable(&st)) {
		snprintf(c->why, sizeof c->why, "%s is not a directory only root can write", CONF_DIR);
		return -1;
	}
	fd = open(CONF_PATH, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0 && errno != ENOENT)
		snprintf(c->why, sizeof c->why, "cannot read %s: %s", CONF_PATH, strerror(errno));
	if (fd < 0)
		return -1;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || !root_only_writable(&st)) {
		snprintf(c->why, sizeof c->why, "%s is not a file only root can write", CONF_PATH);
		close(fd);
		return -1;
	}
	return fd;
}

/* Reads all of fd into buf, NUL-terminated. False (c->why set) on a read error. */
static bool read_conf(struct conf *c, int fd, char *buf, size_t size)
{
	size_t len = 0;
	ssize_t n;

	while ((n = read(fd, buf + len, size - 1 - len)) > 0)
		len += (size_t)n;
	if (n < 0) {
		snprintf(c->why, sizeof c->why, "cannot read %s: %s", CONF_PATH, strerror(errno));
		return false;
	}
	if (len == size - 1)
		die("%s: longer than %zu bytes", CONF_PATH, size - 2);
	if (memchr(buf, '\0', len) != NULL)
		die("%s: contains a NUL byte", CONF_PATH);
	buf[len] = '\0';
	return true;
}

static char *trim(char *s)
{
	char *end;

	while (*s == ' ' || *s == '\t')
		s++;
	end = s + strlen(s);
	while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
		*--end = '\0';
	return s;
}

/* Row 2: every key known, every value valid, every key set at most once. */
static void set_key(struct conf *c, int line, const char *key, const char *val)
{
	bool *seen = !strcmp(key, "force") ? &c->seen_force
		   : !strcmp(key, "frontend") ? &c->seen_frontend : NULL;

	if (seen == NULL)
		die("%s:%d: unknown key \"%s\" (known: force, frontend)", CONF_PATH, line, key);
	if (*seen)
		die("%s:%d: key \"%s\" given twice", CONF_PATH, line, key);
	*seen = true;
	if (seen == &c->seen_frontend) {
		/* Fixed at install time: absolute, never looked up on PATH. */
		if (val[0] != '/' || strlen(val) >= sizeof c->frontend)
			die("%s:%d: invalid value for frontend: \"%s\" (expected an absolute path)",
			    CONF_PATH, line, val);
		strcpy(c->frontend, val);
		return;
	}
	/* The spellings the Go agentsh writes (true, 1, false), plus 0, yes and no. */
	c->force = !strcmp(val, "true") || !strcmp(val, "1") || !strcmp(val, "yes");
	if (!c->force && strcmp(val, "false") && strcmp(val, "0") && strcmp(val, "no"))
		die("%s:%d: invalid value for force: \"%s\" (expected true or false)",
		    CONF_PATH, line, val);
}

/* `key = value` lines; blank lines and `#` comments are skipped. */
static void parse_conf(struct conf *c, char *text)
{
	char *line, *next, *s, *eq;
	int lineno = 0;

	for (line = text; line != NULL; line = next) {
		next = strchr(line, '\n');
		if (next != NULL)
			*next++ = '\0';
		lineno++;
		s = trim(line);
		if (*s == '\0' || *s == '#')
			continue;
		eq = strchr(s, '=');
		if (eq == NULL)
			die("%s:%d: expected key=value, got \"%s\"", CONF_PATH, lineno, s);
		*eq = '\0';
		set_key(c, lineno, trim(s), trim(eq + 1));
	}
}

/* Rows 1 and 2. Afterwards c->why is empty (trusted or absent) or says why it forces. */
static void load_conf(struct conf *c)
{
	char buf[CONF_MAX];
	int fd = open_conf(c);

	if (fd < 0)
		return;
	c->present = true;
	if (read_conf(c, fd, buf, sizeof buf))
		parse_conf(c, buf);
	close(fd);
}

/* Unset, "", "0", "false" and "no" leave it to shim.conf; anything else forces. */
static bool env_forces(void)
{
	const char *v = getenv("AGENTSH_SHIM_FORCE");

	return v != NULL && *v != '\0' && strcmp(v, "0") && strcmp(v, "false") && strcmp(v, "no");
}

/*
 * Row 3: does the kernel prove this process already runs inside a governed
 * tree? agentsh's seccomp filter answers the marker syscall with MARKER_ERRNO;
 * anywhere else the kernel says ENOSYS. Only a seccomp filter can produce the
 * answer, and a process able to install one before running bash already runs
 * outside any governed tree; inside one, the outer supervisor checks every
 * exec whatever filters are stacked on it. This must never consult the
 * environment: the caller controls it (the Go agentsh's AGENTSH_IN_SESSION=1
 * let any agent opt out).
 */
static bool proven_governed(void)
{
	long r = syscall(MARKER_NR, MARKER_ARG0, MARKER_ARG1, 0L, 0L, 0L);

	return r == -1 && errno == MARKER_ERRNO;
}

/*
 * The real shell sits next to the file we were exec'd from. The kernel's
 * /proc/self/exe is that file's canonical path, symlinks resolved (proc(5)):
 * what realpath(3) would return, in one readlink(2).
 */
static void real_shell_path(char *out, size_t size)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof self);

	if (n < 0)
		die("cannot read /proc/self/exe: %s", strerror(errno));
	if ((size_t)n >= sizeof self || (size_t)n + sizeof ".real" > size)
		die("the path of /proc/self/exe is too long");
	memcpy(out, self, (size_t)n);
	memcpy(out + n, ".real", sizeof ".real");
}

static void require_executable(const char *what, const char *path)
{
	struct stat st;

	if (stat(path, &st) != 0)
		die("%s %s: %s (%s)", what, path, strerror(errno), INSTALL_HINT);
	if (!S_ISREG(st.st_mode) || access(path, X_OK) != 0)
		die("%s %s is not an executable file (%s)", what, path, INSTALL_HINT);
}

/* Rows 3 and 4: the caller's argv, argv[0] included, and environment, as they are. */
__attribute__((noreturn))
static void exec_real(const char *real, char **argv)
{
	execv(real, argv);
	die("cannot execute %s: %s", real, strerror(errno));
}

/*
 * Row 5. The interpreter is dynamically linked: its loader must not load the
 * caller's code into the process that enforces the policy, so these go
 * first. -I already makes Python ignore PYTHON* variables.
 */
__attribute__((noreturn))
static void exec_frontend(const struct conf *c, const char *real, int argc, char **argv)
{
	static const char *const loader_vars[] = {
		"LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH", "GCONV_PATH",
	};
	const char *head[] = { c->frontend, "-I", "-m", "agentsh.shell",
			       "--argv0", argv[0], "--real", real, "--" };
	size_t nhead = sizeof head / sizeof head[0], i;
	char **nargv;

	if (c->why[0] != '\0')
		die("%s: forced, and no trusted frontend is configured", c->why);
	if (!c->present)
		die("%s is missing, so no frontend is configured (%s)", CONF_PATH, INSTALL_HINT);
	if (c->frontend[0] == '\0')
		die("%s has no frontend= line (%s)", CONF_PATH, INSTALL_HINT);
	require_executable("frontend", c->frontend);
	nargv = calloc(nhead + (size_t)argc, sizeof *nargv);
	if (nargv == NULL)
		die("out of memory");
	for (i = 0; i < nhead; i++)
		nargv[i] = (char *)head[i];
	for (i = 1; i < (size_t)argc; i++)
		nargv[nhead + i - 1] = argv[i];
	for (i = 0; i < sizeof loader_vars / sizeof loader_vars[0]; i++)
		unsetenv(loader_vars[i]);
	execv(c->frontend, nargv);
	die("cannot execute frontend %s: %s", c->frontend, strerror(errno));
}

int main(int argc, char **argv)
{
	struct conf conf;
	char real[PATH_MAX];
	bool force;

	memset(&conf, 0, sizeof conf);
	/* An empty argv (execve(path, {NULL}, envp)) has no name to preserve. */
	if (argc < 1 || argv[0] == NULL)
		die("empty argument vector");
	real_shell_path(real, sizeof real);
	/* Rows 1 and 2; may exit 127. An ignored shim.conf forces: fail closed. */
	load_conf(&conf);
	force = conf.force || conf.why[0] != '\0' || env_forces();
	/* Before rows 3-5 alike: the frontend would exec this same file. */
	require_executable("real shell", real);
	if (proven_governed())
		exec_real(real, argv);
	if (!force && !isatty(STDIN_FILENO))
		exec_real(real, argv);
	exec_frontend(&conf, real, argc, argv);
}
