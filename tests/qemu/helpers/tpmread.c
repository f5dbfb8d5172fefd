/* TPM reader for the QEMU suite's refused-boot scenario (tests/qemu,
 * tpm-refused). It is put at /bin/sh of that scenario's minimal initramfs
 * only: sealroot's failure policy "shell" executes /bin/sh after the refusal,
 * so this runs as PID 1 in the stopped boot, prints what the refusal left in
 * the TPM and powers the guest off. Linked statically.
 *
 * Output (the same lines the demo init prints in a booted root):
 *   SEALTEST: pcr <bank> <N> <value as the kernel's sysfs shows it>
 *   SEALTEST: tpmlog-begin / <log with 0x1E shown as '@'> / SEALTEST: tpmlog-end
 */
#include <stdio.h>
#include <string.h>
#include <sys/reboot.h>
#include <unistd.h>

static void show_pcr(const char *bank, int n)
{
	char path[128], buf[256];
	FILE *f;

	snprintf(path, sizeof path, "/sys/class/tpm/tpm0/pcr-%s/%d", bank, n);
	f = fopen(path, "r");
	if (!f)
		return;
	if (fgets(buf, sizeof buf, f)) {
		buf[strcspn(buf, "\n")] = 0;
		printf("SEALTEST: pcr %s %d %s\n", bank, n, buf);
	}
	fclose(f);
}

int main(void)
{
	static const char *banks[] = { "sha1", "sha256", "sha384", "sha512" };
	FILE *f;
	int c;

	printf("SEALTEST: tpmread running\n");
	for (unsigned i = 0; i < sizeof banks / sizeof banks[0]; i++) {
		show_pcr(banks[i], 14);
		show_pcr(banks[i], 15);
	}
	printf("SEALTEST: tpmlog-begin\n");
	f = fopen("/run/log/systemd/tpm2-measure.log", "r");
	if (f) {
		while ((c = fgetc(f)) != EOF)
			putchar(c == 0x1e ? '@' : c);
		fclose(f);
	}
	printf("SEALTEST: tpmlog-end\n");
	fflush(stdout);
	sync();
	reboot(RB_POWER_OFF);
	return 0;
}
