"""QEMU boot harness plumbing for sealroot.

Everything the boot scenarios share: the test kernel (fetched by
scripts/setup.d/20-kernel), kernel-module dependency closure, initramfs
(cpio "newc") writing without root privileges, the demo root tree, ext4
disk images made with `mkfs.ext4 -d` (no host mount), host-side disk edits
with `debugfs -w`, and a QEMU runner that captures the serial console to a
log file and stops early once the guest has clearly finished.

Facts relied on:
- The Debian 6.12 cloud kernel builds virtio_pci, ext4 and fs-verity in;
  erofs, overlay, loop, virtio_blk (and libcrc32c) are `.ko.xz` modules and
  the kernel has CONFIG_MODULE_DECOMPRESS, so `finit_module` takes `.ko.xz`.
  The extracted package has no modules.dep (depmod runs at install time), so
  dependencies are read from each module's `.modinfo` `depends=` string.
- The kernel unpacks an uncompressed newc cpio as initramfs; device nodes in
  the archive are created by the kernel, so no host privileges are needed.
- ext4 fs-verity needs the `verity` feature and 4096-byte blocks; enabling
  verity only works inside the guest (the host kernel lacks fs-verity).
"""

import hashlib
import lzma
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
BUILD = ROOT / "build"
KDIR = BUILD / "kernel"
QDIR = BUILD / "qemu"
TARGET = "x86_64-unknown-linux-musl"
# vCPUs per TCG guest, in every suite: suites and distro rounds run more
# guests than the host has cores, where a second vCPU costs host CPU time
# and tests nothing more (measured in tests/distro/run: the installer guest
# 58 core-s with one against 80 with two). tests/distro/run (bash) uses the
# same default.
GUEST_CPUS = 1

# Modules a sealroot PID-1 initramfs needs (closure computed from .modinfo).
# tpm_tis/tpm_crb (the TPM drivers QEMU's tpm-tis and a firmware CRB need)
# are built into the Debian 6.12 kernel (modules.builtin), so the closure
# skips them there; a kernel with them as modules gets them loaded by
# sealroot before it measures.
SEALROOT_MODULES = ["virtio_blk", "loop", "erofs", "overlay", "tpm_tis", "tpm_crb"]


def log(msg):
    print(msg, flush=True)


def run(cmd, **kw):
    """Run a command, raising with its stderr on failure."""
    kw.setdefault("check", True)
    try:
        return subprocess.run([str(c) for c in cmd], **kw)
    except subprocess.CalledProcessError as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({e.returncode}): {err.strip()[-2000:]}") from None


# The firmware of direct `-kernel` boots: QEMU's qboot, not the default
# SeaBIOS. Booting the uncompressed kernel through its PVH entry
# (direct_boot_kernel) under SeaBIOS, QEMU 7.2 puts the initrd where SeaBIOS's
# TPM allocations go: with a TPM attached the guest found its ACPI tables
# overwritten, ran without ACPI, and saw no TPM (every TPM scenario failed).
# qboot loads QEMU's ACPI tables low and leaves TPM start-up to the kernel
# (TPM2_Startup when the TPM asks for it). tests/distro/run uses the same.
DIRECT_BOOT_FIRMWARE = ["-bios", "/usr/share/qemu/qboot.rom"]


def direct_boot_kernel():
    """The kernel image for QEMU's direct `-kernel` boots: build/kernel's
    kernel uncompressed (vmlinux, booted through its PVH entry), which
    spares every TCG guest about 2 s of decompressing the bzImage
    (scripts/lib/pvh-kernel). Firmware boots and UKIs take the bzImage,
    KDIR / "vmlinuz", which this also ensures."""
    if not (KDIR / "vmlinux").exists() or not (KDIR / "vmlinuz").exists():
        run([ROOT / "scripts/setup.d/20-kernel"])
    return KDIR / "vmlinux"


# ---------------------------------------------------------------- binaries

# Command-line words the QEMU suite's boots carry beyond sealroot's default
# boot policy allowlist (issue 9): `no_timer_check` (added by _boot) and the
# demo init's `sealtest.write=1`. tests/qemu/run builds sealroot with them
# (SEALROOT_CMDLINE_ALLOW); without them every boot of that suite is refused.
SUITE_CMDLINE_ALLOW = "no_timer_check sealtest.write=1"


def cargo_build(sealroot_features=("test-keys",), target_dir=None, cmdline_allow=None,
                sealctl=True):
    """Build the static sealroot (boot profile) and sealctl (release), musl.
    CMDLINE_ALLOW (allowlist entries separated by spaces) is passed to the
    sealroot build as SEALROOT_CMDLINE_ALLOW, added to the default boot
    policy; None leaves the environment's value alone. SEALCTL=False builds
    only sealroot (a second sealroot variant in its own TARGET_DIR) and
    returns None for sealctl.

    The sealroot returned is this policy's own copy, named by the policy's
    inputs (scripts/lib/build-boot-binary builds and copies it under the
    target directory's lock): suites run side by side, and the build output
    itself is rewritten by the next build with another policy."""
    env = dict(os.environ)
    td = Path(target_dir) if target_dir else ROOT / "target"
    env["CARGO_TARGET_DIR"] = str(td)
    if cmdline_allow is not None:
        env["SEALROOT_CMDLINE_ALLOW"] = cmdline_allow
    feats = ",".join(sealroot_features)
    policy = sorted((k, v) for k, v in env.items() if k.startswith("SEALROOT_"))
    tag = hashlib.sha256(repr((feats, policy)).encode()).hexdigest()[:16]
    sealroot = td / TARGET / "boot" / f"sealroot-{tag}"
    run([ROOT / "scripts" / "lib" / "build-boot-binary", sealroot]
        + (["--features", feats] if feats else []), cwd=ROOT, env=env, stderr=subprocess.PIPE)
    if not sealctl:
        return sealroot, None
    # sealctl never reads the compiled-in boot policy, but build.rs makes the
    # crate depend on every SEALROOT_* build variable: built with a suite's
    # allowlist, sealctl would recompile (about a minute) whenever the next
    # suite's differs. Without them, one cached sealctl serves every suite.
    tool_env = {k: v for k, v in env.items() if not k.startswith("SEALROOT_")}
    run(["cargo", "build", "-q", "--release", "--target", TARGET, "--bin", "sealctl"],
        cwd=ROOT, env=tool_env, stderr=subprocess.PIPE)
    return sealroot, td / TARGET / "release" / "sealctl"


# ---------------------------------------------------------------- modules

def _module_files():
    idx = {}
    for p in (KDIR / "modules" / "kernel").rglob("*.ko*"):
        name = p.name.split(".ko")[0].replace("-", "_")
        idx[name] = p
    return idx


def _module_depends(path):
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        data = lzma.decompress(data)
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", data)
    if not m or not m.group(1):
        return []
    return [d.decode().replace("-", "_") for d in m.group(1).split(b",") if d]


def module_closure(names):
    """Modules (name, path) in load order: every dependency before its user.
    Names that are built into the kernel are skipped."""
    idx = _module_files()
    builtin = set()
    bf = KDIR / "modules" / "modules.builtin"
    if bf.exists():
        for line in bf.read_text().split():
            builtin.add(Path(line).name.split(".ko")[0].replace("-", "_"))
    order, seen = [], set()

    def visit(n, stack):
        if n in seen or n in builtin:
            return
        if n in stack:
            raise RuntimeError(f"module dependency cycle at {n}")
        if n not in idx:
            raise RuntimeError(f"module {n} not found in {KDIR / 'modules'}")
        for d in _module_depends(idx[n]):
            visit(d, stack | {n})
        seen.add(n)
        order.append((n, idx[n]))

    for n in names:
        visit(n, frozenset())
    return order


# ---------------------------------------------------------------- cpio

class Cpio:
    """An in-memory newc archive description: path -> entry."""

    def __init__(self):
        self.entries = {}

    def dir(self, path, mode=0o755):
        parts = Path(path.strip("/")).parts
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p not in self.entries:
                self.entries[p] = ("dir", mode)

    def file(self, path, data, mode=0o644):
        path = path.strip("/")
        if "/" in path:
            self.dir(path.rsplit("/", 1)[0])
        if isinstance(data, Path):
            data = data.read_bytes()
        self.entries[path] = ("file", mode, data)

    def symlink(self, path, target):
        path = path.strip("/")
        if "/" in path:
            self.dir(path.rsplit("/", 1)[0])
        self.entries[path] = ("link", target)

    def chr(self, path, major, minor, mode=0o600):
        path = path.strip("/")
        if "/" in path:
            self.dir(path.rsplit("/", 1)[0])
        self.entries[path] = ("chr", mode, major, minor)

    def write(self, out):
        def hdr(ino, mode, nlink, size, rmaj, rmin, name):
            nb = name.encode() + b"\0"
            fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rmaj, rmin, len(nb), 0]
            h = b"070701" + b"".join(b"%08x" % f for f in fields) + nb
            return h + b"\0" * ((-len(h)) % 4)

        with open(out, "wb") as f:
            for ino, name in enumerate(sorted(self.entries), start=1):
                e = self.entries[name]
                kind = e[0]
                if kind == "dir":
                    f.write(hdr(ino, stat.S_IFDIR | e[1], 2, 0, 0, 0, name))
                    continue
                if kind == "file":
                    data, mode = e[2], stat.S_IFREG | e[1]
                    rmaj = rmin = 0
                elif kind == "link":
                    data, mode, rmaj, rmin = e[1].encode(), stat.S_IFLNK | 0o777, 0, 0
                else:
                    data, mode, rmaj, rmin = b"", stat.S_IFCHR | e[1], e[2], e[3]
                f.write(hdr(ino, mode, 1, len(data), rmaj, rmin, name))
                f.write(data + b"\0" * ((-len(data)) % 4))
            f.write(hdr(0, 0, 1, 0, 0, 0, "TRAILER!!!"))
        return out


def base_cpio():
    c = Cpio()
    for d in ("dev", "proc", "sys", "run", "tmp", "sysroot", "etc", "mnt"):
        c.dir(d)
    c.chr("dev/console", 5, 1)
    c.chr("dev/kmsg", 1, 11, 0o644)
    c.chr("dev/null", 1, 3, 0o666)
    return c


def sealroot_initramfs(out, sealroot_bin, config=None, modules=SEALROOT_MODULES,
                       modules_list_format="path", extra=None):
    """Minimal PID-1 initramfs: ONLY sealroot as /init, the .ko.xz modules,
    /etc/sealroot/modules (load order, dependencies first) and optionally
    /etc/sealroot/config.json. No shell, no busybox. EXTRA: {path: host
    file} added with mode 0755 (a scenario's own /bin/sh helper)."""
    c = base_cpio()
    for path, host in (extra or {}).items():
        c.file(path, Path(host), 0o755)
    c.file("init", Path(sealroot_bin), 0o755)
    lines = []
    for name, path in module_closure(modules):
        dest = f"lib/modules/{path.name}"
        c.file(dest, path)
        lines.append("/" + dest if modules_list_format == "path" else name)
    c.file("etc/sealroot/modules", ("\n".join(lines) + "\n").encode())
    if config is not None:
        c.file("etc/sealroot/config.json", config.encode() if isinstance(config, str) else config)
    return c.write(out)


def busybox_cpio(modules=SEALROOT_MODULES):
    """An initramfs skeleton with busybox-static and decompressed modules
    (busybox insmod takes plain .ko), for the install and bench guests."""
    c = base_cpio()
    c.file("bin/busybox", Path("/bin/busybox"), 0o755)
    for applet in ("sh", "mount", "umount", "insmod", "echo", "cat", "ls", "sync",
                   "poweroff", "mkdir", "dd", "cp", "rm", "mv", "sleep", "date",
                   "awk", "sed", "grep", "find", "head", "tail", "printf", "ln",
                   "stat", "wc", "sha256sum", "losetup", "chmod", "tr"):
        c.symlink(f"bin/{applet}", "busybox")
    lines = []
    for name, path in module_closure(modules):
        data = path.read_bytes()
        if path.name.endswith(".xz"):
            data = lzma.decompress(data)
        dest = f"lib/modules/{name}.ko"
        c.file(dest, data)
        lines.append("/" + dest)
    c.file("etc/modules.order", ("\n".join(lines) + "\n").encode())
    return c


# ---------------------------------------------------------------- demo root

DEMO_INIT = r"""#!/bin/sh
# The sealed root's init: prove we are in the verified root, exercise it,
# print markers for the harness, power off.
export PATH=/bin:/sbin
[ -r /proc/mounts ] || mount -t proc proc /proc
echo "SEALTEST: init reached"
# What this init was started with, as the kernel recorded it: one line per
# NUL-separated element. For this script the kernel's #! loader shows the
# interpreter first, then the path it was executed as and the arguments
# (argv [/sbin/init] appears as "/bin/sh", "/sbin/init").
tr '\000' '\n' < /proc/$$/cmdline | while IFS= read -r a; do echo "SEALTEST: cmdline $a"; done
tr '\000' '\n' < /proc/$$/environ | while IFS= read -r e; do echo "SEALTEST: environ $e"; done
# A dynamically linked program, where the root carries one (QEMU suite): an
# LD_PRELOAD that reached this environment would be loaded into it.
if [ -x /bin/sealtest-dyn ]; then /bin/sealtest-dyn; fi
root=$(awk '$2=="/" {t=$3} END {print t}' /proc/mounts)
echo "SEALTEST: rootfs $root"
# A kernel sysctl an attacker's command line could set (issue 18: a word
# hidden behind byte 0xA0 reached the kernel's sysctl.* handling).
echo "SEALTEST: domainname $(cat /proc/sys/kernel/domainname 2>/dev/null)"
# Where the kernel's text is: 0xffffffff81000000 means no KASLR (nokaslr,
# which x86 early parsing finds behind a control byte or inside quotes).
echo "SEALTEST: kernel text $(grep -m1 ' _text$' /proc/kallsyms 2>/dev/null | cut -d' ' -f1)"
for f in /data/*; do
  if out=$(sha256sum "$f" 2>&1); then
    echo "SEALTEST: read-ok $f ${out%% *}"
  else
    echo "SEALTEST: read-fail $f: $out"
  fi
done
if [ -f /etc/persist-marker ]; then echo "SEALTEST: etc-marker $(cat /etc/persist-marker)"; else echo "SEALTEST: etc-marker none"; fi
if [ -f /var/persist-marker ]; then echo "SEALTEST: var-marker $(cat /var/persist-marker)"; else echo "SEALTEST: var-marker none"; fi
case " $(cat /proc/cmdline) " in
  *" sealtest.write=1 "*)
    if echo "$(date +%s)-written" > /etc/persist-marker && echo written > /var/persist-marker; then
      echo "SEALTEST: wrote markers"
    else
      echo "SEALTEST: marker write failed"
    fi
    sync ;;
esac
echo "SEALTEST: sysroot $(awk '$2=="/sysroot" {print $3, $4}' /proc/mounts)"
for m in /etc /var /sysroot; do
  echo "SEALTEST: mountopts $m $(awk -v m=$m '$2==m {o=$4} END {print o}' /proc/mounts)"
done
# Mount hardening probes, when a test planted them in the writable state
# (tests/qemu scenario state-mount-hardening): a device node and a setuid-root
# program under /var, an executable on the physical root.
if [ -d /var/sealtest ]; then
  echo "SEALTEST: var-dev is $(stat -c '%F %t:%T' /var/sealtest/null 2>&1)"
  if out=$(cat /var/sealtest/null 2>&1); then echo "SEALTEST: var-dev opened"; else echo "SEALTEST: var-dev refused: $out"; fi
  echo "SEALTEST: var-suid is $(stat -c '%A %u' /var/sealtest/suid 2>&1)"
  /var/sealtest/probe as 1000 /var/sealtest/suid id var-suid
  # Control: the same program, setuid root on a tmpfs that honours setuid.
  if mount -t tmpfs -o mode=0755 sealtest /mnt && cp /var/sealtest/suid /mnt/suid && chmod 4755 /mnt/suid; then
    /var/sealtest/probe as 1000 /mnt/suid id tmpfs-suid
  else
    echo "SEALTEST: tmpfs-suid control could not be set up"
  fi
  echo "SEALTEST: sysroot-exec is $(stat -c '%A' /sysroot/sealtest-exec 2>&1)"
  if out=$(/sysroot/sealtest-exec id sysroot-exec 2>&1); then
    echo "SEALTEST: sysroot-exec ran: $out"
  else
    echo "SEALTEST: sysroot-exec refused: $out"
  fi
fi
# What sealroot measured (tests/qemu tpm-* scenarios): the PCRs as the
# kernel shows them and systemd's measurement log (0x1E shown as '@').
if [ -d /sys/class/tpm/tpm0 ]; then
  for b in sha1 sha256 sha384 sha512; do
    for n in 14 15; do
      if [ -r /sys/class/tpm/tpm0/pcr-$b/$n ]; then echo "SEALTEST: pcr $b $n $(cat /sys/class/tpm/tpm0/pcr-$b/$n)"; fi
    done
  done
  echo "SEALTEST: tpmlog-begin"
  tr '\036' '@' < /run/log/systemd/tpm2-measure.log
  echo "SEALTEST: tpmlog-end"
fi
# The kernel's own timestamps of handing over to /init and of sealroot's
# composed root (scripts/bench boot compares those with a plain guest's).
dmesg | awk '/Run \/init as init process|sealroot: sealroot .* starting as PID 1|sealroot: composed root ready/ { print "SEALTEST: kmsg " $0 }'
echo "SEALTEST: status-begin"
cat /run/sealroot/status.json 2>&1
echo
echo "SEALTEST: status-end"
echo "SEALTEST: init done"
sync
poweroff -f
"""


def _det_bytes(seed, n):
    """Deterministic pseudo-random bytes (reproducible demo roots)."""
    out, x = bytearray(), seed & 0xFFFFFFFF or 1
    while len(out) < n:
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        out += x.to_bytes(4, "little")
    return bytes(out[:n])


def build_demo_root(dest, tag="demo", busybox=True):
    """A tiny root tree: busybox (static), /sbin/init printing markers, test
    files under /data (two external objects, one inline), empty /sysroot,
    /etc and /var."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    for d in ("bin", "sbin", "etc", "var", "sysroot", "proc", "sys", "dev", "run", "tmp", "data", "mnt"):
        (dest / d).mkdir(parents=True)
    if busybox:
        shutil.copy("/bin/busybox", dest / "bin/busybox")
        for applet in ("sh", "mount", "cat", "echo", "awk", "sha256sum", "poweroff", "sync",
                       "ls", "date", "sleep", "dmesg", "tr", "stat", "cp", "chmod"):
            os.symlink("busybox", dest / "bin" / applet)
    (dest / "sbin/init").write_text(DEMO_INIT)
    (dest / "sbin/init").chmod(0o755)
    (dest / "etc/hostname").write_text(f"sealroot-{tag}\n")
    (dest / "etc/os-release").write_text(f'NAME="sealroot {tag}"\nID=sealroot-{tag}\n')
    (dest / "data/alpha.bin").write_bytes(_det_bytes(1, 150_000))
    (dest / "data/beta.txt").write_bytes(("beta line for " + tag + "\n").encode() * 400)
    (dest / "data/gamma.bin").write_bytes(_det_bytes(3, 70_000))
    (dest / "data/small.txt").write_text(f"inline {tag}\n")
    for p in dest.rglob("*"):
        if not p.is_symlink():
            os.utime(p, (1_700_000_000, 1_700_000_000))
    return dest


def file_sha256(path):
    import hashlib
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fsverity_digest(path, alg="sha256"):
    """The fs-verity digest of a host file in userspace (fsverity-utils)."""
    out = run(["fsverity", "digest", f"--hash-alg={alg}", path], capture_output=True, text=True).stdout
    return out.split()[0].split(":", 1)[1]


# ---------------------------------------------------------------- disks

def mkfs_ext4(src_dir, img, size="96M"):
    img = Path(img)
    if img.exists():
        img.unlink()
    run(["mkfs.ext4", "-q", "-F", "-O", "verity", "-b", "4096", "-L", "sealroot",
         "-E", "root_owner=0:0", "-d", src_dir, img, size], capture_output=True)
    return img


def status_json(r):
    """The /run/sealroot/status.json DEMO_INIT printed between its
    status-begin/-end markers in boot R's log, without interleaved kernel
    lines; None if it printed none."""
    m = re.search(r"SEALTEST: status-begin\n(.*?)\nSEALTEST: status-end", r.text, re.S)
    if not m or "{" not in m.group(1):
        return None
    return "\n".join(l for l in m.group(1).splitlines() if not re.match(r"\[\s*\d+\.\d+\]", l))


def copy_disk(src, dst):
    run(["cp", "--sparse=always", src, dst])
    return Path(dst)


def debugfs(img, *cmds, write=True):
    """Run debugfs requests on an unmounted image; returns its output."""
    args = ["debugfs"] + (["-w"] if write else [])
    script = "\n".join(cmds) + "\n"
    r = run(args + ["-f", "-", img], input=script, capture_output=True, text=True)
    return r.stdout + r.stderr


def debugfs_read(img, path):
    r = subprocess.run(["debugfs", "-R", f"cat {path}", str(img)], capture_output=True)
    return r.stdout


def debugfs_exists(img, path):
    r = subprocess.run(["debugfs", "-R", f"stat {path}", str(img)], capture_output=True, text=True)
    return "Inode:" in r.stdout


def debugfs_replace(img, path, data, tmpdir):
    """Replace PATH in the image by a new inode holding DATA (no fs-verity).
    The staging file has a name of its own: scenarios running side by side
    replace the same PATH in their own images (a shared name let one
    scenario write another's seal into its disk)."""
    fd, name = tempfile.mkstemp(prefix="replace-", dir=tmpdir)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return debugfs(img, f"rm {path}", f"write {tmp} {path}", f"sif {path} uid 0", f"sif {path} gid 0")
    finally:
        tmp.unlink()


# ---------------------------------------------------------------- QEMU

class BootResult:
    def __init__(self, text, seconds, timed_out, log_path, qemu_signal=None):
        self.text, self.seconds, self.timed_out, self.log = text, seconds, timed_out, log_path
        # The signal QEMU died of when the harness did not send one (an
        # emulator crash, e.g. a TCG segfault), else None.
        self.qemu_signal = qemu_signal
        self.retried = None

    def has(self, pattern):
        return re.search(pattern, self.text, re.M) is not None


# Lines after which the guest has finished: the kernel says it is halting,
# powering off or panicking (a panic with panic=-1 reboots, which
# -no-reboot turns into QEMU exiting anyway).
FINISHED = re.compile(r"reboot: (System halted|Power down|Restarting system)|Kernel panic - not syncing|System halted")


# A guest kernel crash before init ran is an emulation flake, not a result:
# multi-threaded TCG occasionally trips over the kernel's live code patching
# (seen: "Oops: int3" in run_timer_softirq during early boot). QEMU itself
# dying of a signal the harness did not send (a TCG segfault, seen once in
# CI) is the emulator's failure too. boot() retries such a boot once.
CRASH = re.compile(r"Oops:|Kernel panic - not syncing|BUG: kernel")


def early_crash(text):
    m = CRASH.search(text)
    return bool(m) and "Run /init as init process" not in text[:m.start()]


def boot(kernel, initrd, append, disks, log_path, timeout=180, stop_after=None, memory=1024, smp=GUEST_CPUS,
         tpm=None):
    # A TPM state directory that exists already is one machine's TPM across
    # boots (a provisioned floor counter): a retry starts from a copy of it
    # as it was before this boot, never from a fresh TPM.
    snapshot = None
    if tpm and Path(tpm).is_dir():
        snapshot = Path(str(tpm) + ".before")
        shutil.rmtree(snapshot, ignore_errors=True)
        shutil.copytree(tpm, snapshot, ignore=shutil.ignore_patterns("*.sock"))
    r = _boot(kernel, initrd, append, disks, log_path, timeout, stop_after, memory, smp, tpm)
    if early_crash(r.text) or r.qemu_signal is not None:
        flaky = Path(str(log_path) + ".flake")
        Path(log_path).rename(flaky)
        if tpm:
            shutil.rmtree(tpm, ignore_errors=True)
            if snapshot:
                shutil.copytree(snapshot, tpm)
        r = _boot(kernel, initrd, append, disks, log_path, timeout, stop_after, memory, smp, tpm)
        r.retried = flaky
    return r


def have_swtpm():
    return shutil.which("swtpm") is not None


def _stop_process(proc):
    """Terminate PROC, killing it if it has not exited after 5 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _start_swtpm(state_dir, sock_name, log_name, channel_args):
    """Start swtpm (TPM 2.0, socket mode) on STATE_DIR with the channel
    CHANNEL_ARGS(sock) names; wait for its socket. (dir, sock, process)."""
    d = Path(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    sock = d / sock_name
    if sock.exists():
        sock.unlink()
    proc = subprocess.Popen(
        ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={d}", *channel_args(sock),
         "--log", f"file={d / log_name},level=1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    for _ in range(100):
        if sock.exists() or proc.poll() is not None:
            break
        time.sleep(0.05)
    if not sock.exists():
        _stop_process(proc)
        raise RuntimeError(f"swtpm did not create {sock} (log {d / log_name})")
    return d, sock, proc


class Swtpm:
    """A fresh swtpm (TPM 2.0, socket mode) in STATE_DIR for one boot; QEMU
    reaches it through the control socket (`-tpmdev emulator`). No state
    is prepared (no swtpm_setup): the TPM manufactures itself with its
    default PCR banks; QEMU sends the init, the guest kernel TPM2_Startup."""

    def __init__(self, state_dir):
        self.dir, self.sock, self.proc = _start_swtpm(
            state_dir, "ctrl.sock", "swtpm.log", lambda sock: ["--ctrl", f"type=unixio,path={sock}"])

    def qemu_args(self):
        return ["-chardev", f"socket,id=chrtpm,path={self.sock}",
                "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"]

    def stop(self):
        _stop_process(self.proc)


class SwtpmServer:
    """swtpm on STATE_DIR with its command channel on a unix socket and no
    QEMU: the host provisions the TPM (as a factory would) with `sealctl
    tpm-floor --tpm unix:SOCK` or plants NV indexes with raw commands
    ([`tx`], encoded here independently of sealroot's encoders). Stop it
    before a guest boots on the same STATE_DIR (`boot(tpm=STATE_DIR)`): one
    state directory across several runs is one machine's TPM."""

    def __init__(self, state_dir):
        self.dir, self.sock, self.proc = _start_swtpm(
            state_dir, "server.sock", "swtpm-server.log",
            lambda sock: ["--server", f"type=unixio,path={sock}", "--flags", "not-need-init,startup-clear"])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def tx(self, command):
        """One raw TPM command; the response (its code checked by the caller)."""
        import socket
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(self.sock))
            c.sendall(command)
            head = b""
            while len(head) < 10:
                head += c.recv(10 - len(head))
            n = int.from_bytes(head[2:6], "big")
            body = head
            while len(body) < n:
                body += c.recv(n - len(body))
            return body

    def run(self, command):
        r = self.tx(command)
        rc = int.from_bytes(r[6:10], "big")
        if rc:
            raise RuntimeError(f"TPM command 0x{int.from_bytes(command[6:10], 'big'):x} failed: rc 0x{rc:x}")
        return r

    def stop(self):
        _stop_process(self.proc)
        if self.sock.exists():
            self.sock.unlink()


# Raw TPM 2.0 commands for planting NV indexes (Part 3 31.3, 31.7, 31.8),
# with a password session carrying the owner's (empty) authorization.
TPM_RH_OWNER = 0x40000001
TPMA_NV_OWNERWRITE, TPMA_NV_AUTHWRITE = 1 << 1, 1 << 2
TPMA_NV_OWNERREAD, TPMA_NV_AUTHREAD, TPMA_NV_NO_DA = 1 << 17, 1 << 18, 1 << 25


def tpm_command(cc, handles, params):
    be = lambda v, n: v.to_bytes(n, "big")  # noqa: E731
    session = be(0x40000009, 4) + be(0, 2) + b"\x00" + be(0, 2)
    body = b"".join(be(h, 4) for h in handles) + be(len(session), 4) + session + params
    return be(0x8002, 2) + be(10 + len(body), 4) + be(cc, 4) + body


def nv_define(index, attributes, size=8):
    public = index.to_bytes(4, "big") + (0x000B).to_bytes(2, "big") + attributes.to_bytes(4, "big") \
        + b"\x00\x00" + size.to_bytes(2, "big")
    return tpm_command(0x12A, [TPM_RH_OWNER], b"\x00\x00" + len(public).to_bytes(2, "big") + public)


def nv_write(index, data, offset=0):
    return tpm_command(0x137, [TPM_RH_OWNER, index],
                       len(data).to_bytes(2, "big") + data + offset.to_bytes(2, "big"))


def nv_increment(index):
    return tpm_command(0x134, [TPM_RH_OWNER, index], b"")


def tpm_guest_pcrs(text):
    """{(pcr, bank): lowercase hex} from the guest's `SEALTEST: pcr <bank>
    <N> <HEX>` lines (the demo init and helpers/tpmread.c print them)."""
    return {(int(n), b): v.lower() for b, n, v in
            re.findall(r"^SEALTEST: pcr (\w+) (\d+) ([0-9A-Fa-f]+)\s*$", text, re.M)}


def tpm_guest_log(text):
    """The guest's tpm2-measure.log bytes (printed between tpmlog markers
    with 0x1E shown as '@'), kernel lines interleaved on the console dropped;
    None if the guest printed none."""
    m = re.search(r"SEALTEST: tpmlog-begin\n(.*?)SEALTEST: tpmlog-end", text, re.S)
    if not m:
        return None
    body = "\n".join(l for l in m.group(1).splitlines() if not re.match(r"\[\s*\d+\.\d+\]", l))
    data = body.replace("@", "\x1e").encode()
    return data + b"\n" if data and not data.endswith(b"\n") else data


def tpm_replay(data, pcr, alg):
    """Replay a JSON-SEQ measurement log for PCR in bank ALG with hashlib
    (independent of sealctl): (value hex, [record strings])."""
    import hashlib
    import json
    value = "0" * (hashlib.new(alg).digest_size * 2)
    strings = []
    for chunk in data.split(b"\x1e")[1:]:
        e = json.loads(chunk)
        if e["pcr"] != pcr:
            continue
        d = [x["digest"] for x in e["digests"] if x["hashAlg"] == alg]
        if len(d) != 1:
            raise RuntimeError(f"log record without one {alg} digest: {e}")
        value = hashlib.new(alg, bytes.fromhex(value) + bytes.fromhex(d[0])).hexdigest()
        strings.append(e.get("content", {}).get("string"))
    return value, strings


def _boot(kernel, initrd, append, disks, log_path, timeout, stop_after, memory, smp, tpm=None):
    if tpm:
        sw = Swtpm(tpm)
        try:
            return _boot_vm(kernel, initrd, append, disks, log_path, timeout, stop_after, memory, smp,
                            sw.qemu_args())
        finally:
            sw.stop()
    return _boot_vm(kernel, initrd, append, disks, log_path, timeout, stop_after, memory, smp, [])


def _boot_vm(kernel, initrd, append, disks, log_path, timeout, stop_after, memory, smp, extra_args):
    """Boot under TCG; console to log_path. Stop early (QEMU killed) when the
    guest finished (FINISHED) or STOP_AFTER (a regex) matched plus a grace.
    One vCPU on single-threaded TCG by default: with two vCPUs on MTTCG the
    kernel's live text patching raced (int3 oops in early boot), and two
    vCPUs taking turns on one thread only made boots slower; two boots run in
    parallel instead."""
    # no_timer_check: under a loaded host the kernel's IO-APIC timer check
    # can fail ("IO-APIC + timer doesn't work!" panic); it is meant for VMs.
    if "no_timer_check" not in append:
        append += " no_timer_check"
    cmd = ["qemu-system-x86_64", "-accel", "tcg,thread=single", "-m", str(memory), "-smp", str(smp),
           "-nodefaults", "-display", "none", "-serial", "stdio", "-monitor", "none",
           *DIRECT_BOOT_FIRMWARE,
           "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd), "-append", append]
    for d in disks:
        cmd += ["-drive", f"file={d},if=virtio,format=raw,cache=unsafe"]
    cmd += extra_args
    stop_re = re.compile(stop_after, re.M) if stop_after else None

    def grace(text):
        if FINISHED.search(text):
            return 3
        return 8 if stop_re and stop_re.search(text) else None

    run = run_qemu(cmd, timeout, grace)
    text = run.text().replace("\r", "")
    # The command line may carry raw bytes (surrogate-escaped, as in argv).
    Path(log_path).write_text(" ".join(cmd).encode(errors="surrogateescape").decode(errors="replace")
                              + "\n\n" + text)
    return BootResult(text, run.seconds, run.timed_out, log_path, run.qemu_signal)


class QemuRun:
    """What run_qemu saw: the console as (seconds since start, line bytes)
    pairs, the wall time, whether the overall timeout ended it, and the
    signal QEMU died of when the harness did not kill it (else None)."""

    def __init__(self, lines, seconds, timed_out, qemu_signal):
        self.lines, self.seconds, self.timed_out, self.qemu_signal = lines, seconds, timed_out, qemu_signal

    def raw(self):
        return b"".join(line for _, line in self.lines)

    def text(self):
        return self.raw().decode(errors="replace")

    def firmware_console(self):
        """The text with carriage returns and the ANSI escapes OVMF and
        systemd-boot draw with removed, for matching lines."""
        return ANSI_ESCAPE.sub("", self.text().replace("\r", ""))

    def firmware_result(self, cmd, log_path):
        """A firmware boot's BootResult: the log at LOG_PATH holds the
        command and the console as the guest wrote it; the result's text
        ends with what went wrong outside the guest (a timeout, QEMU dying of
        a signal), so a check that fails on it says why. RAW keeps the serial
        bytes: the text replaces bytes that are not UTF-8."""
        text = self.firmware_console()
        Path(log_path).write_text(" ".join(map(str, cmd)) + "\n\n" + text)
        if self.timed_out:
            text += "\n(timed out)\n"
        if self.qemu_signal is not None:
            text += f"\n(qemu-system-x86_64 died of signal {self.qemu_signal})\n"
        r = BootResult(text, self.seconds, self.timed_out, log_path, self.qemu_signal)
        r.raw = self.raw()
        return r


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_qemu(cmd, timeout, grace):
    """Run one QEMU process (console on its stdout) until it exits by itself,
    TIMEOUT seconds pass, or a console line ends it early: GRACE(line text)
    returns None, or the seconds to let the guest go on after that line
    before QEMU is killed (its last messages, a clean power-off). The Python
    harnesses' QEMU runs (PID-1 boots, A/B, update, UKI) all go through
    here, so a kill, a timeout and QEMU dying of a signal the harness did
    not send (a TCG segfault: the callers retry that once) mean the same in
    each. (tests/distro and tests/mkosi are shell and run QEMU their way.)"""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines, deadline = [], [start + timeout]

    def reader():
        for line in iter(proc.stdout.readline, b""):
            now = time.monotonic()
            lines.append((now - start, line))
            g = grace(line.decode(errors="replace"))
            if g is not None:
                deadline[0] = min(deadline[0], now + g)

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    timed_out = killed = False
    while proc.poll() is None:
        if time.monotonic() > deadline[0]:
            timed_out = time.monotonic() > start + timeout
            proc.kill()
            killed = True
            break
        time.sleep(0.2)
    proc.wait()
    th.join(5)
    qemu_signal = -proc.returncode if proc.returncode < 0 and not killed else None
    return QemuRun(list(lines), time.monotonic() - start, timed_out, qemu_signal)
