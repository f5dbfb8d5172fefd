#!/bin/sh
# dracut (without systemd) pre-pivot hook: the backstop for a physical root
# that something other than rootfs-block's mount hook mounted (and that dracut
# accepted as a root). $NEWROOT holds it; sealroot replaces it with the
# verified root or the boot stops here. Nothing to do when the mount hook
# (sealroot-mount.sh) already composed the root.
type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh

if [ ! -e /run/initramfs/sealroot-composed ] \
    && { getarg composefs.digest= > /dev/null || getarg composefs= > /dev/null \
        || [ -e /etc/sealroot/config.json ]; }; then
    info "sealroot: composing the verified root at $NEWROOT (pre-pivot)"
    if ! /usr/bin/sealroot prepare --sysroot "$NEWROOT"; then
        die "sealroot refused the root filesystem (see the sealroot: lines above)"
    fi
    mkdir -p /run/initramfs
    : > /run/initramfs/sealroot-composed
fi
