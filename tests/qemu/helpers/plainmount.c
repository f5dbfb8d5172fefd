/*
 * The unverified baseline of the boot bench (tests/qemu/lib/bootbench.py):
 * the work a plain initramfs does to reach the same composed root, with no
 * measurement, no seal check and no verity=require, in one process, each
 * step between two /dev/kmsg marks ("bench: NAME-start", "bench: NAME-end")
 * so that no process start is timed, as none is in sealroot's own timings.
 *
 *   plainmount --modules FILE...   finit_module each FILE (.ko.xz, the
 *                                  kernel decompresses, as sealroot has it);
 *                                  one step named "modules"; EEXIST is fine
 *   plainmount NAME FSTYPE SOURCE TARGET DATA [NAME FSTYPE ...]...
 *                                  one read-only mount(2) per step; DATA "-"
 *                                  for none. A regular-file EROFS source is
 *                                  mounted by the kernel directly, no loop
 *                                  device, as sealroot mounts it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
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

int main(int argc, char **argv)
{
	int i, rc = 0;

	kmsg = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
	if (argc >= 2 && strcmp(argv[1], "--modules") == 0) {
		mark("modules", "start");
		for (i = 2; i < argc; i++)
			rc |= load(argv[i]);
		mark("modules", "end");
		return rc;
	}
	if (argc < 6 || (argc - 1) % 5 != 0) {
		fprintf(stderr, "usage: plainmount --modules FILE... | "
				"plainmount NAME FSTYPE SOURCE TARGET DATA...\n");
		return 2;
	}
	for (i = 1; i < argc; i += 5) {
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
