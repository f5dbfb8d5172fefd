//! `sealctl update` on the host: a directory stands in for the physical
//! root, another for the ESP, and the image is an OCI layout made by
//! `umoci` from a tree that ships a kernel and an initramfs at
//! `/usr/lib/modules/<kver>/` and a base command line at
//! `/usr/lib/kernel/cmdline`.
//!
//! Checked: a seal by an untrusted key, a base command line that names a
//! digest and an ESP directory with no `EFI/` (nothing mounted) stage nothing (ESP and repository as they were); without
//! fs-verity support on the root, an update without `--no-verity` fails and
//! stages nothing; an update stages exactly one counted Type #1 entry whose
//! `options` end in the sealed digest, with the boot files copied byte for
//! byte; the same update again (also after systemd-boot renamed the entry to
//! `+2-1`) changes nothing; another entry text under the same name is
//! refused; an image whose `/usr/lib/sealroot/uki.efi` is not a UKI stages
//! nothing; a UKI without `.cmdline` (systemd-stub plus sections, by
//! `objcopy`) at that path is staged as an `efi` entry, one with `.cmdline`
//! is refused. And SIGKILLs at scattered moments (mostly while the boot files
//! and the entry are written) never leave a partial entry or boot file
//! under its final name, and a rerun completes (a copy written in place
//! instead of through a temporary fails this within a few rounds).
//!
//! Needs root and `umoci`: missing is a failure under `CI=true`, a printed
//! SKIP otherwise.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use common::{
    assert_success, key, listing, missing, run, sealctl, text, umoci, verify_with_test_key,
    work_dir,
};

const KVER: &str = "6.1.0-sealtest";
const BASE_CMDLINE: &str = "console=ttyS0 root=LABEL=root rootfstype=ext4";

fn ready() -> bool {
    common::oci_ready("umoci unpack/repack keeps ownership", &["umoci"])
}

/// Layout `L` with `v1` (kernel, initramfs, cmdline) and `nouki` (v1 plus
/// a `/usr/lib/sealroot/uki.efi` that is no PE file). Returns the boot
/// files' bytes.
fn make_layout(w: &Path) -> (Vec<u8>, Vec<u8>) {
    common::umoci_new_image(w, "v1", "B1");
    let rootfs = w.join("B1/rootfs");
    let modules = rootfs.join("usr/lib/modules").join(KVER);
    fs::create_dir_all(&modules).unwrap();
    fs::create_dir_all(rootfs.join("usr/lib/kernel")).unwrap();
    fs::create_dir_all(rootfs.join("etc")).unwrap();
    // Not real kernels: update copies bytes, it does not boot them.
    let kernel: Vec<u8> = (0..90_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let initramfs: Vec<u8> = (0..20_000u32).map(|i| (i * 13 % 253) as u8).collect();
    fs::write(modules.join("vmlinuz"), &kernel).unwrap();
    fs::write(modules.join("initramfs.img"), &initramfs).unwrap();
    fs::write(
        rootfs.join("usr/lib/kernel/cmdline"),
        format!("{BASE_CMDLINE}\n"),
    )
    .unwrap();
    fs::write(rootfs.join("etc/hostname"), "b\n").unwrap();
    umoci(w, &["repack", "--image", "L:v1", "B1"]);

    umoci(w, &["unpack", "--image", "L:v1", "B2"]);
    let sealroot = w.join("B2/rootfs/usr/lib/sealroot");
    fs::create_dir_all(&sealroot).unwrap();
    fs::write(sealroot.join("uki.efi"), vec![0x4du8; 5000]).unwrap();
    umoci(w, &["repack", "--image", "L:nouki", "B2"]);
    (kernel, initramfs)
}

/// `sealctl oci seal` of `image` with `key_name` (serial 5, testos 2.0):
/// (digest hex, seal json).
fn oci_seal(image: &str, key_name: &str, out: &Path) -> (String, PathBuf) {
    let fields = ["--serial", "5", "--os", "testos", "--version", "2.0"];
    common::oci_seal(image, &key(key_name), out, &fields)
}

/// The arguments of `sealctl update` of `from` (trusting the test key).
fn update_args(from: &str, root: &Path, esp: &Path, seal: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "update",
        "--from",
        from,
        "--repo",
        root.to_str().unwrap(),
        "--esp",
        esp.to_str().unwrap(),
        "--trusted-key",
        &key("sealroot-test.pub.pem"),
        "--seal",
        seal.to_str().unwrap(),
    ]
    .map(String::from)
    .into();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn update(from: &str, root: &Path, esp: &Path, seal: &Path, extra: &[&str]) -> Output {
    sealctl(&update_args(from, root, esp, seal, extra))
}

#[test]
fn update_stages_one_counted_entry_and_refusals_stage_nothing() {
    if !ready() {
        return;
    }
    let w = work_dir("oci-update");
    let (kernel, initramfs) = make_layout(&w);
    let v1 = format!("oci:{}:v1", w.join("L").display());
    let nouki = format!("oci:{}:nouki", w.join("L").display());
    let (hex, seal) = oci_seal(&v1, "sealroot-test.pem", &w.join("seals"));
    let (_, foreign) = oci_seal(&v1, "other-test.pem", &w.join("foreign"));
    let (hex_nouki, seal_nouki) = oci_seal(&nouki, "sealroot-test.pem", &w.join("seals"));

    let root = w.join("root");
    let esp = w.join("esp");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(esp.join("EFI/Linux")).unwrap();
    fs::write(esp.join("EFI/Linux/sealroot-a.efi"), b"A's UKI").unwrap();
    let esp_start = listing(&esp);

    let refused = |what: &str, o: Output, needle: &str| {
        assert!(!o.status.success(), "{what}: accepted: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.starts_with("sealctl update: ") && err.contains(needle),
            "{what}: {err}"
        );
    };

    // A seal by a key the machine does not trust: nothing anywhere.
    let o = update(&v1, &root, &esp, &foreign, &["--no-verity"]);
    refused("untrusted seal", o, "untrusted key");
    assert_eq!(listing(&esp), esp_start, "untrusted seal: the ESP changed");
    assert!(
        listing(&root)
            .keys()
            .all(|p| !p.starts_with("composefs/images")),
        "untrusted seal: an image was published: {:?}",
        listing(&root).keys().collect::<Vec<_>>()
    );

    // Refused before the pull, the ESP and the root as they were: a base
    // command line naming a digest, a sort-key that would add a line to the
    // entry, an ESP mount point with nothing mounted (no EFI/).
    let root_before = listing(&root);
    let unmounted = w.join("unmounted-esp");
    fs::create_dir_all(&unmounted).unwrap();
    let digest_cmdline = "root=LABEL=root composefs.digest=v1-sha256-12:00";
    for (what, esp, extra, needle) in [
        (
            "digest in --cmdline",
            &esp,
            &["--cmdline", digest_cmdline][..],
            "names a digest",
        ),
        (
            "bad --sort-key",
            &esp,
            &["--sort-key", "x\nlinux /evil"],
            "sort-key",
        ),
        (
            "unmounted ESP",
            &unmounted,
            &[],
            "is not a mounted EFI system partition",
        ),
    ] {
        let esp_before = listing(esp);
        let mut args = vec!["--no-verity"];
        args.extend_from_slice(extra);
        refused(what, update(&v1, &root, esp, &seal, &args), needle);
        assert_eq!(listing(esp), esp_before, "{what}: the ESP changed");
        assert_eq!(listing(&root), root_before, "{what}: the root changed");
    }

    // With fs-verity required: on a root whose filesystem lacks it (this
    // host's), the update fails after the pull and stages nothing.
    let o = update(&v1, &root, &esp, &seal, &[]);
    if o.status.success() {
        eprintln!("this filesystem has fs-verity: the update staged with it");
    } else {
        refused("no fs-verity", o, "fs-verity");
        assert_eq!(listing(&esp), esp_start, "no fs-verity: the ESP changed");
    }
    // Start again from an empty root for the checks that follow.
    fs::remove_dir_all(&root).unwrap();
    fs::create_dir_all(&root).unwrap();
    fs::remove_dir_all(&esp).unwrap();
    fs::create_dir_all(esp.join("EFI/Linux")).unwrap();
    fs::write(esp.join("EFI/Linux/sealroot-a.efi"), b"A's UKI").unwrap();

    // The update: one counted entry, the digest last in options.
    let o = update(&v1, &root, &esp, &seal, &["--no-verity"]);
    assert_success(&o);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), hex);
    let entries: Vec<String> = fs::read_dir(esp.join("loader/entries"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let name = format!("sealroot-5-{}", &hex[..12]);
    assert_eq!(entries, [format!("{name}+3.conf")]);
    let entry = esp.join("loader/entries").join(&entries[0]);
    let entry_text = fs::read_to_string(&entry).unwrap();
    let want = format!(
        "title testos 2.0 (serial 5, {short})\nsort-key sealroot\nversion 5\n\
         linux /sealroot/{hex}/vmlinuz\ninitrd /sealroot/{hex}/initramfs.img\n\
         options {BASE_CMDLINE} composefs.digest=v1-sha256-12:{hex}\n",
        short = &hex[..12]
    );
    assert_eq!(entry_text, want);
    assert_eq!(
        entry_text.matches("composefs").count(),
        1,
        "one digest word"
    );
    assert_eq!(
        fs::read(esp.join(format!("sealroot/{hex}/vmlinuz"))).unwrap(),
        kernel
    );
    assert_eq!(
        fs::read(esp.join(format!("sealroot/{hex}/initramfs.img"))).unwrap(),
        initramfs
    );
    // Exactly: A's UKI, the boot files, the entry; no temporaries.
    let names: Vec<String> = listing(&esp)
        .keys()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let mut expected = vec![
        "EFI".to_string(),
        "EFI/Linux".into(),
        "EFI/Linux/sealroot-a.efi".into(),
        "loader".into(),
        "loader/entries".into(),
        format!("loader/entries/{name}+3.conf"),
        "sealroot".into(),
        format!("sealroot/{hex}"),
        format!("sealroot/{hex}/initramfs.img"),
        format!("sealroot/{hex}/vmlinuz"),
    ];
    expected.sort();
    assert_eq!(names, expected);
    // The repository has the image, its seal and the deployment's state.
    assert!(root.join(format!("composefs/images/{hex}")).exists());
    assert!(root.join(format!("composefs/seals/{hex}.json")).is_file());
    assert!(root.join(format!("state/deploy/{hex}/var")).is_dir());
    assert_success(&verify_with_test_key(&root, &hex));

    // The same update again: nothing changes on the ESP or in the root.
    let esp_after = listing(&esp);
    let root_after = listing(&root);
    let o = update(&v1, &root, &esp, &seal, &["--no-verity"]);
    assert_success(&o);
    assert!(text(&o).contains("already staged"), "{}", text(&o));
    assert_eq!(listing(&esp), esp_after);
    assert_eq!(listing(&root), root_after);
    // Also once systemd-boot has started counting (+2-1).
    let tried = esp.join(format!("loader/entries/{name}+2-1.conf"));
    fs::rename(&entry, &tried).unwrap();
    let esp_tried = listing(&esp);
    let o = update(&v1, &root, &esp, &seal, &["--no-verity"]);
    assert_success(&o);
    assert!(text(&o).contains("(trying)"), "{}", text(&o));
    assert_eq!(listing(&esp), esp_tried);
    // `sealctl uki entries` lists it beside A's UKI.
    let o = sealctl(&["uki", "entries", "--esp", esp.to_str().unwrap(), "--json"]);
    assert_success(&o);
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids: Vec<(String, String, u64)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                e["state"].as_str().unwrap().to_owned(),
                e["type"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        [
            ("sealroot-a.efi".to_string(), "good".to_string(), 2),
            (format!("{name}.conf"), "trying".to_string(), 1)
        ]
    );

    // A boot file that went missing is restored by a rerun, the entry kept.
    fs::remove_file(esp.join(format!("sealroot/{hex}/initramfs.img"))).unwrap();
    let o = update(&v1, &root, &esp, &seal, &["--no-verity"]);
    assert_success(&o);
    assert!(text(&o).contains("already staged"), "{}", text(&o));
    assert_eq!(listing(&esp), esp_tried);

    // Same name, other entry text: refused, nothing replaced.
    let o = update(
        &v1,
        &root,
        &esp,
        &seal,
        &["--no-verity", "--cmdline", "console=ttyS1"],
    );
    refused(
        "same name, other text",
        o,
        "already on the ESP with other content",
    );
    assert_eq!(listing(&esp), esp_tried);

    // An image whose /usr/lib/sealroot/uki.efi is no UKI: nothing staged.
    let o = update(&nouki, &root, &esp, &seal_nouki, &["--no-verity"]);
    refused("not a UKI", o, "is not a UKI");
    assert_eq!(listing(&esp), esp_tried);
    assert!(!esp.join(format!("sealroot/{hex_nouki}")).exists());
}

/// `sealctl update` SIGKILLed at scattered moments (pull, install, the copy
/// of a 24 MiB kernel, the entry): the ESP never holds an entry whose boot
/// files are incomplete or whose text is partial, and a rerun completes
/// with exactly one entry and no temporaries left.
#[test]
fn killed_update_never_stages_a_partial_entry_and_a_rerun_completes() {
    if !ready() {
        return;
    }
    let w = work_dir("oci-update-kill");
    common::umoci_new_image(&w, "big", "B");
    let rootfs = w.join("B/rootfs");
    let modules = rootfs.join("usr/lib/modules").join(KVER);
    fs::create_dir_all(&modules).unwrap();
    let mut rng = common::Rng::seeded(0x0dd);
    let kernel: Vec<u8> = (0..24 << 20).map(|_| rng.step() as u8).collect();
    let initramfs: Vec<u8> = (0..4 << 20).map(|_| rng.step() as u8).collect();
    fs::write(modules.join("vmlinuz"), &kernel).unwrap();
    fs::write(modules.join("initramfs.img"), &initramfs).unwrap();
    umoci(&w, &["repack", "--image", "L:big", "B"]);
    let from = format!("oci:{}:big", w.join("L").display());
    let (hex, seal) = oci_seal(&from, "sealroot-test.pem", &w.join("seals"));

    let extra = ["--no-verity", "--cmdline", BASE_CMDLINE];
    let fresh_esp = |esp: &Path| {
        let _ = fs::remove_dir_all(esp);
        fs::create_dir_all(esp.join("EFI/BOOT")).unwrap();
    };
    let entry_name = format!("sealroot-5-{}+3.conf", &hex[..12]);
    let files_dir = |esp: &Path| esp.join("sealroot").join(&hex);

    // How long a whole update takes here (`full`), and once the image is
    // in the root (`warm`: the install and the staging).
    let (scratch_root, scratch_esp) = (w.join("scratch-root"), w.join("scratch-esp"));
    let timed_update = || {
        fresh_esp(&scratch_esp);
        let t0 = std::time::Instant::now();
        assert_success(&update(&from, &scratch_root, &scratch_esp, &seal, &extra));
        t0.elapsed().as_micros() as u64
    };
    let (full, warm) = (timed_update(), timed_update());
    let want = fs::read(scratch_esp.join("loader/entries").join(&entry_name)).unwrap();

    let (root, esp) = (w.join("root"), w.join("esp"));
    let (mut round, mut landed) = (0, 0);
    while common::more_kill_rounds(round, 16, landed) {
        round += 1;
        fresh_esp(&esp);
        let child = common::spawn_sealctl_quiet(&update_args(&from, &root, &esp, &seal, &extra));
        // The first kill falls anywhere in a whole update (most likely the
        // pull); the later ones in the second half of what a rerun does
        // (reading the boot files, copying them, the entry), where a
        // non-atomic copy shows (a 10 ms window of about 250 ms here).
        let at = if round == 1 {
            1 + rng.next(full.max(2))
        } else {
            warm / 2 + rng.next((warm * 3 / 5).max(2))
        };
        if !common::kill_after(child, at) {
            landed += 1;
        }
        // Whatever the moment: an entry, if any, is whole, and so are the
        // files it names.
        let entries: Vec<String> = fs::read_dir(esp.join("loader/entries"))
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .filter(|n| n.ends_with(".conf"))
                    .collect()
            })
            .unwrap_or_default();
        if !entries.is_empty() {
            assert_eq!(entries, std::slice::from_ref(&entry_name), "round {round}");
            let text = fs::read(esp.join("loader/entries").join(&entry_name)).unwrap();
            assert_eq!(text, want, "round {round}: a partial entry");
        }
        // A boot file under its name is whole; with an entry, both are there.
        for (f, data) in [("vmlinuz", &kernel), ("initramfs.img", &initramfs)] {
            match fs::read(files_dir(&esp).join(f)) {
                Ok(found) => assert!(
                    found == *data,
                    "round {round}: partial {f} ({} of {} bytes)",
                    found.len(),
                    data.len()
                ),
                Err(e) => assert!(
                    entries.is_empty(),
                    "round {round}: an entry without its {f}: {e}"
                ),
            }
        }
        // The rerun completes: one entry, no temporaries, the image verifies.
        assert_success(&update(&from, &root, &esp, &seal, &extra));
        assert_eq!(
            fs::read(esp.join("loader/entries").join(&entry_name)).unwrap(),
            want
        );
        for dir in [esp.join("loader/entries"), files_dir(&esp)] {
            let names: Vec<String> = fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert!(
                names.iter().all(|n| !n.starts_with(".tmp")),
                "round {round}: temporaries left in {}: {names:?}",
                dir.display()
            );
        }
        assert_success(&verify_with_test_key(&root, &hex));
    }
    eprintln!("{landed} of {round} kills landed before the update finished");
    assert!(landed > 0, "no kill landed mid-update in {round} rounds");
}

/// A UKI made the classic way (`objcopy` adding `.osrel`, `.linux` and
/// `.initrd`, and `.cmdline` when given, to systemd-stub).
fn objcopy_uki(w: &Path, stub: &Path, out: &Path, cmdline: Option<&str>) {
    fs::write(w.join("osrel"), "ID=testos\nVERSION_ID=2\n").unwrap();
    fs::write(w.join("linux"), vec![0x5au8; 40_000]).unwrap();
    fs::write(w.join("initrd"), vec![0xa5u8; 10_000]).unwrap();
    let mut cmd = Command::new("objcopy");
    cmd.current_dir(w);
    let mut sections = vec![(".osrel", "osrel", "0x20000")];
    if let Some(c) = cmdline {
        fs::write(w.join("cmdline"), c).unwrap();
        sections.push((".cmdline", "cmdline", "0x30000"));
    }
    sections.push((".linux", "linux", "0x2000000"));
    sections.push((".initrd", "initrd", "0x3000000"));
    for (name, file, vma) in sections {
        cmd.args([
            "--add-section",
            &format!("{name}={file}"),
            "--change-section-vma",
            &format!("{name}={vma}"),
        ]);
    }
    cmd.arg(stub).arg(out);
    run(&mut cmd);
}

/// An image that ships `/usr/lib/sealroot/uki.efi` (no `.cmdline`) is
/// staged as an `efi` entry with the digest in `options`; one whose UKI has
/// a `.cmdline` is refused with nothing staged.
#[test]
fn update_stages_the_uki_shipped_in_the_image() {
    if !ready() {
        return;
    }
    let stub = Path::new("/usr/lib/systemd/boot/efi/linuxx64.efi.stub");
    if !stub.is_file() || !common::have("objcopy") {
        missing("systemd-stub (systemd-boot-efi) and objcopy (binutils)");
        return;
    }
    let w = work_dir("oci-update-uki");
    umoci(&w, &["init", "--layout", "L"]);
    umoci(&w, &["new", "--image", "L:base"]);
    for (tag, cmdline) in [("uki", None), ("ukicmd", Some("console=ttyS0"))] {
        let bundle = format!("B-{tag}");
        umoci(&w, &["unpack", "--image", "L:base", &bundle]);
        let dir = w.join(&bundle).join("rootfs/usr/lib/sealroot");
        fs::create_dir_all(&dir).unwrap();
        objcopy_uki(&w, stub, &dir.join("uki.efi"), cmdline);
        fs::create_dir_all(w.join(&bundle).join("rootfs/usr/lib/kernel")).unwrap();
        fs::write(
            w.join(&bundle).join("rootfs/usr/lib/kernel/cmdline"),
            BASE_CMDLINE,
        )
        .unwrap();
        umoci(&w, &["repack", "--image", &format!("L:{tag}"), &bundle]);
    }
    let uki = fs::read(w.join("B-uki/rootfs/usr/lib/sealroot/uki.efi")).unwrap();
    let layout = w.join("L");
    let (hex, seal) = oci_seal(
        &format!("oci:{}:uki", layout.display()),
        "sealroot-test.pem",
        &w.join("seals"),
    );
    let (_, seal_cmd) = oci_seal(
        &format!("oci:{}:ukicmd", layout.display()),
        "sealroot-test.pem",
        &w.join("seals"),
    );
    let (root, esp) = (w.join("root"), w.join("esp"));
    fs::create_dir_all(esp.join("EFI/BOOT")).unwrap();
    let start = listing(&esp);

    let o = update(
        &format!("oci:{}:ukicmd", layout.display()),
        &root,
        &esp,
        &seal_cmd,
        &["--no-verity"],
    );
    assert!(!o.status.success(), "a UKI with .cmdline: {}", text(&o));
    assert!(text(&o).contains("has a .cmdline section"), "{}", text(&o));
    assert_eq!(listing(&esp), start);

    let o = update(
        &format!("oci:{}:uki", layout.display()),
        &root,
        &esp,
        &seal,
        &["--no-verity", "--tries", "2", "--name", "os-b"],
    );
    assert_success(&o);
    let entry = fs::read_to_string(esp.join("loader/entries/os-b+2.conf")).unwrap();
    assert_eq!(
        entry,
        format!(
            "title testos 2.0 (serial 5, {short})\nsort-key sealroot\nversion 5\n\
             efi /sealroot/{hex}/uki.efi\n\
             options {BASE_CMDLINE} composefs.digest=v1-sha256-12:{hex}\n",
            short = &hex[..12]
        )
    );
    assert!(fs::read(esp.join(format!("sealroot/{hex}/uki.efi"))).unwrap() == uki);
    assert_eq!(fs::read_dir(esp.join("loader/entries")).unwrap().count(), 1);
}
