/*
 * The unverified baseline of the boot bench (tests/qemu/lib/bootbench.py):
 * the work a plain initramfs does to reach the same composed root, with no
 * measurement, no seal check and no verity=require. One process does it
 * all, marking each step on /dev/kmsg ("bench: NAME-start", "bench:
 * NAME-end"), so that, as in sealroot's own timings, no process start sits
 * between the first step and the composed root.
 *
 *   plainmount [--modules FILE...] [--wait DEVICE] -- [NAME FSTYPE SOURCE TARGET DATA]...
 *
 *   --modules  finit_module each FILE (.ko.xz: the kernel decompresses, as
 *              sealroot has it do); step "modules"; EEXIST is fine
 *   --wait     poll for DEVICE every 50 ms, up to 10 s; step "wait"
 *   then one read-only mount(2) per step NAME; DATA "-" for none. A
 *   regular-file EROFS source is mounted by the kernel directly, no loop
 *   device, as sealroot mounts it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MODULE_INIT_COMPRESSED_FILE 4

static int kmsg = -1;

static void mark(const char *name, const char *what)
{
	char line[256];
	int n = snprintf(line, sizeof(line), "bench: %s-%s\n", name, what);

	if (kmsg >= 0 && n > 0 && write(kmsg, line, (size_t)n) < 0)
		perror("plainmount: /dev/kmsg");
}

static int load(const char *file)
{
	int fd = open(file, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		fprintf(stderr, "plainmount: %s: %s\n", file, strerror(errno));
		return 1;
	}
	if (syscall(SYS_finit_module, fd, "", MODULE_INIT_COMPRESSED_FILE) != 0 && errno != EEXIST) {
		fprintf(stderr, "plainmount: finit_module %s: %s\n", file, strerror(errno));
		close(fd);
		return 1;
	}
	close(fd);
	return 0;
}

static int wait_for(const char *dev)
{
	const struct timespec tick = { 0, 50 * 1000 * 1000 };
	struct stat st;
	int i;

	for (i = 0; i < 200; i++) {
		if (stat(dev, &st) == 0)
			return 0;
		nanosleep(&tick, NULL);
	}
	fprintf(stderr, "plainmount: no %s after 10 s\n", dev);
	return 1;
}

static void usage(void)
{
	fprintf(stderr, "usage: plainmount [--modules FILE...] [--wait DEVICE] -- "
			"[NAME FSTYPE SOURCE TARGET DATA]...\n");
}

int main(int argc, char **argv)
{
	int i = 1, mods, rc = 0;

	kmsg = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
	if (i < argc && strcmp(argv[i], "--modules") == 0) {
		mods = ++i;
		while (i < argc && strncmp(argv[i], "--", 2) != 0)
			i++;
		mark("modules", "start");
		for (int m = mods; m < i; m++)
			rc |= load(argv[m]);
		mark("modules", "end");
	}
	if (i + 1 < argc && strcmp(argv[i], "--wait") == 0) {
		mark("wait", "start");
		rc |= wait_for(argv[i + 1]);
		mark("wait", "end");
		i += 2;
	}
	if (i >= argc || strcmp(argv[i], "--") != 0 || (argc - i - 1) % 5 != 0) {
		usage();
		return 2;
	}
	if (rc)
		return 1;
	for (i++; i < argc; i += 5) {
		const char *data = strcmp(argv[i + 4], "-") == 0 ? NULL : argv[i + 4];

		mark(argv[i], "start");
		if (mount(argv[i + 2], argv[i + 3], argv[i + 1], MS_RDONLY, data) != 0) {
			fprintf(stderr, "plainmount: %s %s on %s: %s\n", argv[i + 1], argv[i + 2],
				argv[i + 3], strerror(errno));
			return 1;
		}
		mark(argv[i], "end");
	}
	return 0;
}
