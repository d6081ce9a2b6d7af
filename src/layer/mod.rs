//! (stub, replaced by the layer branch)
#![allow(unused)]
use std::io::{Read, Write};
use std::path::Path;
use crate::oci::{Compression, Digest};
#[derive(Debug, thiserror::Error)]
#[error("layer")]
pub struct LayerError;
pub struct Hygiene;
impl Hygiene { pub fn keep_all() -> Self { Hygiene } }
pub struct LayerOptions { pub epoch: Option<i64>, pub compression: Compression, pub drop_volatile: bool, pub hygiene: Hygiene, pub exclude: Vec<String> }
pub struct WrittenLayer { pub digest: Digest, pub diff_id: Digest, pub size: u64, pub media_type: String }
pub fn write_dir(root: &Path, out: impl Write, opts: &LayerOptions) -> Result<WrittenLayer, LayerError> { todo!() }
pub fn decompress(r: impl Read + Send + 'static) -> std::io::Result<Box<dyn Read + Send>> { todo!() }
pub fn apply_layer(tar: impl Read, dest: &Path) -> Result<(), LayerError> { todo!() }
