/*
 * The reader of the run-time read-cost bench (tests/qemu/lib/readcost.py),
 * run inside the booted sealed root. Static, no allocation per file.
 *
 *   readcost seq DIR              read every regular file under DIR (no
 *                                 directory on another mount), start to end, in
 *                                 readdir order, 128 KiB reads
 *   readcost rand SEED N FILE...  N preads of 4096 bytes at 4096-aligned
 *                                 offsets picked by a fixed generator seeded
 *                                 with SEED, spread over the FILEs
 *
 * Prints one line: "ns BYTES FILES" (monotonic nanoseconds of the whole
 * walk or of the N reads, bytes read, files opened). Any read error is
 * fatal (exit 1): on the sealed root that is fs-verity refusing a page.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char buf[128 * 1024];
static unsigned long long total, files;
static dev_t top_dev;

static unsigned long long now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (unsigned long long)t.tv_sec * 1000000000ull + (unsigned long long)t.tv_nsec;
}

static void die(const char *what, const char *path)
{
	perror(path);
	fprintf(stderr, "readcost: %s failed\n", what);
	exit(1);
}

static void read_file(int dirfd, const char *name, const char *path)
{
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	ssize_t n;

	if (fd < 0)
		die("open", path);
	files++;
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		total += (unsigned long long)n;
	if (n < 0)
		die("read", path);
	close(fd);
}

static void walk(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;

	if (!d)
		die("opendir", path);
	while ((e = readdir(d))) {
		char sub[4096];
		struct stat st;

		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		snprintf(sub, sizeof(sub), "%s/%s", path, e->d_name);
		if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0)
			die("stat", sub);
		/* An overlay reports a lower layer's st_dev for files: only
		 * directories are checked for a crossed mount. */
		if (S_ISDIR(st.st_mode) && st.st_dev == top_dev)
			walk(sub);
		else if (S_ISREG(st.st_mode))
			read_file(dirfd(d), e->d_name, sub);
	}
	closedir(d);
}

int main(int argc, char **argv)
{
	unsigned long long t0, t1;

	if (argc == 3 && !strcmp(argv[1], "seq")) {
		struct stat st;

		if (stat(argv[2], &st) != 0)
			die("stat", argv[2]);
		top_dev = st.st_dev;
		t0 = now_ns();
		walk(argv[2]);
		t1 = now_ns();
	} else if (argc >= 5 && !strcmp(argv[1], "rand")) {
		unsigned long long x = strtoull(argv[2], NULL, 10) | 1, n = strtoull(argv[3], NULL, 10);
		int nf = argc - 4, fds[64];
		unsigned long long blocks[64];

		if (nf > 64)
			nf = 64;
		for (int i = 0; i < nf; i++) {
			struct stat st;

			fds[i] = open(argv[4 + i], O_RDONLY | O_CLOEXEC);
			if (fds[i] < 0 || fstat(fds[i], &st) != 0)
				die("open", argv[4 + i]);
			blocks[i] = (unsigned long long)st.st_size / 4096;
			if (!blocks[i])
				die("size", argv[4 + i]);
			files++;
		}
		t0 = now_ns();
		for (unsigned long long i = 0; i < n; i++) {
			/* xorshift64: the same offsets for the same seed. */
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			int f = (int)(x % (unsigned long long)nf);
			off_t off = (off_t)((x >> 8) % blocks[f]) * 4096;

			if (pread(fds[f], buf, 4096, off) != 4096)
				die("pread", argv[4 + f]);
			total += 4096;
		}
		t1 = now_ns();
	} else {
		fprintf(stderr, "usage: readcost seq DIR | readcost rand SEED N FILE...\n");
		return 2;
	}
	printf("%llu %llu %llu\n", t1 - t0, total, files);
	return 0;
}
