/* A dynamically linked program sealed into the QEMU suite's demo root
 * (/bin/sealtest-dyn, with the glibc loader and libc beside it). The demo
 * init runs it, so an LD_PRELOAD= that reached init's environment would be
 * loaded into it; and the loader it brings is what
 * init=/lib64/ld-linux-x86-64.so.2 would name. */
#include <stdio.h>

int main(void)
{
	puts("SEALTEST: dynamic program ran");
	return 0;
}
