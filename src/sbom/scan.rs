//! Reading what an SBOM needs straight from an image's layers, without
//! flattening them to disk: every path and its sha256 (the
//! [`TreeIndex`] the build's diffing uses), the dpkg database as each
//! layer left it, the `.list` files, diversions, os-release and the
//! copyright files. Which layer brought a package is the first layer from
//! which on dpkg's status lists it at its final version; which layer
//! brought an unowned file is the last one that wrote it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};

use sha1::Digest as _;

use super::dpkg::{self, Installed};
use super::SbomError;
use crate::image::Image;
use crate::layer::{self, LayerIndex, NodeKind, Shared, TreeIndex};
use crate::oci::Digest;
use crate::store::Store;

const STATUS: &[u8] = b"var/lib/dpkg/status";
const DIVERSIONS: &[u8] = b"var/lib/dpkg/diversions";
const OS_RELEASE: &[u8] = b"usr/lib/os-release";
const ETC_OS_RELEASE: &[u8] = b"etc/os-release";

/// What the layers hold, as far as an SBOM is concerned.
#[derive(Debug, Clone, Default)]
pub struct Contents {
    /// Installed packages, sorted, each with the index of the layer that
    /// brought it.
    pub packages: Vec<(Installed, usize)>,
    /// Licences per package name, where its copyright file is DEP-5.
    pub licences: BTreeMap<String, BTreeSet<String>>,
    /// Regular files that no package owns, sorted by path.
    pub unowned: Vec<UnownedFile>,
    /// `debian-12`, from os-release.
    pub distro: Option<String>,
}

/// A regular file that no package's file list names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnownedFile {
    /// Relative to the root, `etc/gateway.conf`.
    pub path: String,
    pub sha256: String,
    pub sha1: String,
    pub size: u64,
    /// Index of the last layer that wrote it.
    pub layer: usize,
}

fn wanted(path: &[u8]) -> bool {
    if path == STATUS || path == DIVERSIONS || path == OS_RELEASE || path == ETC_OS_RELEASE {
        return true;
    }
    if let Some(rest) = path.strip_prefix(b"var/lib/dpkg/info/") {
        return rest.ends_with(b".list") && !rest.contains(&b'/');
    }
    if let Some(rest) = path.strip_prefix(b"usr/share/doc/") {
        return rest.ends_with(b"/copyright") && rest.iter().filter(|&&b| b == b'/').count() == 1;
    }
    false
}

/// Where [`scan`] reads layer blobs from. Every reader must check the
/// blob's digest by the time it is read to the end (the store's readers
/// do; a blob pulled into a temp file was checked while it streamed).
pub trait LayerBlobs {
    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + Send>, SbomError>;
}

impl LayerBlobs for Store {
    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + Send>, SbomError> {
        let blob = self.open_blob(digest).map_err(|source| SbomError::Blob {
            layer: digest.clone(),
            source,
        })?;
        Ok(Box::new(blob))
    }
}

/// Blobs pulled into files (already verified) for one scan, the others
/// from the store: a build that publishes only manifests (every layer
/// mounted from a registry cache) need not put its layers in the store
/// to describe them.
pub struct PulledBlobs<'a> {
    pub store: &'a Store,
    pub files: BTreeMap<Digest, std::path::PathBuf>,
}

impl LayerBlobs for PulledBlobs<'_> {
    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + Send>, SbomError> {
        match self.files.get(digest) {
            Some(path) => Ok(Box::new(io::BufReader::new(
                fs_err::File::open(path).map_err(|source| SbomError::Layer {
                    layer: digest.clone(),
                    source,
                })?,
            ))),
            None => self.store.open(digest),
        }
    }
}

/// Read the image's layers.
pub fn scan(blobs: &dyn LayerBlobs, image: &Image) -> Result<Contents, SbomError> {
    let mut tree = TreeIndex::default();
    let mut kept: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut written: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    // dpkg's status after each layer that changed it.
    let mut statuses: Vec<(usize, Vec<Installed>)> = vec![];
    for (i, desc) in image.layers().iter().enumerate() {
        let (index, files) = read_layer(blobs, &desc.digest, &wanted)?;
        tree.apply(&index);
        for (path, entry) in &index.entries {
            if matches!(
                entry.kind,
                NodeKind::File { .. } | NodeKind::Hardlink { .. }
            ) {
                written.insert(path.clone(), i);
            }
        }
        for (path, bytes) in files {
            if path == STATUS {
                statuses.push((i, dpkg::installed(&String::from_utf8_lossy(&bytes))));
            }
            kept.insert(path, bytes);
        }
    }
    // A kept file that a later layer deleted or replaced by another kind
    // (whiteouts, hardlinks) is not in the image.
    kept.retain(|path, bytes| match tree.get(path).map(|e| &e.kind) {
        Some(NodeKind::File { sha256, .. }) => {
            *sha256 == <[u8; 32]>::from(sha2::Sha256::digest(&bytes[..]))
        }
        _ => false,
    });
    let final_status = match kept.get(STATUS) {
        Some(b) => dpkg::installed(&String::from_utf8_lossy(b)),
        None => vec![],
    };
    let packages: Vec<(Installed, usize)> = final_status
        .into_iter()
        .map(|p| {
            let layer = brought_by(&p, &statuses);
            (p, layer)
        })
        .collect();

    let mut owned: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut licences = BTreeMap::new();
    for (path, bytes) in &kept {
        if dpkg::list_owner(path).is_some() {
            owned.extend(dpkg::list_paths(bytes).map(|p| resolve_dirs(&tree, &p)));
        } else if path.as_slice() == DIVERSIONS {
            owned.extend(
                dpkg::diverted_to(bytes)
                    .iter()
                    .map(|p| resolve_dirs(&tree, p)),
            );
        }
    }
    for (p, _) in &packages {
        if let Some(text) = copyright_of(&tree, &kept, &p.name) {
            if let Some(l) = super::copyright::licences(&String::from_utf8_lossy(text)) {
                licences.insert(p.name.clone(), l);
            }
        }
    }
    let distro = kept
        .get(OS_RELEASE)
        .or_else(|| kept.get(ETC_OS_RELEASE))
        .and_then(|b| dpkg::distro(&String::from_utf8_lossy(b)));

    let unowned_paths: BTreeSet<Vec<u8>> = tree
        .below(b"")
        .filter(|(p, e)| matches!(e.kind, NodeKind::File { .. }) && !owned.contains(*p))
        .map(|(p, _)| p.to_vec())
        .collect();
    let sha1s = sha1_of(blobs, image, &unowned_paths)?;
    let unowned = unowned_paths
        .iter()
        .filter_map(|p| {
            let Some(NodeKind::File { sha256, size }) = tree.get(p).map(|e| &e.kind) else {
                return None;
            };
            Some(UnownedFile {
                path: String::from_utf8_lossy(p).into_owned(),
                sha256: hex::encode(sha256),
                sha1: sha1s.get(p).cloned().unwrap_or_default(),
                size: *size,
                layer: written.get(p).copied().unwrap_or(0),
            })
        })
        .collect();
    Ok(Contents {
        packages,
        licences,
        unowned,
        distro,
    })
}

/// The first layer from which on every status lists `p` as it is now.
fn brought_by(p: &Installed, statuses: &[(usize, Vec<Installed>)]) -> usize {
    let mut layer = statuses.last().map_or(0, |(i, _)| *i);
    for (i, status) in statuses.iter().rev() {
        if status.binary_search(p).is_ok() {
            layer = *i;
        } else {
            break;
        }
    }
    layer
}

/// `usr/share/doc/NAME/copyright`, following a `usr/share/doc/NAME`
/// symlink to a sibling folder (Debian links the docs of library
/// packages built from one source).
fn copyright_of<'a>(
    tree: &TreeIndex,
    kept: &'a BTreeMap<Vec<u8>, Vec<u8>>,
    name: &str,
) -> Option<&'a Vec<u8>> {
    let dir = format!("usr/share/doc/{name}").into_bytes();
    let dir = resolve_dirs(tree, &[dir.as_slice(), b"/x"].concat());
    let dir = &dir[..dir.len() - 2];
    kept.get(&[dir, b"/copyright"].concat())
}

/// `p` with every symlinked directory on the way to its last component
/// resolved in the tree (`bin/bash` → `usr/bin/bash` on a merged-/usr
/// system), as dpkg's lists name paths the way the .deb ships them.
fn resolve_dirs(tree: &TreeIndex, p: &[u8]) -> Vec<u8> {
    let mut comps: Vec<Vec<u8>> = p.split(|&b| b == b'/').map(<[u8]>::to_vec).collect();
    let mut i = 0;
    let mut hops = 0;
    while i + 1 < comps.len() && hops < 40 {
        let prefix = comps[..=i].join(&b'/');
        match tree.get(&prefix).map(|e| &e.kind) {
            Some(NodeKind::Symlink { target }) => {
                hops += 1;
                let base: Vec<Vec<u8>> = if target.starts_with(b"/") {
                    vec![]
                } else {
                    comps[..i].to_vec()
                };
                let mut next = base;
                for c in target.split(|&b| b == b'/') {
                    match c {
                        b"" | b"." => {}
                        b".." => {
                            next.pop();
                        }
                        c => next.push(c.to_vec()),
                    }
                }
                next.extend_from_slice(&comps[i + 1..]);
                comps = next;
                i = 0;
            }
            _ => i += 1,
        }
    }
    comps.join(&b'/')
}

/// A layer's index and the bytes of the files it kept.
type ReadLayer = (LayerIndex, Vec<(Vec<u8>, Vec<u8>)>);

/// Read one layer blob from the store, checking its digest to the end.
fn read_layer(
    blobs: &dyn LayerBlobs,
    digest: &Digest,
    keep: &dyn Fn(&[u8]) -> bool,
) -> Result<ReadLayer, SbomError> {
    with_layer(blobs, digest, |tar| LayerIndex::read_capturing(tar, keep))
}

/// SPDX wants a SHA-1 of each file it lists: a second pass over the
/// layers hashes only the unowned files, in the layer that wrote them last.
fn sha1_of(
    blobs: &dyn LayerBlobs,
    image: &Image,
    paths: &BTreeSet<Vec<u8>>,
) -> Result<BTreeMap<Vec<u8>, String>, SbomError> {
    let mut out = BTreeMap::new();
    for desc in image.layers() {
        with_layer(blobs, &desc.digest, |tar| {
            let mut ar = tar::Archive::new(tar);
            for entry in ar.entries()? {
                let mut e = entry?;
                if e.header().entry_type() != tar::EntryType::Regular {
                    continue;
                }
                let path = layer::clean_path(&e.path_bytes());
                if paths.contains(&path) {
                    let mut h = sha1::Sha1::new();
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = e.read(&mut buf)?;
                        if n == 0 {
                            break;
                        }
                        h.update(&buf[..n]);
                    }
                    out.insert(path, hex::encode(h.finalize()));
                }
            }
            Ok(())
        })?;
    }
    Ok(out)
}

/// Run `f` on a layer's uncompressed tar, then drain the blob so the
/// store's digest check at its end runs.
fn with_layer<T>(
    blobs: &dyn LayerBlobs,
    digest: &Digest,
    f: impl FnOnce(Box<dyn Read + Send>) -> io::Result<T>,
) -> Result<T, SbomError> {
    let layer_err = |source: io::Error| SbomError::Layer {
        layer: digest.clone(),
        source,
    };
    let blob = blobs.open(digest)?;
    let shared = Shared::new(blob);
    let out = f(layer::decompress(shared.clone()).map_err(layer_err)?).map_err(layer_err)?;
    let mut r = shared.0.lock().unwrap_or_else(|p| p.into_inner());
    io::copy(&mut *r, &mut io::sink()).map_err(layer_err)?;
    Ok(out)
}
