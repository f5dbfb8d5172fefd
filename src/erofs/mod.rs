//! The composefs flavour of EROFS: on-disk format, writer and reader.
//! (to be written)

pub mod reader;
