"""Boot timing: what verification costs.

1. Boots the sealed demo root N times with sealroot as PID 1 and reads the
   per-step timings from /run/sealroot/status.json (start -> switch).
2. Boots the same disk with a busybox bench initramfs that mounts the same
   physical root, then the same EROFS image and overlay WITHOUT any
   verification (no measure, no seal check, no verity=require), timing each
   step with /dev/kmsg timestamps (microseconds; busybox date has no %N).
3. Prints both and the ratio.

Caveat printed with the result: busybox mount sets up a loop device for a
regular-file source, so the plain EROFS mount goes through loop, while
sealroot mounts the image file directly (file-backed EROFS).
"""

import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sealqemu as q  # noqa: E402
import scenarios as s  # noqa: E402

RUNS = 3

BENCH_INIT = r"""#!/bin/sh
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mark() { echo "bench: $*" > /dev/kmsg; }
mark modules-start
for m in $(cat /etc/modules.order); do insmod $m 2>/dev/null; done
mark modules-end
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
mkdir -p /lower /newroot
mark root-start
mount -t ext4 -o ro /dev/vda /sysroot
mark root-end
img=/sysroot/composefs/images/$(cat /etc/bench-digest)
for n in 1 2 3 4 5; do
  mark plain-start $n
  mount -t erofs -o ro "$img" /lower
  mark erofs-end $n
  mount -t overlay overlay -o ro,lowerdir=/lower::/sysroot/composefs/objects,metacopy=on,redirect_dir=on /newroot
  mark plain-end $n
  umount /newroot; umount /lower
  losetup -D 2>/dev/null
done
ls /newroot >/dev/null
echo "BENCH: done"
poweroff -f
"""


def kmsg_times(text, tag):
    out = {}
    for m in re.finditer(r"\[\s*(\d+\.\d+)\] bench: (\S+)(?: (\d+))?", text):
        out[(m.group(2), m.group(3))] = float(m.group(1)) * 1000.0
    return out


def timings_from_status(st):
    """Numeric timing entries (name -> ms) wherever status.json keeps them."""
    found = {}

    def walk(o, path):
        if isinstance(o, dict):
            for k, v in o.items():
                walk(v, path + [k])
        elif isinstance(o, (int, float)) and path and any(
                w in "/".join(path).lower() for w in ("time", "ms", "us", "duration")):
            name = "/".join(path)
            val = float(o)
            if any(c.endswith("_us") for c in path):
                val /= 1000.0
            found[name] = val
    walk(st, [])
    return found


def main():
    t0 = time.monotonic()
    work = q.BUILD / "bench"
    work.mkdir(parents=True, exist_ok=True)
    kernel = q.ensure_kernel()
    # q.boot adds no_timer_check, which the default boot policy refuses.
    sealroot, sealctl = q.cargo_build(cmdline_allow="no_timer_check")
    root = q.build_demo_root(work / "root", "bench")
    stage = work / "stage"
    if stage.exists():
        shutil.rmtree(stage)
    repo = stage / "staging" / "repo"
    repo.mkdir(parents=True)
    out = q.run([sealctl, "build", root, "--repo", repo, "--sign", s.TEST_KEY], capture_output=True, text=True).stdout
    digest = s._digest_from(out, repo)
    (stage / "staging" / "install").write_text(digest + "\n")
    disk = q.mkfs_ext4(stage, work / "disk.img", "96M")
    s.install_disks(kernel, sealctl, [disk], work)
    initrd = q.sealroot_initramfs(work / "initramfs.cpio", sealroot)
    append = f"console=ttyS0 panic=-1 root=/dev/vda rootfstype=ext4 composefs.digest=v1-sha256-12:{digest}"

    runs = []
    for i in range(RUNS):
        r = q.boot(kernel, initrd, append, [disk], work / f"sealroot-{i}.log", timeout=180)
        m = re.search(r"SEALTEST: status-begin\n(.*?)\nSEALTEST: status-end", r.text, re.S)
        if not m:
            print(f"bench: sealroot boot {i} printed no status.json (log {r.log})")
            return 1
        body = "\n".join(l for l in m.group(1).splitlines() if not re.match(r"\[\s*\d+\.\d+\]", l))
        try:
            runs.append(timings_from_status(json.loads(body)))
        except ValueError as e:
            print(f"bench: status.json does not parse: {e}")
            return 1

    c = q.busybox_cpio()
    c.file("etc/bench-digest", digest.encode())
    c.file("init", BENCH_INIT.encode(), 0o755)
    binit = c.write(work / "bench.cpio")
    r = q.boot(kernel, binit, "console=ttyS0 panic=-1", [disk], work / "plain.log", timeout=180,
               stop_after="BENCH: done")
    t = kmsg_times(r.text, "bench")
    try:
        root_ms = t[("root-end", None)] - t[("root-start", None)]
        mod_ms = t[("modules-end", None)] - t[("modules-start", None)]
        plain = [t[("plain-end", str(n))] - t[("plain-start", str(n))] for n in range(1, 6)]
        erofs = [t[("erofs-end", str(n))] - t[("plain-start", str(n))] for n in range(1, 6)]
    except KeyError as e:
        print(f"bench: plain-mount guest did not report {e} (log {r.log})")
        return 1

    print("== sealroot (verified), from /run/sealroot/status.json, ms; median of", RUNS, "boots")
    keys = sorted(set().union(*runs))
    for k in keys:
        vals = [x[k] for x in runs if k in x]
        print(f"   {k:40s} {statistics.median(vals):9.2f}")
    total_key = next((k for k in keys if re.search(r"total", k, re.I)), None)
    print("== plain mount without verification (same guest kernel, same disk), ms")
    print(f"   {'load modules (busybox insmod, plain .ko)':40s} {mod_ms:9.2f}")
    print(f"   {'mount physical root (ext4, ro)':40s} {root_ms:9.2f}")
    print(f"   {'mount erofs (loop, busybox)':40s} {statistics.median(erofs):9.2f}   (median of 5)")
    print(f"   {'mount erofs + overlay':40s} {statistics.median(plain):9.2f}   (median of 5)")
    plain_total = mod_ms + root_ms + statistics.median(plain)
    print(f"   {'modules + root + erofs + overlay':40s} {plain_total:9.2f}")

    def med(k):
        vals = [x[k] for x in runs if k in x]
        return statistics.median(vals) if vals else None
    total_key = next((k for k in keys if re.search(r"total", k, re.I)), None)
    if total_key:
        sealed = med(total_key)
        print(f"== ratio, whole: sealroot start->composed root {sealed:.2f} ms / plain {plain_total:.2f} ms"
              f" = {sealed / plain_total:.2f}x")
    compose = [k for k in keys if re.search(r"measure|verify|mount_erofs|mount_overlay", k)]
    if len(compose) == 4:
        sealed_c = sum(med(k) for k in compose)
        plain_c = statistics.median(plain)
        print(f"== ratio, compose: sealroot measure+verify+mount_erofs+mount_overlay {sealed_c:.2f} ms /"
              f" plain erofs+overlay {plain_c:.2f} ms = {sealed_c / plain_c:.2f}x")
    print(f"   notes: sealroot's total also covers its /etc and /var state mounts and the wait for /dev/vda;"
          f" sealroot loads .ko.xz (decompressed in the kernel), busybox plain .ko; the plain EROFS"
          f" mount goes through a loop device (busybox). TCG timings. {time.monotonic() - t0:.0f} s in all")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:
        print(f"bench-boot: {e}", file=sys.stderr)
        sys.exit(1)
