//! OCI images as sealroot's delivery format (tool side only, feature `tool`).
//!
//! A vendor's root filesystem arrives as an OCI image: a manifest naming a
//! config and an ordered list of tar layers (gzip, zstd or uncompressed). This
//! module turns such an image into the composefs image a seal covers, and
//! moves images and seals between OCI stores and a repository.
//!
//! | module | concern |
//! |---|---|
//! | [`source`] | the [`source::ImageSource`] trait: where manifests and blobs come from; [`AnySource`]: a reference (`oci:…` or `docker://…`) opened as its store |
//! | [`layer_cache`] | the layers a repository has read, replayed instead of fetched |
//! | [`layout`] | an OCI image-layout directory (`oci:DIR[:REF]`) as a source |
//! | [`flatten`] | layer tars applied in order onto one tree (whiteouts, hard links, xattrs) |
//! | [`seal_artifact`] | the OCI artifact a seal travels in beside its image |
//! | [`registry`] | a registry (`docker://HOST/REPO[:TAG]`) as a source; seals pushed and found as referrers |
//! | [`pull`] | `oci seal` and `pull`: flatten, build, sign or verify, publish |
//! | [`update`] | `update`: pull into the physical root, install, stage a counted boot entry |
//!
//! Every store of OCI content (an image-layout directory, a registry) is read
//! through [`source::ImageSource`], so flattening, sealing and pulling are
//! written once and never know where the bytes came from. Every blob is
//! checked against its descriptor's digest and size as it streams. A
//! reference as a user writes it is read in one place, [`AnySource::open`],
//! which every subcommand that takes one uses.

pub mod flatten;
pub mod layer_cache;
pub mod layout;
pub mod pull;
pub mod registry;
pub mod seal_artifact;
pub mod source;
pub mod update;

pub use source::{AnySource, AnySourceError};
