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
type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh

if [ ! -e /run/initramfs/sealroot-composed ] && ! ismounted "$NEWROOT" \
    && [ -f "$hookdir/mount/99-mount-root.sh" ] \
    && { getarg composefs.digest= > /dev/null || getarg composefs= > /dev/null \
        || [ -e /etc/sealroot/config.json ]; }; then
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
