//! `tplbuild fetch`: every locked .deb, once, into the content store. Each
//! is checked against the lock's sha256 and size while it streams, by the
//! store's own commit: a mismatch stores nothing. The archive is reached
//! over whatever the lock names (plain HTTP is fine: apt trusts the signed
//! Release, we trust the lock).

use std::io::Write as _;

use futures_util::StreamExt;

use super::{LockedPackage, Lockfile};
use crate::oci::Digest;
use crate::store::{Store, StoreError};

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
    #[error("offline, and {} locked .deb(s) are not in the store: {}", missing.len(), missing.join(", "))]
    Offline { missing: Vec<String> },
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
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|source| FetchError::Http {
            name: String::new(),
            version: String::new(),
            url: String::new(),
            source,
        })?;
    for p in todo {
        on_download(p);
        report.bytes += download(store, &client, p).await?;
        report.downloaded += 1;
    }
    Ok(report)
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
