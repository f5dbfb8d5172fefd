//! `sealroot`: the early-boot mounter. A thin `main` over [`sealroot::boot`]:
//! argv is read here and only here, and never as PID 1 — the kernel hands
//! init the command-line words it did not consume, as arguments and
//! environment, so they are untrusted; PID 1 ignores them and never passes
//! them on (the boot policy refuses them under `signed`).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use sealroot::boot::{self, config, trust, PrepareArgs};
use sealroot::digest::Digest;

const VERSION: &str = env!("CARGO_PKG_VERSION");

const USAGE: &str = "usage: sealroot prepare [--sysroot DIR] [--cmdline TEXT] [--config FILE]
       sealroot check-seal --repo DIR [--config FILE] <hex | v1-sha256-12:hex>
       sealroot --show-trust | --version
       sealroot-generator NORMAL EARLY LATE   (systemd generator, by its name)
(as PID 1 it boots: see docs/boot-sequence.md)";

fn main() -> ExitCode {
    let started = Instant::now();
    if rustix::process::getpid() == rustix::process::Pid::INIT {
        boot::run_pid1(started);
    }
    let all: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // Installed as a systemd generator under that name (dracut module).
    if all
        .first()
        .is_some_and(|a0| Path::new(a0).file_name() == Some("sealroot-generator".as_ref()))
    {
        return boot::generator::run(&all[1..]);
    }
    let args = all.get(1..).unwrap_or_default().to_vec();
    match args.first().map(String::as_str) {
        Some("prepare") => match parse_prepare_args(&args[1..]) {
            // A refusal is logged and measured there; exit status 1.
            Ok(pa) => boot::run_prepare(pa, started),
            Err(msg) => usage_error(&format!("prepare: {msg}")),
        },
        Some("check-seal") => match parse_check_seal_args(&args[1..]) {
            Ok((dir, config_path, digest)) => report(check_seal(&dir, config_path, &digest)),
            Err(msg) => usage_error(&format!("check-seal: {msg}")),
        },
        // Inspection only: never mounts anything.
        Some("--show-trust") if args.len() == 1 => report(trust::show().map_err(|e| e.to_string())),
        Some("--version") => {
            println!("sealroot {VERSION}");
            ExitCode::SUCCESS
        }
        Some("--help") | Some("-h") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => usage_error("unknown or missing command"),
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("sealroot: {msg}\n{USAGE}");
    ExitCode::from(2)
}

fn report(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sealroot: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `check-seal`: the boot's own seal check against this binary's trust
/// anchor, with the config's floor when `--config` names one.
fn check_seal(dir: &Path, config_path: Option<PathBuf>, digest: &str) -> Result<String, String> {
    let config = match config_path {
        None => config::Config::default(),
        Some(p) => config::load(&p)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("config {}: no such file", p.display()))?,
    };
    let digest = Digest::parse_user(digest).map_err(|e| format!("digest {digest:?}: {e}"))?;
    trust::check_seal(dir, &digest, &config).map_err(|e| e.to_string())
}

/// `--repo DIR [--config FILE] DIGEST`.
fn parse_check_seal_args(args: &[String]) -> Result<(PathBuf, Option<PathBuf>, String), String> {
    match args {
        [flag, dir, digest] if flag == "--repo" => Ok((dir.into(), None, digest.clone())),
        [flag, dir, cflag, config, digest] if flag == "--repo" && cflag == "--config" => {
            Ok((dir.into(), Some(config.into()), digest.clone()))
        }
        _ => Err("expected --repo DIR [--config FILE] DIGEST".into()),
    }
}

/// The arguments after `prepare`: `--name VALUE` or `--name=VALUE`, each
/// at most once.
fn parse_prepare_args(args: &[String]) -> Result<PrepareArgs, String> {
    let mut out = PrepareArgs::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))?,
        };
        let duplicate = match name {
            "--sysroot" => out.sysroot.replace(PathBuf::from(value)).is_some(),
            "--cmdline" => out.cmdline.replace(value).is_some(),
            "--config" => out.config.replace(PathBuf::from(value)).is_some(),
            other => return Err(format!("unknown argument {other:?}")),
        };
        if duplicate {
            return Err(format!("{name} given twice"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn prepare_args() {
        assert_eq!(parse_prepare_args(&[]).unwrap(), PrepareArgs::default());
        let a = parse_prepare_args(&s(&["--sysroot", "/x", "--cmdline=a b", "--config", "/c"]))
            .unwrap();
        assert_eq!(a.sysroot, Some(PathBuf::from("/x")));
        assert_eq!(a.cmdline.as_deref(), Some("a b"));
        assert_eq!(a.config, Some(PathBuf::from("/c")));
        assert!(parse_prepare_args(&s(&["--sysroot"])).is_err());
        assert!(parse_prepare_args(&s(&["--sysroot", "/a", "--sysroot", "/b"])).is_err());
        assert!(parse_prepare_args(&s(&["--policy", "x"])).is_err());
        assert!(parse_prepare_args(&s(&["/x"])).is_err());
    }

    #[test]
    fn check_seal_args() {
        let (d, c, g) = parse_check_seal_args(&s(&["--repo", "/r", "abc"])).unwrap();
        assert_eq!((d, c, g.as_str()), (PathBuf::from("/r"), None, "abc"));
        let (_, c, _) =
            parse_check_seal_args(&s(&["--repo", "/r", "--config", "/c.json", "abc"])).unwrap();
        assert_eq!(c, Some(PathBuf::from("/c.json")));
        for bad in [
            &["--repo", "/r"][..],
            &["/r", "abc"],
            &["--repo", "/r", "x", "y"],
        ] {
            assert!(parse_check_seal_args(&s(bad)).is_err(), "{bad:?}");
        }
    }
}
