//! `sealctl tpm-floor`: provision, show and raise the TPM serial floor (the
//! NV counter the boot reads, `sealroot::tpm::nv`).
//!
//! - `define`: TPM2_NV_DefineSpace of the counter (owner authorization,
//!   attributes `0x02060012`: counter, owner-write, owner-read, auth-read,
//!   no-DA; empty index authorization), then one TPM2_NV_Increment so that it
//!   has a value (a new counter starts at the highest value any counter on
//!   this TPM ever had; the value printed is that plus one). An index that
//!   is already a valid floor counter is left alone (exit 0); anything else
//!   at the handle is an error. 2 NV writes.
//! - `show`: `index 0x… value N attributes 0x…`; exit 1 when the handle
//!   holds no index or one the boot would refuse (with the boot's reason).
//! - `raise --to N | --from-status FILE`: the floor goes to N (from a
//!   status file: its `manifest.serial`, the serial of the seal the running
//!   system booted; the index is the one the boot read, `floor.tpm.index`,
//!   unless `--index` names one; a boot policy without a TPM floor makes it
//!   a no-op). Refuses to go down, refuses more than `--max-jump`
//!   increments (default 32: each is an NV write), does nothing when the
//!   floor is already N. Every increment is preceded by a read of the
//!   counter, so a second raise running at the same time cannot make it
//!   overshoot by more than one step per process. At most `--max-jump` NV
//!   writes.
//! - `--tpm`: the device (default `/dev/tpmrm0`, else `/dev/tpm0`), or
//!   `unix:PATH`, a swtpm `--server type=unixio,path=PATH` socket (tests,
//!   factory provisioning against an emulator).
//! - Owner authorization: the password in `SEALCTL_TPM_OWNER_AUTH` (empty
//!   when unset), sent in a password session (in the clear to the local
//!   TPM; use the resource-manager device, not a network transport, when
//!   it is set).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use sealroot::tpm::nv::{self, FloorError, FloorRead, RaiseError};
use sealroot::tpm::{self, TpmError};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
    /// TPM: a device node, or unix:PATH for a swtpm unixio server socket.
    #[arg(long, global = true, value_name = "DEV|unix:PATH")]
    tpm: Option<String>,
    /// The NV index (the boot policy's `tpm-floor:` handle; default
    /// 0x01805ea1, or with --from-status the index the boot read).
    #[arg(long, global = true, value_name = "HANDLE", value_parser = crate::embed::parse_floor_index)]
    index: Option<u32>,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Define the floor counter (owner authorization) and give it a value.
    Define,
    /// Print the floor counter's value and attributes.
    Show,
    /// Raise the floor to a serial (never lower, bounded jump).
    Raise {
        /// The serial to raise to.
        #[arg(
            long,
            value_name = "SERIAL",
            required_unless_present = "from_status",
            conflicts_with = "from_status"
        )]
        to: Option<u64>,
        /// Take the serial from sealroot's status file (`manifest.serial`).
        #[arg(long, value_name = "FILE")]
        from_status: Option<PathBuf>,
        /// Most increments (NV writes) this run makes.
        #[arg(long, default_value_t = nv::DEFAULT_MAX_JUMP)]
        max_jump: u64,
    },
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("{0}")]
    Tpm(#[from] TpmError),
    #[error("{0}")]
    Floor(#[from] FloorError),
    #[error("{0}")]
    Raise(#[from] RaiseError),
    #[error("{what} 0x{index:08x}: {error}")]
    Command {
        what: &'static str,
        index: u32,
        error: TpmError,
    },
    #[error("no NV index at 0x{index:08x} (sealctl tpm-floor define provisions it)")]
    Undefined { index: u32 },
    #[error("{path}: {why}")]
    Status { path: String, why: String },
    #[error("cannot connect to {path}: {error}")]
    Connect { path: String, error: std::io::Error },
    #[error("after {steps} increments the counter reads {got}, expected {want}")]
    Overshoot { steps: u64, got: u64, want: u64 },
}

/// One command, one response.
enum Transport {
    Device {
        fd: std::os::fd::OwnedFd,
        path: &'static str,
        named: Option<String>,
    },
    Socket {
        stream: UnixStream,
        path: String,
    },
}

impl Transport {
    fn open(spec: Option<&str>) -> Result<Transport, Error> {
        match spec {
            None => {
                let (fd, path) = tpm::open_device()?;
                Ok(Transport::Device {
                    fd,
                    path,
                    named: None,
                })
            }
            Some(s) => match s.strip_prefix("unix:") {
                Some(path) => {
                    let stream = UnixStream::connect(path).map_err(|error| Error::Connect {
                        path: path.to_string(),
                        error,
                    })?;
                    Ok(Transport::Socket {
                        stream,
                        path: path.to_string(),
                    })
                }
                None => {
                    use rustix::fs::{Mode, OFlags};
                    let fd = rustix::fs::open(s, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
                        .map_err(|errno| TpmError::Io {
                            path: s.to_string(),
                            op: "open",
                            errno,
                        })?;
                    Ok(Transport::Device {
                        fd,
                        path: "",
                        named: Some(s.to_string()),
                    })
                }
            },
        }
    }

    fn tx(&mut self, command: &[u8]) -> Result<Vec<u8>, TpmError> {
        match self {
            Transport::Device { fd, path, named } => {
                tpm::transact(&*fd, named.as_deref().unwrap_or(path), command)
            }
            Transport::Socket { stream, path } => {
                let io = |op: &'static str, e: std::io::Error| TpmError::Io {
                    path: path.clone(),
                    op,
                    errno: rustix::io::Errno::from_raw_os_error(
                        e.raw_os_error().unwrap_or(libc::EIO),
                    ),
                };
                stream.write_all(command).map_err(|e| io("write", e))?;
                let mut head = [0u8; 10];
                stream.read_exact(&mut head).map_err(|e| io("read", e))?;
                let size = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as usize;
                if !(10..tpm::MAX_RESPONSE).contains(&size) {
                    return Err(TpmError::Malformed {
                        command: u32::from_be_bytes([
                            command[6], command[7], command[8], command[9],
                        ]),
                        what: tpm::Malformed::SizeField {
                            declared: size as u32,
                            read: 10,
                        },
                    });
                }
                let mut buf = head.to_vec();
                buf.resize(size, 0);
                stream
                    .read_exact(&mut buf[10..])
                    .map_err(|e| io("read", e))?;
                Ok(buf)
            }
        }
    }
}

fn owner_auth() -> Vec<u8> {
    std::env::var_os("SEALCTL_TPM_OWNER_AUTH")
        .map(|v| std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()).to_vec())
        .unwrap_or_default()
}

fn read(t: &mut Transport, index: u32) -> Result<FloorRead, FloorError> {
    nv::read_floor_with(&mut |c| t.tx(c), index)
}

fn increment(t: &mut Transport, index: u32, auth: &[u8]) -> Result<(), Error> {
    let resp = t.tx(&nv::encode_increment(index, auth))?;
    nv::parse_empty(&resp, nv::TPM_CC_NV_INCREMENT).map_err(|error| Error::Command {
        what: "TPM2_NV_Increment of",
        index,
        error,
    })
}

fn show(t: &mut Transport, index: u32) -> Result<String, Error> {
    let public = nv::read_public(&mut |c| t.tx(c), index)?.ok_or(Error::Undefined { index })?;
    nv::check_public(&public)?;
    let value = nv::read_counter(&mut |c| t.tx(c), index)?;
    Ok(format!(
        "index 0x{index:08x} value {value} attributes 0x{:08x}\n",
        public.attributes
    ))
}

fn define(t: &mut Transport, index: u32) -> Result<String, Error> {
    if let Some(public) = nv::read_public(&mut |c| t.tx(c), index)? {
        nv::check_public(&public)?;
        let value = nv::read_counter(&mut |c| t.tx(c), index)?;
        return Ok(format!(
            "index 0x{index:08x} is already a floor counter, value {value} (nothing written)\n"
        ));
    }
    let auth = owner_auth();
    let resp = t.tx(&nv::encode_define_floor(index, &auth))?;
    nv::parse_empty(&resp, nv::TPM_CC_NV_DEFINE_SPACE).map_err(|error| Error::Command {
        what: "TPM2_NV_DefineSpace of",
        index,
        error,
    })?;
    increment(t, index, &auth)?;
    match read(t, index)? {
        FloorRead::Value(value) => Ok(format!(
            "defined floor counter 0x{index:08x}, value {value} (2 NV writes)\n"
        )),
        FloorRead::Undefined => Err(Error::Undefined { index }),
    }
}

/// From sealroot's status file: the booted seal's serial, and the floor
/// index the boot read (`None`: the boot policy has no TPM floor).
fn from_status(path: &std::path::Path) -> Result<(u64, Option<Option<u32>>), Error> {
    let bad = |why: String| Error::Status {
        path: path.display().to_string(),
        why,
    };
    let text = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let v: serde_json::Value = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    let serial = v
        .get("manifest")
        .and_then(|m| m.get("serial"))
        .and_then(|s| s.as_u64())
        .ok_or_else(|| {
            bad("no manifest.serial: the boot verified no seal (sealed-digest policy?)".into())
        })?;
    let tpm = v.get("floor").and_then(|f| f.get("tpm"));
    let index = match tpm.and_then(|t| t.get("state")).and_then(|s| s.as_str()) {
        // An older sealroot: no floor object.
        None => None,
        Some("off") => Some(None),
        Some(_) => {
            let text = tpm
                .and_then(|t| t.get("index"))
                .and_then(|i| i.as_str())
                .ok_or_else(|| bad("floor.tpm has no index".into()))?;
            let index = crate::embed::parse_floor_index(text).map_err(bad)?;
            Some(Some(index))
        }
    };
    Ok((serial, index))
}

fn raise(t: &mut Transport, index: u32, target: u64, max_jump: u64) -> Result<String, Error> {
    let current = match read(t, index)? {
        FloorRead::Value(v) => v,
        FloorRead::Undefined => return Err(Error::Undefined { index }),
    };
    let steps = nv::plan_raise(current, target, max_jump, false)?;
    if steps == 0 {
        return Ok(format!(
            "floor 0x{index:08x} is {current}, already at {target} (nothing written)\n"
        ));
    }
    let auth = owner_auth();
    let mut value = current;
    let mut done = 0u64;
    while value < target && done < max_jump {
        increment(t, index, &auth)?;
        done += 1;
        value = match read(t, index)? {
            FloorRead::Value(v) => v,
            FloorRead::Undefined => return Err(Error::Undefined { index }),
        };
    }
    if value != target {
        return Err(Error::Overshoot {
            steps: done,
            got: value,
            want: target,
        });
    }
    Ok(format!(
        "raised floor 0x{index:08x} from {current} to {target} ({done} NV writes)\n"
    ))
}

pub fn run(args: Args) -> ExitCode {
    let result = (|| {
        let mut index = args.index.unwrap_or(nv::DEFAULT_FLOOR_INDEX);
        let target = match &args.action {
            Action::Raise {
                to: Some(n),
                from_status: None,
                ..
            } => Some(*n),
            Action::Raise {
                from_status: Some(p),
                ..
            } => {
                let (serial, booted) = from_status(p)?;
                match (args.index, booted) {
                    (None, Some(None)) => {
                        return Ok(format!(
                            "the boot policy has no TPM floor ({}): nothing to raise\n",
                            p.display()
                        ))
                    }
                    (None, Some(Some(i))) => index = i,
                    _ => {}
                }
                Some(serial)
            }
            _ => None,
        };
        let mut t = Transport::open(args.tpm.as_deref())?;
        match args.action {
            Action::Define => define(&mut t, index),
            Action::Show => show(&mut t, index),
            Action::Raise { max_jump, .. } => raise(&mut t, index, target.unwrap_or(0), max_jump),
        }
    })();
    match result {
        Ok(text) => {
            let _ = write!(std::io::stdout().lock(), "{text}");
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail("tpm-floor", e),
    }
}
