//! The lockfile's data (`Buildfile.lock`): the exact packages every
//! INSTALL and REMOVE step resolved to and the archive states they were
//! resolved against, read and written as TOML. `plan` reads it (a locked
//! step installs exactly these .debs); `lock` resolves, checks and
//! fetches it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::oci::{Digest, Platform};

/// The platform whose lockfile is plain `FILE.lock`.
pub const DEFAULT_PLATFORM: &str = "linux/amd64";

/// The lockfile format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("reading the lockfile {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the lockfile {path} is malformed")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("the lockfile {path} has format version {found}; this tplbuild reads version {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("writing the lockfile {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding the lockfile")]
    Encode(#[source] toml::ser::Error),
}

/// One apt archive suite the lock was resolved against.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LockedArchive {
    pub uri: String,
    pub suite: String,
    /// sha256 of the suite's InRelease as apt fetched it while locking
    /// (`unavailable` if it could not be read).
    pub in_release_sha256: String,
}

/// A package an apt step installs (with its .deb) or removes (name,
/// version and architecture only: there is no .deb to fetch).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// The archive path, `pool/main/h/hello/hello_2.10-3_amd64.deb`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub filename: String,
    /// Hex sha256 of the .deb.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// The archive base the .deb is served from (`filename` is relative to it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uri: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl LockedPackage {
    /// The store digest of the .deb; `None` for a removed package.
    pub fn digest(&self) -> Option<Result<Digest, crate::oci::DigestError>> {
        (!self.sha256.is_empty()).then(|| Digest::parse(&format!("sha256:{}", self.sha256)))
    }

    /// Where the .deb is downloaded from.
    pub fn url(&self) -> String {
        format!("{}/{}", self.uri.trim_end_matches('/'), self.filename)
    }

    /// The .deb's file name (the last part of `filename`).
    pub fn deb_name(&self) -> &str {
        self.filename.rsplit('/').next().unwrap_or(&self.filename)
    }
}

/// One INSTALL or REMOVE step as locked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedStep {
    /// 0-based position among the Buildfile's apt steps (INSTALL/REMOVE);
    /// other instructions do not count.
    pub index: usize,
    /// The instruction as the plan shows it (`INSTALL hello`).
    pub instruction: String,
    /// sha256 over the COPY and RUN steps carried out before this step
    /// while locking (their definitions and the files COPY read); empty
    /// when there were none. When it changes, the step is resolved again.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub replayed: String,
    /// Sorted by name, then architecture.
    #[serde(default, rename = "package")]
    pub packages: Vec<LockedPackage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lockfile {
    pub version: u32,
    /// Sorted by uri, then suite.
    #[serde(default)]
    pub archive: Vec<LockedArchive>,
    #[serde(default, rename = "step")]
    pub steps: Vec<LockedStep>,
}

const HEADER: &str = "# Written by `tplbuild lock`; do not edit by hand.\n\
# Every INSTALL/REMOVE step with the exact packages it installs or removes.\n\n";

impl Lockfile {
    /// A lockfile with its lists put in the stable order.
    pub fn new(mut archive: Vec<LockedArchive>, mut steps: Vec<LockedStep>) -> Self {
        archive.sort();
        archive.dedup();
        steps.sort_by_key(|s| s.index);
        for s in &mut steps {
            s.packages.sort();
            s.packages.dedup();
        }
        Lockfile {
            version: FORMAT_VERSION,
            archive,
            steps,
        }
    }

    /// `Buildfile` → `Buildfile.lock`, beside it: the linux/amd64 lockfile
    /// (see [`Lockfile::path_for_platform`]).
    pub fn path_for(buildfile: &Path) -> PathBuf {
        let amd64 = Platform::parse(DEFAULT_PLATFORM).expect("a valid platform");
        Self::path_for_platform(buildfile, &amd64)
    }

    /// The lockfile beside `buildfile` for `platform`: `Buildfile.lock`
    /// for linux/amd64 (where every lockfile before platforms came from),
    /// `Buildfile.linux-arm64.lock` and so on for the others. Each
    /// platform resolves its own packages (architectures differ, and so
    /// may the package set), so each has its own file.
    pub fn path_for_platform(buildfile: &Path, platform: &Platform) -> PathBuf {
        let mut s = buildfile.as_os_str().to_owned();
        if !platform.matches(&Platform::parse(DEFAULT_PLATFORM).expect("a valid platform"))
            || platform.variant.is_some()
        {
            s.push(".");
            s.push(platform.to_string().replace('/', "-"));
        }
        s.push(".lock");
        PathBuf::from(s)
    }

    pub fn to_toml(&self) -> Result<String, LockError> {
        // Re-sort so that a hand-built value still encodes in stable order.
        let sorted = Lockfile::new(self.archive.clone(), self.steps.clone());
        let body = toml::to_string(&sorted).map_err(LockError::Encode)?;
        Ok(format!("{HEADER}{body}"))
    }

    pub fn from_toml(text: &str, path: &Path) -> Result<Self, LockError> {
        let lock: Lockfile = toml::from_str(text).map_err(|source| LockError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        if lock.version != FORMAT_VERSION {
            return Err(LockError::Version {
                path: path.to_path_buf(),
                found: lock.version,
            });
        }
        Ok(Lockfile::new(lock.archive, lock.steps))
    }

    pub fn load(path: &Path) -> Result<Self, LockError> {
        let text = fs_err::read_to_string(path).map_err(|source| LockError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Write atomically (temp file + rename), so a reader never sees half a lock.
    pub fn save(&self, path: &Path) -> Result<(), LockError> {
        let text = self.to_toml()?;
        let err = |source| LockError::Write {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
        std::io::Write::write_all(&mut tmp, text.as_bytes()).map_err(err)?;
        tmp.persist(path).map_err(|e| err(e.error))?;
        Ok(())
    }

    /// The locked step at `index` among the apt steps (`lock::apt_steps`).
    pub fn for_step(&self, index: usize) -> Option<&LockedStep> {
        self.steps.iter().find(|s| s.index == index)
    }

    /// Every distinct .deb the lock names, first occurrence first.
    pub fn debs(&self) -> Vec<&LockedPackage> {
        let mut seen = std::collections::BTreeSet::new();
        self.steps
            .iter()
            .flat_map(|s| &s.packages)
            .filter(|p| !p.sha256.is_empty() && seen.insert(p.sha256.clone()))
            .collect()
    }
}
