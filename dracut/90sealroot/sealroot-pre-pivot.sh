#!/bin/sh
# dracut (without systemd) pre-pivot hook: $NEWROOT holds the physical root;
# sealroot replaces it with the verified root or the boot stops here.
type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh

if getarg composefs.digest= > /dev/null || getarg composefs= > /dev/null \
    || [ -e /etc/sealroot/config.json ]; then
    info "sealroot: composing the verified root at $NEWROOT"
    if ! /usr/bin/sealroot prepare --sysroot "$NEWROOT"; then
        # die: logs, honours rd.shell / the shutdown-emergency hooks, and
        # never lets init.sh go on to switch_root into an unverified root.
        die "sealroot refused the root filesystem (see the sealroot: lines above)"
    fi
fi
