//! `sealctl tpm-floor` against swtpm (TPM 2.0 emulator, libtpms) on a unix
//! socket: define, show, raise (bounded, never down, from a status file).
//! The counter's rules are the TPM's own: swtpm refuses what a real TPM
//! refuses. Skipped (a failure under CI=true) without swtpm.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

struct Swtpm {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn swtpm() -> Option<Swtpm> {
    if Command::new("swtpm").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "swtpm is missing, and CI=true requires it"
        );
        eprintln!("SKIP: swtpm is missing (scripts/setup installs it)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("server.sock");
    let child = Command::new("swtpm")
        .args(["socket", "--tpm2", "--tpmstate"])
        .arg(format!("dir={}", dir.path().display()))
        .arg("--server")
        .arg(format!("type=unixio,path={}", sock.display()))
        .args(["--flags", "not-need-init,startup-clear"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert!(sock.exists(), "swtpm did not create its socket");
    Some(Swtpm {
        child,
        sock,
        _dir: dir,
    })
}

fn floor(tpm: &Swtpm, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sealctl"))
        .arg("tpm-floor")
        .arg("--tpm")
        .arg(format!("unix:{}", tpm.sock.display()))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn refused(out: &Output, want: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "not refused; stdout {:?}",
        out.stdout
    );
    assert!(err.contains(want), "stderr {err:?} lacks {want:?}");
}

fn status(dir: &Path, json: &str) -> String {
    let p = dir.join("status.json");
    std::fs::write(&p, json).unwrap();
    p.display().to_string()
}

#[test]
fn define_show_raise_against_swtpm() {
    let Some(tpm) = swtpm() else { return };
    refused(
        &floor(&tpm, &["show"]),
        "no NV index at 0x01805ea1 (sealctl tpm-floor define provisions it)",
    );
    refused(&floor(&tpm, &["raise", "--to", "2"]), "no NV index");
    // A new counter starts at the highest counter value this TPM ever had
    // (0 on a fresh one); define increments it once so that it has a value.
    assert_eq!(
        ok(&floor(&tpm, &["define"])),
        "defined floor counter 0x01805ea1, value 1 (2 NV writes)\n"
    );
    assert_eq!(
        ok(&floor(&tpm, &["show"])),
        "index 0x01805ea1 value 1 attributes 0x22060012\n"
    );
    assert_eq!(
        ok(&floor(&tpm, &["define"])),
        "index 0x01805ea1 is already a floor counter, value 1 (nothing written)\n"
    );
    assert_eq!(
        ok(&floor(&tpm, &["raise", "--to", "3"])),
        "raised floor 0x01805ea1 from 1 to 3 (2 NV writes)\n"
    );
    assert_eq!(
        ok(&floor(&tpm, &["raise", "--to", "3"])),
        "floor 0x01805ea1 is 3, already at 3 (nothing written)\n"
    );
    refused(
        &floor(&tpm, &["raise", "--to", "2"]),
        "the TPM floor is 3, above 2: a counter never goes down",
    );
    refused(
        &floor(&tpm, &["raise", "--to", "36"]),
        "raising the TPM floor from 3 to 36 takes 33 increments, more than the bound of 32",
    );
    refused(
        &floor(&tpm, &["raise", "--to", "6", "--max-jump", "2"]),
        "more than the bound of 2",
    );
    assert_eq!(
        ok(&floor(&tpm, &["raise", "--to", "5", "--max-jump", "2"])),
        "raised floor 0x01805ea1 from 3 to 5 (2 NV writes)\n"
    );
    // From the status file a boot wrote: its seal's serial, the index it read.
    let dir = tempfile::tempdir().unwrap();
    let s = status(
        dir.path(),
        r#"{"manifest": {"serial": 7}, "floor": {"effective": 5, "built_in": 0, "config": 0,
           "tpm": {"state": "read", "index": "0x01805ea1", "value": 5}}}"#,
    );
    assert_eq!(
        ok(&floor(&tpm, &["raise", "--from-status", &s])),
        "raised floor 0x01805ea1 from 5 to 7 (2 NV writes)\n"
    );
    // The index comes from the status file: another one is not defined.
    let s = status(
        dir.path(),
        r#"{"manifest": {"serial": 8}, "floor": {"tpm": {"state": "read", "index": "0x01800001", "value": 1}}}"#,
    );
    refused(
        &floor(&tpm, &["raise", "--from-status", &s]),
        "no NV index at 0x01800001",
    );
    let s = status(
        dir.path(),
        r#"{"manifest": {"serial": 8}, "floor": {"tpm": {"state": "off"}}}"#,
    );
    assert!(ok(&floor(&tpm, &["raise", "--from-status", &s])).contains("nothing to raise"));
    let s = status(dir.path(), r#"{"manifest": null}"#);
    refused(
        &floor(&tpm, &["raise", "--from-status", &s]),
        "no manifest.serial",
    );
    assert_eq!(
        ok(&floor(&tpm, &["show"])),
        "index 0x01805ea1 value 7 attributes 0x22060012\n"
    );
}
