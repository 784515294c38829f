/*
 * quilt-monitor: what stays of a container's monitor once its command runs.
 *
 * The Python monitor (quilt_agent/helper/monitor.py), forked from the agent's fork server, makes the user
 * namespace, forks the container's init, follows its setup and tells the agent the container started. From then
 * on all it does is wait for the init and record how it ended, and a forked Python process costs ~2 MiB of
 * memory per container for that. So it execs this program, which keeps its pid, its start time (how the agent
 * finds it again after a restart), its scope, its ignored signals and its child, the init, and needs a tenth of
 * that. Written in C, like conmon, because what it replaces is the memory of an interpreter: no library could
 * shrink that.
 *
 * It does what monitor.py's _wait and _record_exit do, and nothing else:
 *   - wait for the init (a pidfd) while watching the container's memory cgroup for OOM kills, as oom.py's OomWatch
 *     does: on cgroup v2, memory.events raises POLLPRI at each change; on v1, an eventfd registered on
 *     memory.oom_control fires at each OOM (and at the cgroup's removal);
 *   - reap it, and write its end to the exit file as JSON (to a temporary file, then renamed: the agent never
 *     reads half of it). The agent reads it when this process ends (its pidfd).
 *
 * With the log drivers k8s-file and journald+file it also holds the container's output, as conmon does: it reads the
 * container's stdout and stderr pipes and writes their lines to the container's log file (logfile.c), and on to
 * journald streams with journald+file. After the init's end it reads what the pipes still hold, then records it.
 *
 * Usage:
 *   quilt-monitor NAME INIT_PID EXIT_FILE COUNTER_FD EVENT_FD EVENTS [DIR_FD MAX_SIZE MAX_FILES OUT_FD ERR_FD
 *                 FORWARD_OUT_FD FORWARD_ERR_FD]
 * NAME: the container's; ps and top show "quilt-mon NAME", as they did before the exec.
 * COUNTER_FD: the open memory.events (v2) or memory.oom_control (v1), or -1; EVENT_FD: what to poll for OOM
 * kills (COUNTER_FD itself on v2, the eventfd on v1), or -1; EVENTS: "pri" (v2) or "in" (v1), or "-".
 * DIR_FD: the container's directory, where ctr.log goes; MAX_SIZE (bytes, 0: no rotation) and MAX_FILES: its
 * rotation; OUT_FD, ERR_FD: the read ends of the container's pipes; FORWARD_*: journald streams, or -1.
 * Exit status 0 once the exit file is written; 1 (and a line on stderr, the agent's journal) when it could not be.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "logfile.h"

#define DRAIN_READS 256 /* of up to 64 KiB each */

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

static void say(const char *what)
{
	dprintf(2, "quilt-monitor: %s: %s\n", what, strerror(errno));
}

static bool parse_int(const char *text, long min, long max, long *out)
{
	char *end;
	errno = 0;
	long value = strtol(text, &end, 10);
	if (errno || end == text || *end || value < min || value > max)
		return false;
	*out = value;
	return true;
}

/* The oom_kill count in an open memory.events or memory.oom_control; -1 once the cgroup is gone. */
static long oom_count(int fd)
{
	char text[4096];
	ssize_t n = pread(fd, text, sizeof(text) - 1, 0);
	if (n < 0)
		return -1;
	text[n] = '\0';
	for (char *line = text; *line;) {
		if (strncmp(line, "oom_kill ", 9) == 0)
			return strtol(line + 9, NULL, 10);
		char *next = strchr(line, '\n');
		if (!next)
			break;
		line = next + 1;
	}
	return 0;
}

struct oom_watch {
	int counter; /* -1: nothing watched */
	int event;   /* what is polled; -1 once not */
	short events;
	bool killed;
};

/* The polled fd was ready: note an OOM kill. Returns whether to keep watching. */
static bool oom_fired(struct oom_watch *w)
{
	long count = oom_count(w->counter);
	if (count < 0)
		return false; /* the cgroup was removed */
	if (w->event != w->counter) {
		uint64_t value;
		if (read(w->event, &value, sizeof(value)) < 0)
			return true; /* EAGAIN: nothing yet */
		/* v1 notifies an OOM before its kill is counted: with the cgroup still there, this was one. */
		w->killed = true;
	}
	w->killed = w->killed || count > 0;
	return true;
}

/* Wait for the init's end, watching for OOM kills and relaying its output meanwhile; its wait status. */
static int wait_init(pid_t pid, struct oom_watch *w, struct log_file *log, struct log_stream *streams)
{
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	struct pollfd fds[4] = {{.fd = pidfd, .events = POLLIN},
				{.fd = w->event, .events = w->events},
				{.fd = streams[0].in, .events = POLLIN},
				{.fd = streams[1].in, .events = POLLIN}};
	if (pidfd >= 0) {
		for (;;) {
			int n = poll(fds, 4, -1);
			if (n < 0) {
				if (errno == EINTR)
					continue;
				say("poll");
				break; /* waitpid below still waits */
			}
			if (fds[0].revents)
				break;
			if (fds[1].revents && !oom_fired(w)) {
				w->event = -1;
				fds[1].fd = -1;
			}
			for (int i = 0; i < 2; i++) {
				if (fds[2 + i].revents && log_relay(log, &streams[i]) == 0) {
					close(streams[i].in);
					streams[i].in = fds[2 + i].fd = -1;
				}
			}
		}
		close(pidfd);
	}
	/* What the container wrote before its end, and its last unfinished line; not what a process it left behind
	 * (without a pid namespace) may go on writing: at most DRAIN_READS reads more. */
	for (int i = 0; i < 2; i++) {
		if (streams[i].in < 0)
			continue;
		fcntl(streams[i].in, F_SETFL, fcntl(streams[i].in, F_GETFL) | O_NONBLOCK);
		long n = 1;
		for (int reads = 0; n > 0 && reads < DRAIN_READS; reads++)
			n = log_relay(log, &streams[i]);
		if (n != 0)
			log_flush(log, &streams[i]);
		close(streams[i].in);
		streams[i].in = -1;
	}
	int status;
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR) {
			say("waitpid");
			return -1;
		}
	}
	return status;
}

static bool record_exit(const char *exit_file, int status, bool oom_killed)
{
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now); /* first: as close to the reaping as can be */
	long long finished = (long long)now.tv_sec * 1000000 + now.tv_nsec / 1000;
	int code, sig = 0;
	if (status < 0) {
		code = -1; /* no status could be had: the agent reports the container's end as unknown */
	} else if (WIFSIGNALED(status)) {
		sig = WTERMSIG(status);
		code = 128 + sig;
	} else {
		code = WEXITSTATUS(status);
	}
	char json[256];
	int length = snprintf(json, sizeof(json),
			      "{\"exit_code\": %d, \"exit_signal\": %d, \"oom_killed\": %s, \"reason\": \"\", "
			      "\"finished_at\": %lld, \"failed\": false}",
			      code, sig, oom_killed ? "true" : "false", finished);
	char tmp[PATH_MAX];
	if (snprintf(tmp, sizeof(tmp), "%s.tmp", exit_file) >= (int)sizeof(tmp)) {
		errno = ENAMETOOLONG;
		say(exit_file);
		return false;
	}
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0) {
		say(tmp);
		return false;
	}
	bool written = write(fd, json, (size_t)length) == length;
	if (!written)
		say(tmp);
	if (close(fd) < 0 && written) {
		say(tmp);
		written = false;
	}
	if (!written || rename(tmp, exit_file) < 0) {
		if (written)
			say(exit_file);
		unlink(tmp);
		return false;
	}
	return true;
}

/* Show "quilt-mon NAME" as the process's name (comm, 15 bytes) and command line: the command line is rewritten in
 * the memory the kernel reads /proc/PID/cmdline from, the arguments' own, as monitor.py's set_process_name does. */
static void set_title(int argc, char **argv)
{
	char comm[16];
	snprintf(comm, sizeof(comm), "quilt-mon %s", argv[1]);
	prctl(PR_SET_NAME, comm, 0, 0, 0);
	char *start = argv[0], *end = argv[argc - 1] + strlen(argv[argc - 1]);
	size_t name = strlen(argv[1]);
	memmove(start + sizeof("quilt-mon"), argv[1], name + 1);
	memcpy(start, "quilt-mon", sizeof("quilt-mon"));
	char *title_end = start + sizeof("quilt-mon") + name;
	memset(title_end, 0, (size_t)(end - title_end));
}

int main(int argc, char **argv)
{
	long pid, counter, event, dir, max_size = 0, max_files = 1, out = -1, err = -1, fwd_out = -1, fwd_err = -1;
	bool logged = argc == 14;
	if ((argc != 7 && !logged) || !parse_int(argv[2], 1, INT_MAX, &pid) ||
	    !parse_int(argv[4], -1, INT_MAX, &counter) || !parse_int(argv[5], -1, INT_MAX, &event) ||
	    (logged && (!parse_int(argv[7], 0, INT_MAX, &dir) || !parse_int(argv[8], 0, LONG_MAX, &max_size) ||
			!parse_int(argv[9], 1, 1000, &max_files) || !parse_int(argv[10], 0, INT_MAX, &out) ||
			!parse_int(argv[11], 0, INT_MAX, &err) || !parse_int(argv[12], -1, INT_MAX, &fwd_out) ||
			!parse_int(argv[13], -1, INT_MAX, &fwd_err)))) {
		dprintf(2, "usage: quilt-monitor NAME INIT_PID EXIT_FILE COUNTER_FD EVENT_FD pri|in|- "
			   "[DIR_FD MAX_SIZE MAX_FILES OUT_FD ERR_FD FORWARD_OUT_FD FORWARD_ERR_FD]\n");
		return 2;
	}
	struct oom_watch watch = {.counter = (int)counter, .event = (int)event, .killed = false};
	watch.events = strcmp(argv[6], "pri") == 0 ? POLLPRI : strcmp(argv[6], "in") == 0 ? POLLIN : 0;
	if (watch.counter < 0 || watch.events == 0)
		watch.event = -1;
	static struct log_stream streams[2];
	streams[0] = (struct log_stream){.name = "stdout", .in = (int)out, .forward = (int)fwd_out};
	streams[1] = (struct log_stream){.name = "stderr", .in = (int)err, .forward = (int)fwd_err};
	struct log_file log = {.fd = -1};
	if (logged) {
		log_open(&log, (int)dir, max_size, (int)max_files);
		log.credit = (int)pid;
	}
	char *exit_file = strdup(argv[3]); /* the title below overwrites the arguments */
	log.container = strdup(argv[1]);
	if (!exit_file || !log.container) {
		say("strdup");
		return 1;
	}
	set_title(argc, argv);

	int status = wait_init((pid_t)pid, &watch, &log, streams);
	if (logged)
		log_close(&log);
	if (watch.counter >= 0) {
		long count = oom_count(watch.counter); /* a last count, if the cgroup is still there */
		watch.killed = watch.killed || count > 0;
	}
	return record_exit(exit_file, status, watch.killed) ? 0 : 1;
}
