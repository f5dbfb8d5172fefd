"""composefs-rs peers from crates.io, installed once and reused.

`composefs-setup-root` and `composefs-ctl` (which provides `cfsctl`),
version PEER_VERSION, are installed with `cargo install --locked --root
build/peers` the first time something asks for them and reused while
cargo's own record (build/peers/.crates.toml) names that version. The
interop suite (tests/interop/run) and the boot bench (bootbench.py, run by
`scripts/bench boot`) both get their peers here, so they run the same
binaries.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import sealqemu as q
import scenarios as s

PEER_VERSION = "0.9.4"
PEERS = q.BUILD / "peers"
# (crate, binary, extra `cargo install` arguments). cfsctl's default
# features (OCI, containers-storage, ostree, FUSE) are not needed to build
# a repository from a directory and triple the build.
PEER_CRATES = [
    ("composefs-setup-root", "composefs-setup-root", []),
    ("composefs-ctl", "cfsctl", ["--no-default-features"]),
]


def installed_peers():
    """crate -> version, from cargo's own record of build/peers."""
    f = PEERS / ".crates.toml"
    if not f.exists():
        return {}
    return {m.group(1): m.group(2) for m in re.finditer(r'^"(\S+) (\S+) \(', f.read_text(), re.M)}


def ensure_peers(log_dir, binaries=None):
    """Install the pinned peers (all, or only those named in BINARIES) into
    build/peers unless already there; cargo's output goes to LOG_DIR.
    Returns {binary: path or None} and {binary: reason} for those missing.
    INTEROP_NO_INSTALL=1 uses only what is already installed."""
    have = installed_peers()
    bins, why = {}, {}
    for crate, binary, extra in PEER_CRATES:
        if binaries is not None and binary not in binaries:
            continue
        path = PEERS / "bin" / binary
        if have.get(crate) != PEER_VERSION or not path.exists():
            if os.environ.get("INTEROP_NO_INSTALL"):
                why[binary] = f"{crate} {PEER_VERSION} is not in {PEERS} and INTEROP_NO_INSTALL is set"
                bins[binary] = None
                continue
            if not shutil.which("cargo"):
                why[binary] = "cargo is not installed"
                bins[binary] = None
                continue
            print(f"== cargo install {crate}@{PEER_VERSION} into {PEERS} (first run only; minutes)", flush=True)
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            logf = Path(log_dir) / f"cargo-install-{crate}.log"
            # Cargo's own temporary target directory, not the project's.
            env = {k: v for k, v in os.environ.items() if k != "CARGO_TARGET_DIR"}
            with open(logf, "w") as lf:
                r = subprocess.run(["cargo", "install", "--locked", "--root", str(PEERS), *extra,
                                    f"{crate}@{PEER_VERSION}"], stdout=lf, stderr=subprocess.STDOUT, env=env)
            if r.returncode != 0 or not path.exists():
                tail = logf.read_text(errors="replace").strip().splitlines()[-3:]
                why[binary] = f"cargo install {crate}@{PEER_VERSION} failed: {' | '.join(tail)} (log {logf})"
                bins[binary] = None
                continue
        bins[binary] = path
    return bins, why


def add_dynamic(c, binary, dest):
    """Put a dynamically linked BINARY at DEST in cpio C with its libraries
    at the paths the loader looks them up (glibc, libgcc_s, openssl...)."""
    c.file(dest, Path(binary), 0o755)
    for lib in s._ldd_libs(str(binary)):
        c.file(lib.lstrip("/"), Path(os.path.realpath(lib)), 0o755)
