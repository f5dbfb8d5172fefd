//! The composefs flavour of EROFS: on-disk format, writer and reader.
//!
//! - [`format`]: constants and small helpers both sides share.
//! - [`writer`]: tree → image bytes, bit-for-bit as `mkcomposefs` 1.0.x.
//!
//! The reader (`reader.rs`, owned by the reader helper) is declared here
//! once it exists.

pub mod format;
pub mod writer;

pub use writer::{write_image, WriteError, WriteOptions};
