"""The sealed-boot fixture: keys, demo roots, sealed repositories, disks,
the in-guest install step, and the kernel command lines.

Built once per run under build/qemu/<run>/ and shared by every scenario:
scenarios copy an installed disk (sparse) and mutate the copy with
`debugfs -w`, so only mutations that need fs-verity *enabled on changed
content* (which the host kernel cannot do) are made in the install guest.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import sealqemu as q

KEYS = q.ROOT / "keys" / "test"
TEST_KEY = KEYS / "sealroot-test.pem"
OTHER_KEY = KEYS / "other-test.pem"

HEX_RE = re.compile(r"\b([0-9a-f]{128}|[0-9a-f]{64})\b")

# The sealed root's init prints this first; an attack must never reach it.
INIT_MARKER = "SEALTEST: init reached"
# Lines sealroot logs (docs/boot-sequence.md on the boot branch).
SWITCH_RE = r"sealroot: switching root"

# Host tools copied (with their shared libraries) into the *install* guest
# only: `fsverity enable` lets the post-install step seal deliberately wrong
# content for the "bytes changed after sealing" attacks. Never in a sealroot
# initramfs.
FSVERITY_FILES = ["/usr/bin/fsverity"]

# Small C programs for the boot-policy scenarios (issue 9), built with the
# host's gcc into the run directory: (name, source, gcc flags).
HELPERS_DIR = Path(__file__).resolve().parents[1] / "helpers"
HELPERS = [
    ("probe", "probe.c", ["-static", "-Os"]),          # planted in /var and on the physical root
    ("payload", "payload.c", ["-Os"]),                 # planted: the attacker's program
    ("preload.so", "preload.c", ["-Os", "-shared", "-fPIC"]),  # planted: the attacker's LD_PRELOAD object
    ("sealtest-dyn", "dynamic.c", ["-Os"]),            # sealed into root A with its loader and libc
    ("tpmread", "tpmread.c", ["-static", "-Os"]),      # /bin/sh of the tpm-refused initramfs
]
# Marker every planted attacker program prints first; no boot may show it.
PAYLOAD_MARKER = "SEALTEST: PAYLOAD"


def _ldd_libs(binary):
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"(/\S+)", line.split("=>")[-1])
        if m and os.path.exists(m.group(1)):
            libs.append(m.group(1))
    return libs


def sealctl(fx, *args, check=True):
    r = subprocess.run([str(fx.sealctl)] + [str(a) for a in args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"sealctl {' '.join(map(str, args))}: exit {r.returncode}: {r.stderr.strip()[-800:]}")
    return r


def _digest_from(out, repo):
    """The image digest `sealctl build` printed: the hex string in its output
    that names an image in the repository (the output may carry other hex,
    e.g. a key fingerprint)."""
    images = Path(repo) / "composefs" / "images"
    for h in HEX_RE.findall(out):
        if (images / h).exists() or (images / h).is_symlink():
            return h
    raise RuntimeError(f"no image digest in sealctl build output: {out.strip()[:300]}")


def seal_into_stage(sealctl, root, stage, key):
    """A fresh STAGE holding ROOT built and signed with KEY into
    STAGE/staging/repo (the layout install_disks and mkfs_ext4 take), the
    image digest written to STAGE/staging/install. Returns (repo, digest)."""
    if stage.exists():
        shutil.rmtree(stage)
    repo = stage / "staging" / "repo"
    repo.mkdir(parents=True)
    out = q.run([sealctl, "build", root, "--repo", repo, "--sign", key], capture_output=True, text=True).stdout
    digest = _digest_from(out, repo)
    (stage / "staging" / "install").write_text(digest + "\n")
    return repo, digest


def _hash_alg_flag(fx):
    """How `sealctl build` is asked for SHA-512 (read from its --help)."""
    h = sealctl(fx, "build", "--help", check=False).stdout
    for flag in ("--hash-alg", "--algorithm", "--hash", "--alg"):
        if flag in h:
            return flag
    return None


class Fixture:
    def __init__(self, workdir, sealroot, sealctl_bin, build_log):
        self.dir = Path(workdir)
        self.sealroot = Path(sealroot)
        self.sealctl = Path(sealctl_bin)
        self.kernel = q.direct_boot_kernel()
        self.log = build_log
        self.d = {}           # name -> digest hex
        self.sums = {}        # guest path -> sha256 of the file content
        self.objects = {}     # guest path -> object path on the disk
        self.disks = {}       # name -> installed disk image
        self.initrds = {}

    # ---------------------------------------------------------- helpers
    def build_helpers(self):
        """Compile tests/qemu/helpers/*.c; self.helpers: name -> host path."""
        out = self.dir / "helpers"
        out.mkdir(parents=True, exist_ok=True)
        self.helpers = {}
        for name, src, flags in HELPERS:
            dest = out / name
            q.run(["gcc", *flags, "-o", dest, HELPERS_DIR / src], capture_output=True)
            self.helpers[name] = dest
        return self.helpers

    def add_dynamic_program(self, root):
        """Seal a dynamically linked program into ROOT with the host's glibc
        loader and libc at the paths the program names (e.g.
        /lib64/ld-linux-x86-64.so.2, /lib/x86_64-linux-gnu/libc.so.6): the
        LD_PRELOAD scenarios need a program that would honour it, and the
        loader scenario names a loader that really is on the sealed root."""
        prog = self.helpers["sealtest-dyn"]
        libs = _ldd_libs(prog)
        if not any("ld-linux" in l for l in libs) or not any("libc.so" in l for l in libs):
            raise RuntimeError(f"ldd {prog} names no glibc loader and libc: {libs}")
        for lib in libs:
            dest = Path(root) / lib.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(os.path.realpath(lib), dest)
            dest.chmod(0o755)
        shutil.copy(prog, Path(root) / "bin/sealtest-dyn")
        (Path(root) / "bin/sealtest-dyn").chmod(0o755)

    # ---------------------------------------------------------- repositories
    def build_repos(self):
        self.build_helpers()
        rootA = q.build_demo_root(self.dir / "rootA", "alpha")
        self.add_dynamic_program(rootA)
        rootB = q.build_demo_root(self.dir / "rootB", "bravo")
        for f in ("alpha.bin", "beta.txt", "gamma.bin", "small.txt"):
            self.sums[f"/data/{f}"] = q.file_sha256(rootA / "data" / f)
            if f != "small.txt":
                h = q.fsverity_digest(rootA / "data" / f)
                self.objects[f"/data/{f}"] = f"/composefs/objects/{h[:2]}/{h[2:]}"
        stage = self.dir / "stage256"
        for old in (stage, self.dir / "stage512"):
            if old.exists():
                shutil.rmtree(old)
        repo = stage / "staging" / "repo"
        repo.mkdir(parents=True)
        self.d["A"] = _digest_from(sealctl(self, "build", rootA, "--repo", repo, "--sign", TEST_KEY).stdout, repo)
        self.d["B"] = _digest_from(sealctl(self, "build", rootB, "--repo", repo, "--sign", TEST_KEY).stdout, repo)
        if self.d["A"] == self.d["B"]:
            raise RuntimeError("two different roots gave one digest")
        # Alternative seals for A, made with the real signing command, kept
        # on the host and swapped in by debugfs per scenario.
        self.seals = {}
        for name, key, extra in (("other-key", OTHER_KEY, []), ("serial1", TEST_KEY, ["--serial", "1"]),
                                 ("serial9", TEST_KEY, ["--serial", "9"])):
            alt = self.dir / f"repo-{name}"
            if alt.exists():
                shutil.rmtree(alt)
            shutil.copytree(repo, alt, symlinks=True)
            sealctl(self, "sign", "--key", key, "--repo", alt, self.d["A"], *extra)
            self.seals[name] = self._seal_files(alt, self.d["A"])
        self.seals["good"] = self._seal_files(repo, self.d["A"])
        self.seals["B"] = self._seal_files(repo, self.d["B"])
        self.image_bytes = (repo / "composefs" / "images" / self.d["A"]).read_bytes()

        stage512 = self.dir / "stage512"
        repo512 = stage512 / "staging" / "repo"
        repo512.mkdir(parents=True)
        self.error512 = None
        flag = _hash_alg_flag(self)
        if flag is None:
            self.error512 = "sealctl build has no option for SHA-512 repositories"
            return stage, None
        r = sealctl(self, "build", rootA, "--repo", repo512, "--sign", TEST_KEY, flag, "sha512", check=False)
        if r.returncode != 0:
            self.error512 = f"sealctl build {flag} sha512 failed: {r.stderr.strip()[-300:]}"
            return stage, None
        self.d["A512"] = _digest_from(r.stdout, repo512)
        if len(self.d["A512"]) != 128:
            raise RuntimeError(f"sha512 build printed {self.d['A512']}")
        return stage, stage512

    @staticmethod
    def _seal_files(repo, digest):
        s = Path(repo) / "composefs" / "seals"
        return (s / f"{digest}.json").read_bytes(), (s / f"{digest}.sig").read_bytes()

    # ---------------------------------------------------------- disks
    def make_disks(self):
        stage, stage512 = self.build_repos()
        A = self.d["A"]
        (stage / "staging" / "install").write_text(f"{A}\n{self.d['B']}\n")
        base = q.mkfs_ext4(stage, self.dir / "pre-256.img", "128M")
        if stage512:
            (stage512 / "staging" / "install").write_text(f"{self.d['A512']}\n")
            q.mkfs_ext4(stage512, self.dir / "pre-512.img", "96M")
        # Variants needing verity on changed content: done by the guest after
        # the install, from a script on the disk.
        img = f"/mnt/composefs/images/{A}"
        changed = self.dir / "pre-imgchanged.img"
        q.copy_disk(base, changed)
        self._put(changed, "/staging/post-install.sh",
                  "set -e\n"
                  f"src=$(readlink -f {img})\n"
                  "cp \"$src\" /tmp/img\n"
                  "size=$(stat -c %s /tmp/img)\n"
                  "printf '\\125' | dd of=/tmp/img bs=1 seek=$((size - 1)) conv=notrunc 2>/dev/null\n"
                  "rm -f \"$src\"\ncp /tmp/img \"$src\"\n/usr/bin/fsverity enable \"$src\"\n"
                  "echo \"POST-INSTALL changed image $(/usr/bin/fsverity measure \"$src\")\"\n")
        objother = self.dir / "pre-objother.img"
        q.copy_disk(base, objother)
        obj = "/mnt" + self.objects["/data/beta.txt"]
        self._put(objother, "/staging/post-install.sh",
                  "set -e\n"
                  f"rm -f {obj}\necho 'not the sealed content' > {obj}\n/usr/bin/fsverity enable {obj}\n"
                  f"echo \"POST-INSTALL replaced object $(/usr/bin/fsverity measure {obj})\"\n")
        # The repository laid out as if installed, on an ext4 without the
        # verity feature: measuring the image must fail (EOPNOTSUPP).
        nv = self.dir / "noverity-root"
        if nv.exists():
            shutil.rmtree(nv)
        shutil.copytree(stage / "staging" / "repo" / "composefs", nv / "composefs", symlinks=True)
        for sub in ("etc/upper", "etc/work", "var"):
            (nv / "state" / "deploy" / A / sub).mkdir(parents=True)
        img = self.dir / "noverity.img"
        q.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "root_owner=0:0", "-d", nv, img, "128M"],
              capture_output=True)
        self.disks["noverityfs"] = img
        pre = {"256": base, "imgchanged": changed, "objother": objother}
        if stage512:
            pre["512"] = self.dir / "pre-512.img"
        return pre

    def _put(self, img, path, text):
        tmp = self.dir / "put.tmp"
        tmp.write_text(text)
        q.debugfs(img, f"write {tmp} {path}")
        tmp.unlink()

    # ---------------------------------------------------------- initramfs
    def sealroot_initrd(self, name="default", config=None):
        if name not in self.initrds:
            self.initrds[name] = q.sealroot_initramfs(self.dir / f"sealroot-{name}.cpio", self.sealroot,
                                                      config=config)
        return self.initrds[name]

    def install(self, pre):
        """One guest boot installs every disk variant."""
        order = [k for k in ("256", "512", "imgchanged", "objother") if k in pre]
        r = install_disks(self.kernel, self.sealctl, [pre[k] for k in order], self.dir)
        for k in order:
            self.disks[k] = pre[k]
        return r

    # ---------------------------------------------------------- command line
    def cmdline(self, digest_param, extra=""):
        return (f"console=ttyS0 panic=-1 root=/dev/vda rootfstype=ext4 {digest_param} {extra}").strip()

    def param(self, name="A"):
        h = self.d[name]
        alg = "sha512" if len(h) == 128 else "sha256"
        return f"composefs.digest=v1-{alg}-12:{h}"


def installer_initrd(sealctl_bin, workdir):
    """busybox + static sealctl + plain .ko modules + fsverity-utils."""
    c = q.busybox_cpio()
    c.file("bin/sealctl", Path(sealctl_bin), 0o755)
    for f in FSVERITY_FILES:
        for lib in [f] + _ldd_libs(f):
            c.file(lib.lstrip("/"), Path(os.path.realpath(lib)), 0o755)
    c.file("init", INSTALL_INIT.encode(), 0o755)
    return c.write(Path(workdir) / "installer.cpio")


def install_disks(kernel, sealctl_bin, disks, workdir):
    """Boot the install guest once over DISKS (each holding /staging/repo,
    /staging/install listing digests, optional /staging/post-install.sh);
    raise unless every disk reports success."""
    initrd = installer_initrd(sealctl_bin, workdir)
    r = q.boot(kernel, initrd, "console=ttyS0 panic=-1 loglevel=4", disks,
               Path(workdir) / "install.log", timeout=400, stop_after=r"INSTALLER: all done")
    for i, disk in enumerate(disks):
        dev = "vd" + "abcdefghijklmnop"[i]
        if not re.search(rf"INSTALLER: {dev} ok", r.text):
            lines = [l for l in r.text.splitlines() if dev in l or "sealctl" in l][-6:]
            raise RuntimeError(f"install guest failed for {disk} ({dev}): {' | '.join(lines)} (see {r.log})")
    return r


INSTALL_INIT = r"""#!/bin/sh
# Install guest: enable fs-verity on each disk's sealed repository with the
# product's own `sealctl install`, then run an optional post-install script.
export PATH=/bin:/usr/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
for m in $(cat /etc/modules.order); do insmod $m 2>/dev/null; done
sleep 1
for dev in /dev/vd?; do
  name=${dev#/dev/}
  ok=1
  mount -t ext4 $dev /mnt || { echo "INSTALLER: $name mount failed"; continue; }
  for d in $(cat /mnt/staging/install); do
    if /bin/sealctl install --repo /mnt/staging/repo --sysroot /mnt $d </dev/null 2>&1; then
      echo "INSTALLER: $name installed $d"
    else
      echo "INSTALLER: $name sealctl install $d failed"; ok=0
    fi
  done
  if [ $ok = 1 ] && [ -f /mnt/staging/post-install.sh ]; then
    sh /mnt/staging/post-install.sh || { echo "INSTALLER: $name post-install failed"; ok=0; }
  fi
  rm -rf /mnt/staging
  sync; umount /mnt
  [ $ok = 1 ] && echo "INSTALLER: $name ok"
done
sync
echo "INSTALLER: all done"
poweroff -f
"""
