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
/// The suites are asked at once: a no-op build waits for one round trip,
/// not one per suite.
pub async fn archive_state(sources: &[AptSource]) -> BTreeMap<String, String> {
    let client = http_client();
    let fetches = sources.iter().map(|s| {
        let client = &client;
        async move {
            let url = s.in_release_url();
            let value = match client {
                Ok(c) => fetch(c, &url).await,
                Err(e) => Err(e.to_string()),
            };
            let value = value.map(|d| d.to_string()).unwrap_or_else(|e| {
                tracing::warn!("cannot fetch {url}: {e}");
                "unavailable".to_string()
            });
            (format!("apt:{} {}", s.uri, s.suite), value)
        }
    });
    futures_util::future::join_all(fetches)
        .await
        .into_iter()
        .collect()
}

/// A client for an apt archive (CA certificates load only if it is HTTPS).
fn http_client() -> reqwest::Result<reqwest::Client> {
    crate::tls::client_builder(vec![])
        .timeout(std::time::Duration::from_secs(30))
        .build()
}

async fn fetch(c: &reqwest::Client, url: &str) -> Result<Digest, String> {
    let resp = c.get(url).send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    Ok(Digest::of(&bytes))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A loopback archive that answers each InRelease after a pause and
    /// counts how many requests it had in hand at once.
    async fn slow_archive(most: Arc<AtomicUsize>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let now = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((mut c, _)) = listener.accept().await {
                let (now, most) = (now.clone(), most.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = c.read(&mut buf).await.unwrap_or(0);
                    let line = String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let here = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(here, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    let (status, body) = if line.contains("/dists/gone/") {
                        ("404 Not Found", String::new())
                    } else {
                        ("200 OK", line)
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = c.write_all(reply.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}/debian")
    }

    #[tokio::test]
    async fn suites_are_asked_at_once_and_each_gets_its_own_digest() {
        let most = Arc::new(AtomicUsize::new(0));
        let uri = slow_archive(most.clone()).await;
        let sources: Vec<AptSource> = ["bookworm", "bookworm-updates", "gone"]
            .iter()
            .map(|suite| AptSource {
                uri: uri.clone(),
                suite: suite.to_string(),
            })
            .collect();
        let state = archive_state(&sources).await;
        assert_eq!(state.len(), 3);
        let get = |suite: &str| state[&format!("apt:{uri} {suite}")].clone();
        // The fake answers with the request line, so the digests differ.
        assert!(get("bookworm").starts_with("sha256:"));
        assert_ne!(get("bookworm"), get("bookworm-updates"));
        assert_eq!(get("gone"), "unavailable");
        assert!(
            most.load(Ordering::SeqCst) >= 2,
            "the suites were fetched one after the other"
        );
    }

    /// The system's CA certificates load on the first handshake: an HTTPS
    /// archive is verified with them (Debian's archive over HTTPS, which
    /// the test machines reach).
    #[tokio::test]
    async fn an_https_archive_is_verified_with_the_system_roots() {
        let sources = [AptSource {
            uri: "https://deb.debian.org/debian".into(),
            suite: "bookworm".into(),
        }];
        let state = archive_state(&sources).await;
        let v = &state["apt:https://deb.debian.org/debian bookworm"];
        assert!(v.starts_with("sha256:"), "{v}");
    }
}
