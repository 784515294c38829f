/*
 * The container's log file (the log drivers k8s-file and journald+file): quilt-monitor reads the container's
 * stdout and stderr pipes and writes each line to ctr.log in the container's directory, in Podman's k8s-file
 * format, rotating it by size. quilt_agent/logfile.py reads it back and documents the format.
 */
#ifndef QUILT_LOGFILE_H
#define QUILT_LOGFILE_H

#include <stdbool.h>
#include <stddef.h>

/* A line longer than this is written in pieces marked P (partial), the last one F, as Podman's conmon does. */
#define LOG_LINE_MAX 16384

struct log_file {
	int dir;            /* the container's directory: ctr.log and ctr.log.1 ... live there */
	long long max_size; /* rotate once ctr.log reaches it; 0: never */
	int max_files;      /* ctr.log and its rotations kept, >= 1 */
	int fd;             /* ctr.log, -1 while it cannot be opened */
	long long size;
	long long lost;     /* lines not written since the last one that was (a full disk, an I/O error) */
	int credit;         /* the pid journald is to file forwarded lines under (the container's init), or 0 */
	const char *container; /* its name: the reports in the journal say whose file it is */
	int failure;        /* errno of the first write that failed since the last one that succeeded */
	long long unreported; /* lines of gaps that have ended, counted in the file but not yet in the journal */
	long long reported_at; /* CLOCK_MONOTONIC seconds of the last report to the journal, or 0 */
};

struct log_stream {
	const char *name; /* "stdout" or "stderr": the line's stream field */
	int in;           /* the read end of the container's pipe; -1 at its end */
	int forward;      /* a journald stream each chunk is also written to (journald+file), or -1 */
	size_t used;
	char line[LOG_LINE_MAX];
};

/* Open ctr.log beneath dir for appending. */
void log_open(struct log_file *log, int dir, long long max_size, int max_files);

/* Read what the stream's pipe holds (one read) and log its complete lines. Returns the bytes read, 0 at the pipe's
 * end (the unfinished line then written as a whole one: a last line without its newline), -1 when a non-blocking
 * pipe has nothing now. */
long log_relay(struct log_file *log, struct log_stream *stream);

/* Write the stream's unfinished line as a whole one. */
void log_flush(struct log_file *log, struct log_stream *stream);

/* At the container's end: lines still counted as lost are put in the file if it has room now, and reported. */
void log_close(struct log_file *log);

#endif
