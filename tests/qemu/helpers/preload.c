/* The attacker's LD_PRELOAD object for the QEMU suite: planted on the
 * physical root (/sysroot/x.so) or in the /etc upper layer (/etc/x.so). If an
 * LD_PRELOAD= command-line word reached the sealed init's environment, the
 * loader maps this into the first dynamically linked program the init runs
 * and the constructor announces it. */
#include <stdio.h>
#include <unistd.h>

__attribute__((constructor)) static void announce(void)
{
	char exe[256];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);

	exe[n > 0 ? n : 0] = '\0';
	dprintf(1, "SEALTEST: PAYLOAD preloaded object ran inside %s\n", exe);
}
