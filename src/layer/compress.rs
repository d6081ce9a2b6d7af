//! Layer compression both ways: a hashing, compressing sink for new layers
//! (fixed settings, so equal tars give equal blobs) and a decompressor
//! chosen by magic bytes for layers read back.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use crate::oci::{Compression, Digest, DigestWriter, MediaType};

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];

/// Wrap a layer blob reader with the decompressor its first bytes call for
/// (gzip, possibly multi-member; zstd; xz, which old Docker images use), or
/// pass a plain tar through.
pub fn decompress(r: impl Read + Send + 'static) -> io::Result<Box<dyn Read + Send>> {
    let mut r = r;
    let mut head = [0u8; 6];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head = &head[..got];
    let whole = io::Cursor::new(head.to_vec()).chain(r);
    Ok(if head.starts_with(GZIP_MAGIC) {
        super::members::reader(whole)?
    } else if head.starts_with(ZSTD_MAGIC) {
        Box::new(zstd::stream::read::Decoder::new(whole)?)
    } else if head.starts_with(XZ_MAGIC) {
        Box::new(xz2::read::XzDecoder::new_multi_decoder(whole))
    } else {
        Box::new(whole)
    })
}

/// The media type a layer written with this compression gets.
pub(crate) fn media_type(c: Compression) -> &'static str {
    match c {
        Compression::Gzip => MediaType::OCI_LAYER_GZIP,
        Compression::Zstd => MediaType::OCI_LAYER_ZSTD,
        Compression::None => MediaType::OCI_LAYER_TAR,
    }
}

enum Encoder<W: Write> {
    Plain(W),
    Gzip(super::members::MemberWriter<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(w) => w.write(buf),
            Encoder::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(w) => w.flush(),
            Encoder::Zstd(w) => w.flush(),
        }
    }
}

/// The uncompressed tar goes in; it is compressed with fixed settings,
/// hashed (the blob digest) and counted on its way to `out`.
pub(crate) struct BlobSink<W: Write> {
    enc: Encoder<DigestWriter<W>>,
}

impl<W: Write> BlobSink<W> {
    pub fn new(out: W, compression: Compression) -> io::Result<Self> {
        let blob = DigestWriter::new(out);
        let enc = match compression {
            Compression::None => Encoder::Plain(blob),
            // Members of fixed size at a fixed level; mtime 0, no file
            // name and a fixed OS byte: the gzip headers carry nothing
            // about when or where the layer was made.
            Compression::Gzip => Encoder::Gzip(super::members::MemberWriter::new(blob, 6)),
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(blob, 3)?),
        };
        Ok(BlobSink { enc })
    }

    /// Digest and size of the blob.
    pub fn finish(self) -> io::Result<(Digest, u64)> {
        let blob = match self.enc {
            Encoder::Plain(w) => w,
            Encoder::Gzip(w) => w.finish()?,
            Encoder::Zstd(w) => w.finish()?,
        };
        let (mut out, digest, size) = blob.finish();
        out.flush()?;
        Ok((digest, size))
    }
}

impl<W: Write> Write for BlobSink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.enc.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.enc.flush()
    }
}

/// A reader that the decompressor owns and the caller can still drain
/// afterwards (so a verifying blob reader sees its end and checks the digest).
pub(crate) struct Shared<R>(pub(crate) Arc<Mutex<R>>);

impl<R> Shared<R> {
    pub(crate) fn new(r: R) -> Self {
        Shared(Arc::new(Mutex::new(r)))
    }
}

impl<R> Clone for Shared<R> {
    fn clone(&self) -> Self {
        Shared(Arc::clone(&self.0))
    }
}

impl<R: Read> Read for Shared<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(c: Compression) -> (Vec<u8>, (Digest, u64)) {
        let mut out = Vec::new();
        let mut sink = BlobSink::new(&mut out, c).unwrap();
        sink.write_all(&b"layer bytes ".repeat(1000)).unwrap();
        let d = sink.finish().unwrap();
        (out, d)
    }

    #[test]
    fn every_compression_decompresses_by_magic_to_the_same_tar() {
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let (blob, (digest, size)) = roundtrip(c);
            assert_eq!(digest, Digest::of(&blob), "{c:?}");
            assert_eq!(size, blob.len() as u64);
            let mut plain = Vec::new();
            decompress(io::Cursor::new(blob))
                .unwrap()
                .read_to_end(&mut plain)
                .unwrap();
            assert_eq!(plain, b"layer bytes ".repeat(1000), "{c:?}");
        }
    }

    #[test]
    fn gzip_output_is_byte_identical_across_runs_and_has_no_timestamp() {
        let (a, _) = roundtrip(Compression::Gzip);
        let (b, _) = roundtrip(Compression::Gzip);
        assert_eq!(a, b);
        assert_eq!(&a[4..8], &[0, 0, 0, 0], "gzip MTIME field");
        assert_eq!(a[3] & 0x08, 0, "no FNAME");
        assert_eq!(a[9], 255, "OS byte");
    }

    #[test]
    fn concatenated_gzip_members_are_read_whole() {
        let (mut a, _) = roundtrip(Compression::Gzip);
        let (b, _) = roundtrip(Compression::Gzip);
        a.extend_from_slice(&b);
        let mut plain = Vec::new();
        decompress(io::Cursor::new(a))
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain.len(), 24_000);
    }

    #[test]
    fn xz_layers_from_old_images_decompress() {
        let mut enc = xz2::write::XzEncoder::new(Vec::new(), 1);
        enc.write_all(b"old docker layer").unwrap();
        let blob = enc.finish().unwrap();
        let mut plain = Vec::new();
        decompress(io::Cursor::new(blob))
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, b"old docker layer");
    }

    #[test]
    fn short_and_empty_inputs_pass_through() {
        for input in [&b""[..], b"ab"] {
            let mut out = Vec::new();
            decompress(io::Cursor::new(input.to_vec()))
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, input);
        }
    }
}
