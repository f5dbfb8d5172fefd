/*
 * The start-up baseline of the boot bench (tests/qemu/lib/bootbench.py): an
 * /init that does nothing but write one line to /dev/kmsg, so the kernel's
 * timestamps of "Run /init as init process" and of that line give the cost
 * of starting a static program as PID 1 in this guest (exec, page faults,
 * libc start-up), to set beside the same gap for sealroot. The bench builds
 * it with musl-gcc: glibc's static start-up costs more under TCG, and the
 * floor should be the cheapest start a static init can have.
 * helpers/firstline.rs runs first in the bench's Rust baseline and execs
 * this one, so every "bench: " record is reported, not only this one's.
 *
 * It mounts devtmpfs on /dev only when /dev/kmsg cannot be opened (the
 * bench's initramfs carries a dev/kmsg node, as sealroot's does). After the
 * line it copies the kernel's "Run /init" record and every "bench: " record
 * from /dev/kmsg to the console, as
 * "FIRSTLINE: kmsg USEC TEXT" (USEC: the record's timestamp), and powers off.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <unistd.h>

#define LINE "<6>bench: first-line\n"

static void report(void)
{
	char rec[2048], out[2200];
	int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	int con = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0 || con < 0)
		return;
	/* One record a read: "PRI,SEQ,USEC,FLAGS;TEXT\n" plus continuation lines. */
	while ((n = read(fd, rec, sizeof(rec) - 1)) > 0 || (n < 0 && errno == EPIPE)) {
		char *usec, *text, *nl;
		unsigned long long us;

		if (n <= 0)
			continue;
		rec[n] = 0;
		usec = strchr(rec, ',');
		usec = usec ? strchr(usec + 1, ',') : NULL;
		text = strchr(rec, ';');
		if (!usec || !text)
			continue;
		nl = strchr(text, '\n');
		if (nl)
			*nl = 0;
		text++;
		if (!strstr(text, "Run /init as init process") && strncmp(text, "bench: ", 7) != 0)
			continue;
		us = strtoull(usec + 1, NULL, 10);
		n = snprintf(out, sizeof(out), "FIRSTLINE: kmsg %llu %s\n", us, text);
		if (n > 0 && write(con, out, (size_t)n) < 0)
			break;
	}
	if (write(con, "FIRSTLINE: done\n", 16) < 0)
		return;
}

int main(void)
{
	int fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);

	if (fd < 0) {
		mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
		fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
	}
	if (fd >= 0 && write(fd, LINE, sizeof(LINE) - 1) < 0)
		fd = -1;
	report();
	sync();
	reboot(RB_POWER_OFF);
	return 0;
}
