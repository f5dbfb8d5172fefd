#!/bin/bash
# dracut module "sealroot": put the sealroot boot binary, the kernel modules it
# needs and its configuration into the initramfs, and run it after the physical
# root is mounted so it replaces /sysroot ($NEWROOT) with the verified root.
#
# Works with dracut 059 (Debian bookworm) and dracut-ng 106+ (both still read
# two-digit module prefixes from /usr/lib/dracut/modules.d).
#
# Inputs (all optional):
#   sealroot_binary=PATH   in a dracut.conf.d file, or env SEALROOT_BINARY:
#                          the sealroot binary to install (default: the first
#                          sealroot found in PATH, /usr/lib/sealroot/sealroot).
#   sealroot_config=PATH   in a dracut.conf.d file, or env SEALROOT_CONFIG: a
#                          config.json to install as /etc/sealroot/config.json
#                          (default: the build root's /etc/sealroot/config.json
#                          if it exists). Its "failure" policy also sets
#                          dracut's rd.emergency= in the initramfs: "reboot"
#                          -> reboot, "halt" (the default, also with no
#                          config) -> poweroff, as sealroot's own halt does.

sealroot_find_binary() {
    local b
    for b in "${sealroot_binary:-}" "${SEALROOT_BINARY:-}"; do
        if [[ -n $b ]]; then
            [[ -x $b ]] && { echo "$b"; return 0; }
            derror "sealroot: binary '$b' is not an executable file"
            return 1
        fi
    done
    for b in "$dracutsysrootdir"/usr/lib/sealroot/sealroot \
        "$dracutsysrootdir"/usr/bin/sealroot \
        "$dracutsysrootdir"/usr/sbin/sealroot \
        "$dracutsysrootdir"/usr/local/bin/sealroot \
        "$dracutsysrootdir"/usr/local/sbin/sealroot; do
        [[ -x $b ]] && { echo "$b"; return 0; }
    done
    return 1
}

sealroot_find_config() {
    local c
    for c in "${sealroot_config:-}" "${SEALROOT_CONFIG:-}"; do
        if [[ -n $c ]]; then
            [[ -f $c ]] && { echo "$c"; return 0; }
            derror "sealroot: config '$c' does not exist"
            return 1
        fi
    done
    c="$dracutsysrootdir"/etc/sealroot/config.json
    [[ -f $c ]] && echo "$c"
    return 0
}

# Only included when asked for (-m/--add sealroot or add_dracutmodules+=):
# a distribution opts in; without the binary the module cannot work.
check() {
    sealroot_find_binary > /dev/null || {
        dinfo "sealroot: no sealroot binary (set sealroot_binary= or SEALROOT_BINARY)"
        return 1
    }
    return 255
}

depends() {
    # base: the init scripts and hook machinery; fs-lib: root fs helpers;
    # rootfs-block: mounts the physical root (a block device: fs-verity needs
    # ext4, btrfs or f2fs), whose mount hook the non-systemd path calls.
    echo base fs-lib rootfs-block
    return 0
}

installkernel() {
    # sealroot mounts EROFS (file-backed, or on a loop device on kernels
    # before 6.12) under an overlayfs with verity=require. These are modules
    # on distribution kernels and never "used by the host" at build time, so
    # host-only mode would leave them out: clear hostonly for this call.
    hostonly='' instmods erofs overlay loop
    # erofs and overlay are not optional; a missing one means a kernel that
    # cannot compose the root at all. loop may be built in.
    local m
    for m in erofs overlay; do
        if ! modinfo -k "$kernel" "$m" > /dev/null 2>&1 \
            && ! grep -qs "/$m.ko" "$srcmods/modules.builtin"; then
            derror "sealroot: kernel $kernel has no '$m' module"
            return 1
        fi
    done
    return 0
}

install() {
    local bin cfg
    bin=$(sealroot_find_binary) || return 1
    inst_simple "$bin" /usr/bin/sealroot || {
        derror "sealroot: cannot install $bin"
        return 1
    }
    cfg=$(sealroot_find_config) || return 1
    if [[ -n $cfg ]]; then
        inst_simple "$cfg" /etc/sealroot/config.json
    fi

    # A refusal ends in dracut's emergency handler, which opens a root shell
    # unless rd.shell=0 (its default is on). From that shell anything can be
    # mounted and switched into, so make "no shell" the default here. dracut
    # reads /etc/cmdline.d/*.conf in order, then the kernel command line, and
    # the last rd.shell= wins: kernel_cmdline= in dracut.conf.d (01-default.conf)
    # or the command line can still turn the shell on; 00- keeps ours first.
    mkdir -p "${initdir}/etc/cmdline.d"
    printf 'rd.shell=0\n' > "${initdir}/etc/cmdline.d/00-sealroot.conf"
    # The config's failure policy becomes dracut's rd.emergency=, which both
    # dracut's emergency handlers (systemd: dracut-emergency; without
    # systemd: die) follow once the shell is off: "reboot" (A/B updates: a
    # refused image spends one boot-counter try, then the boot loader falls
    # back) -> reboot; "halt", the default -> poweroff (sealroot's halt
    # powers off too). Under the signed policy sealroot refuses any
    # rd.emergency= on the kernel command line, which dracut would otherwise
    # read after this file and obey (a halt turned into a reboot loop).
    # sealroot itself reads the same config at boot and refuses it if it is
    # not valid JSON, so this match never decides anything on its own.
    if [[ -n $cfg ]] && grep -Eq '"failure"[[:space:]]*:[[:space:]]*"reboot"' "$cfg"; then
        printf 'rd.emergency=reboot\n' >> "${initdir}/etc/cmdline.d/00-sealroot.conf"
    elif [[ -z $cfg ]] || ! grep -Eq '"failure"[[:space:]]*:[[:space:]]*"shell"' "$cfg"; then
        printf 'rd.emergency=poweroff\n' >> "${initdir}/etc/cmdline.d/00-sealroot.conf"
    fi

    if dracut_module_included "systemd"; then
        inst_simple "$moddir/sealroot.service" "$systemdsystemunitdir/sealroot.service"
        # A Requires= link from initrd-root-fs.target (not only a wants link):
        # the unit is then always in the boot transaction, and if it fails
        # initrd-root-fs.target fails too, which also ends in emergency.target.
        # The unit has no conditions: it runs on every boot.
        mkdir -p "${initdir}${systemdsystemunitdir}/initrd-root-fs.target.requires"
        ln_r "$systemdsystemunitdir/sealroot.service" \
            "$systemdsystemunitdir/initrd-root-fs.target.requires/sealroot.service"
        # And the switch itself requires it: initrd-switch-root.target only
        # wants initrd-root-fs.target, so without this a failed sealroot
        # does not stop a switch-root reached some other way.
        inst_simple "$moddir/sealroot-switch-root.conf" \
            "$systemdsystemunitdir/initrd-switch-root.service.d/50-sealroot.conf"
        # systemd and its generators obey the command line before any unit
        # runs (rootflags=x-systemd.requires=debug-shell.service, rd.emergency=
        # for dracut's handler). sealroot as a generator checks the line
        # first: a refused line masks the shell units and points initrd.target
        # at the config's failure target (src/boot/generator.rs).
        mkdir -p "${initdir}${systemdutildir}/system-generators"
        ln_r /usr/bin/sealroot "${systemdutildir}/system-generators/sealroot-generator"
    else
        # Without systemd: init.sh sources "mount" hooks in order until
        # $NEWROOT is mounted and looks like a root (dracut 059 wants /proc,
        # /sys, /dev in it, which a sealed system's physical root lacks). The
        # mount hook (98, before rootfs-block's 99-mount-root.sh) mounts the
        # physical root through rootfs-block's hook and composes the verified
        # root before that check; the pre-pivot hook composes it for a root
        # mounted any other way and checks that the root about to be switched
        # into is still the composed overlay. Both run on every boot: nothing
        # on the command line turns them off.
        inst_hook mount 98 "$moddir/sealroot-mount.sh"
        inst_hook pre-pivot 10 "$moddir/sealroot-pre-pivot.sh"
    fi
    return 0
}
