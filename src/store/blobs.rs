//! Verified blob writes and reads.

use std::io::{self, BufReader, Read, Write};

use sha2::Digest as _;

use super::{sync_parent, Store, StoreError};
use crate::oci::{Digest, DigestWriter, Sha256};

/// A blob being written. Nothing is visible under a digest until
/// [`BlobWriter::commit`] has verified the bytes; dropping the writer
/// discards the temp file.
pub struct BlobWriter {
    store: Store,
    inner: DigestWriter<io::BufWriter<tempfile::NamedTempFile>>,
}

impl Store {
    pub fn blob_writer(&self) -> Result<BlobWriter, StoreError> {
        let tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(self.tmp_dir())?;
        Ok(BlobWriter {
            store: self.clone(),
            inner: DigestWriter::new(io::BufWriter::with_capacity(256 * 1024, tmp)),
        })
    }

    /// Store a small blob held in memory (manifests, configs).
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let digest = Digest::of(bytes);
        if self.has_blob(&digest) {
            return Ok(digest);
        }
        let mut w = self.blob_writer()?;
        w.write_all(bytes)?;
        w.commit(Some((&digest, bytes.len() as u64)))
    }

    /// True if a blob file exists under the digest (not re-hashed).
    /// Whether the blob is here; if it is, it counts as used now (a prune
    /// keeps it for a while).
    pub fn has_blob(&self, digest: &Digest) -> bool {
        let path = self.blob_path(digest);
        let here = path.is_file();
        if here {
            super::prune::touch(&path);
        }
        here
    }

    /// Size of a stored blob, if present.
    pub fn blob_size(&self, digest: &Digest) -> Option<u64> {
        fs_err::metadata(self.blob_path(digest))
            .ok()
            .map(|m| m.len())
    }

    /// Read a small blob whole, verifying it. A corrupt blob is removed.
    pub fn read_bytes(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let mut r = self.open_blob(digest)?;
        let mut buf = Vec::new();
        r.read_to_end(&mut buf)
            .map_err(|e| self.map_verify_error(digest, e))?;
        Ok(buf)
    }

    /// Open a blob for streaming. The reader fails with
    /// [`StoreError::Corrupt`]-flavoured `io::Error` at the end if the
    /// bytes do not hash to the digest; callers that see it should call
    /// [`Store::forget_corrupt`] (done by `read_bytes` and `verify_blob`).
    pub fn open_blob(&self, digest: &Digest) -> Result<VerifyingReader, StoreError> {
        let path = self.blob_path(digest);
        let file = match fs_err::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Missing {
                    digest: digest.clone(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        Ok(VerifyingReader {
            inner: BufReader::with_capacity(256 * 1024, file.into_parts().0),
            hasher: Sha256::new(),
            expected: digest.clone(),
            done: false,
        })
    }

    /// Re-hash a stored blob; remove it if it is corrupt.
    pub fn verify_blob(&self, digest: &Digest) -> Result<(), StoreError> {
        let mut r = self.open_blob(digest)?;
        io::copy(&mut r, &mut io::sink()).map_err(|e| self.map_verify_error(digest, e))?;
        Ok(())
    }

    /// Remove a blob found to be corrupt, so it is fetched again.
    pub fn forget_corrupt(&self, digest: &Digest) {
        let _ = fs_err::remove_file(self.blob_path(digest));
    }

    fn map_verify_error(&self, digest: &Digest, e: io::Error) -> StoreError {
        if e.kind() == io::ErrorKind::InvalidData {
            self.forget_corrupt(digest);
            StoreError::Corrupt {
                digest: digest.clone(),
            }
        } else {
            e.into()
        }
    }
}

impl BlobWriter {
    pub fn written(&self) -> u64 {
        self.inner.written()
    }

    /// Discard everything written so far (a download restarting from the
    /// first byte).
    pub fn restart(&mut self) -> io::Result<()> {
        let fresh = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(self.store.tmp_dir())?;
        // The old temp file is deleted when it drops.
        self.inner = DigestWriter::new(io::BufWriter::with_capacity(256 * 1024, fresh));
        Ok(())
    }

    /// Flush, fsync, verify against `expected` (if given) and move the blob
    /// into place. Returns the digest of what was written.
    pub fn commit(self, expected: Option<(&Digest, u64)>) -> Result<Digest, StoreError> {
        let (buf, digest, size) = self.inner.finish();
        let tmp = buf.into_inner().map_err(|e| e.into_error())?;
        if let Some((want, want_size)) = expected {
            if *want != digest || want_size != size {
                return Err(StoreError::Mismatch {
                    expected: want.clone(),
                    expected_size: want_size,
                    actual: digest,
                    actual_size: size,
                });
            }
        }
        let dest = self.store.blob_path(&digest);
        if dest.is_file() {
            // Someone else stored the same content first: keep theirs.
            return Ok(digest);
        }
        tmp.as_file().sync_all()?;
        tmp.persist(&dest).map_err(|e| e.error)?;
        sync_parent(&dest)?;
        Ok(digest)
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader over a stored blob that checks its digest when it reaches the
/// end, failing with `io::ErrorKind::InvalidData` on a mismatch.
pub struct VerifyingReader {
    inner: BufReader<std::fs::File>,
    hasher: Sha256,
    expected: Digest,
    done: bool,
}

impl Read for VerifyingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() && !self.done {
            self.done = true;
            let actual = Digest::from_hasher(std::mem::take(&mut self.hasher));
            if actual != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "stored blob {} is corrupt (its content hashes to {actual})",
                        self.expected
                    ),
                ));
            }
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        (dir, s)
    }

    #[test]
    fn put_and_read_back() {
        let (_d, s) = store();
        let d = s.put_bytes(b"hello").unwrap();
        assert_eq!(d, Digest::of(b"hello"));
        assert_eq!(s.read_bytes(&d).unwrap(), b"hello");
    }

    #[test]
    fn writer_rejects_wrong_digest_and_leaves_nothing() {
        let (_d, s) = store();
        let mut w = s.blob_writer().unwrap();
        w.write_all(b"evil").unwrap();
        let want = Digest::of(b"good");
        let err = w.commit(Some((&want, 4))).unwrap_err();
        assert!(matches!(err, StoreError::Mismatch { .. }), "{err}");
        assert!(!s.has_blob(&want));
        assert!(!s.has_blob(&Digest::of(b"evil")));
        assert_eq!(fs_err::read_dir(s.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn writer_rejects_wrong_size() {
        let (_d, s) = store();
        let mut w = s.blob_writer().unwrap();
        w.write_all(b"good").unwrap();
        let want = Digest::of(b"good");
        assert!(w.commit(Some((&want, 5))).is_err());
        assert!(!s.has_blob(&want));
    }

    #[test]
    fn truncated_blob_is_detected_on_read_and_removed() {
        let (_d, s) = store();
        let d = s.put_bytes(b"some layer bytes").unwrap();
        fs_err::write(s.blob_path(&d), b"some layer").unwrap();
        let err = s.read_bytes(&d).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(
            !s.has_blob(&d),
            "a corrupt blob must not stay under its digest"
        );
        assert!(matches!(s.verify_blob(&d), Err(StoreError::Missing { .. })));
    }

    #[test]
    fn corrupted_byte_is_detected() {
        let (_d, s) = store();
        let d = s.put_bytes(b"abcdef").unwrap();
        fs_err::write(s.blob_path(&d), b"abcdeF").unwrap();
        assert!(matches!(s.verify_blob(&d), Err(StoreError::Corrupt { .. })));
    }
}
