/* The attacker's program for the QEMU suite's command-line scenarios: planted
 * on the physical root (never in a sealed image) and started only if a route
 * around the boot policy is open, e.g. init=/lib64/ld-linux-x86-64.so.2 --
 * /sysroot/evil. Dynamically linked so the system's loader can start it. It
 * announces itself and, as PID 1, powers the guest off. */
#include <stdio.h>
#include <sys/reboot.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	(void)argc;
	printf("SEALTEST: PAYLOAD %s ran as pid %d uid %u\n", argv[0], (int)getpid(), (unsigned)getuid());
	fflush(stdout);
	if (getpid() == 1) {
		sync();
		reboot(RB_POWER_OFF);
	}
	return 0;
}
