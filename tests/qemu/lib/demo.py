"""The README's main job: seal a small demo root with a demo key, install it
in a guest, boot it, and show the verified switch and status.json.

The demo key is generated under build/demo/ with `sealctl keygen` and
embedded into a prebuilt sealroot (built without any keys) with
`sealctl embed-keys`, the packager's path; the test keys play no part.
"""

import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sealqemu as q  # noqa: E402
import scenarios as s  # noqa: E402


def step(msg):
    print(f"== {msg}", flush=True)


def main():
    t0 = time.monotonic()
    work = q.BUILD / "demo"
    work.mkdir(parents=True, exist_ok=True)
    kernel = q.direct_boot_kernel()
    step("building sealctl (release, static musl) and sealroot (boot profile, no keys compiled in)")
    built, sealctl = q.cargo_build(sealroot_features=())
    key = work / "demo-key"
    if not (work / "demo-key.pem").exists():
        step("generating the demo signing key (build/demo/demo-key.pem)")
        q.run([sealctl, "keygen", "--output", key], capture_output=True)
    pub = work / "demo-key.pub.pem"
    step("embedding the demo public key into sealroot")
    sealroot = work / "sealroot"
    # The harness adds no_timer_check to every guest command line (see
    # sealqemu._boot): the only word beyond the boot policy's defaults.
    emb = subprocess.run([sealctl, "embed-keys", "--binary", built, "--output", sealroot, "--key", pub,
                          "--allow-cmdline", "no_timer_check"], capture_output=True, text=True)
    if emb.returncode != 0:
        raise SystemExit(f"sealctl embed-keys failed: {emb.stderr.strip()}")
    shown = subprocess.run([sealctl, "embed-keys", "--binary", sealroot, "--show"], capture_output=True, text=True)
    allow = [l for l in shown.stdout.splitlines() if l.startswith("cmdline-allow: ")]
    for line in shown.stdout.strip().splitlines():
        if not line.startswith("cmdline-allow: "):
            print("   " + line)
    print(f"   command line allowlist: {len(allow)} entries, e.g. "
          + ", ".join(l.split(": ", 1)[1] for l in allow[:6]) + ", ...")
    print(f"   sealroot: {sealroot.stat().st_size} bytes; " +
          subprocess.run(["file", "-b", sealroot], capture_output=True, text=True).stdout.strip())

    step("making the demo root and sealing it")
    root = q.build_demo_root(work / "root", "demo")
    stage = work / "stage"
    repo, digest = s.seal_into_stage(sealctl, root, stage, work / "demo-key.pem")
    print(f"   digest {digest}")
    r = subprocess.run([sealctl, "cmdline", "--repo", repo, digest], capture_output=True, text=True)
    param = r.stdout.strip() if r.returncode == 0 and "=" in r.stdout else f"composefs.digest=v1-sha256-12:{digest}"
    print(f"   kernel argument: {param}")
    disk = q.mkfs_ext4(stage, work / "disk.img", "96M")

    step("install guest: sealctl install enables fs-verity (QEMU, TCG)")
    ir = s.install_disks(kernel, sealctl, [disk], work)
    print(f"   installed in {ir.seconds:.0f} s")

    step("booting the sealed root (QEMU, TCG, initramfs = sealroot + modules only)")
    initrd = q.sealroot_initramfs(work / "initramfs.cpio", sealroot)
    append = f"console=ttyS0 panic=-1 root=/dev/vda rootfstype=ext4 {param}"
    br = q.boot(kernel, initrd, append, [disk], work / "boot.log", timeout=180)
    print(f"   boot finished in {br.seconds:.0f} s (console log {br.log})")
    step("sealroot log")
    for line in br.text.splitlines():
        if "sealroot:" in line:
            print("   " + line)
    step("/run/sealroot/status.json (printed by the sealed root's init)")
    m = re.search(r"SEALTEST: status-begin\n(.*?)\nSEALTEST: status-end", br.text, re.S)
    print(m.group(1) if m else "   (not printed)")
    step("sealed root")
    for line in br.text.splitlines():
        if line.startswith("SEALTEST:") and "status-" not in line:
            print("   " + line)
    ok = br.has(re.escape(s.INIT_MARKER)) and br.has(s.SWITCH_RE) and br.has("SEALTEST: rootfs overlay")
    print(f"== demo {'OK' if ok else 'FAILED'}: {time.monotonic() - t0:.0f} s in all")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:
        print(f"demo: {e}", file=sys.stderr)
        sys.exit(1)
