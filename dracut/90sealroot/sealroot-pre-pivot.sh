#!/bin/sh
# dracut (without systemd) pre-pivot hook, the last word before switch_root:
#  - the backstop for a physical root that something other than rootfs-block's
#    mount hook mounted (and that dracut accepted as a root): sealroot replaces
#    $NEWROOT with the verified root or the boot stops here. Nothing to compose
#    when the mount hook (sealroot-mount.sh) already did.
#  - either way, the root about to be switched into must still be the overlay
#    sealroot composed (verity=require on top of $NEWROOT), not something
#    mounted over it since.
# Nothing on the kernel command line decides whether this runs.
type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh

if [ ! -e /run/initramfs/sealroot-composed ]; then
    info "sealroot: composing the verified root at $NEWROOT (pre-pivot)"
    if ! /usr/bin/sealroot prepare --sysroot "$NEWROOT"; then
        die "sealroot refused the root filesystem (see the sealroot: lines above)"
    fi
    mkdir -p /run/initramfs
    : > /run/initramfs/sealroot-composed
fi

# The topmost mount at $NEWROOT is the last /proc/mounts line naming it.
sealroot_top=
while read -r sealroot_dev sealroot_mp sealroot_type sealroot_opts sealroot_rest; do
    [ "$sealroot_mp" = "$NEWROOT" ] && sealroot_top="$sealroot_type ,$sealroot_opts,"
done < /proc/mounts
case $sealroot_top in
    "overlay "*",verity=require,"*) ;;
    *) die "sealroot: $NEWROOT is not the root sealroot composed (top mount: ${sealroot_top:-none})" ;;
esac
unset sealroot_top sealroot_dev sealroot_mp sealroot_type sealroot_opts sealroot_rest
