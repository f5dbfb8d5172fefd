//! The repository and state layout: every relative name sealroot and sealctl
//! use inside a physical root, in one place.
//!
//! ```text
//! <root>/composefs/meta.json                    format metadata (repo_meta)
//! <root>/composefs/objects/XX/<62 hex>          fs-verity objects (file contents, images)
//! <root>/composefs/images/<hex>                 -> ../objects/XX/<62 hex> (the image object)
//! <root>/composefs/seals/<hex>.json             seal manifest
//! <root>/composefs/seals/<hex>.sig              64-byte ed25519 signature
//! <root>/state/deploy/<hex>/etc/upper           persistent /etc overlay upper
//! <root>/state/deploy/<hex>/etc/work            its overlay work directory
//! <root>/state/deploy/<hex>/var                 persistent /var
//! ```
//!
//! The object names are composefs's: the first two hex digits of the
//! fs-verity digest are a directory, the rest the file name, and an image's
//! overlay redirect to an object is the same name with a leading `/`.
//!
//! Contract: functions here return *relative* names (no leading `/`, no `..`
//! except the image link target, which is exactly what composefs writes).
//! The boot side opens them beneath a directory fd (`openat2` with
//! `RESOLVE_BENEATH`); the tool side joins them onto a path. No other module
//! spells these names. The `*_name_digest` functions read them back (for
//! `sealctl gc`, which lists directories): each accepts exactly the names
//! the forward function gives for a digest of the algorithm, nothing else.

use crate::digest::{Digest, HashAlgorithm};

/// The repository directory, relative to the physical root (or to a build
/// repository's root).
pub const REPO_DIR: &str = "composefs";
/// The format metadata file, relative to [`REPO_DIR`].
pub const META_FILE: &str = "meta.json";
/// The object store, relative to [`REPO_DIR`].
pub const OBJECTS_DIR: &str = "objects";
/// The image links, relative to [`REPO_DIR`].
pub const IMAGES_DIR: &str = "images";
/// The seals, relative to [`REPO_DIR`].
pub const SEALS_DIR: &str = "seals";
/// Per-deployment writable state, relative to the physical root.
pub const DEPLOY_DIR: &str = "state/deploy";
/// Inside a deployment's state directory (and inside the transient `/etc`
/// tmpfs): the overlay upper and work directories of `/etc`.
pub const ETC_UPPER: &str = "etc/upper";
pub const ETC_WORK: &str = "etc/work";
/// Inside a deployment's state directory: the persistent `/var`.
pub const VAR: &str = "var";
/// Every state directory a deployment has, parents after children are
/// created by the callers that need them.
pub const STATE_SUBDIRS: [&str; 3] = [ETC_UPPER, ETC_WORK, VAR];

/// `XX/<rest>`: an object's name relative to [`OBJECTS_DIR`] (and, with a
/// leading `/`, the overlay redirect an image stores for it).
pub fn object_name(digest: &Digest) -> String {
    let hex = digest.to_hex();
    format!("{}/{}", &hex[..2], &hex[2..])
}

/// `images/<hex>`, relative to [`REPO_DIR`].
pub fn image_rel(digest: &Digest) -> String {
    format!("{IMAGES_DIR}/{}", digest.to_hex())
}

/// The target of the image link `images/<hex>`: `../objects/XX/<rest>`.
pub fn image_link_target(digest: &Digest) -> String {
    format!("../{OBJECTS_DIR}/{}", object_name(digest))
}

/// `objects/XX/<rest>`, relative to [`REPO_DIR`].
pub fn object_rel(digest: &Digest) -> String {
    format!("{OBJECTS_DIR}/{}", object_name(digest))
}

/// The seal files (`seals/<hex>.json`, `seals/<hex>.sig`), relative to
/// [`REPO_DIR`].
pub fn seal_rel(digest: &Digest) -> (String, String) {
    let hex = digest.to_hex();
    (
        format!("{SEALS_DIR}/{hex}.json"),
        format!("{SEALS_DIR}/{hex}.sig"),
    )
}

/// `state/deploy/<hex>`, relative to the physical root.
pub fn deploy_rel(digest: &Digest) -> String {
    format!("{DEPLOY_DIR}/{}", digest.to_hex())
}

/// `XX`: whether `name` can be an object directory (two lowercase hex
/// digits).
pub fn is_object_prefix(name: &str) -> bool {
    name.len() == 2
        && name
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// The digest of the object `<prefix>/<name>` in [`OBJECTS_DIR`].
pub fn object_name_digest(prefix: &str, name: &str, alg: HashAlgorithm) -> Option<Digest> {
    let d = Digest::parse_hex(alg, &format!("{prefix}{name}")).ok()?;
    (object_name(&d) == format!("{prefix}/{name}")).then_some(d)
}

/// The digest an entry `name` of [`IMAGES_DIR`] names.
pub fn image_name_digest(name: &str, alg: HashAlgorithm) -> Option<Digest> {
    let d = Digest::parse_hex(alg, name).ok()?;
    (image_rel(&d) == format!("{IMAGES_DIR}/{name}")).then_some(d)
}

/// The digest whose seal file (manifest or signature) `name` in
/// [`SEALS_DIR`] is.
pub fn seal_name_digest(name: &str, alg: HashAlgorithm) -> Option<Digest> {
    let (hex, _) = name.split_once('.')?;
    let d = Digest::parse_hex(alg, hex).ok()?;
    let rel = format!("{SEALS_DIR}/{name}");
    let (json, sig) = seal_rel(&d);
    (json == rel || sig == rel).then_some(d)
}

/// The digest whose state directory an entry `name` of [`DEPLOY_DIR`] is.
pub fn deploy_name_digest(name: &str, alg: HashAlgorithm) -> Option<Digest> {
    let d = Digest::parse_hex(alg, name).ok()?;
    (deploy_rel(&d) == format!("{DEPLOY_DIR}/{name}")).then_some(d)
}

/// How a name relative to [`REPO_DIR`] is shown in messages:
/// `composefs/<rel>`.
pub fn shown(rel: &str) -> String {
    format!("{REPO_DIR}/{rel}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "3d8a0d2b0a4c7e55c8a1e0ad7a4f1d9a6b2c3e4f5a6b7c8d9e0f1a2b3c4d5e6f";

    #[test]
    fn names_match_the_composefs_layout() {
        let d = Digest::parse_hex_any(HEX).unwrap();
        assert_eq!(object_name(&d), format!("3d/{}", &HEX[2..]));
        assert_eq!(object_rel(&d), format!("objects/3d/{}", &HEX[2..]));
        assert_eq!(image_rel(&d), format!("images/{HEX}"));
        assert_eq!(
            image_link_target(&d),
            format!("../objects/3d/{}", &HEX[2..])
        );
        assert_eq!(
            seal_rel(&d),
            (format!("seals/{HEX}.json"), format!("seals/{HEX}.sig"))
        );
        assert_eq!(deploy_rel(&d), format!("state/deploy/{HEX}"));
        assert_eq!(shown(&image_rel(&d)), format!("composefs/images/{HEX}"));
    }

    #[test]
    fn names_read_back() {
        let d = Digest::parse_hex_any(HEX).unwrap();
        let alg = HashAlgorithm::Sha256;
        assert_eq!(object_name_digest(&HEX[..2], &HEX[2..], alg), Some(d));
        assert_eq!(image_name_digest(HEX, alg), Some(d));
        assert_eq!(deploy_name_digest(HEX, alg), Some(d));
        for name in [format!("{HEX}.json"), format!("{HEX}.sig")] {
            assert_eq!(seal_name_digest(&name, alg), Some(d), "{name}");
        }
        assert!(is_object_prefix("3d") && !is_object_prefix("3D") && !is_object_prefix(".t"));
        // Anything else is no name of ours.
        assert_eq!(object_name_digest("3D", &HEX[2..], alg), None);
        assert_eq!(object_name_digest(&HEX[..3], &HEX[3..], alg), None);
        assert_eq!(image_name_digest(&HEX.to_uppercase(), alg), None);
        assert_eq!(image_name_digest(HEX, HashAlgorithm::Sha512), None);
        assert_eq!(image_name_digest(".tmp-sealctl-1-0", alg), None);
        for name in [
            format!("{HEX}.txt"),
            format!("{HEX}.json.bak"),
            HEX.to_string(),
            format!("{}.json", &HEX[..62]),
        ] {
            assert_eq!(seal_name_digest(&name, alg), None, "{name}");
        }
    }

    #[test]
    fn image_link_resolves_to_the_object() {
        // images/<hex> + ../objects/... must land on objects/XX/<rest>.
        let d = Digest::parse_hex_any(HEX).unwrap();
        let joined = std::path::Path::new(IMAGES_DIR).join(image_link_target(&d));
        let mut parts: Vec<&str> = Vec::new();
        for c in joined.to_str().unwrap().split('/') {
            if c == ".." {
                parts.pop();
            } else {
                parts.push(c);
            }
        }
        assert_eq!(parts.join("/"), object_rel(&d));
    }
}
