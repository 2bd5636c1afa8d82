//! The commands behind `src/main.rs`'s argument parser, one module per command family.

pub(crate) mod bench;
pub(crate) mod common;
pub(crate) mod compress;
pub(crate) mod infer;
pub(crate) mod inspect;
pub(crate) mod train;

pub(crate) use bench::*;
pub(crate) use common::*;
pub(crate) use compress::*;
pub(crate) use infer::*;
pub(crate) use inspect::*;
pub(crate) use train::*;
