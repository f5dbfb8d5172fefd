//! `sealctl pcr`: the record of a seal and the PCR value it leaves.
//!
//! References independent of the code under test: the image is named by
//! `fsverity digest` (fsverity-utils), the key fingerprint comes from
//! openssl's DER output, and every PCR value is computed with
//! `openssl dgst -binary` as H(start || H(record)), the TPM's extend of a
//! PCR_Event (TPM 2.0 Part 1, "Extend of a PCR").

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{have, key as test_key, openssl_dgst, openssl_fingerprint, sealctl, text};

fn extend(alg: &str, start: &[u8], record: &[u8]) -> Vec<u8> {
    let mut buf = start.to_vec();
    buf.extend_from_slice(&openssl_dgst(alg, record));
    openssl_dgst(alg, &buf)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    repo: PathBuf,
    hex: String,
    fp: String,
}

fn fixture() -> Option<Fixture> {
    if !have("openssl") || !have("fsverity") {
        common::missing("openssl or fsverity (fsverity-utils; scripts/setup installs them)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let image: Vec<u8> = (0..30_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let image_file = root.join("image");
    std::fs::write(&image_file, &image).unwrap();
    let hex = common::fsverity_utils_hex(&image_file);
    let repo = root.join("repo");
    std::fs::create_dir_all(repo.join("composefs/images")).unwrap();
    std::fs::write(repo.join("composefs/images").join(&hex), &image).unwrap();
    let key = test_key("sealroot-test.pem");
    let o = sealctl(&[
        "sign",
        "--key",
        &key,
        "--repo",
        repo.to_str().unwrap(),
        &hex,
        "--serial",
        "7",
    ]);
    assert!(o.status.success(), "sealctl sign: {}", text(&o));
    let fp = openssl_fingerprint(Path::new(&test_key("sealroot-test.pub.pem")));
    Some(Fixture {
        _dir: dir,
        root,
        repo,
        hex,
        fp,
    })
}

fn pcr(args: &[&str]) -> Output {
    let mut a = vec!["pcr"];
    a.extend_from_slice(args);
    sealctl(&a)
}

fn lines(o: &Output) -> Vec<String> {
    assert!(o.status.success(), "{}", text(o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn accepted_record_and_values_from_zero() {
    let Some(f) = fixture() else { return };
    let record = format!(
        "sealroot-v1 accepted image=v1-sha256-12:{} key={} serial=7",
        f.hex, f.fp
    );
    let pub_key = test_key("sealroot-test.pub.pem");
    let out = lines(&pcr(&[
        "--repo",
        f.repo.to_str().unwrap(),
        "--key",
        &pub_key,
        &f.hex,
    ]));
    let want = vec![
        format!("record {record}"),
        format!(
            "pcr 15 sha256 {}",
            hex(&extend("sha256", &[0; 32], record.as_bytes()))
        ),
        format!(
            "pcr 15 sha384 {}",
            hex(&extend("sha384", &[0; 48], record.as_bytes()))
        ),
        format!(
            "pcr 15 sha512 {}",
            hex(&extend("sha512", &[0; 64], record.as_bytes()))
        ),
    ];
    assert_eq!(out, want);

    // Another start value, one bank, another PCR number.
    let start: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37)).collect();
    let out = lines(&pcr(&[
        "--repo",
        f.repo.to_str().unwrap(),
        "--key",
        &pub_key,
        "--pcr",
        "9",
        "--from",
        &hex(&start),
        &format!("v1-sha256-12:{}", f.hex),
    ]));
    assert_eq!(
        out,
        vec![
            format!("record {record}"),
            format!(
                "pcr 9 sha256 {}",
                hex(&extend("sha256", &start, record.as_bytes()))
            )
        ]
    );
}

#[test]
fn refused_and_sealed_digest_records() {
    let Some(f) = fixture() else { return };
    let refused = format!(
        "sealroot-v1 refused image=v1-sha256-12:{} reason=seal",
        f.hex
    );
    let out = lines(&pcr(&["--refused", "seal", "--bank", "sha256", &f.hex]));
    assert_eq!(
        out,
        vec![
            format!("record {refused}"),
            format!(
                "pcr 15 sha256 {}",
                hex(&extend("sha256", &[0; 32], refused.as_bytes()))
            )
        ]
    );
    let out = lines(&pcr(&["--refused", "boot-policy", "--bank", "sha256"]));
    assert_eq!(out[0], "record sealroot-v1 refused reason=boot-policy");
    let out = lines(&pcr(&["--sealed-digest", "--bank", "sha384", &f.hex]));
    let sd = format!(
        "sealroot-v1 accepted image=v1-sha256-12:{} trust=sealed-digest",
        f.hex
    );
    assert_eq!(
        out,
        vec![
            format!("record {sd}"),
            format!(
                "pcr 15 sha384 {}",
                hex(&extend("sha384", &[0; 48], sd.as_bytes()))
            )
        ]
    );
}

/// A systemd-format log written by hand: RS, JSON, LF per record.
fn log_record(pcr: u32, sha256: &[u8], text: &str) -> String {
    format!(
        "\u{1e}{{\"pcr\":{pcr},\"digests\":[{{\"hashAlg\":\"sha1\",\"digest\":\"{}\"}},{{\"hashAlg\":\"sha256\",\"digest\":\"{}\"}}],\"content_type\":\"systemd\",\"content\":{{\"string\":\"{text}\"}}}}\n",
        "00".repeat(20),
        hex(sha256)
    )
}

#[test]
fn event_log_replay() {
    let Some(f) = fixture() else { return };
    let earlier = b"an earlier event";
    let other = b"another PCR";
    let log = log_record(15, &openssl_dgst("sha256", earlier), "earlier")
        + &log_record(11, &openssl_dgst("sha256", other), "other");
    let path = f.root.join("tpm2-measure.log");
    std::fs::write(&path, log).unwrap();
    let after_log = extend("sha256", &[0; 32], earlier);
    let out = lines(&pcr(&[
        "--replay",
        "--event-log",
        path.to_str().unwrap(),
        "--bank",
        "sha256",
    ]));
    assert_eq!(out, vec![format!("pcr 15 sha256 {}", hex(&after_log))]);
    let out = lines(&pcr(&[
        "--replay",
        "--event-log",
        path.to_str().unwrap(),
        "--bank",
        "sha256",
        "--pcr",
        "11",
    ]));
    assert_eq!(
        out,
        vec![format!(
            "pcr 11 sha256 {}",
            hex(&extend("sha256", &[0; 32], other))
        )]
    );
    let refused = format!(
        "sealroot-v1 refused image=v1-sha256-12:{} reason=image",
        f.hex
    );
    let out = lines(&pcr(&[
        "--refused",
        "image",
        "--event-log",
        path.to_str().unwrap(),
        "--bank",
        "sha256",
        &f.hex,
    ]));
    assert_eq!(
        out[1],
        format!(
            "pcr 15 sha256 {}",
            hex(&extend("sha256", &after_log, refused.as_bytes()))
        )
    );
    // The log has no SHA-384 digests: that bank cannot be replayed.
    let o = pcr(&["--replay", "--event-log", path.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("has no sha384 digest"), "{}", text(&o));
}

#[test]
fn bad_input_gives_one_line_errors() {
    let Some(f) = fixture() else { return };
    let repo = f.repo.to_str().unwrap().to_string();
    let other = test_key("other-test.pub.pem");
    let good = test_key("sealroot-test.pub.pem");
    let garbage = f.root.join("garbage.log");
    std::fs::write(&garbage, "hello\n").unwrap();
    let bad_json = f.root.join("bad.log");
    std::fs::write(&bad_json, "\u{1e}{\"pcr\":\"x\"}\n").unwrap();
    let missing = f.root.join("missing.log");
    let short = "ab".repeat(31);
    let zeros = "0".repeat(64);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--repo", &repo, "--key", &other, &f.hex], "rejected"),
        (
            vec!["--repo", &repo, "--key", &good, &zeros],
            "json does not exist",
        ),
        (vec!["--refused", "whatever", &f.hex], "not a refusal class"),
        (vec!["--sealed-digest"], "DIGEST is required"),
        (vec!["--sealed-digest", "xyz"], "xyz"),
        (vec!["--sealed-digest", "--from", "zz", &f.hex], "--from"),
        (
            vec!["--sealed-digest", "--from", &short, &f.hex],
            "31 bytes",
        ),
        (vec!["--sealed-digest", "--bank", "sha1", &f.hex], "--bank"),
        (
            vec![
                "--sealed-digest",
                "--event-log",
                garbage.to_str().unwrap(),
                &f.hex,
            ],
            "not a JSON-SEQ log",
        ),
        (
            vec![
                "--sealed-digest",
                "--event-log",
                bad_json.to_str().unwrap(),
                &f.hex,
            ],
            "record #0",
        ),
        (
            vec![
                "--sealed-digest",
                "--event-log",
                missing.to_str().unwrap(),
                &f.hex,
            ],
            "missing.log",
        ),
        (vec![&f.hex], "say where the record comes from"),
        (vec!["--sealed-digest", "--pcr", "24", &f.hex], "0..=23"),
    ];
    for (args, want) in cases {
        let o = pcr(&args);
        let t = text(&o);
        assert!(!o.status.success(), "{args:?} succeeded: {t}");
        assert!(t.starts_with("sealctl pcr: "), "{args:?}: {t}");
        assert_eq!(t.lines().count(), 1, "{args:?}: {t}");
        assert!(t.contains(want), "{args:?}: want {want:?} in {t}");
        assert!(o.stdout.is_empty(), "{args:?} printed {t}");
    }
}
