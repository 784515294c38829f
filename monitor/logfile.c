/*
 * The container's log file: see logfile.h. Each line is
 *     TIME STREAM FLAG TEXT\n
 * TIME in RFC 3339 with nanoseconds, UTC; STREAM stdout or stderr, or "dropped" for a line that says how many lines
 * could not be written before it (TEXT: the count); FLAG F for a whole line or the last piece of a long one, P for
 * a piece. Podman's readers read the same.
 *
 * A write that fails (a full disk, a quota, an I/O error) drops the line and counts it, never blocks the container:
 * a container stalled on its output is worse than a log with a marked gap. The count goes into the file as a
 * "dropped" line once a write succeeds again. Both edges of such a gap are reported to journald as structured
 * entries, which the agent watches for (quilt_agent/journal.py: the "log_write_failed" and "logs_dropped" events):
 * a failing disk is found in the journal and by the agent, not only later in the file.
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
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define LOG_NAME "ctr.log"

/* journalctl MESSAGE_ID=... finds them; quilt_agent/journal.py reads them by these ids. */
#define LOG_FAILED_ID "360f9016897c49c887b74b459e90e524"
#define LOG_DROPPED_ID "2d9b2ed5267d4395b1d9d6d7bd5cfafa"
#define JOURNAL_SOCKET "/run/systemd/journal/socket"
/* At most one report a second: a disk with room for a short record now and then makes a gap a line, and a report
 * each would be a flood that journald's own rate limit cuts, counts and all. The counts of the gaps in between are
 * added up and reported with the next. */
#define REPORT_INTERVAL 1

/* One structured entry in journald's native protocol (KEY=VALUE lines in a datagram, sd_journal_send's simple
 * form: no value holds a newline), or the message on stderr, the agent's journal, where there is no journald. Written
 * by hand: libsystemd's sd_journal_send would add a library to a program whose point is its small size. */
static void report(const struct log_file *log, const char *id, long long dropped, const char *message)
{
	char entry[1024];
	int n = snprintf(entry, sizeof(entry),
			 "MESSAGE_ID=%s\nPRIORITY=4\nSYSLOG_IDENTIFIER=quilt-monitor\nQUILT_CONTAINER=%s\n"
			 "N_DROPPED=%lld\nERRNO=%d\nMESSAGE=%s\n",
			 id, log->container ? log->container : "", dropped, log->failure, message);
	struct sockaddr_un journal = {.sun_family = AF_UNIX, .sun_path = JOURNAL_SOCKET};
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	/* Never waits: a journald that is behind must not stall the relay, and through it the container. */
	bool sent = fd >= 0 && n > 0 && n < (int)sizeof(entry) &&
		    sendto(fd, entry, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT, (struct sockaddr *)&journal,
			   sizeof(journal)) == n;
	if (fd >= 0)
		close(fd);
	if (!sent)
		dprintf(2, "quilt-monitor: %s\n", message);
}

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

static long long seconds_now(void)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (long long)now.tv_sec;
}

/* May a report go now? Then it counts as the last one. */
static bool report_due(struct log_file *log)
{
	long long now = seconds_now();
	if (log->reported_at && now - log->reported_at < REPORT_INTERVAL)
		return false;
	log->reported_at = now;
	return true;
}

/* The lines of ended gaps not reported yet go to the journal, the time to do so come. */
static void report_dropped(struct log_file *log, bool now)
{
	if (log->unreported == 0 || (!now && !report_due(log)))
		return;
	char message[128];
	snprintf(message, sizeof(message), "%s written again, after %lld lines that could not be", LOG_NAME,
		 log->unreported);
	report(log, LOG_DROPPED_ID, log->unreported, message);
	log->unreported = 0;
}

/* The gap is over: its count goes into the file, and to the journal. False if the file still has no room. */
static bool log_gap_end(struct log_file *log)
{
	char count[32];
	int n = snprintf(count, sizeof(count), "%lld", log->lost);
	if (!log_record(log, "dropped", 'F', count, (size_t)n))
		return false;
	log->unreported += log->lost;
	log->lost = 0;
	report_dropped(log, false);
	log->failure = 0;
	return true;
}

static void log_line(struct log_file *log, const char *stream, char flag, const char *text, size_t length)
{
	if (log->lost > 0 && !log_gap_end(log)) {
		log->lost++;
		return;
	}
	if (!log_record(log, stream, flag, text, length)) {
		if (log->lost == 0) {
			log->failure = errno;
			char message[256];
			snprintf(message, sizeof(message),
				 "cannot write %s (%s): dropping lines, and counting them, until it can be written", LOG_NAME,
				 log->fd < 0 ? "cannot open it" : strerror(errno));
			if (report_due(log))
				report(log, LOG_FAILED_ID, 0, message);
		}
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

void log_close(struct log_file *log)
{
	if (log->lost == 0 || log_gap_end(log)) {
		report_dropped(log, true);
		return;
	}
	/* Still no room: the count is only in the journal, and in what the agent makes of it. */
	long long lost = log->lost + log->unreported;
	char message[128];
	snprintf(message, sizeof(message), "the container ended with %lld lines not written to %s", lost, LOG_NAME);
	report(log, LOG_DROPPED_ID, lost, message);
}
