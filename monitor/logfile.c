/*
 * The container's log file: see logfile.h. Each line is
 *     TIME STREAM FLAG TEXT\n
 * TIME in RFC 3339 with nanoseconds, UTC; STREAM stdout or stderr, or "dropped" for a line that says how many lines
 * could not be written before it (TEXT: the count); FLAG F for a whole line or the last piece of a long one, P for
 * a piece. Podman's readers read the same.
 *
 * A write that fails (a full disk, a quota, an I/O error) drops the line and counts it, never blocks the container:
 * a container stalled on its output is worse than a log with a marked gap. The count goes into the file as a
 * "dropped" line once a write succeeds again, and the first failure of a run is said on stderr (the agent's
 * journal).
 */
#define _GNU_SOURCE
#include "logfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define LOG_NAME "ctr.log"

static void log_reopen(struct log_file *log)
{
	log->fd = openat(log->dir, LOG_NAME, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0640);
	struct stat st;
	log->size = log->fd >= 0 && fstat(log->fd, &st) == 0 ? st.st_size : 0;
}

void log_open(struct log_file *log, int dir, long long max_size, int max_files)
{
	log->dir = dir;
	log->max_size = max_size;
	log->max_files = max_files < 1 ? 1 : max_files;
	log->lost = 0;
	log_reopen(log);
	if (log->fd < 0)
		dprintf(2, "quilt-monitor: cannot open %s: %s\n", LOG_NAME, strerror(errno));
}

/* ctr.log becomes ctr.log.1, ctr.log.1 ctr.log.2 ..., the oldest goes; a new ctr.log is begun. A reader that has
 * the old file open reads it to its end first (logfile.py). */
static void log_rotate(struct log_file *log)
{
	close(log->fd);
	char from[32], to[32];
	for (int i = log->max_files - 1; i >= 1; i--) {
		if (i == 1)
			snprintf(from, sizeof(from), LOG_NAME);
		else
			snprintf(from, sizeof(from), LOG_NAME ".%d", i - 1);
		snprintf(to, sizeof(to), LOG_NAME ".%d", i);
		if (renameat(log->dir, from, log->dir, to) < 0 && errno != ENOENT)
			dprintf(2, "quilt-monitor: cannot rotate %s: %s\n", from, strerror(errno));
	}
	if (log->max_files == 1)
		unlinkat(log->dir, LOG_NAME, 0);
	log_reopen(log);
}

static size_t stamp(char *out, size_t size)
{
	struct timespec now;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	size_t n = strftime(out, size, "%Y-%m-%dT%H:%M:%S", &tm);
	return n + (size_t)snprintf(out + n, size - n, ".%09ldZ ", now.tv_nsec);
}

/* Write one record; false (and nothing of it left in the file) if it could not be written whole. */
static bool log_record(struct log_file *log, const char *stream, char flag, const char *text, size_t length)
{
	if (log->fd < 0)
		log_reopen(log);
	if (log->fd < 0)
		return false;
	char head[64];
	size_t n = stamp(head, sizeof(head));
	n += (size_t)snprintf(head + n, sizeof(head) - n, "%s %c ", stream, flag);
	struct iovec parts[3] = {{head, n}, {(void *)text, length}, {"\n", 1}};
	ssize_t written = writev(log->fd, parts, 3);
	if (written != (ssize_t)(n + length + 1)) {
		/* A short write to a regular file is the space running out; the error is what the next one would say. */
		int error = written < 0 ? errno : ENOSPC;
		if (written > 0 && ftruncate(log->fd, log->size) < 0) {
			/* a piece of it stays: the reader skips a record it cannot parse */
		}
		errno = error;
		return false;
	}
	log->size += written;
	if (log->max_size > 0 && log->size >= log->max_size)
		log_rotate(log);
	return true;
}

static void log_line(struct log_file *log, const char *stream, char flag, const char *text, size_t length)
{
	if (log->lost > 0) {
		char count[32];
		int n = snprintf(count, sizeof(count), "%lld", log->lost);
		if (!log_record(log, "dropped", 'F', count, (size_t)n)) {
			log->lost++;
			return;
		}
		dprintf(2, "quilt-monitor: %s written again, after %lld lines that could not be\n", LOG_NAME, log->lost);
		log->lost = 0;
	}
	if (!log_record(log, stream, flag, text, length)) {
		if (log->lost == 0)
			dprintf(2, "quilt-monitor: cannot write %s (%s): dropping lines, and counting them, until it can "
				   "be written\n", LOG_NAME, log->fd < 0 ? "cannot open it" : strerror(errno));
		log->lost++;
	}
}

static void write_all(int fd, const char *data, size_t length)
{
	while (length > 0) {
		ssize_t n = write(fd, data, length);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		data += n;
		length -= (size_t)n;
	}
}

/* Write to a journald stream as the container's init. journald files a stream's lines under the unit of the process
 * that sent them (SCM_CREDENTIALS, which the kernel adds to each write), not of the one that connected it: written
 * by this process as it is, they would land under the monitor's scope. Root may name another pid in its
 * credentials; the init's, while it exists (a zombie until this process reaps it), keeps the lines under
 * quilt-NAME.scope, as when the container writes to journald itself. */
static void forward(int fd, int credit, const char *data, size_t length)
{
	union {
		struct cmsghdr align;
		char space[CMSG_SPACE(sizeof(struct ucred))];
	} control;
	while (length > 0) {
		struct iovec part = {(void *)data, length};
		struct msghdr message = {.msg_iov = &part, .msg_iovlen = 1};
		if (credit > 0) {
			memset(&control, 0, sizeof(control));
			message.msg_control = control.space;
			message.msg_controllen = sizeof(control.space);
			struct cmsghdr *c = CMSG_FIRSTHDR(&message);
			c->cmsg_level = SOL_SOCKET;
			c->cmsg_type = SCM_CREDENTIALS;
			c->cmsg_len = CMSG_LEN(sizeof(struct ucred));
			struct ucred who = {.pid = credit, .uid = getuid(), .gid = getgid()};
			memcpy(CMSG_DATA(c), &who, sizeof(who));
		}
		ssize_t n = sendmsg(fd, &message, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == ENOTSOCK) {
				write_all(fd, data, length); /* not journald (quilt-monitor's own tests) */
				return;
			}
			if (credit > 0 && (errno == ESRCH || errno == EPERM)) {
				credit = 0; /* the init is gone, or this process may not name it: as this process */
				continue;
			}
			return; /* journald went away: the file still has every line */
		}
		data += n;
		length -= (size_t)n;
	}
}

void log_flush(struct log_file *log, struct log_stream *s)
{
	if (s->used > 0)
		log_line(log, s->name, 'F', s->line, s->used);
	s->used = 0;
}

long log_relay(struct log_file *log, struct log_stream *s)
{
	char chunk[65536];
	ssize_t n = read(s->in, chunk, sizeof(chunk));
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return -1;
	if (n <= 0) {
		log_flush(log, s);
		return 0;
	}
	if (s->forward >= 0)
		forward(s->forward, log->credit, chunk, (size_t)n);
	for (const char *p = chunk, *end = chunk + n; p < end;) {
		const char *newline = memchr(p, '\n', (size_t)(end - p));
		size_t take = (size_t)((newline ? newline : end) - p);
		if (take > sizeof(s->line) - s->used)
			take = sizeof(s->line) - s->used;
		memcpy(s->line + s->used, p, take);
		s->used += take;
		p += take;
		if (p < end && *p == '\n') {
			log_line(log, s->name, 'F', s->line, s->used);
			s->used = 0;
			p++;
		} else if (s->used == sizeof(s->line)) {
			log_line(log, s->name, 'P', s->line, s->used);
			s->used = 0;
		}
	}
	return n;
}
