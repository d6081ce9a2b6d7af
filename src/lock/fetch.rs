//! `tplbuild fetch`: every locked .deb, once, into the content store. Each
//! is checked against the lock's sha256 and size while it streams, by the
//! store's own commit: a mismatch stores nothing. The archive is reached
//! over whatever the lock names (plain HTTP is fine: apt trusts the signed
//! Release, we trust the lock).
//!
//! Downloads run [`PARALLEL`] at a time. A failure that may pass (a reset
//! connection, a timeout, HTTP 5xx/429/408, a body that ends early) is
//! retried with backoff; a .deb that arrives whole but different, or that
//! the archive no longer has, is not.

use std::io::Write as _;

use futures_util::{StreamExt, TryStreamExt};

use super::{LockedPackage, Lockfile};
use crate::oci::Digest;
use crate::registry::RetryPolicy;
use crate::store::{Store, StoreError};

/// How many .debs download at once: enough to hide the archive's latency,
/// few enough to be polite to a mirror.
pub const PARALLEL: usize = 4;

/// Retries after the first attempt of one .deb.
const RETRIES: u32 = 4;

const SNAPSHOT_HINT: &str = "point the template's apt sources at a snapshot archive \
    (https://snapshot.debian.org/archive/debian/<date>/) that still serves it, \
    or run `tplbuild lock --update`";

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{name} {version}: the lock's sha256 {sha256:?} is not 64 hex digits")]
    BadDigest {
        name: String,
        version: String,
        sha256: String,
    },
    #[error(
        "{name} {version} is no longer served by the archive ({url}: HTTP 404); {SNAPSHOT_HINT}"
    )]
    Gone {
        name: String,
        version: String,
        url: String,
    },
    #[error("downloading {name} {version} from {url}: HTTP {status}")]
    Status {
        name: String,
        version: String,
        url: String,
        status: u16,
    },
    #[error("downloading {name} {version} from {url}")]
    Http {
        name: String,
        version: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{name} {version} from {url} ended after {got} of {want} bytes")]
    Short {
        name: String,
        version: String,
        url: String,
        got: u64,
        want: u64,
    },
    #[error("{name} {version} from {url} does not match the lock; nothing was stored")]
    Mismatch {
        name: String,
        version: String,
        url: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error("storing {name} {version}")]
    Store {
        name: String,
        version: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error("{name} {version}: giving up after {attempts} attempts")]
    Retried {
        name: String,
        version: String,
        attempts: u32,
        #[source]
        source: Box<FetchError>,
    },
    #[error("offline, and {} locked .deb(s) are not in the store: {}", missing.len(), missing.join(", "))]
    Offline { missing: Vec<String> },
}

impl FetchError {
    /// Whether trying again may help.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Http { source, .. } => !source.is_builder() && !source.is_redirect(),
            FetchError::Status { status, .. } => {
                matches!(status, 408 | 425 | 429) || (500..600).contains(status)
            }
            FetchError::Short { .. } => true,
            _ => false,
        }
    }
}

/// What a fetch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchReport {
    pub downloaded: usize,
    pub bytes: u64,
    pub already: usize,
}

fn digest_of(p: &LockedPackage) -> Result<Digest, FetchError> {
    match p.digest() {
        Some(Ok(d)) => Ok(d),
        _ => Err(FetchError::BadDigest {
            name: p.name.clone(),
            version: p.version.clone(),
            sha256: p.sha256.clone(),
        }),
    }
}

/// The locked .debs the store lacks.
pub fn missing<'a>(
    store: &Store,
    lock: &'a Lockfile,
) -> Result<Vec<&'a LockedPackage>, FetchError> {
    let mut out = vec![];
    for p in lock.debs() {
        if !store.has_blob(&digest_of(p)?) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Download every locked .deb the store lacks. With `offline`, a missing
/// .deb is an error naming them all, and nothing is downloaded.
pub async fn fetch(
    store: &Store,
    lock: &Lockfile,
    offline: bool,
    on_download: impl Fn(&LockedPackage),
) -> Result<FetchReport, FetchError> {
    let all = lock.debs();
    let todo = missing(store, lock)?;
    let mut report = FetchReport {
        already: all.len() - todo.len(),
        ..Default::default()
    };
    if offline && !todo.is_empty() {
        return Err(FetchError::Offline {
            missing: todo
                .iter()
                .map(|p| format!("{} {}", p.name, p.version))
                .collect(),
        });
    }
    // The system's CA certificates load only if an archive is HTTPS.
    let client = crate::tls::client_builder(vec![])
        .connect_timeout(std::time::Duration::from_secs(30))
        // A body that stalls this long is a failure to retry, not a wait.
        .read_timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|source| FetchError::Http {
            name: String::new(),
            version: String::new(),
            url: String::new(),
            source,
        })?;
    let policy = RetryPolicy::new(RETRIES);
    let (client, policy, on_download) = (&client, &policy, &on_download);
    futures_util::stream::iter(todo)
        .map(|p| async move {
            on_download(p);
            download_retrying(store, client, p, policy).await
        })
        .buffer_unordered(PARALLEL)
        .try_for_each(|bytes| {
            report.bytes += bytes;
            report.downloaded += 1;
            futures_util::future::ready(Ok(()))
        })
        .await?;
    Ok(report)
}

/// [`download`], again after a transient failure, up to the policy's limit.
async fn download_retrying(
    store: &Store,
    client: &reqwest::Client,
    p: &LockedPackage,
    policy: &RetryPolicy,
) -> Result<u64, FetchError> {
    let mut retry = 0;
    loop {
        match download(store, client, p).await {
            Err(e) if e.is_transient() && retry < policy.max_retries => {
                tracing::info!(package = p.name, "retrying the download: {e}");
                tokio::time::sleep(policy.delay(retry, None)).await;
                retry += 1;
            }
            // Still failing the way that may pass: say how often it was
            // tried. An error that cannot pass speaks for itself.
            Err(e) if retry > 0 && e.is_transient() => {
                return Err(FetchError::Retried {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    attempts: retry + 1,
                    source: Box::new(e),
                })
            }
            other => return other,
        }
    }
}

async fn download(
    store: &Store,
    client: &reqwest::Client,
    p: &LockedPackage,
) -> Result<u64, FetchError> {
    let digest = digest_of(p)?;
    let url = p.url();
    let http = |source| FetchError::Http {
        name: p.name.clone(),
        version: p.version.clone(),
        url: url.clone(),
        source,
    };
    let stored = |source| FetchError::Store {
        name: p.name.clone(),
        version: p.version.clone(),
        source: Box::new(source),
    };
    let resp = client.get(&url).send().await.map_err(http)?;
    match resp.status().as_u16() {
        200 => {}
        404 | 410 => {
            return Err(FetchError::Gone {
                name: p.name.clone(),
                version: p.version.clone(),
                url,
            })
        }
        status => {
            return Err(FetchError::Status {
                name: p.name.clone(),
                version: p.version.clone(),
                url,
                status,
            })
        }
    }
    let mut w = store.blob_writer().map_err(stored)?;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(http)?;
        w.write_all(&chunk).map_err(|e| stored(StoreError::Io(e)))?;
        // More than the lock says: it cannot match, stop reading.
        if w.written() > p.size {
            break;
        }
    }
    let written = w.written();
    if written < p.size {
        return Err(FetchError::Short {
            name: p.name.clone(),
            version: p.version.clone(),
            url,
            got: written,
            want: p.size,
        });
    }
    match w.commit(Some((&digest, p.size))) {
        Ok(_) => Ok(written),
        Err(source @ StoreError::Mismatch { .. }) => Err(FetchError::Mismatch {
            name: p.name.clone(),
            version: p.version.clone(),
            url,
            source: Box::new(source),
        }),
        Err(e) => Err(stored(e)),
    }
}

/// Re-hash the stored .debs of `lock` and drop the corrupt ones (so they
/// are fetched again); returns them as `name version`. A .deb is hashed
/// once per file version: its size, mtime and inode after a good check
/// are kept in a store note, and a file that still matches is not read
/// again (every build checks, and a lock can name hundreds of MB of .debs).
/// The reading happens off the async threads.
pub async fn verify_stored(store: &Store, lock: &Lockfile) -> Result<Vec<String>, StoreError> {
    let debs: Vec<(String, Digest)> = lock
        .debs()
        .into_iter()
        .filter_map(|p| match p.digest() {
            Some(Ok(d)) => Some((format!("{} {}", p.name, p.version), d)),
            _ => None,
        })
        .collect();
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let mut corrupt = vec![];
        for (name, digest) in debs {
            let Ok(meta) = fs_err::metadata(store.blob_path(&digest)) else {
                continue;
            };
            let stamp = file_stamp(&meta);
            let note = Digest::of(format!("verified-deb-v1 {digest}").as_bytes());
            if store.get_note(&note).as_ref() == Some(&stamp) {
                continue;
            }
            match store.verify_blob(&digest) {
                Ok(()) => store.put_note(&note, &stamp)?,
                Err(StoreError::Corrupt { .. }) => corrupt.push(name),
                Err(StoreError::Missing { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(corrupt)
    })
    .await
    .map_err(|e| StoreError::from(std::io::Error::other(e)))?
}

/// What identifies one version of a file without reading it.
fn file_stamp(meta: &std::fs::Metadata) -> serde_json::Value {
    use std::os::unix::fs::MetadataExt;
    serde_json::json!([meta.len(), meta.mtime(), meta.mtime_nsec(), meta.ino()])
}

#[cfg(test)]
mod verify_tests {
    use super::*;
    use crate::lock::{LockedPackage, LockedStep};

    fn lock_of(digest: &Digest) -> Lockfile {
        let package = LockedPackage {
            name: "hello".into(),
            version: "2.10-3".into(),
            architecture: "amd64".into(),
            filename: "pool/main/h/hello/hello_2.10-3_amd64.deb".into(),
            sha256: digest.hex().to_string(),
            size: 3,
            uri: "http://deb.debian.org/debian".into(),
        };
        let step = LockedStep {
            index: 0,
            instruction: "INSTALL hello".into(),
            replayed: String::new(),
            packages: vec![package],
        };
        Lockfile::new(vec![], vec![step])
    }

    #[tokio::test]
    async fn a_checked_deb_is_not_read_again_until_its_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = store.put_bytes(b"deb").unwrap();
        let lock = lock_of(&digest);
        assert!(verify_stored(&store, &lock).await.unwrap().is_empty());

        // Same size, same mtime, same inode: trusted without reading (the
        // bytes changed behind the store's back, which it cannot see).
        let path = store.blob_path(&digest);
        let mtime = fs_err::metadata(&path).unwrap().modified().unwrap();
        let mut perms = fs_err::metadata(&path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        fs_err::set_permissions(&path, perms).unwrap();
        let f = fs_err::OpenOptions::new().write(true).open(&path).unwrap();
        std::io::Write::write_all(&mut &f, b"bad").unwrap();
        f.set_modified(mtime).unwrap();
        drop(f);
        assert!(verify_stored(&store, &lock).await.unwrap().is_empty());

        // Touched: read again, found corrupt, dropped.
        let f = fs_err::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_modified(std::time::SystemTime::now()).unwrap();
        drop(f);
        assert_eq!(
            verify_stored(&store, &lock).await.unwrap(),
            ["hello 2.10-3"]
        );
        assert!(!store.has_blob(&digest));
    }
}
