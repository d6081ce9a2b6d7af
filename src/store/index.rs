//! `index.json`: the store's named images, as in any OCI image layout.
//!
//! A name is recorded as the `org.opencontainers.image.ref.name`
//! annotation. Rewrites happen under the store lock so that two processes
//! never lose each other's names.

use std::collections::BTreeMap;
use std::path::Path;

use super::{write_atomic, Store, StoreError};
use crate::oci::{Descriptor, ImageIndex, MediaType};

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

impl Store {
    /// The descriptor recorded under `name`, if any.
    pub fn lookup_name(&self, name: &str) -> Result<Option<Descriptor>, StoreError> {
        Ok(read_index(&self.root().join("index.json"))?
            .manifests
            .into_iter()
            .find(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(name)))
    }

    /// Record `desc` under `name`, replacing an older entry of that name.
    pub fn set_name(&self, name: &str, desc: &Descriptor) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        set_name_in_layout(self.root(), name, desc)
    }

    /// Hold the store lock (an exclusive flock) until the guard drops.
    pub fn lock(&self) -> Result<LockGuard, StoreError> {
        let file = fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root().join("lock"))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(std::io::Error::from)?;
        Ok(LockGuard { _file: file })
    }
}

/// Released when dropped (closing the file releases the flock).
pub struct LockGuard {
    _file: fs_err::File,
}

pub(crate) fn read_index(path: &Path) -> Result<ImageIndex, StoreError> {
    let bytes = fs_err::read(path)?;
    serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
        what: "image index",
        path: path.to_path_buf(),
        source,
    })
}

/// Add or replace a named manifest in an OCI layout's index.json. Used for
/// the store and for `oci:DIR:TAG` targets alike.
pub fn set_name_in_layout(layout: &Path, name: &str, desc: &Descriptor) -> Result<(), StoreError> {
    let path = layout.join("index.json");
    let mut index = if path.exists() {
        read_index(&path)?
    } else {
        ImageIndex {
            schema_version: 2,
            media_type: Some(MediaType::OCI_INDEX.to_string()),
            artifact_type: None,
            manifests: vec![],
            annotations: BTreeMap::new(),
        }
    };
    let mut desc = desc.clone();
    desc.annotations
        .insert(REF_NAME.to_string(), name.to_string());
    // Already so, once (a no-op build names the same image again): nothing
    // to write.
    let mut named = index
        .manifests
        .iter()
        .filter(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(name));
    if named.next() == Some(&desc) && named.next().is_none() {
        return Ok(());
    }
    index
        .manifests
        .retain(|d| d.annotations.get(REF_NAME).map(String::as_str) != Some(name));
    index.manifests.push(desc);
    let bytes = serde_json::to_vec_pretty(&index).expect("an index always serialises");
    write_atomic(layout, &path, &bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Digest;

    #[test]
    fn names_are_replaced_not_duplicated() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = Descriptor::new(MediaType::OCI_MANIFEST, Digest::of(b"a"), 1);
        let b = Descriptor::new(MediaType::OCI_MANIFEST, Digest::of(b"b"), 1);
        s.set_name("base:1", &a).unwrap();
        s.set_name("other", &a).unwrap();
        s.set_name("base:1", &b).unwrap();
        assert_eq!(s.lookup_name("base:1").unwrap().unwrap().digest, b.digest);
        // The same name for the same image again leaves index.json alone.
        let index = s.root().join("index.json");
        let before = fs_err::read(&index).unwrap();
        s.set_name("other", &a).unwrap();
        assert_eq!(fs_err::read(&index).unwrap(), before);
        let names = read_index(&index).unwrap().manifests.len();
        assert_eq!(names, 2);
        assert_eq!(s.lookup_name("other").unwrap().unwrap().digest, a.digest);
        assert!(s.lookup_name("nope").unwrap().is_none());
    }
}
