"""Boot timing: sealroot against its peers, in QEMU guests of one run.

The `boot` part of scripts/bench runs main(); the compose guest's pieces
(GUEST_PRELUDE, compose_rounds_sh, compose_extra, compose_times,
compose_report) are shared with tests/interop/run, which times the same
rounds inside its composefs-setup-root guest.

main() measures, in one run, on one installed disk (the sealed demo root):

1. compose: one busybox guest in which `sealroot prepare` and
   `composefs-setup-root` PEER_VERSION (peers.py: cargo-installed from
   crates.io into build/peers) each compose the same image, EROFS + overlay
   without /etc or /var state mounts, each on its own mount of the physical
   root; one untimed warm-up round, then N rounds, interleaved with the
   order alternating; times from /dev/kmsg timestamps (microseconds).
2. whole boot: sealroot as PID 1 (start -> composed root, and its measure +
   verify + EROFS + overlay steps, from /run/sealroot/status.json in the
   booted root) against a busybox guest that mounts the same physical root,
   then the same EROFS image and overlay WITHOUT any verification (no
   measure, no seal check, no verity=require), once per boot as sealroot
   does. Its steps run in one process (tests/qemu/helpers/plainmount.c,
   static, built here with the host's gcc) that marks each on /dev/kmsg:
   the same .ko.xz modules with finit_module, the wait for /dev/vda, then
   bare mount(2) calls, the image file mounted directly (no loop device),
   as sealroot does.
   One untimed warm-up boot of each, then N boots of each, interleaved.
   Each side's own figure starts at its own first step; the "from /init"
   figures put both on the kernel's clock, from the kernel's "Run /init as
   init process" line to the composed root (the sealed demo root prints
   both kernel lines; the plain guest's dmesg does), so the plain guest's
   shell set-up before its first module counts as sealroot's start does.
3. start-up: in the same interleaved rounds, two more boots, each in an
   initramfs of sealroot's contents: one whose /init is a static C program
   (musl) that only writes one /dev/kmsg line (helpers/firstline.c), and
   one whose /init is a Rust std program built as sealroot is (static-pie,
   the boot profile's codegen) that only writes one line and then execs the
   C one (helpers/firstline.rs). The kernel's "Run /init" -> each line,
   beside "Run /init" -> sealroot's first line ("starting as PID 1", written
   before its API mounts), splits sealroot's start-up into the exec of any
   static init, what Rust's runtime adds, and sealroot's own part.

N is BENCH_BOOT_RUNS, else BENCH_RUNS, else 5. Every line gives the median,
the spread (min-max) and n; each comparison the ratio of medians, in
scripts/bench's format. Both guests run with loglevel=4, so kernel info
messages cost neither side serial output.
"""

import json
import os
import re
import statistics
import sys
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sealqemu as q  # noqa: E402
import scenarios as s  # noqa: E402
import peers  # noqa: E402

# ------------------------------------------------------------ report lines


def stat_line(label, vals):
    """One contestant, as scripts/bench's contest_report prints it (ms)."""
    return (f"  {label:<44s} median {statistics.median(vals):7.1f} ms  "
            f"({min(vals):.1f}-{max(vals):.1f}, n={len(vals)})")


def ratio_line(text, a, b):
    """Ratio of the medians of A and B, as scripts/bench's ratio_line."""
    ma, mb = statistics.median(a), statistics.median(b)
    r = f"{ma / mb:.2f}" if mb > 0 else "n/a"
    return f"  ratio of medians, {text}: {r}x"


# ------------------------------------------------------------ compose guest

# The start of a busybox initramfs /init: kernel filesystems, a tmpfs /run,
# the modules (plain .ko, busybox_cpio's list), and the wait for /dev/vda.
GUEST_PRELUDE = r"""#!/bin/sh
export PATH=/bin:/usr/bin:/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs run /run
for m in $(cat /etc/modules.order); do insmod $m 2>/dev/null; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
"""

COMPOSE_DIR = "etc/compose-bench"


def compose_rounds_sh(rounds):
    """Shell for the compose timing rounds: round 0 is the warm-up, then
    ROUNDS timed ones. In each round both tools compose the image named on
    /etc/compose-bench/param (a composefs.digest= word) onto their own fresh
    mount of /dev/vda, with /etc and /var state mounts off; the order
    alternates (even rounds composefs-setup-root first). Both tools' messages
    go to a file, so neither pays for serial output; the marks go to
    /dev/kmsg and are printed with their timestamps at the end (dmesg), as
    `compose: {cfs,sr}-{start,end} N`. Needs a tmpfs /run and compose_extra."""
    return r"""
D=$(cat /COMPOSE_DIR/param)
for n in ROUNDS; do
  mkdir -p /b/cfs$n /b/sr$n
  mount -t ext4 /dev/vda /b/cfs$n; mount -t ext4 /dev/vda /b/sr$n
  for who in $( [ $((n % 2)) = 0 ] && echo "cfs sr" || echo "sr cfs" ); do
    echo "compose: $who-start $n" > /dev/kmsg
    if [ $who = cfs ]; then
      composefs-setup-root --sysroot /b/cfs$n --config /COMPOSE_DIR/compose-only.toml --cmdline "$D" 2>/run/err
    else
      sealroot prepare --sysroot /b/sr$n --config /COMPOSE_DIR/compose-only.json --cmdline "$D" 2>/run/err
    fi
    rc=$?
    echo "compose: $who-end $n" > /dev/kmsg
    [ $rc = 0 ] || { echo "COMPOSE: $who round $n failed ($rc)"; cat /run/err; }
    fs=$(awk -v m=/b/$who$n '$2==m {t=$3} END {print t}' /proc/mounts)
    echo "COMPOSE: $who round $n mounted $fs"
  done
done
dmesg | grep 'compose: '
""".replace("ROUNDS", " ".join(str(n) for n in range(rounds + 1))).replace("COMPOSE_DIR", COMPOSE_DIR)


def compose_extra(c, setup_root, sealroot, digest_word):
    """Add what compose_rounds_sh needs to cpio C: both tools, their
    compose-only configurations, the digest word, and dmesg."""
    peers.add_dynamic(c, setup_root, "bin/composefs-setup-root")
    c.file("bin/sealroot", Path(sealroot), 0o755)
    c.symlink("bin/dmesg", "busybox")
    c.file(f"{COMPOSE_DIR}/param", digest_word.encode())
    c.file(f"{COMPOSE_DIR}/compose-only.toml", b'[etc]\nmount = "none"\n[var]\nmount = "none"\n')
    c.file(f"{COMPOSE_DIR}/compose-only.json", b'{"etc": "none", "var": "none"}\n')


def kmsg_marks(text, tag):
    """{(name, round or None): ms} from `[ secs] TAG: name [round]` lines."""
    out = {}
    for m in re.finditer(rf"\[\s*(\d+\.\d+)\] {tag}: (\S+)(?: (\d+))?", text):
        out[(m.group(2), int(m.group(3)) if m.group(3) else None)] = float(m.group(1)) * 1000.0
    return out


def compose_times(r, rounds):
    """({"cfs": [ms...], "sr": [ms...]}, None) for the timed rounds of a
    compose guest's boot R, or (None, reason) if a round did not compose an
    overlay."""
    t = kmsg_marks(r.text, "compose")
    out = {"cfs": [], "sr": []}
    for who in out:
        for n in range(1, rounds + 1):
            a, b = t.get((f"{who}-start", n)), t.get((f"{who}-end", n))
            if a is None or b is None or r.has(rf"COMPOSE: {who} round {n} failed"):
                return None, f"round {n} of {who} did not complete (log {r.log})"
            if not r.has(rf"COMPOSE: {who} round {n} mounted overlay"):
                return None, f"round {n} of {who} left no overlay (log {r.log})"
            out[who].append(b - a)
    return out, None


def compose_report(times, rounds, notes=()):
    """The compose comparison's lines (title, NOTES, both tools, the ratio)."""
    return "\n".join([
        f"== boot: compose the same image in the same QEMU guest (EROFS + overlay, no /etc or /var "
        f"state mounts; TCG; 1 warm-up round, then {rounds} interleaved, order alternating)",
        *notes,
        stat_line("sealroot prepare (seal check included)", times["sr"]),
        stat_line(f"composefs-setup-root {peers.PEER_VERSION} (crates.io)", times["cfs"]),
        ratio_line("sealroot prepare / composefs-setup-root", times["sr"], times["cfs"]),
    ])


# ------------------------------------------------------------ plain guest

# One unverified compose per boot, like sealroot's one verified compose. All
# timed steps run in one plainmount process (tests/qemu/helpers/plainmount.c),
# which marks them on /dev/kmsg itself: the same modules (.ko.xz,
# finit_module), the wait for /dev/vda (50 ms polls, as sealroot), then bare
# read-only mount(2) calls.
PLAIN_INIT = r"""#!/bin/sh
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /lower /newroot
img=/sysroot/composefs/images/$(cat /etc/bench-digest)
plainmount --modules $(cat /etc/bench-modules) --wait /dev/vda -- \
  root ext4 /dev/vda /sysroot - \
  erofs erofs "$img" /lower - \
  overlay overlay overlay /newroot lowerdir=/lower::/sysroot/composefs/objects,metacopy=on,redirect_dir=on
fs=$(awk '$2=="/newroot" {t=$3} END {print t}' /proc/mounts)
echo "BENCH: /newroot is $fs"
ls /newroot >/dev/null
dmesg | grep -E 'bench: |Run /init as init process'
echo "BENCH: done"
poweroff -f
"""


# The kernel's "Run /init as init process" line: where both guests' /init
# starts, on the kernel's clock (printk timestamps).
RUN_INIT = re.compile(r"\[\s*(\d+\.\d+)\] Run /init as init process")


def from_init(r, end_ms):
    """Milliseconds from the kernel's handover to /init to END_MS (a printk
    timestamp of the same boot)."""
    m = RUN_INIT.search(r.text)
    if not m:
        raise RuntimeError(f"the kernel log has no 'Run /init' line (log {r.log})")
    return end_ms - float(m.group(1)) * 1000.0


def plain_times(r):
    """{"modules", "wait", "root", "erofs", "compose", "whole", "from_init"} ms
    of one plain boot."""
    t = kmsg_marks(r.text, "bench")
    if not r.has(r"BENCH: /newroot is overlay"):
        raise RuntimeError(f"plain-mount guest composed no overlay (log {r.log})")
    try:
        return {
            "modules": t[("modules-end", None)] - t[("modules-start", None)],
            "wait": t[("wait-end", None)] - t[("wait-start", None)],
            "root": t[("root-end", None)] - t[("root-start", None)],
            "erofs": t[("erofs-end", None)] - t[("erofs-start", None)],
            "compose": t[("overlay-end", None)] - t[("erofs-start", None)],
            "whole": t[("overlay-end", None)] - t[("modules-start", None)],
            "from_init": from_init(r, t[("overlay-end", None)]),
        }
    except KeyError as e:
        raise RuntimeError(f"plain-mount guest did not report {e} (log {r.log})") from None


def sealroot_times(r):
    """status.json's timings_us of one sealroot boot, in ms."""
    body = q.status_json(r)
    if body is None:
        raise RuntimeError(f"sealroot boot printed no status.json (log {r.log})")
    try:
        t = json.loads(body)["timings_us"]
    except (ValueError, KeyError) as e:
        raise RuntimeError(f"status.json has no timings_us: {e} (log {r.log})") from None
    out = {k: float(v) / 1000.0 for k, v in t.items()}
    ready = re.search(r"SEALTEST: kmsg \[\s*(\d+\.\d+)\] sealroot: composed root ready", r.text)
    if not ready:
        raise RuntimeError(f"the sealed root printed no 'composed root ready' kernel line (log {r.log})")
    out["from_init"] = from_init(r, float(ready.group(1)) * 1000.0)
    first = re.search(r"SEALTEST: kmsg \[\s*(\d+\.\d+)\] sealroot: sealroot \S+ starting as PID 1", r.text)
    if not first:
        raise RuntimeError(f"the sealed root printed no 'starting as PID 1' kernel line (log {r.log})")
    out["first_line"] = from_init(r, float(first.group(1)) * 1000.0)
    return out


def firstline_times(r, line):
    """Milliseconds from the kernel's "Run /init" to the minimal init's
    "bench: LINE" record (tests/qemu/helpers/firstline.c reports them as
    FIRSTLINE: kmsg USEC TEXT)."""
    t = {text: int(us) / 1000.0 for us, text in
         re.findall(r"FIRSTLINE: kmsg (\d+) (Run /init|bench: \S+)", r.text)}
    if "Run /init" not in t or f"bench: {line}" not in t:
        raise RuntimeError(f"the minimal init reported no '{line}' line (log {r.log})")
    return t[f"bench: {line}"] - t["Run /init"]


def build_rust_firstline(out):
    """helpers/firstline.rs, compiled by rustc alone with the boot binary's
    target flags (.cargo/config.toml) and codegen (Cargo.toml's boot profile
    over release), so that its start-up is what sealroot's runtime costs."""
    target = "x86_64-unknown-linux-musl"
    config = tomllib.loads((q.ROOT / ".cargo" / "config.toml").read_text())
    rustflags = config["target"][target]["rustflags"]
    profiles = tomllib.loads((q.ROOT / "Cargo.toml").read_text())["profile"]
    boot = {**profiles["release"], **profiles["boot"]}
    if boot.get("inherits") != "release":
        raise RuntimeError("Cargo.toml's boot profile no longer inherits release: update build_rust_firstline")

    def flag(key, if_true, if_false):
        # Cargo takes true/false or rustc's own word ("thin", "debuginfo").
        v = boot.get(key, False)
        return if_true if v is True else if_false if v is False else v

    codegen = [f"opt-level={boot.get('opt-level', 3)}", f"panic={boot.get('panic', 'unwind')}",
               f"codegen-units={boot.get('codegen-units', 16)}", f"lto={flag('lto', 'fat', 'off')}",
               f"strip={flag('strip', 'symbols', 'none')}"]
    cmd = ["rustc", "--edition", "2021", "--target", target, *rustflags, "-o", out]
    for c in codegen:
        cmd += ["-C", c]
    q.run([*cmd, s.HELPERS_DIR / "firstline.rs"], capture_output=True)
    return out


# ------------------------------------------------------------ main

def runs_from_env(part_var="BENCH_BOOT_RUNS"):
    """Timed rounds: the part's own variable, else BENCH_RUNS, else 5."""
    v = os.environ.get(part_var) or os.environ.get("BENCH_RUNS") or "5"
    n = int(v)
    if n < 1:
        raise RuntimeError(f"{part_var}/BENCH_RUNS must be at least 1, not {v}")
    return n


def main():
    t0 = time.monotonic()
    runs = runs_from_env()
    work = q.BUILD / "bench" / "boot"
    work.mkdir(parents=True, exist_ok=True)
    kernel = q.direct_boot_kernel()
    bins, why = peers.ensure_peers(work, ["composefs-setup-root"])
    setup_root = bins.get("composefs-setup-root")
    if not setup_root:
        raise RuntimeError(f"no composefs-setup-root {peers.PEER_VERSION}: {why.get('composefs-setup-root')}")
    # q.boot adds no_timer_check, which the default boot policy refuses.
    sealroot, sealctl = q.cargo_build(cmdline_allow="no_timer_check")
    root = q.build_demo_root(work / "root", "bench")
    stage = work / "stage"
    _, digest = s.seal_into_stage(sealctl, root, stage, s.TEST_KEY)
    disk = q.mkfs_ext4(stage, work / "disk.img", "96M")
    s.install_disks(kernel, sealctl, [disk], work)
    word = f"composefs.digest=v1-sha256-12:{digest}"
    guest = (f"  guest: kernel {q.KDIR.joinpath('version').read_text().strip()}, 1 vCPU, TCG; the sealed demo"
             f" root, image {digest[:16]}…; peer {setup_root}")

    # 1. compose, both tools in one guest.
    c = q.busybox_cpio()
    compose_extra(c, setup_root, sealroot, word)
    c.file("init", (GUEST_PRELUDE + compose_rounds_sh(runs) + 'echo "COMPOSE: done"\npoweroff -f\n').encode(), 0o755)
    cinit = c.write(work / "compose.cpio")
    cdisk = q.copy_disk(disk, work / "compose-disk.img")
    r = q.boot(kernel, cinit, "console=ttyS0 panic=-1 loglevel=4", [cdisk], work / "compose.log",
               timeout=120 + 60 * runs, stop_after="COMPOSE: done")
    times, err = compose_times(r, runs)
    if err:
        raise RuntimeError(f"compose guest: {err}")
    print(compose_report(times, runs, [guest]), flush=True)

    # 2. whole boot: sealroot as PID 1 and the plain guest, interleaved.
    initrd = q.sealroot_initramfs(work / "initramfs.cpio", sealroot)
    append = f"console=ttyS0 panic=-1 loglevel=4 root=/dev/vda rootfstype=ext4 {word}"
    plainmount = work / "plainmount"
    q.run(["gcc", "-static", "-Os", "-o", plainmount, s.HELPERS_DIR / "plainmount.c"], capture_output=True)
    c = q.busybox_cpio(modules=[])
    c.symlink("bin/dmesg", "busybox")
    c.file("bin/plainmount", plainmount, 0o755)
    mods = []
    for _, path in q.module_closure(q.SEALROOT_MODULES):
        c.file(f"lib/modules/{path.name}", path)
        mods.append(f"/lib/modules/{path.name}")
    c.file("etc/bench-modules", (" ".join(mods) + "\n").encode())
    c.file("etc/bench-digest", digest.encode())
    c.file("init", PLAIN_INIT.encode(), 0o755)
    pinit = c.write(work / "plain.cpio")
    # The start-up baselines: an /init that only writes one kmsg line (C,
    # static, musl) and one built as sealroot is (Rust std, static-pie) that
    # writes one line and execs the C one, each in an initramfs holding what
    # sealroot's holds (sealroot itself moved to /bin, the same modules, both
    # baselines), so the archives are as large.
    firstline = work / "firstline"
    q.run(["musl-gcc", "-static", "-Os", "-o", firstline, s.HELPERS_DIR / "firstline.c"], capture_output=True)
    rust_firstline = build_rust_firstline(work / "firstline-rust")

    def baseline_cpio(init, name):
        c = q.base_cpio()
        c.file("bin/sealroot", Path(sealroot), 0o755)
        for _, path in q.module_closure(q.SEALROOT_MODULES):
            c.file(f"lib/modules/{path.name}", path)
        c.file("bin/firstline", firstline, 0o755)
        c.file("bin/firstline-rust", rust_firstline, 0o755)
        c.file("init", init, 0o755)
        return c.write(work / name)

    finit = baseline_cpio(firstline, "firstline.cpio")
    rinit = baseline_cpio(rust_firstline, "firstline-rust.cpio")

    def sealed_boot(i):
        r = q.boot(kernel, initrd, append, [disk], work / f"sealroot-{i}.log", timeout=180)
        return sealroot_times(r)

    def plain_boot(i):
        r = q.boot(kernel, pinit, "console=ttyS0 panic=-1 loglevel=4", [disk], work / f"plain-{i}.log",
                   timeout=180, stop_after="BENCH: done")
        return plain_times(r)

    def first_boot(i, initrd, name, line):
        r = q.boot(kernel, initrd, "console=ttyS0 panic=-1 loglevel=4", [], work / f"{name}-{i}.log",
                   timeout=120, stop_after="FIRSTLINE: done")
        return firstline_times(r, line)

    sealed, plain, first, first_rust = [], [], [], []
    for i in range(runs + 1):   # boot 0 of each is the untimed warm-up
        if i % 2 == 0:
            a, b = sealed_boot(i), plain_boot(i)
            f = first_boot(i, finit, "firstline", "first-line")
            fr = first_boot(i, rinit, "firstline-rust", "rust-line")
        else:
            b, a = plain_boot(i), sealed_boot(i)
            fr = first_boot(i, rinit, "firstline-rust", "rust-line")
            f = first_boot(i, finit, "firstline", "first-line")
        if i > 0:
            sealed.append(a)
            plain.append(b)
            first.append(f)
            first_rust.append(fr)

    def col(rows, *keys):
        return [sum(x[k] for k in keys) for x in rows]

    comp_s = col(sealed, "measure", "verify", "mount_erofs", "mount_overlay")
    comp_p = col(plain, "compose")
    print(f"\n== boot: sealroot as PID 1 (status.json) vs a plain unverified EROFS + overlay mount of the same "
          f"disk, same guest kernel (TCG; 1 warm-up boot each, then {runs} interleaved)")
    def versus(key_s, key_p, label_s, label_p, what):
        """sealroot's KEY_S against the plain KEY_P, whole and less state."""
        a, b = col(sealed, key_s), col(plain, key_p)
        bare = [x[key_s] - x["state"] for x in sealed]
        print(stat_line(label_s, a))
        print(stat_line(label_p, b))
        print(ratio_line(f"{what}, sealroot / plain", a, b))
        print(stat_line(f"{label_s}, less state", bare))
        print(ratio_line(f"{what} less state, sealroot / plain", bare, b))

    versus("total", "whole", "sealroot start -> composed root",
           "plain: modules, wait, ext4, EROFS, overlay", "whole")
    versus("from_init", "from_init", "sealroot: Run /init -> composed",
           "plain: Run /init -> composed", "from /init")
    # Start-up: the kernel's "Run /init" to each init's first kmsg line.
    # sealroot writes its first line before its API mounts (the initramfs
    # has a dev/kmsg node), so both figures are exec + program start-up.
    print(stat_line("start-up: Run /init -> sealroot's first line", col(sealed, "first_line")))
    print(stat_line("start-up: Run /init -> minimal C init's line (musl)", first))
    print(stat_line("start-up: Run /init -> minimal Rust init's line (std, static-pie)", first_rust))
    print(ratio_line("start-up, sealroot / minimal C init", col(sealed, "first_line"), first))
    print(ratio_line("start-up, sealroot / minimal Rust init", col(sealed, "first_line"), first_rust))
    print(ratio_line("start-up, minimal Rust init / minimal C init", first_rust, first))
    print(stat_line("sealroot's first line -> composed, less state", [
        x["from_init"] - x["first_line"] - x["state"] for x in sealed]))
    print(stat_line("sealroot measure+verify+EROFS+overlay", comp_s))
    print(stat_line("plain: EROFS + overlay", comp_p))
    print(ratio_line("compose, sealroot / plain", comp_s, comp_p))
    steps = ", ".join(f"{k} {statistics.median(col(sealed, k)):.1f}" for k in sealed[0]
                      if k not in ("total", "from_init", "first_line"))
    print(f"  sealroot steps, median ms: {steps}")
    steps = ", ".join(f"{k} {statistics.median(col(plain, k)):.1f}" for k in ("modules", "wait", "root", "erofs"))
    print(f"  plain steps, median ms: {steps}")
    print("  notes: sealroot's total also covers its /etc, /var state mounts (the 'less state' line takes"
          " those out); the plain side is one process (plainmount) loading the same .ko.xz modules, waiting"
          " for /dev/vda and making bare mount(2) calls, the image file mounted directly (no loop), as"
          " sealroot does; its whole figure starts at its first module (after its shell's set-up),"
          " sealroot's at sealroot's start; the 'from /init' lines put both on the kernel's clock, from the"
          " kernel's 'Run /init' to the composed root ('composed root ready' / the overlay mount);"
          " the start-up lines set sealroot's first kmsg line beside those of a static C /init (musl)"
          " that only writes one line (tests/qemu/helpers/firstline.c) and of a Rust std /init built as"
          " sealroot is (helpers/firstline.rs), each in an initramfs of the same contents."
          f" {time.monotonic() - t0:.0f} s for the boot part")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:
        print(f"bench boot: {e}", file=sys.stderr)
        sys.exit(1)
