/* Mount-hardening probe for the QEMU suite (tests/qemu, scenario
 * state-mount-hardening). It is planted under the writable /var of a booted
 * sealed root and on the physical root, never sealed into an image, and run
 * by the demo init. Linked statically so it needs nothing from the root.
 *
 *   probe id TAG            print "SEALTEST: TAG uid=<real uid> euid=<effective uid>"
 *   probe as UID PROG ARGS  drop groups, gid and uid (real, effective, saved)
 *                           to UID, then execute PROG with ARGS
 *
 * A setuid-root copy started through "probe as 1000" reports euid=0 only if
 * the mount it lives on honours the setuid bit. */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "id") == 0) {
		printf("SEALTEST: %s uid=%u euid=%u\n", argv[2], (unsigned)getuid(), (unsigned)geteuid());
		return 0;
	}
	if (argc >= 4 && strcmp(argv[1], "as") == 0) {
		uid_t id = (uid_t)strtoul(argv[2], NULL, 10);

		if (setgroups(0, NULL) != 0 || setresgid(id, id, id) != 0 || setresuid(id, id, id) != 0) {
			printf("SEALTEST: probe cannot become uid %u: %s\n", (unsigned)id, strerror(errno));
			return 1;
		}
		fflush(stdout);
		execv(argv[3], argv + 3);
		printf("SEALTEST: probe cannot execute %s: %s\n", argv[3], strerror(errno));
		return 1;
	}
	fprintf(stderr, "usage: probe id TAG | probe as UID PROG [ARGS...]\n");
	return 2;
}
