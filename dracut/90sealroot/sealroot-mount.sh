#!/bin/sh
# dracut (without systemd) mount hook, sorted before rootfs-block's own
# 99-mount-root.sh: it has that hook mount the physical root (fsck, rootflags,
# ro/rw stay dracut's), then replaces $NEWROOT with the verified root at once.
#
# Why not later: dracut 059's init.sh checks the root right after the hook
# that mounted it and, when it lacks /proc, /sys and /dev (and ld.so), unmounts
# it and deletes that hook ("has no proper rootfs layout"). The physical root
# of a sealed system holds only composefs/ and state/, so a hook that runs
# after rootfs-block's never gets to see it mounted. The composed root passes
# that check. Roots mounted some other way are handled by the pre-pivot hook.
#
# Nothing on the kernel command line decides whether this runs: with no digest
# (and no config), `sealroot prepare` refuses and the boot stops here, however
# complete an OS the physical root may hold.
type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh

# Once only: init.sh may source the mount hooks several times until the root
# is mounted; the marker and the mount check keep a second pass from mounting
# or composing again.
if [ ! -e /run/initramfs/sealroot-composed ] && ! ismounted "$NEWROOT" \
    && [ -f "$hookdir/mount/99-mount-root.sh" ]; then
    # shellcheck disable=SC1090,SC1091
    . "$hookdir/mount/99-mount-root.sh"
    if ismounted "$NEWROOT"; then
        info "sealroot: composing the verified root at $NEWROOT"
        if ! /usr/bin/sealroot prepare --sysroot "$NEWROOT"; then
            # die: logs, runs the emergency hooks and ends init.sh; nothing
            # goes on to switch_root into an unverified root.
            die "sealroot refused the root filesystem (see the sealroot: lines above)"
        fi
        mkdir -p /run/initramfs
        : > /run/initramfs/sealroot-composed
    fi
fi
