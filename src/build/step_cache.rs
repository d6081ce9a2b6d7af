//! Where a step's key is looked up: the local store first, then every
//! `--cache-from` registry cache in the order given.
//!
//! A registry cache is an optimisation, never a reason for a build to
//! fail: registries garbage-collect blobs, pushes get cut, proxies serve
//! wrong bytes. So a registry hit is checked in two stages, each cheap at
//! the moment it happens:
//!
//! 1. at lookup, the layer blob is HEADed in the cache repository (no
//!    download: a hit on a fresh CI machine still downloads only what the
//!    outputs need). A blob that is gone makes the step a miss, with one
//!    warning naming the step and the layer;
//! 2. when the layer is really needed (a later step runs on top of it, or
//!    an output reads it), [`StepCache::fetch`] downloads it, verified, and
//!    records the step in the store. A layer that cannot be fetched (404,
//!    wrong bytes, registry unreachable) is again one warning, and the
//!    caller ([`super::walk`]) goes back to that step, which now misses.
//!
//! A registry that cannot be reached at all is ignored from then on, with
//! one warning, instead of one per step.

use std::collections::BTreeMap;
use std::fmt;

use futures_util::stream::{self, StreamExt};

use crate::cache::RemoteCache;
use crate::oci::{Digest, Reference};
use crate::registry::Client;
use crate::store::{StepRecord, Store, StoreError};

/// Where a hit came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HitSource {
    Local,
    /// A `--cache-from` cache; its layer may not be in the store yet.
    Registry(Reference),
}

/// A step found in a cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub record: StepRecord,
    pub from: HitSource,
}

/// A step as a warning names it: `step 2 (COPY overlay/ /, at Buildfile:3)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepLabel {
    pub number: usize,
    pub text: String,
    pub location: String,
}

impl fmt::Display for StepLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = self.text.lines().next().unwrap_or("");
        write!(f, "step {} `{first}` at {}", self.number, self.location)
    }
}

/// The local store plus the registry caches, with what this build learnt
/// about them (layers gone, caches unreachable) and the warnings to report.
pub struct StepCache<'a> {
    store: &'a Store,
    client: &'a Client,
    remotes: Vec<Remote>,
    /// Keys whose registry entry turned out unusable, with the reason a
    /// miss then gives.
    unusable: BTreeMap<Digest, String>,
    /// Steps this build took from a registry cache into the store: they
    /// stay registry hits when the walk comes back to them.
    fetched: BTreeMap<Digest, Reference>,
    warnings: Vec<String>,
}

struct Remote {
    cache: RemoteCache,
    /// False once the registry could not be reached.
    reachable: bool,
}

impl<'a> StepCache<'a> {
    pub fn new(store: &'a Store, client: &'a Client, remotes: Vec<RemoteCache>) -> Self {
        StepCache {
            store,
            client,
            remotes: remotes
                .into_iter()
                .map(|cache| Remote {
                    cache,
                    reachable: true,
                })
                .collect(),
            unusable: BTreeMap::new(),
            fetched: BTreeMap::new(),
            warnings: vec![],
        }
    }

    pub fn store(&self) -> &'a Store {
        self.store
    }

    pub fn client(&self) -> &'a Client {
        self.client
    }

    /// The step recorded under `key`, locally or in a registry cache whose
    /// layer blob is still there (HEAD only; nothing is downloaded).
    pub async fn lookup(
        &mut self,
        key: &Digest,
        step: &StepLabel,
    ) -> Result<Option<Hit>, StoreError> {
        if let Some(record) = self.store.get_step(key)? {
            let from = match self.fetched.get(key) {
                Some(r) => HitSource::Registry(r.clone()),
                None => HitSource::Local,
            };
            return Ok(Some(Hit { record, from }));
        }
        for i in 0..self.remotes.len() {
            let remote = &self.remotes[i];
            if !remote.reachable {
                continue;
            }
            let Some(entry) = remote.cache.lookup(key) else {
                continue;
            };
            let reference = remote.cache.reference.clone();
            let layer = entry.layer.digest.clone();
            let hit = Hit {
                record: entry.to_record(key),
                from: HitSource::Registry(reference.clone()),
            };
            if self.store.has_blob(&layer) {
                return Ok(Some(hit));
            }
            match self.client.blob_exists(&reference, &layer).await {
                Ok(Some(_)) => return Ok(Some(hit)),
                Ok(None) => {
                    let why = format!(
                        "its layer {layer} is gone from the cache {reference} (deleted or garbage-collected)"
                    );
                    self.give_up(i, key, step, why);
                }
                Err(e) => {
                    self.remotes[i].reachable = false;
                    self.warn(format!(
                        "cache {reference} cannot be reached, ignoring it: {}",
                        error_chain(&e)
                    ));
                    self.unusable.insert(
                        key.clone(),
                        format!("the cache {reference} cannot be reached"),
                    );
                }
            }
        }
        Ok(None)
    }

    /// Download the layers of these registry hits into the store (several
    /// at a time) and record the steps locally. Returns the keys whose
    /// layer could not be fetched; each was warned about once and misses
    /// from now on.
    pub async fn fetch(&mut self, hits: &[(Digest, &Hit, StepLabel)]) -> Vec<Digest> {
        let wanted: Vec<(usize, &Digest, &StepLabel)> = hits
            .iter()
            .filter(|(_, hit, _)| !self.store.has_blob(&hit.record.layer.digest))
            .filter_map(|(key, hit, label)| match &hit.from {
                HitSource::Registry(r) => self.remote_index(r).map(|i| (i, key, label)),
                HitSource::Local => None,
            })
            .collect();
        let (store, client, remotes) = (self.store, self.client, &self.remotes);
        let results: Vec<_> = stream::iter(wanted)
            .map(|(i, key, label)| async move {
                let got = remotes[i].cache.fetch_layer(client, store, key).await;
                (i, key, label, got)
            })
            .buffer_unordered(crate::transfer::jobs())
            .collect()
            .await;
        let mut failed = vec![];
        for (i, key, label, got) in results {
            let why = match got {
                Ok(_) => {
                    let r = self.remotes[i].cache.reference.clone();
                    self.fetched.insert(key.clone(), r);
                    continue;
                }
                Err(e) => format!("its layer cannot be fetched: {}", error_chain(&e)),
            };
            self.give_up(i, key, label, why);
            failed.push(key.clone());
        }
        failed
    }

    /// Why `key` misses although a registry cache named it, if it did.
    pub fn unusable_reason(&self, key: &Digest) -> Option<&str> {
        self.unusable.get(key).map(String::as_str)
    }

    /// The warnings gathered since the last call.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    fn remote_index(&self, r: &Reference) -> Option<usize> {
        self.remotes.iter().position(|x| &x.cache.reference == r)
    }

    /// Stop using remote `i`'s entry for `key`, with one warning.
    fn give_up(&mut self, i: usize, key: &Digest, step: &StepLabel, why: String) {
        let reference = self.remotes[i].cache.reference.clone();
        self.remotes[i].cache.ignore(key);
        self.warn(format!(
            "{step}: not using the cache {reference}: {why}; the step runs"
        ));
        self.unusable.insert(
            key.clone(),
            format!("the cache {reference} could not give its layer"),
        );
    }

    fn warn(&mut self, w: String) {
        self.warnings.push(w);
    }
}

/// `e: cause: cause`, for a one-line warning.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let c_s = c.to_string();
        if !s.contains(&c_s) {
            s.push_str(": ");
            s.push_str(&c_s);
        }
        cur = c.source();
    }
    s
}
