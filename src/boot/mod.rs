//! Boot orchestration: the `sealroot` binary's modes, the trust decision,
//! and `/run/sealroot/status.json`.
//!
//! Contract (the integrators' view is docs/boot-sequence.md, which lists
//! every log line):
//! - PID 1 (`/init` of a minimal initramfs): API filesystems, modules from
//!   `/etc/sealroot/modules`, physical root from `root=` at `/sysroot`,
//!   [`prepare`], then [`crate::boot::switchroot::switch_root`]. Any refusal logs
//!   one `refusing to boot: <reason>` line and then follows the failure
//!   policy of the config (halt = power off by default).
//! - `sealroot prepare [--sysroot DIR] [--cmdline TEXT] [--config FILE]`:
//!   the same [`prepare`] on a physical root someone else mounted (systemd
//!   `sysroot.mount`, dracut `$NEWROOT`); exit status 0 on success, 1 on a
//!   refusal, 2 on a usage error.
//! - Both modes first load the boot policy ([`crate::boot::trust::load_boot_policy`],
//!   fixed at build/embed time) and, under the `signed` trust policy, refuse
//!   a command line with any word it does not allow ([`crate::boot::policy`])
//!   before anything else happens.
//! - [`prepare`]: expected digest (first command-line digest parameter and/or
//!   the config, which must agree), open + measure the image fd, load the
//!   trust policy ([`crate::boot::trust::load`], never from the command line), read
//!   the TPM serial floor ([`read_tpm_floor`]: signed policy only), verify the
//!   seal (signed policy) with the serial floor max(compiled-in, config, TPM)
//!   through [`crate::seal::check_repository_seal`], mount from that same fd
//!   ([`crate::boot::mount::compose`]), write the status. The order guarantees that
//!   nothing is mounted before the measured digest is trusted.
//! - After [`prepare`] and before the status file and the switch, both
//!   modes extend the accepted record ([`accepted_record`], [`measure`]) into
//!   the boot policy's PCR and systemd's measurement log; every refusal
//!   first extends the refused record ([`measure_refusal`]; best effort).
//!   No TPM: logged, or a refusal when the policy requires one.
//! - The TPM serial floor (issue 19, [`crate::tpm::nv`]): the NV counter
//!   named by the boot policy is read with NV_ReadPublic + NV_Read, never
//!   written (0 NV writes per boot; `sealctl tpm-floor raise` raises it
//!   after a good boot). A counter the floor rules refuse (wrong type or
//!   attributes, never written) refuses the boot under either setting of
//!   `floor_required`; no TPM, an unreachable one, or no index at the handle
//!   refuses it only when the policy requires the floor, and otherwise is
//!   logged and leaves the TPM floor out. A seal below a floor the TPM set
//!   is refused with one line naming the serial, the floor and the index
//!   ([`BootError::BelowTpmFloor`]).
//! - PID 1 execs the init the boot policy allows with argv `[init]` and the
//!   policy's fixed environment, never words from the command line.

pub mod cmdline;
pub mod config;
pub mod generator;
pub mod io;
pub mod log;
pub mod mount;
pub mod policy;
pub mod switchroot;
pub mod trust;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use crate::boot::cmdline::{Cmdline, CmdlineError};
use crate::boot::config::{Config, ConfigError, DigestSource, FailurePolicy, SelectError};
use crate::boot::mount::{ComposeRequest, ErofsHow, ImageError, MountError, OverlayHow};
use crate::boot::policy::{BootPolicy, PolicyError, TpmPolicy};
use crate::boot::switchroot::SwitchError;
use crate::boot::trust::{TrustError, TrustPolicy};
use crate::digest::Digest;
use crate::seal::{self, RepoSealError};
use crate::tpm::{self, RefusalClass, TpmError};

/// Where the status file goes.
pub const STATUS_DIR: &str = "/run/sealroot";
/// Scratch mount directory used while composing.
pub const SCRATCH_DIR: &str = "/run/sealroot/mnt";
/// PID 1's module list.
pub const MODULE_LIST: &str = "/etc/sealroot/modules";
/// Where PID 1 mounts the physical root.
pub const PID1_SYSROOT: &str = "/sysroot";

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Every way a boot is refused. Display gives the reason after
/// `refusing to boot: `.
#[derive(Debug)]
pub enum BootError {
    ReadCmdline {
        error: std::io::Error,
    },
    Cmdline(CmdlineError),
    Policy(PolicyError),
    /// A config serial floor under sealed-digest, which checks no seal.
    FloorWithSealedDigest {
        floor: u64,
    },
    Config(ConfigError),
    Digest(SelectError),
    Trust(TrustError),
    Sysroot {
        path: String,
    },
    Repo(ImageError),
    Meta(crate::repo_meta::BootMetaError),
    Image(ImageError),
    Seal(RepoSealError),
    Mount(MountError),
    Switch(SwitchError),
    Status {
        path: String,
        error: std::io::Error,
    },
    /// The boot policy requires a TPM and measuring failed.
    Tpm(TpmError),
    /// The TPM floor index is unusable (any policy), or unreachable while
    /// the policy requires the floor.
    TpmFloor {
        error: crate::tpm::nv::FloorError,
        required: bool,
    },
    /// The policy requires the TPM floor and no index is defined.
    TpmFloorMissing {
        index: u32,
    },
    /// The seal verifies but its serial is below the floor the TPM set.
    BelowTpmFloor {
        path: String,
        serial: u64,
        floor: u64,
        index: u32,
    },
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootError::ReadCmdline { error } => {
                write!(f, "cannot read /proc/cmdline: {error}")
            }
            BootError::Cmdline(e) => e.fmt(f),
            BootError::Policy(e) => e.fmt(f),
            BootError::FloorWithSealedDigest { floor } => write!(
                f,
                "{} sets serial_floor {floor} but the trust policy is sealed-digest, which checks no \
                 seal: the floor cannot be enforced (remove it, or use a signed build)",
                config::CONFIG_PATH
            ),
            BootError::Config(e) => e.fmt(f),
            BootError::Digest(e) => e.fmt(f),
            BootError::Trust(e) => write!(f, "trust anchor unusable: {e}"),
            BootError::Sysroot { path } => {
                write!(f, "physical root {path} is not a directory")
            }
            BootError::Repo(e) => write!(f, "repository: {e}"),
            BootError::Meta(e) => e.fmt(f),
            BootError::Image(e) => e.fmt(f),
            BootError::Seal(e) => e.fmt(f),
            BootError::Mount(e) => e.fmt(f),
            BootError::Switch(e) => e.fmt(f),
            BootError::Status { path, error } => {
                write!(f, "cannot write status {path}: {error}")
            }
            BootError::Tpm(e) => write!(
                f,
                "the boot policy requires a TPM measurement, which failed: {e}"
            ),
            BootError::TpmFloor { error, required } if *required && error.is_unreachable() => {
                write!(
                    f,
                    "the boot policy requires the TPM serial floor, which could not be read: {error}"
                )
            }
            BootError::TpmFloor { error, .. } => error.fmt(f),
            BootError::TpmFloorMissing { index } => write!(
                f,
                "the boot policy requires the TPM serial floor, but no NV index is defined at \
                 0x{index:08x} (sealctl tpm-floor define provisions it)"
            ),
            BootError::BelowTpmFloor {
                path,
                serial,
                floor,
                index,
            } => write!(
                f,
                "seal {path} rejected: seal serial {serial} is below the TPM floor {floor} \
                 (NV counter 0x{index:08x}; rollback refused)"
            ),
        }
    }
}

impl std::error::Error for BootError {}

impl BootError {
    /// The fixed word the refused record names (never the message text).
    pub fn refusal_class(&self) -> RefusalClass {
        match self {
            BootError::ReadCmdline { .. } | BootError::Cmdline(_) => RefusalClass::Cmdline,
            BootError::Policy(_) => RefusalClass::BootPolicy,
            BootError::FloorWithSealedDigest { .. } | BootError::Config(_) => RefusalClass::Config,
            BootError::Digest(_) => RefusalClass::Digest,
            BootError::Trust(_) => RefusalClass::Trust,
            BootError::Sysroot { .. } => RefusalClass::Sysroot,
            BootError::Repo(_) | BootError::Meta(_) => RefusalClass::Repository,
            BootError::Image(_) => RefusalClass::Image,
            BootError::Seal(_) | BootError::BelowTpmFloor { .. } => RefusalClass::Seal,
            BootError::Mount(_) | BootError::Status { .. } => RefusalClass::Mount,
            BootError::Switch(_) => RefusalClass::Switch,
            BootError::Tpm(_) | BootError::TpmFloor { .. } | BootError::TpmFloorMissing { .. } => {
                RefusalClass::Tpm
            }
        }
    }
}

/// What the TPM step did (status.json's `tpm` object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TpmOutcome {
    Measured {
        measured: tpm::Measured,
        record: String,
        /// The log path, or why appending failed.
        log: Result<String, String>,
    },
    NotMeasured {
        pcr: u32,
        required: bool,
        reason: String,
    },
}

/// The record of an accepted boot.
pub fn accepted_record(p: &Prepared) -> Result<String, TpmError> {
    match &p.trusted {
        Trusted::Seal {
            fingerprint,
            serial,
            ..
        } => tpm::accepted_record(&p.digest, fingerprint, *serial),
        Trusted::SealedDigest { .. } => Ok(tpm::sealed_digest_record(&p.digest)),
    }
}

/// Extend `record` into the policy's PCR and append it to systemd's log.
/// No TPM, or a failing one: logged and `NotMeasured`, unless the policy
/// requires a TPM (then the error).
pub fn measure(policy: &TpmPolicy, record: &str) -> Result<TpmOutcome, TpmError> {
    match tpm::pcr_event(policy.pcr, record.as_bytes()) {
        Ok(measured) => {
            let banks: Vec<&str> = measured.digests.iter().map(|d| d.bank.name()).collect();
            log::notice(&format!(
                "measured into PCR {} ({}) via {}: {record}",
                measured.pcr,
                banks.join(","),
                measured.device
            ));
            let entry = tpm::log_entry(
                measured.pcr,
                &measured.digests,
                record,
                &tpm::boot_id(),
                tpm::boottime_us(),
            );
            let log = match tpm::append_log(Path::new(tpm::LOG_PATH), &entry) {
                Ok(()) => Ok(tpm::LOG_PATH.to_string()),
                Err(e) => {
                    let why = format!(
                        "cannot append to {}: {}",
                        tpm::LOG_PATH,
                        crate::boot::io::errno_name(e)
                    );
                    log::warning(&why);
                    Err(why)
                }
            };
            Ok(TpmOutcome::Measured {
                measured,
                record: record.to_string(),
                log,
            })
        }
        Err(e) if !policy.required => {
            match &e {
                TpmError::NoDevice => log::notice(&format!("no TPM: not measured ({e})")),
                _ => log::warning(&format!("TPM measurement failed, not measured: {e}")),
            }
            Ok(TpmOutcome::NotMeasured {
                pcr: policy.pcr,
                required: false,
                reason: e.to_string(),
            })
        }
        Err(e) => Err(e),
    }
}

/// Before stopping: extend the refused record (never fatal: the boot is
/// being refused anyway).
pub fn measure_refusal(policy: &TpmPolicy, expected: Option<&Digest>, e: &BootError) {
    let record = tpm::refused_record(expected, e.refusal_class());
    let relaxed = TpmPolicy {
        required: false,
        ..*policy
    };
    let _ = measure(&relaxed, &record);
}

/// What the TPM floor step found (status.json's `floor.tpm`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TpmFloor {
    /// The policy names no floor index.
    Off,
    /// Sealed-digest policy: no seal, nothing to compare.
    NotApplicable,
    /// No TPM or an unreachable one (policy does not require the floor).
    NotRead { index: u32, reason: String },
    /// No index at the handle (policy does not require the floor).
    Undefined { index: u32 },
    /// The counter's value.
    Read { index: u32, value: u64 },
}

impl TpmFloor {
    /// The floor the TPM contributes (0 when it contributes none).
    pub fn value(&self) -> u64 {
        match self {
            TpmFloor::Read { value, .. } => *value,
            _ => 0,
        }
    }

    fn json(&self) -> String {
        let idx = |i: &u32| json_str(&format!("0x{i:08x}"));
        match self {
            TpmFloor::Off => "{\"state\": \"off\"}".to_string(),
            TpmFloor::NotApplicable => "{\"state\": \"not-applicable\"}".to_string(),
            TpmFloor::NotRead { index, reason } => format!(
                "{{\"state\": \"not-read\", \"index\": {}, \"reason\": {}}}",
                idx(index),
                json_str(reason)
            ),
            TpmFloor::Undefined { index } => {
                format!("{{\"state\": \"undefined\", \"index\": {}}}", idx(index))
            }
            TpmFloor::Read { index, value } => format!(
                "{{\"state\": \"read\", \"index\": {}, \"value\": {value}}}",
                idx(index)
            ),
        }
    }
}

/// The serial floors a boot compared against (status.json's `floor`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Floors {
    pub built_in: u64,
    pub config: u64,
    pub tpm: TpmFloor,
    /// max of the three: what the seal was checked against.
    pub effective: u64,
}

/// Read the TPM serial floor the policy names (module docs: what is a
/// refusal under which setting). Two TPM commands, no writes.
pub fn read_tpm_floor(policy: &TpmPolicy) -> Result<TpmFloor, BootError> {
    use crate::tpm::nv::{self, FloorRead};
    let index = policy.floor_index;
    if index == 0 {
        return Ok(TpmFloor::Off);
    }
    let required = policy.floor_required;
    match nv::read_floor(index) {
        Ok(FloorRead::Value(value)) => {
            log::info(&format!(
                "TPM serial floor {value} (NV counter 0x{index:08x})"
            ));
            Ok(TpmFloor::Read { index, value })
        }
        Ok(FloorRead::Undefined) if required => Err(BootError::TpmFloorMissing { index }),
        Ok(FloorRead::Undefined) => {
            log::notice(&format!(
                "no TPM serial floor: no NV index at 0x{index:08x} (not required)"
            ));
            Ok(TpmFloor::Undefined { index })
        }
        Err(error) if error.is_unreachable() && !required => {
            log::notice(&format!(
                "TPM serial floor not read (not required): {error}"
            ));
            Ok(TpmFloor::NotRead {
                index,
                reason: error.to_string(),
            })
        }
        Err(error) => Err(BootError::TpmFloor { error, required }),
    }
}

/// The digest a boot was asked for, if the command line and config name
/// one consistently (for the refused record).
fn expected_digest(c: &Cmdline, cfg: &Config) -> Option<Digest> {
    config::select_digest(c.digest.map(|(_, d)| d), cfg.digest)
        .ok()
        .map(|(d, _)| d)
}

/// How the digest came to be trusted.
#[derive(Clone, Debug)]
pub enum Trusted {
    /// Signed policy: the verified seal.
    Seal {
        fingerprint: String,
        serial: u64,
        /// The verified manifest bytes (JSON, embedded verbatim).
        manifest: String,
    },
    /// Sealed-digest policy.
    SealedDigest { source: DigestSource },
}

/// Per-step timings in microseconds.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    pub measure: u64,
    pub verify: u64,
    pub mount_erofs: u64,
    pub mount_overlay: u64,
    pub state: u64,
    pub total: u64,
}

/// The outcome of [`prepare`].
#[derive(Clone, Debug)]
pub struct Prepared {
    pub digest: Digest,
    pub source: DigestSource,
    pub trusted: Trusted,
    pub erofs: ErofsHow,
    pub overlay: OverlayHow,
    pub timings: Timings,
    pub config: Config,
    pub floors: Floors,
}

fn us_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The boot policy and whether it restricts the command line.
pub struct Gate {
    pub boot: BootPolicy,
    /// `signed` trust policy: every command-line word is checked.
    pub restricts_cmdline: bool,
}

/// Check the command line text against the boot policy (signed trust
/// policy only), parse it and log what it contained that is ignored.
///
/// `line` is the command line's raw bytes (for `/proc/cmdline`, without the
/// newline the kernel appends): the signed policy's byte grammar is checked
/// on those bytes, before anything turns them into text.
pub fn read_cmdline(line: &[u8], gate: &Gate) -> Result<Cmdline, BootError> {
    if gate.restricts_cmdline {
        gate.boot.check_bytes(line).map_err(BootError::Policy)?;
    }
    let text = String::from_utf8_lossy(line);
    let c = cmdline::parse(&text).map_err(BootError::Cmdline)?;
    for ignored in &c.ignored_digests {
        log::warning(&format!(
            "ignoring later digest parameter {ignored}: only the first one counts"
        ));
    }
    for ignored in &c.ignored_options {
        log::warning(&format!(
            "ignoring {ignored}: policy settings come only from {}",
            config::CONFIG_PATH
        ));
    }
    Ok(c)
}

/// Everything [`prepare`] needs.
pub struct PrepareRequest<'a> {
    pub sysroot: &'a Path,
    pub cmdline: &'a Cmdline,
    pub config: &'a Config,
    pub scratch: &'a Path,
    pub started: Instant,
    /// The boot policy's TPM settings (the floor index).
    pub tpm: TpmPolicy,
}

/// Check, verify, compose. See the module docs.
pub fn prepare(req: &PrepareRequest<'_>) -> Result<Prepared, BootError> {
    let config = req.config;
    let (digest, source) = config::select_digest(req.cmdline.digest.map(|(_, d)| d), config.digest)
        .map_err(BootError::Digest)?;
    log::notice(&format!(
        "expected digest {} (from {})",
        digest.to_composefs(),
        source.name()
    ));

    if !crate::boot::io::is_dir(req.sysroot) {
        return Err(BootError::Sysroot {
            path: req.sysroot.display().to_string(),
        });
    }
    let repo = mount::open_repo(req.sysroot).map_err(BootError::Repo)?;
    match crate::repo_meta::check_for_boot(&repo, digest.algorithm()).map_err(BootError::Meta)? {
        Some(meta) => log::info(&format!(
            "repository format {} ({})",
            meta.version, meta.algorithm
        )),
        None => log::info("repository has no composefs/meta.json (made by an older sealctl)"),
    }

    let t = Instant::now();
    let image = mount::open_image(&repo, &digest).map_err(BootError::Image)?;
    let shown = crate::layout::shown(&crate::layout::image_rel(&digest));
    mount::check_verity_filesystem(&image, &shown).map_err(BootError::Image)?;
    mount::check_verity_filesystem(&repo, crate::layout::REPO_DIR).map_err(BootError::Image)?;
    let measured = mount::measure(&image, &digest, &shown).map_err(BootError::Image)?;
    let measure_us = us_since(t);
    log::notice(&format!("measured {measured} on {shown}"));

    // Trust is loaded only now so that a binary without keys still says
    // what it measured; nothing has been mounted yet either way.
    let policy = trust::load().map_err(BootError::Trust)?;
    if matches!(policy, TrustPolicy::SealedDigest { .. }) && config.serial_floor > 0 {
        return Err(BootError::FloorWithSealedDigest {
            floor: config.serial_floor,
        });
    }
    let base = policy.serial_floor().max(config.serial_floor);
    let tpm_floor = match &policy {
        TrustPolicy::Signed { .. } => read_tpm_floor(&req.tpm)?,
        TrustPolicy::SealedDigest { .. } => TpmFloor::NotApplicable,
    };
    let floor = base.max(tpm_floor.value());
    let floors = Floors {
        built_in: policy.serial_floor(),
        config: config.serial_floor,
        tpm: tpm_floor,
        effective: floor,
    };
    match &policy {
        TrustPolicy::Signed { keys, .. } => log::info(&format!(
            "trust policy signed: {} key(s), serial floor {floor} (built-in {}, config {}, TPM {})",
            keys.len(),
            floors.built_in,
            floors.config,
            floors.tpm.value()
        )),
        TrustPolicy::SealedDigest { .. } => log::info("trust policy sealed-digest"),
    }

    let t = Instant::now();
    let trusted = match &policy {
        TrustPolicy::Signed { keys, .. } => {
            let checked =
                seal::check_repository_seal(&repo, &measured, keys, floor).map_err(|e| {
                    match (e, &floors.tpm) {
                        (
                            RepoSealError::Rejected {
                                path,
                                error: seal::SealError::SerialBelowFloor { serial, floor },
                            },
                            TpmFloor::Read { index, value },
                        ) if *value == floor && *value > base => BootError::BelowTpmFloor {
                            path,
                            serial,
                            floor,
                            index: *index,
                        },
                        (e, _) => BootError::Seal(e),
                    }
                })?;
            let v = checked.verified;
            let manifest = checked.manifest;
            log::notice(&format!(
                "seal verified: serial {} (floor {floor}), key {}",
                v.manifest.serial, v.key_fingerprint
            ));
            Trusted::Seal {
                fingerprint: v.key_fingerprint,
                serial: v.manifest.serial,
                manifest: String::from_utf8_lossy(&manifest).into_owned(),
            }
        }
        TrustPolicy::SealedDigest { .. } => {
            log::notice(&format!(
                "sealed-digest policy: trusting the digest from the {}",
                source.name()
            ));
            Trusted::SealedDigest { source }
        }
    };
    let verify_us = us_since(t);

    let composed = mount::compose(ComposeRequest {
        sysroot: req.sysroot,
        scratch: req.scratch,
        image,
        digest: &measured,
        etc: config.etc,
        var: config.var,
        var_noexec: config.var_noexec,
    })
    .map_err(BootError::Mount)?;
    match &composed.erofs {
        ErofsHow::FileBacked => log::info("mounted EROFS image from the measured fd (file-backed)"),
        ErofsHow::Loop(dev) => log::info(&format!(
            "mounted EROFS image from the measured fd via read-only {dev}"
        )),
    }
    log::info(match composed.overlay {
        OverlayHow::LayerAppend => {
            "mounted overlay lowerdir+/datadir+ metacopy=on,redirect_dir=on,verity=require"
        }
        OverlayHow::StringForm => {
            "mounted overlay lowerdir=IMAGE::OBJECTS metacopy=on,redirect_dir=on,verity=require"
        }
    });
    log::info(&format!(
        "state: /etc {}, /var {}, physical root read-only at /sysroot",
        config.etc.name(),
        config.var.name()
    ));
    let timings = Timings {
        measure: measure_us,
        verify: verify_us,
        mount_erofs: composed.mount_erofs_us,
        mount_overlay: composed.mount_overlay_us,
        state: composed.state_us,
        total: us_since(req.started),
    };
    log::notice(&format!(
        "composed root ready at {} in {} us",
        req.sysroot.display(),
        timings.total
    ));
    Ok(Prepared {
        digest: measured,
        source,
        trusted,
        erofs: composed.erofs,
        overlay: composed.overlay,
        timings,
        config: config.clone(),
        floors,
    })
}

/// JSON string literal for `s` (quotes, backslash and control characters
/// escaped). Hand-written so the boot binary needs no `serde_json::Value`.
pub(crate) fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// status.json's `tpm` object.
pub fn tpm_json(t: &TpmOutcome) -> String {
    match t {
        TpmOutcome::Measured {
            measured,
            record,
            log,
        } => {
            let banks: Vec<String> = measured
                .digests
                .iter()
                .map(|d| {
                    format!(
                        "{{\"hashAlg\": {}, \"digest\": {}}}",
                        json_str(d.bank.name()),
                        json_str(&crate::digest::hex_encode(&d.digest))
                    )
                })
                .collect();
            let (log, log_error) = match log {
                Ok(path) => (json_str(path), "null".to_string()),
                Err(why) => ("null".to_string(), json_str(why)),
            };
            format!(
                "{{\"measured\": true, \"device\": {}, \"pcr\": {}, \"record\": {}, \"banks\": [{}], \"log\": {log}, \"log_error\": {log_error}}}",
                json_str(measured.device),
                measured.pcr,
                json_str(record),
                banks.join(", ")
            )
        }
        TpmOutcome::NotMeasured {
            pcr,
            required,
            reason,
        } => format!(
            "{{\"measured\": false, \"pcr\": {pcr}, \"required\": {required}, \"reason\": {}}}",
            json_str(reason)
        ),
    }
}

/// The status document (see docs/boot-sequence.md).
pub fn status_json(p: &Prepared, mode: &str, tpm: &TpmOutcome) -> String {
    let (trust, manifest) = match &p.trusted {
        Trusted::Seal {
            fingerprint,
            manifest,
            ..
        } => (fingerprint.clone(), manifest.trim_end().to_string()),
        Trusted::SealedDigest { source } => (
            match source {
                DigestSource::Config => "sealed-config".to_string(),
                _ => "sealed-cmdline".to_string(),
            },
            "null".to_string(),
        ),
    };
    let source = match p.source {
        DigestSource::Cmdline => "cmdline",
        DigestSource::Config => "config",
        DigestSource::Both => "cmdline+config",
    };
    let erofs = match &p.erofs {
        ErofsHow::FileBacked => "file".to_string(),
        ErofsHow::Loop(dev) => dev.clone(),
    };
    let overlay = match p.overlay {
        OverlayHow::LayerAppend => "lowerdir+",
        OverlayHow::StringForm => "lowerdir-string",
    };
    let t = &p.timings;
    let floor = format!(
        "{{\"effective\": {}, \"built_in\": {}, \"config\": {}, \"tpm\": {}}}",
        p.floors.effective,
        p.floors.built_in,
        p.floors.config,
        p.floors.tpm.json()
    );
    format!(
        "{{\n  \"version\": 1,\n  \"sealroot\": {},\n  \"mode\": {},\n  \"digest\": {},\n  \"digest_source\": {},\n  \"trust\": {},\n  \"manifest\": {},\n  \"erofs\": {},\n  \"overlay\": {},\n  \"etc\": {},\n  \"var\": {},\n  \"tpm\": {},\n  \"floor\": {},\n  \"timings_us\": {{\"measure\": {}, \"verify\": {}, \"mount_erofs\": {}, \"mount_overlay\": {}, \"state\": {}, \"total\": {}}}\n}}\n",
        json_str(VERSION),
        json_str(mode),
        json_str(&p.digest.to_composefs()),
        json_str(source),
        json_str(&trust),
        manifest,
        json_str(&erofs),
        json_str(overlay),
        json_str(p.config.etc.name()),
        json_str(p.config.var.name()),
        tpm_json(tpm),
        floor,
        t.measure,
        t.verify,
        t.mount_erofs,
        t.mount_overlay,
        t.state,
        t.total,
    )
}

/// Write `status.json` (temp file + rename: never half-written).
pub fn write_status(dir: &Path, text: &str) -> Result<PathBuf, BootError> {
    let path = dir.join("status.json");
    let err = |errno: rustix::io::Errno| BootError::Status {
        path: path.display().to_string(),
        error: std::io::Error::from_raw_os_error(errno.raw_os_error()),
    };
    crate::boot::io::mkdir_all(dir, 0o755).map_err(err)?;
    let tmp = dir.join(".status.json.tmp");
    let fd = rustix::fs::open(
        &tmp,
        rustix::fs::OFlags::WRONLY
            | rustix::fs::OFlags::CREATE
            | rustix::fs::OFlags::TRUNC
            | rustix::fs::OFlags::CLOEXEC
            | rustix::fs::OFlags::NOFOLLOW,
        rustix::fs::Mode::from_raw_mode(0o644),
    )
    .map_err(err)?;
    crate::boot::io::write_all(&fd, text.as_bytes()).map_err(err)?;
    drop(fd);
    rustix::fs::rename(&tmp, &path).map_err(err)?;
    Ok(path)
}

/// Options of `sealroot prepare`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PrepareArgs {
    pub sysroot: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub config: Option<PathBuf>,
}

/// `/proc/cmdline` as bytes, without the one newline the kernel appends.
pub(crate) fn proc_cmdline() -> Result<Vec<u8>, BootError> {
    // Over-long input is cut here and refused by the parser's own check.
    let bytes = match crate::boot::io::read_file_limited(
        Path::new("/proc/cmdline"),
        cmdline::MAX_CMDLINE,
    ) {
        Ok(b) => b,
        Err(None) => vec![b' '; cmdline::MAX_CMDLINE + 1],
        Err(Some(errno)) => {
            return Err(BootError::ReadCmdline {
                error: std::io::Error::from_raw_os_error(errno.raw_os_error()),
            })
        }
    };
    let mut bytes = bytes;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    Ok(bytes)
}

/// What a refusal is measured with: the TPM policy once the gate is
/// loaded (the default before), and the digest asked for once known.
struct RefusalCtx {
    tpm: std::cell::Cell<TpmPolicy>,
    expected: std::cell::Cell<Option<Digest>>,
}

impl RefusalCtx {
    fn new() -> Self {
        RefusalCtx {
            tpm: std::cell::Cell::new(TpmPolicy::default()),
            expected: std::cell::Cell::new(None),
        }
    }

    fn measure(&self, e: &BootError) {
        measure_refusal(&self.tpm.get(), self.expected.get().as_ref(), e);
    }
}

/// `sealroot prepare`: a refusal is logged, then its record measured (the
/// same order as PID 1), and reported as exit status 1.
pub fn run_prepare(args: PrepareArgs, started: Instant) -> ExitCode {
    let ctx = RefusalCtx::new();
    match prepare_mode(args, started, &ctx) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::err(&format!("refusing to boot: {e}"));
            ctx.measure(&e);
            ExitCode::FAILURE
        }
    }
}

fn prepare_mode(args: PrepareArgs, started: Instant, ctx: &RefusalCtx) -> Result<(), BootError> {
    let sysroot = args.sysroot.unwrap_or_else(|| PathBuf::from(PID1_SYSROOT));
    log::info(&format!(
        "sealroot {VERSION} preparing {}",
        sysroot.display()
    ));
    let gate = load_gate()?;
    ctx.tpm.set(gate.boot.tpm);
    let text = match args.cmdline {
        Some(t) => t.into_bytes(),
        None => proc_cmdline()?,
    };
    let c = read_cmdline(&text, &gate)?;
    let config_path = args
        .config
        .unwrap_or_else(|| PathBuf::from(config::CONFIG_PATH));
    let cfg = config::load(&config_path)
        .map_err(BootError::Config)?
        .unwrap_or_default();
    ctx.expected.set(expected_digest(&c, &cfg));
    let p = prepare(&PrepareRequest {
        sysroot: &sysroot,
        cmdline: &c,
        config: &cfg,
        scratch: Path::new(SCRATCH_DIR),
        started,
        tpm: gate.boot.tpm,
    })?;
    let record = accepted_record(&p).map_err(BootError::Tpm)?;
    let tpm = measure(&gate.boot.tpm, &record).map_err(BootError::Tpm)?;
    let path = write_status(Path::new(STATUS_DIR), &status_json(&p, "prepare", &tpm))?;
    log::info(&format!("status written to {}", path.display()));
    Ok(())
}

/// The boot policy in force, logged in one line.
pub(crate) fn load_gate() -> Result<Gate, BootError> {
    let (boot, restricts_cmdline) = trust::load_boot_policy().map_err(BootError::Trust)?;
    if restricts_cmdline {
        log::info(&format!(
            "command line limited to the boot policy's {} allowlist entries",
            boot.effective_allow().len()
        ));
    } else {
        log::info("command line unrestricted: sealed-digest policy (sealed in the UKI)");
    }
    Ok(Gate {
        boot,
        restricts_cmdline,
    })
}

fn sleep_s(s: u64) {
    std::thread::sleep(std::time::Duration::from_secs(s));
}

/// PID 1 after a refusal: never returns.
fn pid1_fail(policy: FailurePolicy, reason: &str) -> ! {
    let line = format!("refusing to boot: {reason}");
    for _ in 0..3 {
        sleep_s(1);
        log::console(&line);
    }
    rustix::fs::sync();
    match policy {
        FailurePolicy::Shell
            if rustix::fs::access("/bin/sh", rustix::fs::Access::EXEC_OK).is_ok() =>
        {
            log::err("failure policy shell: starting /bin/sh");
            let sh = c"/bin/sh";
            let env: Vec<std::ffi::CString> = crate::boot::policy::INIT_ENVIRONMENT
                .iter()
                .filter_map(|e| std::ffi::CString::new(*e).ok())
                .collect();
            let e = crate::sys::execve(sh, &[sh.to_owned()], &env);
            log::err(&format!(
                "cannot start /bin/sh: {}; powering off",
                crate::boot::io::errno_name(e)
            ));
        }
        FailurePolicy::Shell => log::err("failure policy shell: no /bin/sh; powering off"),
        FailurePolicy::Reboot => {
            log::err("failure policy reboot: rebooting");
            let _ = rustix::system::reboot(rustix::system::RebootCommand::Restart);
        }
        FailurePolicy::Halt => log::err("failure policy halt: powering off"),
    }
    let _ = rustix::system::reboot(rustix::system::RebootCommand::PowerOff);
    let _ = rustix::system::reboot(rustix::system::RebootCommand::Halt);
    // PID 1 must never exit (the kernel would panic).
    loop {
        sleep_s(3600);
    }
}

/// PID 1: API filesystems, modules, the physical root, [`prepare`], then
/// switch root into the init the boot policy allows. Never returns: a
/// refusal follows the config's failure policy.
pub fn run_pid1(started: Instant) -> ! {
    // The first line goes out before the API mounts when the initramfs has a
    // /dev/kmsg node (issue 21: the kernel's "Run /init" -> first line is
    // then start-up alone); without one it follows the devtmpfs mount.
    let starting = format!("sealroot {VERSION} starting as PID 1");
    let early = log::open_early();
    if early {
        log::info(&starting);
    }
    if let Err(e) = switchroot::mount_api_filesystems() {
        let reason = e.to_string();
        log::err(&format!("refusing to boot: {reason}"));
        pid1_fail(FailurePolicy::Halt, &reason);
    }
    if !early {
        log::info(&starting);
    }
    let ctx = RefusalCtx::new();
    let cfg = match config::load(Path::new(config::CONFIG_PATH)) {
        Ok(c) => c.unwrap_or_default(),
        Err(e) => {
            let e = BootError::Config(e);
            let reason = e.to_string();
            log::err(&format!("refusing to boot: {reason}"));
            ctx.measure(&e);
            pid1_fail(FailurePolicy::Halt, &reason);
        }
    };
    let policy = cfg.failure;
    let fail = |e: BootError| -> ! {
        let reason = e.to_string();
        log::err(&format!("refusing to boot: {reason}"));
        ctx.measure(&e);
        pid1_fail(policy, &reason)
    };
    // The command line is checked before anything else happens.
    let gate = load_gate().unwrap_or_else(|e| fail(e));
    ctx.tpm.set(gate.boot.tpm);
    let text = proc_cmdline().unwrap_or_else(|e| fail(e));
    let c = read_cmdline(&text, &gate).unwrap_or_else(|e| fail(e));
    ctx.expected.set(expected_digest(&c, &cfg));
    let init = gate
        .boot
        .choose_init(c.init.as_deref())
        .map_err(BootError::Policy)
        .unwrap_or_else(|e| fail(e))
        .to_string();
    let (loaded, present) = switchroot::load_modules(Path::new(MODULE_LIST));
    if loaded + present > 0 {
        log::info(&format!(
            "modules: {loaded} loaded, {present} already present"
        ));
    }
    let sysroot = Path::new(PID1_SYSROOT);
    if let Err(e) = switchroot::mount_physical_root(
        c.root.as_deref(),
        c.rootfstype.as_deref(),
        c.rootflags.as_deref(),
        c.wait_seconds.unwrap_or(cmdline::DEFAULT_WAIT_SECONDS),
        sysroot,
    ) {
        fail(BootError::Switch(e));
    }
    let p = prepare(&PrepareRequest {
        sysroot,
        cmdline: &c,
        config: &cfg,
        scratch: Path::new(SCRATCH_DIR),
        started,
        tpm: gate.boot.tpm,
    })
    .unwrap_or_else(|e| fail(e));
    let record = accepted_record(&p)
        .map_err(BootError::Tpm)
        .unwrap_or_else(|e| fail(e));
    let tpm = measure(&gate.boot.tpm, &record)
        .map_err(BootError::Tpm)
        .unwrap_or_else(|e| fail(e));
    if let Err(e) = write_status(Path::new(STATUS_DIR), &status_json(&p, "pid1", &tpm)) {
        // The root is verified and mounted; a missing status file is not a
        // reason to stop, but it is worth a warning.
        log::warning(&e.to_string());
    }
    let e = switchroot::switch_root(sysroot, &init, crate::boot::policy::INIT_ENVIRONMENT);
    fail(BootError::Switch(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(trusted: Trusted) -> Prepared {
        Prepared {
            digest: Digest::parse_hex_any(&"ab".repeat(32)).unwrap(),
            source: DigestSource::Cmdline,
            trusted,
            erofs: ErofsHow::Loop("/dev/loop3".into()),
            overlay: OverlayHow::LayerAppend,
            timings: Timings {
                measure: 1,
                verify: 2,
                mount_erofs: 3,
                mount_overlay: 4,
                state: 5,
                total: 6,
            },
            config: Config::default(),
            floors: Floors {
                built_in: 0,
                config: 1,
                tpm: TpmFloor::Read {
                    index: 0x0180_5EA1,
                    value: 2,
                },
                effective: 2,
            },
        }
    }

    #[test]
    fn status_document_is_json_with_every_field() {
        let p = prepared(Trusted::Seal {
            fingerprint: "sha256:00".into(),
            serial: 9,
            manifest: "{\"format\":\"sealroot-seal-v1\",\"serial\":9}\n".into(),
        });
        let none = TpmOutcome::NotMeasured {
            pcr: 15,
            required: false,
            reason: "no TPM device".into(),
        };
        let v: serde_json::Value = serde_json::from_str(&status_json(&p, "pid1", &none)).unwrap();
        assert_eq!(v["tpm"]["measured"], false);
        assert_eq!(v["tpm"]["pcr"], 15);
        assert_eq!(v["tpm"]["reason"], "no TPM device");
        assert_eq!(v["version"], 1);
        assert_eq!(v["mode"], "pid1");
        assert_eq!(v["digest"], format!("v1-sha256-12:{}", "ab".repeat(32)));
        assert_eq!(v["digest_source"], "cmdline");
        assert_eq!(v["trust"], "sha256:00");
        assert_eq!(v["manifest"]["serial"], 9);
        assert_eq!(v["erofs"], "/dev/loop3");
        assert_eq!(v["overlay"], "lowerdir+");
        assert_eq!(v["etc"], "persistent");
        assert_eq!(v["var"], "bind");
        assert_eq!(
            v["floor"],
            serde_json::json!({"effective": 2, "built_in": 0, "config": 1,
                               "tpm": {"state": "read", "index": "0x01805ea1", "value": 2}})
        );
        let t = &v["timings_us"];
        let got: Vec<u64> = [
            "measure",
            "verify",
            "mount_erofs",
            "mount_overlay",
            "state",
            "total",
        ]
        .iter()
        .map(|k| t[k].as_u64().unwrap())
        .collect();
        assert_eq!(got, vec![1, 2, 3, 4, 5, 6]);
        let p = prepared(Trusted::SealedDigest {
            source: DigestSource::Config,
        });
        let measured = TpmOutcome::Measured {
            measured: tpm::Measured {
                device: "/dev/tpmrm0",
                pcr: 14,
                digests: vec![tpm::BankDigest {
                    bank: tpm::Bank::Sha384,
                    digest: vec![0xab; 48],
                }],
            },
            record: "sealroot-v1 accepted x".into(),
            log: Err("cannot \"append\"".into()),
        };
        let v: serde_json::Value =
            serde_json::from_str(&status_json(&p, "prepare", &measured)).unwrap();
        let t = &v["tpm"];
        assert_eq!(t["measured"], true);
        assert_eq!(t["device"], "/dev/tpmrm0");
        assert_eq!(t["pcr"], 14);
        assert_eq!(t["record"], "sealroot-v1 accepted x");
        assert_eq!(t["banks"][0]["hashAlg"], "sha384");
        assert_eq!(t["banks"][0]["digest"], "ab".repeat(48));
        assert!(t["log"].is_null());
        assert_eq!(t["log_error"], "cannot \"append\"");
        assert_eq!(v["trust"], "sealed-config");
        assert!(v["manifest"].is_null());
    }

    #[test]
    fn accepted_and_refused_records_differ_per_trust() {
        let fp = format!("sha256:{}", "12".repeat(32));
        let p = prepared(Trusted::Seal {
            fingerprint: fp.clone(),
            serial: 9,
            manifest: "{}".into(),
        });
        let r = accepted_record(&p).unwrap();
        assert_eq!(
            r,
            format!(
                "sealroot-v1 accepted image=v1-sha256-12:{} key={fp} serial=9",
                "ab".repeat(32)
            )
        );
        let p = prepared(Trusted::SealedDigest {
            source: DigestSource::Cmdline,
        });
        assert!(accepted_record(&p)
            .unwrap()
            .ends_with(" trust=sealed-digest"));
        let e = BootError::Sysroot { path: "x".into() };
        assert_eq!(e.refusal_class(), RefusalClass::Sysroot);
        assert_eq!(
            BootError::Tpm(TpmError::NoDevice).refusal_class(),
            RefusalClass::Tpm
        );
    }

    #[test]
    fn no_tpm_is_logged_or_refused_by_policy() {
        if tpm::DEVICES.iter().any(|d| Path::new(d).exists()) {
            eprintln!("SKIP: this host has a TPM device");
            return;
        }
        let optional = TpmPolicy::default();
        match measure(&optional, "sealroot-v1 refused reason=seal").unwrap() {
            TpmOutcome::NotMeasured {
                pcr,
                required,
                reason,
            } => {
                assert_eq!((pcr, required), (15, false));
                assert!(reason.starts_with("no TPM device"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let required = TpmPolicy::new(14, true).unwrap();
        let e = measure(&required, "x").unwrap_err();
        assert!(matches!(e, TpmError::NoDevice));
        assert!(BootError::Tpm(e)
            .to_string()
            .contains("requires a TPM measurement, which failed: no TPM device"));
    }

    #[test]
    fn tpm_floor_without_a_tpm_by_policy() {
        if tpm::DEVICES.iter().any(|d| Path::new(d).exists()) {
            eprintln!("SKIP: this host has a TPM device");
            return;
        }
        let optional = TpmPolicy::default();
        assert_eq!(optional.floor_index, 0x0180_5EA1);
        match read_tpm_floor(&optional).unwrap() {
            TpmFloor::NotRead { index, reason } => {
                assert_eq!(index, 0x0180_5EA1);
                assert!(reason.contains("no TPM device"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let required = optional.with_floor(0x0180_5EA1, true).unwrap();
        let e = read_tpm_floor(&required).unwrap_err();
        assert_eq!(e.refusal_class(), RefusalClass::Tpm);
        assert!(e
            .to_string()
            .starts_with("the boot policy requires the TPM serial floor, which could not be read: TPM serial floor (NV index 0x01805ea1): no TPM device"),
            "{e}");
        let off = optional.with_floor(0, false).unwrap();
        assert_eq!(read_tpm_floor(&off).unwrap(), TpmFloor::Off);
        assert!(optional.with_floor(0, true).is_err());
        assert!(optional.with_floor(0x8100_0001, false).is_err());
        // The refusal names the serial, the floor and the index.
        let e = BootError::BelowTpmFloor {
            path: "composefs/seals/x.json".into(),
            serial: 1,
            floor: 2,
            index: 0x0180_5EA1,
        };
        assert_eq!(e.refusal_class(), RefusalClass::Seal);
        assert_eq!(
            e.to_string(),
            "seal composefs/seals/x.json rejected: seal serial 1 is below the TPM floor 2 \
             (NV counter 0x01805ea1; rollback refused)"
        );
        for (t, want) in [
            (TpmFloor::Off, serde_json::json!({"state": "off"})),
            (
                TpmFloor::Undefined { index: 0x0180_0000 },
                serde_json::json!({"state": "undefined", "index": "0x01800000"}),
            ),
            (
                TpmFloor::NotRead {
                    index: 1,
                    reason: "a \"b\"".into(),
                },
                serde_json::json!({"state": "not-read", "index": "0x00000001", "reason": "a \"b\""}),
            ),
        ] {
            assert_eq!(t.value(), 0);
            let v: serde_json::Value = serde_json::from_str(&t.json()).unwrap();
            assert_eq!(v, want);
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        let s = "a\"b\\c\nd\u{1}é";
        let v: serde_json::Value = serde_json::from_str(&json_str(s)).unwrap();
        assert_eq!(v.as_str().unwrap(), s);
    }

    #[test]
    fn status_written_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_status(dir.path(), "{}\n").unwrap();
        assert_eq!(std::fs::read_to_string(p).unwrap(), "{}\n");
        assert!(!dir.path().join(".status.json.tmp").exists());
    }
}
