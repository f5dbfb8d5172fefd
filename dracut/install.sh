#!/bin/sh
# Install the dracut module (and optionally the sealroot binary and a dracut
# configuration that turns the module on).
#
#   dracut/install.sh [--destdir DIR] [--binary PATH] [--config PATH] [--enable]
#
#   --destdir DIR   install under DIR (a chroot or a package build root); default /
#   --binary PATH   also install this sealroot binary as DIR/usr/lib/sealroot/sealroot
#   --config PATH   also install this config.json as DIR/etc/sealroot/config.json
#   --enable        write DIR/etc/dracut.conf.d/90-sealroot.conf with
#                   add_dracutmodules+=" sealroot " so every initramfs gets it
#
# The module goes to DIR/usr/lib/dracut/modules.d/90sealroot, which both
# dracut 059 and dracut-ng read.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
destdir= binary= config= enable=0
while [ $# -gt 0 ]; do
    case "$1" in
        --destdir) destdir=${2:?--destdir needs a directory}; shift 2 ;;
        --binary) binary=${2:?--binary needs a path}; shift 2 ;;
        --config) config=${2:?--config needs a path}; shift 2 ;;
        --enable) enable=1; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
moddir="$destdir/usr/lib/dracut/modules.d/90sealroot"
install -d "$moddir"
install -m 0755 "$here/90sealroot/module-setup.sh" "$moddir/module-setup.sh"
install -m 0755 "$here/90sealroot/sealroot-pre-pivot.sh" "$moddir/sealroot-pre-pivot.sh"
install -m 0755 "$here/90sealroot/sealroot-mount.sh" "$moddir/sealroot-mount.sh"
install -m 0644 "$here/90sealroot/sealroot.service" "$moddir/sealroot.service"
install -m 0644 "$here/90sealroot/sealroot-switch-root.conf" "$moddir/sealroot-switch-root.conf"
echo "installed $moddir"
if [ -n "$binary" ]; then
    [ -x "$binary" ] || { echo "install.sh: '$binary' is not an executable file" >&2; exit 1; }
    install -D -m 0755 "$binary" "$destdir/usr/lib/sealroot/sealroot"
    echo "installed $destdir/usr/lib/sealroot/sealroot"
fi
if [ -n "$config" ]; then
    [ -f "$config" ] || { echo "install.sh: '$config' does not exist" >&2; exit 1; }
    install -D -m 0644 "$config" "$destdir/etc/sealroot/config.json"
    echo "installed $destdir/etc/sealroot/config.json"
fi
if [ "$enable" = 1 ]; then
    install -d "$destdir/etc/dracut.conf.d"
    printf '# Added by sealroot dracut/install.sh\nadd_dracutmodules+=" sealroot "\n' \
        > "$destdir/etc/dracut.conf.d/90-sealroot.conf"
    echo "installed $destdir/etc/dracut.conf.d/90-sealroot.conf"
fi
