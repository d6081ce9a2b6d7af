//! A minimal deterministic tar encoder: ustar headers plus PAX extended
//! records, byte for byte the same for the same input.
//!
//! The `tar` crate's `Builder` is not used for writing because it picks GNU
//! long-name entries for long paths and fills fields from `Metadata`; here
//! every byte of every header is chosen explicitly, so that a layer digest
//! depends on the tree alone.

use std::io::{self, Read, Write};

const BLOCK: usize = 512;

/// What kind of entry, with what only that kind carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Regular { size: u64 },
    Dir,
    Symlink { target: Vec<u8> },
    Hardlink { target: Vec<u8> },
    Char { major: u32, minor: u32 },
    Block { major: u32, minor: u32 },
    Fifo,
}

/// One entry's metadata. `path` is relative, without a trailing slash (one
/// is added for directories).
#[derive(Debug, Clone)]
pub(crate) struct EntryMeta {
    pub path: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    /// Sorted by name; written as `SCHILY.xattr.NAME` PAX records.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl EntryMeta {
    /// An empty regular file carrying no metadata: whiteouts and opaque
    /// markers, whose owner and time mean nothing and must not vary.
    pub fn marker(path: Vec<u8>) -> Self {
        EntryMeta {
            path,
            kind: Kind::Regular { size: 0 },
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: Vec::new(),
        }
    }
}

pub(crate) struct TarWriter<W: Write> {
    out: W,
    entries: u64,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        TarWriter { out, entries: 0 }
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Write one entry; `data` must yield exactly the regular file's size.
    pub fn append(&mut self, meta: &EntryMeta, data: Option<&mut dyn Read>) -> io::Result<()> {
        let mut name = meta.path.clone();
        if meta.kind == Kind::Dir {
            name.push(b'/');
        }
        let mut pax = Vec::new();
        let mut hdr = [0u8; BLOCK];

        if name.len() <= 100 {
            hdr[..name.len()].copy_from_slice(&name);
        } else {
            pax_record(&mut pax, b"path", &name);
            let cut = truncate_name(&name, 100);
            hdr[..cut.len()].copy_from_slice(cut);
        }
        let size = match meta.kind {
            Kind::Regular { size } => size,
            _ => 0,
        };
        octal_or_pax(
            &mut hdr[100..108],
            u64::from(meta.mode & 0o7777),
            None,
            &mut pax,
        );
        octal_or_pax(&mut hdr[108..116], meta.uid, Some(b"uid"), &mut pax);
        octal_or_pax(&mut hdr[116..124], meta.gid, Some(b"gid"), &mut pax);
        octal_or_pax(&mut hdr[124..136], size, Some(b"size"), &mut pax);
        if meta.mtime >= 0 {
            octal_or_pax(
                &mut hdr[136..148],
                meta.mtime as u64,
                Some(b"mtime"),
                &mut pax,
            );
        } else {
            octal_or_pax(&mut hdr[136..148], 0, None, &mut pax);
            pax_record(&mut pax, b"mtime", meta.mtime.to_string().as_bytes());
        }
        let (flag, link, (major, minor)) = match &meta.kind {
            Kind::Regular { .. } => (b'0', None, (0, 0)),
            Kind::Hardlink { target } => (b'1', Some(target), (0, 0)),
            Kind::Symlink { target } => (b'2', Some(target), (0, 0)),
            Kind::Char { major, minor } => (b'3', None, (*major, *minor)),
            Kind::Block { major, minor } => (b'4', None, (*major, *minor)),
            Kind::Dir => (b'5', None, (0, 0)),
            Kind::Fifo => (b'6', None, (0, 0)),
        };
        hdr[156] = flag;
        if let Some(link) = link {
            if link.len() <= 100 {
                hdr[157..157 + link.len()].copy_from_slice(link);
            } else {
                pax_record(&mut pax, b"linkpath", link);
                let cut = truncate_name(link, 100);
                hdr[157..157 + cut.len()].copy_from_slice(cut);
            }
        }
        hdr[257..263].copy_from_slice(b"ustar\0");
        hdr[263..265].copy_from_slice(b"00");
        // uname/gname stay empty: owners are numeric only.
        octal_or_pax(&mut hdr[329..337], u64::from(major), None, &mut pax);
        octal_or_pax(&mut hdr[337..345], u64::from(minor), None, &mut pax);
        let binary_names = std::str::from_utf8(&name).is_err()
            || link.is_some_and(|l| std::str::from_utf8(l).is_err());
        if binary_names && !pax.is_empty() {
            // PAX says record values are UTF-8; this tells readers they are not.
            pax_record(&mut pax, b"hdrcharset", b"BINARY");
        }
        for (key, value) in &meta.xattrs {
            let mut k = b"SCHILY.xattr.".to_vec();
            k.extend_from_slice(key);
            pax_record(&mut pax, &k, value);
        }

        if !pax.is_empty() {
            let mut ph = [0u8; BLOCK];
            let pname = b"././@PaxHeader";
            ph[..pname.len()].copy_from_slice(pname);
            octal(&mut ph[100..108], 0o644);
            octal(&mut ph[108..116], 0);
            octal(&mut ph[116..124], 0);
            octal(&mut ph[124..136], pax.len() as u64);
            octal(&mut ph[136..148], 0);
            ph[156] = b'x';
            ph[257..263].copy_from_slice(b"ustar\0");
            ph[263..265].copy_from_slice(b"00");
            octal(&mut ph[329..337], 0);
            octal(&mut ph[337..345], 0);
            checksum(&mut ph);
            self.out.write_all(&ph)?;
            self.out.write_all(&pax)?;
            self.pad(pax.len() as u64)?;
        }
        checksum(&mut hdr);
        self.out.write_all(&hdr)?;
        if size > 0 {
            let data = data.ok_or_else(|| io::Error::other("regular file entry without data"))?;
            let copied = io::copy(&mut data.take(size), &mut self.out)?;
            if copied != size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("file shrank while being read ({copied} of {size} bytes)"),
                ));
            }
            self.pad(size)?;
        }
        self.entries += 1;
        Ok(())
    }

    fn pad(&mut self, len: u64) -> io::Result<()> {
        let rem = (len % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    /// The end-of-archive marker; returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        Ok(self.out)
    }
}

/// `len key=value\n`, where `len` counts the whole record including itself.
fn pax_record(buf: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    loop {
        let total = base + len.to_string().len();
        if total == len {
            break;
        }
        len = total;
    }
    buf.extend_from_slice(len.to_string().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(key);
    buf.push(b'=');
    buf.extend_from_slice(value);
    buf.push(b'\n');
}

/// Zero-padded octal with a NUL terminator, as ustar wants.
fn octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    debug_assert_eq!(s.len(), digits);
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
}

/// A number too large for its ustar field goes into a PAX record (the field
/// then holds 0), keeping the header plain ustar rather than GNU base-256.
fn octal_or_pax(field: &mut [u8], v: u64, key: Option<&[u8]>, pax: &mut Vec<u8>) {
    let digits = field.len() - 1;
    if v < 1u64 << (3 * digits) {
        octal(field, v);
    } else {
        octal(field, 0);
        if let Some(key) = key {
            pax_record(pax, key, v.to_string().as_bytes());
        }
    }
}

fn truncate_name(name: &[u8], max: usize) -> &[u8] {
    &name[..name.len().min(max)]
}

fn checksum(hdr: &mut [u8; BLOCK]) {
    hdr[148..156].fill(b' ');
    let sum: u64 = hdr.iter().map(|&b| u64::from(b)).sum();
    let s = format!("{sum:06o}");
    hdr[148..154].copy_from_slice(s.as_bytes());
    hdr[154] = 0;
    hdr[155] = b' ';
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &[u8], data: &[u8]) -> EntryMeta {
        EntryMeta {
            path: path.to_vec(),
            kind: Kind::Regular {
                size: data.len() as u64,
            },
            mode: 0o4755,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            xattrs: Vec::new(),
        }
    }

    fn read_back(bytes: &[u8]) -> Vec<(Vec<u8>, tar::EntryType, Vec<u8>)> {
        let mut ar = tar::Archive::new(bytes);
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (e.path_bytes().into_owned(), e.header().entry_type(), data)
            })
            .collect()
    }

    #[test]
    fn pax_record_length_counts_its_own_digits() {
        let mut b = Vec::new();
        pax_record(&mut b, b"path", &[b'a'; 92]);
        assert_eq!(&b[..4], b"102 ");
        assert_eq!(b.len(), 102);
        let mut b = Vec::new();
        pax_record(&mut b, b"k", b"");
        assert_eq!(b, b"5 k=\n");
    }

    #[test]
    fn long_and_non_utf8_names_survive_a_standard_reader() {
        let long = [b'd'; 150]
            .iter()
            .copied()
            .chain(*b"/f")
            .collect::<Vec<_>>();
        let odd = b"caf\xe9".to_vec();
        let mut w = TarWriter::new(Vec::new());
        w.append(&file(&long, b"x"), Some(&mut &b"x"[..])).unwrap();
        w.append(&file(&odd, b""), None).unwrap();
        let bytes = w.finish().unwrap();
        let back = read_back(&bytes);
        assert_eq!(back[0].0, long);
        assert_eq!(back[0].2, b"x");
        assert_eq!(back[1].0, odd);
    }

    #[test]
    fn headers_are_plain_ustar_with_numeric_owners_only() {
        let mut w = TarWriter::new(Vec::new());
        let mut m = file(b"etc/passwd", b"");
        m.uid = 4_000_000; // too large for 7 octal digits: goes to PAX
        w.append(&m, None).unwrap();
        let bytes = w.finish().unwrap();
        let mut ar = tar::Archive::new(&bytes[..]);
        let e = ar.entries().unwrap().next().unwrap().unwrap();
        let h = e.header();
        assert_eq!(h.uid().unwrap(), 4_000_000);
        assert_eq!(h.mode().unwrap(), 0o4755);
        assert!(
            h.as_bytes()[265..329].iter().all(|&b| b == 0),
            "uname/gname empty"
        );
        assert_eq!(h.as_ustar().unwrap().device_major().unwrap(), 0);
        assert_eq!(e.path_bytes().as_ref(), b"etc/passwd");
    }

    #[test]
    fn a_file_that_shrinks_while_read_is_an_error_not_a_short_entry() {
        let mut w = TarWriter::new(Vec::new());
        let err = w
            .append(&file(b"f", b"12345"), Some(&mut &b"12"[..]))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
