//! `sealroot-generator`: the boot policy's command-line check as a systemd
//! generator in a dracut + systemd initramfs.
//!
//! Why: systemd and its generators obey the command line before any unit
//! runs. `sealroot.service` runs after `sysroot.mount`, so by then
//! `rootflags=x-systemd.requires=debug-shell.service` (turned into a unit
//! dependency by `systemd-fstab-generator`), `systemd.debug_shell` or
//! `rd.systemd.wants=` have already started what they name, and dracut's
//! emergency handler would follow an `rd.emergency=` from the command line.
//! A generator is the earliest code an initramfs can run under systemd.
//!
//! Contract (systemd.generator(7): argv is `NORMAL EARLY LATE`, three
//! directories under `/run/systemd/`; units in EARLY override every unit
//! file, `/etc` and `/usr/lib` included; a symlink to `/dev/null` masks):
//! - Under the `signed` trust policy the generator checks `/proc/cmdline`
//!   exactly as the boot does ([`crate::boot::read_cmdline`]). A line it
//!   accepts changes nothing (exit 0, no files).
//! - A refused line is logged as the boot logs it (`refusing to boot: …`),
//!   measured as a refusal, and then, in EARLY:
//!   - the units that give a shell or run command-line programs are masked
//!     ([`MASKED_UNITS`]; under the `shell` failure policy the emergency
//!     units are left alone);
//!   - `initrd.target` and `default.target` become aliases of the config's
//!     failure target ([`failure_target`]): nothing the normal initrd
//!     transaction would start (`sysroot.mount` and what the command line
//!     hung on it, `sealroot.service`, the switch root) is pulled in.
//! - What it cannot stop: systemd itself acts on a few words while it
//!   starts, before any generator (`systemd.unit=` picks the unit started
//!   instead of `initrd.target`, `systemd.log_*`); the masks above cover the
//!   shell units such a word could name, and the switch root still requires
//!   `sealroot.service`, which refuses the same line. The README's
//!   configurations table keeps a dracut initramfs with an editable command
//!   line as not protected: put the command line in a signed UKI.

use std::path::Path;
use std::process::ExitCode;

use crate::boot::config::{self, FailurePolicy};
use crate::boot::{log, measure_refusal, BootError};

/// Units masked after a refusal: debug and emergency shells, gettys, and the
/// unit `systemd.run=` creates.
pub const MASKED_UNITS: &[&str] = &[
    "debug-shell.service",
    "rescue.service",
    "kernel-command-line.service",
    "console-getty.service",
    "getty@.service",
    "serial-getty@.service",
    "container-getty@.service",
];

/// The emergency units (masked unless the failure policy is `shell`).
pub const EMERGENCY_UNITS: &[&str] = &["emergency.service", "dracut-emergency.service"];

/// Where unit files live in a dracut initramfs.
const UNIT_DIR: &str = "/usr/lib/systemd/system";

/// The target a refused initrd boots into, from the failure policy.
pub fn failure_target(policy: FailurePolicy) -> &'static str {
    match policy {
        FailurePolicy::Halt => "poweroff.target",
        FailurePolicy::Reboot => "reboot.target",
        FailurePolicy::Shell => "emergency.target",
    }
}

/// The files a refusal writes into EARLY: `(name, symlink target)`.
pub fn refusal_links(policy: FailurePolicy) -> Vec<(String, String)> {
    let mut links: Vec<(String, String)> = MASKED_UNITS
        .iter()
        .chain(if policy == FailurePolicy::Shell {
            [].iter()
        } else {
            EMERGENCY_UNITS.iter()
        })
        .map(|u| (u.to_string(), "/dev/null".to_string()))
        .collect();
    let target = format!("{UNIT_DIR}/{}", failure_target(policy));
    for alias in ["initrd.target", "default.target"] {
        links.push((alias.to_string(), target.clone()));
    }
    links
}

/// Run as a generator: `args` are systemd's three directories.
pub fn run(args: &[String]) -> ExitCode {
    let Some(early) = args.get(1) else {
        log::err("generator: expected the directories NORMAL EARLY LATE");
        return ExitCode::FAILURE;
    };
    let gate = match super::load_gate() {
        Ok(g) => g,
        // sealroot.service reports an unusable trust anchor with the rest
        // of the boot's checks; the generator has nothing to add.
        Err(_) => return ExitCode::SUCCESS,
    };
    if !gate.restricts_cmdline {
        return ExitCode::SUCCESS;
    }
    let line = match super::proc_cmdline() {
        Ok(l) => l,
        Err(e) => return refuse(&gate, e, Path::new(early)),
    };
    match super::read_cmdline(&line, &gate) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => refuse(&gate, e, Path::new(early)),
    }
}

fn refuse(gate: &super::Gate, e: BootError, early: &Path) -> ExitCode {
    let policy = config::load(Path::new(config::CONFIG_PATH))
        .ok()
        .flatten()
        .map(|c| c.failure)
        .unwrap_or_default();
    log::err(&format!(
        "refusing to boot: {e} (systemd generator: the initrd goes to {} before any unit runs)",
        failure_target(policy)
    ));
    measure_refusal(&gate.boot.tpm, None, &e);
    let mut ok = true;
    for (name, target) in refusal_links(policy) {
        let link = early.join(&name);
        let _ = rustix::fs::unlink(&link);
        if let Err(errno) = rustix::fs::symlink(target.as_str(), &link) {
            log::err(&format!(
                "generator: cannot create {}: {}",
                link.display(),
                crate::boot::io::errno_name(errno)
            ));
            ok = false;
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_links_follow_the_failure_policy() {
        let halt = refusal_links(FailurePolicy::Halt);
        assert!(halt.contains(&(
            "initrd.target".into(),
            "/usr/lib/systemd/system/poweroff.target".into()
        )));
        assert!(halt.contains(&("debug-shell.service".into(), "/dev/null".into())));
        assert!(halt.contains(&("emergency.service".into(), "/dev/null".into())));
        let reboot = refusal_links(FailurePolicy::Reboot);
        assert!(reboot.contains(&(
            "default.target".into(),
            "/usr/lib/systemd/system/reboot.target".into()
        )));
        let shell = refusal_links(FailurePolicy::Shell);
        assert!(!shell.iter().any(|(n, _)| n == "emergency.service"));
        assert!(shell.contains(&("debug-shell.service".into(), "/dev/null".into())));
    }
}
