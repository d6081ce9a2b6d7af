//! The docker-archive that `POST /images/load` (`docker load`) reads, written
//! on the fly from store blobs.
//!
//! Layout: `manifest.json` (`[{Config, RepoTags, Layers}]`), the config as
//! `<config hex>.json`, and each layer uncompressed as `<diff_id hex>/layer.tar`.
//! Both engines check the uncompressed layers against the config's
//! `rootfs.diff_ids`; we check too, while streaming, so that a bad blob is
//! reported as a bad blob and not as an engine error.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use sha2::Digest as _;
use tokio::sync::mpsc;

use super::EngineError;
use crate::oci::{Compression, Digest, Sha256};

/// An image to load: its config and its layers as the store holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadSpec {
    /// The config bytes, exactly as stored (their digest is the image id).
    pub config_json: Vec<u8>,
    /// Bottom layer first, in the order of the config's `rootfs.diff_ids`.
    pub layers: Vec<LoadLayer>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadLayer {
    /// The stored (possibly compressed) blob.
    pub blob_path: PathBuf,
    pub compression: Compression,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Size of the uncompressed tar: a tar entry's size goes in its header,
    /// before the data, and we never hold a layer in memory or on disk whole.
    pub uncompressed_size: u64,
    /// The engine is known to hold this layer already (a parent state was
    /// loaded before). Docker's loader looks a layer up by chain id before
    /// it opens the layer's file, so an empty file stands in for it and the
    /// load costs only what is new.
    pub present: bool,
}

/// Write the docker-archive that loads `spec` as `tag` into `out`.
pub(super) fn write_docker_archive(
    tag: &str,
    spec: &LoadSpec,
    out: impl Write,
) -> Result<(), EngineError> {
    let config_name = format!("{}.json", Digest::of(&spec.config_json).hex());
    let layer_names: Vec<String> = spec
        .layers
        .iter()
        .map(|l| format!("{}/layer.tar", l.diff_id.hex()))
        .collect();
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [tag],
        "Layers": layer_names,
    }]);
    let manifest = serde_json::to_vec(&manifest).expect("a JSON value serialises");

    let mut tar = tar::Builder::new(out);
    let meta = |source| EngineError::Io {
        action: format!("writing the archive for {tag}"),
        source,
    };
    append_file(&mut tar, "manifest.json", &manifest).map_err(&meta)?;
    append_file(&mut tar, &config_name, &spec.config_json).map_err(&meta)?;
    let mut written: Vec<&Digest> = Vec::new();
    for layer in &spec.layers {
        // The same layer twice (an empty layer, say) is one file listed twice.
        if written.contains(&&layer.diff_id) {
            continue;
        }
        written.push(&layer.diff_id);
        append_layer(&mut tar, layer)?;
    }
    tar.into_inner().and_then(|mut w| w.flush()).map_err(meta)?;
    Ok(())
}

fn header(size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    // GNU headers: a layer may be larger than ustar's 8 GiB.
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(mode);
    h.set_entry_type(kind);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn append_file<W: Write>(tar: &mut tar::Builder<W>, name: &str, data: &[u8]) -> io::Result<()> {
    let mut h = header(data.len() as u64, 0o644, tar::EntryType::Regular);
    tar.append_data(&mut h, name, data)
}

fn append_layer<W: Write>(tar: &mut tar::Builder<W>, layer: &LoadLayer) -> Result<(), EngineError> {
    let path = &layer.blob_path;
    let read_err = |source| EngineError::Io {
        action: format!("reading layer {}", path.display()),
        source,
    };
    let mut dir = header(0, 0o755, tar::EntryType::Directory);
    tar.append_data(&mut dir, format!("{}/", layer.diff_id.hex()), io::empty())
        .map_err(read_err)?;
    if layer.present {
        return append_file(tar, &format!("{}/layer.tar", layer.diff_id.hex()), &[])
            .map_err(read_err);
    }
    let mut reader = CheckedReader::new(
        open_uncompressed(path, layer.compression).map_err(read_err)?,
        layer.uncompressed_size,
    );
    let mut h = header(layer.uncompressed_size, 0o644, tar::EntryType::Regular);
    tar.append_data(
        &mut h,
        format!("{}/layer.tar", layer.diff_id.hex()),
        &mut reader,
    )
    .map_err(read_err)?;
    let (actual, actual_size) = reader.finish().map_err(read_err)?;
    if actual != layer.diff_id || actual_size != layer.uncompressed_size {
        return Err(EngineError::LayerMismatch {
            path: path.clone(),
            expected: layer.diff_id.clone(),
            expected_size: layer.uncompressed_size,
            actual,
            actual_size,
        });
    }
    Ok(())
}

/// The uncompressed tar of a stored blob.
// TODO: use crate::layer::decompress once it is merged.
pub(super) fn open_uncompressed(
    path: &std::path::Path,
    compression: Compression,
) -> io::Result<Box<dyn Read + Send>> {
    let file = io::BufReader::with_capacity(256 * 1024, fs_err::File::open(path)?);
    Ok(match compression {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Zstd => Box::new(zstd::Decoder::with_buffer(file)?),
    })
}

/// Yields at most `size` bytes (the size already written in the tar
/// header, so the archive stays well-formed whatever the blob holds) and
/// hashes everything the blob holds, so that [`CheckedReader::finish`] can
/// tell whether the blob matched.
struct CheckedReader<R> {
    inner: R,
    size: u64,
    count: u64,
    hasher: Sha256,
}

impl<R: Read> CheckedReader<R> {
    fn new(inner: R, size: u64) -> Self {
        CheckedReader {
            inner,
            size,
            count: 0,
            hasher: Sha256::new(),
        }
    }

    /// The digest and size of the whole uncompressed blob.
    fn finish(mut self) -> io::Result<(Digest, u64)> {
        let mut buf = vec![0; 64 * 1024];
        loop {
            let n = self.inner.read(&mut buf)?;
            if n == 0 {
                break;
            }
            self.hasher.update(&buf[..n]);
            self.count += n as u64;
        }
        Ok((Digest::from_hasher(self.hasher), self.count))
    }
}

impl<R: Read> Read for CheckedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.size.saturating_sub(self.count);
        if left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            // Shorter than the header says: the archive is broken from here,
            // so stop it now; `finish` reports the real size.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "layer is {} bytes uncompressed, expected {}",
                    self.count, self.size
                ),
            ));
        }
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A `Write` that hands what is written to an async consumer in chunks,
/// so a blocking tar writer can feed an HTTP request body.
pub(super) struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: BytesMut,
}

const CHUNK: usize = 256 * 1024;

impl ChannelWriter {
    pub(super) fn new(tx: mpsc::Sender<io::Result<Bytes>>) -> Self {
        ChannelWriter {
            tx,
            buf: BytesMut::with_capacity(CHUNK),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.buf.reserve(CHUNK);
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the engine stopped reading the archive",
            )
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A layer tar holding one file, and its gzip-compressed blob on disk.
    fn gz_layer(dir: &std::path::Path, content: &[u8]) -> (LoadLayer, Vec<u8>) {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "hello.txt", content).unwrap();
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let path = dir.join(format!("{}.gz", Digest::of(&tar).hex()));
        fs_err::write(&path, gz.finish().unwrap()).unwrap();
        let layer = LoadLayer {
            present: false,
            blob_path: path,
            compression: Compression::Gzip,
            diff_id: Digest::of(&tar),
            uncompressed_size: tar.len() as u64,
        };
        (layer, tar)
    }

    fn entries(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for e in tar::Archive::new(archive).entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.insert(name, data);
        }
        out
    }

    #[test]
    fn archive_holds_manifest_config_and_uncompressed_layers() {
        let dir = tempfile::tempdir().unwrap();
        let (a, a_tar) = gz_layer(dir.path(), b"a");
        let (b, b_tar) = gz_layer(dir.path(), b"bb");
        let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
        let spec = LoadSpec {
            config_json: config.clone(),
            layers: vec![a.clone(), b.clone(), a.clone()],
        };
        let mut out = Vec::new();
        write_docker_archive("tplbuild/state:x", &spec, &mut out).unwrap();
        let files = entries(&out);
        let config_name = format!("{}.json", Digest::of(&config).hex());
        let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        assert_eq!(
            manifest,
            serde_json::json!([{
                "Config": config_name,
                "RepoTags": ["tplbuild/state:x"],
                "Layers": [
                    format!("{}/layer.tar", a.diff_id.hex()),
                    format!("{}/layer.tar", b.diff_id.hex()),
                    format!("{}/layer.tar", a.diff_id.hex()),
                ],
            }])
        );
        assert_eq!(files[&config_name], config);
        assert_eq!(files[&format!("{}/layer.tar", a.diff_id.hex())], a_tar);
        assert_eq!(files[&format!("{}/layer.tar", b.diff_id.hex())], b_tar);
        // manifest, config, and a directory plus a file per distinct layer.
        assert_eq!(files.len(), 2 + 2 * 2);
    }

    #[test]
    fn layer_whose_content_differs_from_its_diff_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, _) = gz_layer(dir.path(), b"a");
        a.diff_id = Digest::of(b"something else");
        let spec = LoadSpec {
            config_json: b"{}".to_vec(),
            layers: vec![a],
        };
        let err = write_docker_archive("t:1", &spec, io::sink()).unwrap_err();
        assert!(matches!(err, EngineError::LayerMismatch { .. }), "{err}");
    }

    #[test]
    fn layer_longer_than_its_stated_size_is_refused_with_its_real_size() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, _) = gz_layer(dir.path(), b"a");
        a.uncompressed_size -= 512;
        let spec = LoadSpec {
            config_json: b"{}".to_vec(),
            layers: vec![a.clone()],
        };
        let mut out = Vec::new();
        let err = write_docker_archive("t:1", &spec, &mut out).unwrap_err();
        match err {
            EngineError::LayerMismatch { actual_size, .. } => {
                assert_eq!(actual_size, a.uncompressed_size + 512)
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn layer_shorter_than_its_stated_size_is_an_error_not_a_short_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, _) = gz_layer(dir.path(), b"a");
        a.uncompressed_size += 512;
        let spec = LoadSpec {
            config_json: b"{}".to_vec(),
            layers: vec![a],
        };
        assert!(write_docker_archive("t:1", &spec, io::sink()).is_err());
    }

    #[test]
    fn channel_writer_delivers_every_byte_in_order() {
        let (tx, mut rx) = mpsc::channel(4);
        let data: Vec<u8> = (0..(3 * CHUNK + 17)).map(|i| (i % 251) as u8).collect();
        let expect = data.clone();
        let t = std::thread::spawn(move || {
            let mut w = ChannelWriter::new(tx);
            w.write_all(&data).unwrap();
            w.flush().unwrap();
        });
        let mut got = Vec::new();
        while let Some(chunk) = rx.blocking_recv() {
            got.extend_from_slice(&chunk.unwrap());
        }
        t.join().unwrap();
        assert_eq!(got, expect);
    }
}
