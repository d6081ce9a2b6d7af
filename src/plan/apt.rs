//! The apt archive state an INSTALL/REMOVE step resolves against: the apt
//! sources found in the parent image, and a digest of each suite's
//! `InRelease` file fetched now. When the archive publishes a new release
//! file, the key changes and the step runs again.

use std::collections::BTreeMap;
use std::io::Read;

use super::inputs::{parse_deb822, parse_sources_list, AptSource};
use crate::image::Image;
use crate::oci::Digest;
use crate::store::Store;

/// The apt sources a template recorded at import, if it did.
pub fn sources_in_annotations(image: &Image) -> Option<Vec<AptSource>> {
    let text = image.annotations().get(crate::image::keys::APT_SOURCES)?;
    serde_json::from_str(text).ok()
}

/// Read the apt sources of a rootfs folder.
pub fn sources_in_dir(root: &std::path::Path) -> Vec<AptSource> {
    let mut out = vec![];
    let read = |p: &std::path::Path| -> Option<String> {
        let meta = fs_err::symlink_metadata(p).ok()?;
        meta.is_file().then(|| fs_err::read_to_string(p).ok())?
    };
    if let Some(t) = read(&root.join("etc/apt/sources.list")) {
        out.extend(parse_sources_list(&t));
    }
    let dir = root.join("etc/apt/sources.list.d");
    if let Ok(entries) = fs_err::read_dir(&dir) {
        let mut names: Vec<_> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for n in names {
            let name = n.to_string_lossy();
            if let Some(t) = read(&dir.join(&n)) {
                if name.ends_with(".list") {
                    out.extend(parse_sources_list(&t));
                } else if name.ends_with(".sources") {
                    out.extend(parse_deb822(&t));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Read the apt sources from an image's layers (all in the store), applying
/// them in order so a later layer's file replaces an earlier one.
pub fn sources_in_image(store: &Store, image: &Image) -> std::io::Result<Vec<AptSource>> {
    // Cached by image digest: reading a 180 MB template takes a second.
    let note = Digest::of(format!("apt-sources-v1 {}", image.digest()).as_bytes());
    if let Some(v) = store.get_note(&note) {
        if let Ok(s) = serde_json::from_value::<Vec<AptSource>>(v) {
            return Ok(s);
        }
    }
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for layer in image.layers() {
        let blob = store
            .open_blob(&layer.digest)
            .map_err(std::io::Error::other)?;
        let mut tar = tar::Archive::new(crate::layer::decompress(blob)?);
        for entry in tar.entries()? {
            let mut entry = entry?;
            let path = entry
                .path()?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            let wanted = path == "etc/apt/sources.list"
                || (path.starts_with("etc/apt/sources.list.d/")
                    && (path.ends_with(".list") || path.ends_with(".sources")));
            let name = path.rsplit('/').next().unwrap_or("");
            if let Some(hidden) = name.strip_prefix(".wh.") {
                let dir = &path[..path.len() - name.len()];
                files.remove(&format!("{dir}{hidden}"));
                continue;
            }
            if wanted && entry.header().entry_type().is_file() {
                let mut s = String::new();
                entry.read_to_string(&mut s)?;
                files.insert(path, s);
            }
        }
    }
    let mut out = vec![];
    for (path, text) in &files {
        if path.ends_with(".sources") {
            out.extend(parse_deb822(text));
        } else {
            out.extend(parse_sources_list(text));
        }
    }
    out.sort();
    out.dedup();
    let _ = store.put_note(&note, &serde_json::to_value(&out).unwrap_or_default());
    Ok(out)
}

/// `apt:<uri> <suite>` → digest of its InRelease (or a marker saying it
/// could not be fetched: the key then differs, and apt will say why).
pub async fn archive_state(sources: &[AptSource]) -> BTreeMap<String, String> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build();
    let mut out = BTreeMap::new();
    for s in sources {
        let name = format!("apt:{} {}", s.uri, s.suite);
        let value = match &client {
            Ok(c) => fetch(c, &s.in_release_url()).await,
            Err(e) => Err(e.to_string()),
        };
        match value {
            Ok(d) => {
                out.insert(name, d.to_string());
            }
            Err(e) => {
                tracing::warn!("cannot fetch {}: {e}", s.in_release_url());
                out.insert(name, "unavailable".to_string());
            }
        }
    }
    out
}

async fn fetch(c: &reqwest::Client, url: &str) -> Result<Digest, String> {
    let resp = c.get(url).send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    Ok(Digest::of(&bytes))
}
