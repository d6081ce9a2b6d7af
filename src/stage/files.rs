//! Reading a few small files out of an image's layers without unpacking
//! it: apt sources, passwd/group for `COPY --chown=NAME`, the dpkg status
//! for the final package list. Layers are read top-down so the first hit
//! is the file as the image shows it; a whiteout hides lower copies.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use crate::image::Image;
use crate::store::Store;

/// The contents of `wanted` paths (relative, e.g. `etc/passwd`) as the
/// image presents them. Missing files are absent from the map.
pub fn read_files(
    store: &Store,
    image: &Image,
    wanted: &[&str],
) -> std::io::Result<BTreeMap<String, Vec<u8>>> {
    read_files_in(store, image.layers(), wanted)
}

/// Like [`read_files`], over a slice of layers (bottom first). Only these
/// layers' blobs need to be in the store.
pub fn read_files_in(
    store: &Store,
    layers: &[crate::oci::Descriptor],
    wanted: &[&str],
) -> std::io::Result<BTreeMap<String, Vec<u8>>> {
    let mut found = BTreeMap::new();
    let mut hidden: BTreeSet<String> = BTreeSet::new();
    for layer in layers.iter().rev() {
        if wanted
            .iter()
            .all(|w| found.contains_key(*w) || hidden.contains(*w))
        {
            break;
        }
        let blob = store
            .open_blob(&layer.digest)
            .map_err(std::io::Error::other)?;
        let mut tar = tar::Archive::new(crate::layer::decompress(blob)?);
        let mut this_layer: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut this_hidden = vec![];
        for entry in tar.entries()? {
            let mut entry = entry?;
            let path = entry
                .path()?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            let (dir, name) = match path.rsplit_once('/') {
                Some((d, n)) => (format!("{d}/"), n.to_string()),
                None => (String::new(), path.clone()),
            };
            if name == ".wh..wh..opq" {
                for w in wanted {
                    if w.starts_with(&dir) {
                        this_hidden.push(w.to_string());
                    }
                }
                continue;
            }
            if let Some(h) = name.strip_prefix(".wh.") {
                this_hidden.push(format!("{dir}{h}"));
                continue;
            }
            if wanted.contains(&path.as_str()) && entry.header().entry_type().is_file() {
                let mut buf = vec![];
                entry.read_to_end(&mut buf)?;
                this_layer.insert(path, buf);
            }
        }
        for (k, v) in this_layer {
            if !hidden.contains(&k) {
                found.entry(k).or_insert(v);
            }
        }
        for h in this_hidden {
            if !found.contains_key(&h) {
                hidden.insert(h);
            }
        }
    }
    Ok(found)
}

/// Resolve `NAME` or a number against passwd/group text.
pub fn lookup_id(db: Option<&[u8]>, name: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let text = String::from_utf8_lossy(db?);
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.next()?;
        f.next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_name_or_number() {
        let passwd =
            b"root:x:0:0:root:/root:/bin/bash\nsshd:x:101:65534::/run/sshd:/usr/sbin/nologin\n";
        assert_eq!(lookup_id(Some(passwd), "sshd"), Some(101));
        assert_eq!(lookup_id(Some(passwd), "42"), Some(42));
        assert_eq!(lookup_id(Some(passwd), "nobody"), None);
        assert_eq!(lookup_id(None, "root"), None);
    }
}
