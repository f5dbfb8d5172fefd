"""Run-time read cost: the sealed root against the plain physical root, in
one QEMU guest (the `readcost` part of scripts/bench; issue 21 item 5).

One disk, one boot: the disk holds a sealed root (busybox, the static reader
tests/qemu/helpers/readcost.c, a copy of the host's READCOST_TREE, default
/usr/lib/python3.11, and four 8 MB files of pseudo-random bytes under /big)
and, beside the repository, an unsealed copy of the same /data and /big
under /plain on the same ext4 filesystem. sealroot boots it as PID 1
(measure, seal, EROFS, overlay with verity=require), and the sealed root's
init, in the same guest, runs interleaved rounds (the order alternating):

- seq: every regular file under /data read start to end (128 KiB reads),
  from the sealed root (overlay -> EROFS metadata -> fs-verity objects on
  ext4) and from /sysroot/plain/data (ext4 only, no fs-verity);
- rand: N preads of 4096 bytes at pseudo-random aligned offsets (the same
  seed on both sides in a round) over the four /big files.

Before every timed read the page cache, dentries and inodes are dropped
(sync; echo 3 > /proc/sys/vm/drop_caches), so every read is cold. One
untimed warm-up round, then READCOST_RUNS (else BENCH_RUNS, else 5) timed
rounds. READCOST_HASH=sha512 builds the image and objects with SHA-512
fs-verity (sealctl build --hash-alg). A third side reads the fs-verity objects themselves
(/sysroot/composefs/objects: ext4 with fs-verity, no overlay, no EROFS), to
split fs-verity's cost from the overlay's; median, spread and the ratio of medians, as scripts/bench prints.
"""

import os
import random
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sealqemu as q  # noqa: E402
import scenarios as s  # noqa: E402
from bootbench import stat_line, ratio_line, runs_from_env  # noqa: E402

BIG_FILES = 4
BIG_BYTES = 8 * 1024 * 1024
RAND_READS = 2000

INIT = r"""#!/bin/sh
export PATH=/bin:/sbin
[ -r /proc/mounts ] || mount -t proc proc /proc
echo "READCOST: root $(awk '$2=="/" {t=$3} END {print t}' /proc/mounts) $(awk '$2=="/" {o=$4} END {print o}' /proc/mounts)"
O=/sysroot/composefs/objects
big() { for i in BIGLIST; do printf '%s ' "$1/big/b$i"; done; }
for n in ROUNDS; do
  case $((n % 3)) in
    0) order="sealed plain objects" ;; 1) order="plain objects sealed" ;; *) order="objects sealed plain" ;;
  esac
  for who in $order; do
    case $who in
      sealed) tree=/data; files=$(big "") ;;
      plain) tree=/sysroot/plain/data; files=$(big /sysroot/plain) ;;
      objects) tree=$O; files="BIGOBJECTS" ;;
    esac
    sync; echo 3 > /proc/sys/vm/drop_caches
    echo "READCOST: seq $who $n $(readcost seq $tree 2>&1)"
    sync; echo 3 > /proc/sys/vm/drop_caches
    echo "READCOST: rand $who $n $(readcost rand $((n + 1)) NREADS $files 2>&1)"
  done
done
echo "READCOST: done"
poweroff -f
"""


def main():
    t0 = time.monotonic()
    runs = runs_from_env("READCOST_RUNS")
    tree = Path(os.environ.get("READCOST_TREE") or "/usr/lib/python3.11")
    alg = os.environ.get("READCOST_HASH") or "sha256"
    if alg not in ("sha256", "sha512"):
        raise RuntimeError(f"READCOST_HASH must be sha256 or sha512, not {alg}")
    work = q.BUILD / "bench" / "readcost"
    work.mkdir(parents=True, exist_ok=True)
    kernel = q.direct_boot_kernel()
    sealroot, sealctl = q.cargo_build(cmdline_allow="no_timer_check")
    reader = work / "readcost"
    q.run(["gcc", "-static", "-O2", "-o", reader, s.HELPERS_DIR / "readcost.c"], capture_output=True)

    root = q.build_demo_root(work / "root", "readcost")
    shutil.copy(reader, root / "bin/readcost")
    init = (INIT.replace("ROUNDS", " ".join(str(n) for n in range(runs + 1)))
            .replace("BIGLIST", " ".join(str(i) for i in range(BIG_FILES)))
            .replace("NREADS", str(RAND_READS)))
    # The same big files as the fs-verity objects they are stored as: ext4
    # with fs-verity, no overlay and no EROFS (object path: digest[:2]/rest).
    objs = []
    for i in range(BIG_FILES):
        (root / "big").mkdir(exist_ok=True)
        (root / "big" / f"b{i}").write_bytes(random.Random(100 + i).randbytes(BIG_BYTES))
        d = q.fsverity_digest(root / "big" / f"b{i}", alg)
        objs.append(f"/sysroot/composefs/objects/{d[:2]}/{d[2:]}")
    init = init.replace("BIGOBJECTS", " ".join(objs))
    (root / "sbin/init").write_text(init)
    # The tree read in the seq rounds: regular files and directories only
    # (symlinks and special files left out), as the host has it.
    shutil.rmtree(root / "data")
    shutil.copytree(tree, root / "data", symlinks=True, ignore_dangling_symlinks=True,
                    ignore=lambda d, names: [n for n in names
                                             if Path(d, n).is_symlink() or not (Path(d, n).is_file()
                                                                                 or Path(d, n).is_dir())])
    stage = work / "stage"
    if stage.exists():
        shutil.rmtree(stage)
    repo = stage / "staging" / "repo"
    repo.mkdir(parents=True)
    out = q.run([sealctl, "build", root, "--repo", repo, "--sign", s.TEST_KEY, "--hash-alg", alg],
                capture_output=True, text=True).stdout
    digest = s._digest_from(out, repo)
    (stage / "staging" / "install").write_text(digest + "\n")
    (stage / "plain").mkdir()
    shutil.copytree(root / "data", stage / "plain" / "data", symlinks=True)
    shutil.copytree(root / "big", stage / "plain" / "big")
    size_mb = 3 * sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) // 1_000_000 + 128
    disk = q.mkfs_ext4(stage, work / "disk.img", f"{size_mb}M")
    s.install_disks(kernel, sealctl, [disk], work)
    files = sum(1 for p in (root / "data").rglob("*") if p.is_file())
    data_bytes = sum(p.stat().st_size for p in (root / "data").rglob("*") if p.is_file())

    initrd = q.sealroot_initramfs(work / "initramfs.cpio", sealroot)
    append = (f"console=ttyS0 panic=-1 loglevel=4 root=/dev/vda rootfstype=ext4 "
              f"composefs.digest=v1-{alg}-12:{digest}")
    r = q.boot(kernel, initrd, append, [disk], work / "readcost.log", timeout=600 + 300 * runs,
               stop_after="READCOST: done")
    if not r.has(r"READCOST: done"):
        raise RuntimeError(f"the read-cost guest did not finish (log {r.log})")
    m = re.search(r"READCOST: root (\S+) (\S+)", r.text)
    res = {(k, w): [] for k in ("seq", "rand") for w in ("sealed", "plain", "objects")}
    obj_bytes = []
    for kind, who, n, rest in re.findall(r"READCOST: (seq|rand) (sealed|plain|objects) (\d+) (.*)", r.text):
        f = rest.split()
        if len(f) != 3 or not all(x.isdigit() for x in f):
            raise RuntimeError(f"{kind} {who} round {n} failed: {rest.strip()} (log {r.log})")
        if int(n) == 0:
            continue
        if kind == "seq" and who == "objects":
            obj_bytes.append(int(f[1]))
        elif kind == "seq" and int(f[1]) != data_bytes:
            raise RuntimeError(f"{kind} {who} round {n} read {f[1]} bytes, not {data_bytes} (log {r.log})")
        res[(kind, who)].append(int(f[0]) / 1e6)
    for k, v in res.items():
        if len(v) != runs:
            raise RuntimeError(f"{k}: {len(v)} timed rounds, not {runs} (log {r.log})")

    mb = data_bytes / 1e6
    print(f"== readcost: cold reads of the sealed root vs the same files on the plain physical root, one "
          f"QEMU guest (TCG, 1 vCPU; 1 warm-up round, then {runs} interleaved, order alternating; caches "
          f"dropped before every read)")
    print(f"  guest: kernel {q.KDIR.joinpath('version').read_text().strip()}; root "
          f"{m.group(1) if m else '?'} ({m.group(2) if m else '?'}); image {digest[:16]}…, {alg.upper()}, "
          f"4096-byte fs-verity blocks; the plain copy on the same ext4 (/sysroot/plain)")
    print(f"  seq: {tree} as /data, {files} files, {mb:.1f} MB, every file read whole")
    print(stat_line("seq, sealed root (overlay+EROFS+fs-verity)", res[("seq", "sealed")]))
    print(stat_line("seq, plain ext4 copy", res[("seq", "plain")]))
    print(ratio_line("seq, sealed / plain", res[("seq", "sealed")], res[("seq", "plain")]))
    ob = statistics.median(obj_bytes) / 1e6
    mo = statistics.median(res[("seq", "objects")])
    print(stat_line(f"seq, the objects directory ({ob:.1f} MB)", res[("seq", "objects")]))
    print(f"  seq throughput, medians: sealed {mb / statistics.median(res[('seq', 'sealed')]) * 1000:.1f} MB/s,"
          f" plain {mb / statistics.median(res[('seq', 'plain')]) * 1000:.1f} MB/s, objects directly"
          f" (ext4 + fs-verity, no overlay) {ob / mo * 1000:.1f} MB/s (it also holds the EROFS image)")
    print(f"  rand: {RAND_READS} preads of 4096 bytes over {BIG_FILES} files of {BIG_BYTES >> 20} MiB")
    print(stat_line("rand 4 KiB, sealed root", res[("rand", "sealed")]))
    print(stat_line("rand 4 KiB, plain ext4 copy", res[("rand", "plain")]))
    print(stat_line("rand 4 KiB, the same objects directly", res[("rand", "objects")]))
    print(ratio_line("rand, sealed / plain", res[("rand", "sealed")], res[("rand", "plain")]))
    print(ratio_line("rand, objects directly / plain", res[("rand", "objects")], res[("rand", "plain")]))
    print(ratio_line("rand, sealed / objects directly", res[("rand", "sealed")], res[("rand", "objects")]))
    print(f"  {time.monotonic() - t0:.0f} s for the readcost part")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:
        print(f"bench readcost: {e}", file=sys.stderr)
        sys.exit(1)
