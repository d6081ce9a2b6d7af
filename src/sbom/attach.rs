//! SBOMs and provenance as OCI 1.1 artifacts attached to their image:
//! a manifest whose `artifactType` says what it is, whose one layer is the
//! document and whose `subject` is the image. Registries with the
//! referrers API index them by `subject` themselves; for the others (the
//! CNCF Distribution registry) the referrers tag scheme is kept: an image
//! index under the tag `sha256-<hex of the image digest>` that lists every
//! artifact, merged with what is there already. OCI layouts list the
//! artifact manifests in `index.json` beside the image.

use std::collections::BTreeMap;
use std::path::Path;

use crate::oci::{Descriptor, Digest, ImageIndex, Manifest, MediaType, Reference};
use crate::registry::{Client, RegistryError, VecSink};
use crate::store::{Store, StoreError};

/// The OCI 1.1 empty config (`{}`) that artifact manifests carry.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const EMPTY: &[u8] = b"{}";
/// The in-toto statement's artifactType.
pub const IN_TOTO: &str = "application/vnd.in-toto+json";

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("attaching {what} to {image}")]
    Registry {
        what: String,
        image: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("the referrers index {tag} of {repo} is not an OCI image index")]
    BadIndex { repo: String, tag: String },
    #[error("writing an artifact")]
    Store(#[from] StoreError),
    #[error("writing artifacts into {dir}")]
    Layout {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// One document made into an artifact manifest for `subject`.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub artifact_type: String,
    pub document: Vec<u8>,
    pub manifest_bytes: Vec<u8>,
}

impl Artifact {
    /// `created` (seconds since 1970) is the image's epoch, so the same
    /// image always gets the same artifact digests.
    pub fn new(subject: &Descriptor, artifact_type: &str, document: Vec<u8>, created: i64) -> Self {
        let mut subject = Descriptor::new(
            subject.media_type.clone(),
            subject.digest.clone(),
            subject.size,
        );
        subject.platform = None;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MediaType::OCI_MANIFEST.to_string()),
            artifact_type: Some(artifact_type.to_string()),
            config: Descriptor::new(EMPTY_MEDIA_TYPE, Digest::of(EMPTY), EMPTY.len() as u64),
            layers: vec![Descriptor::new(
                artifact_type,
                Digest::of(&document),
                document.len() as u64,
            )],
            subject: Some(subject),
            annotations: BTreeMap::from([(
                crate::image::keys::CREATED.to_string(),
                crate::epoch::rfc3339(created),
            )]),
        };
        Artifact {
            artifact_type: artifact_type.to_string(),
            document,
            manifest_bytes: serde_json::to_vec(&manifest).expect("manifest serialises"),
        }
    }

    pub fn digest(&self) -> Digest {
        Digest::of(&self.manifest_bytes)
    }

    /// How an index (referrers tag, layout) lists it.
    pub fn descriptor(&self) -> Descriptor {
        let mut d = Descriptor::new(
            MediaType::OCI_MANIFEST,
            self.digest(),
            self.manifest_bytes.len() as u64,
        );
        d.artifact_type = Some(self.artifact_type.clone());
        d.annotations
            .insert(WRITTEN_BY.to_string(), "tplbuild".to_string());
        d
    }
}

/// The index annotation that marks an artifact as tplbuild's, so that a
/// rebuild replaces its own SBOM and provenance instead of piling up
/// another, and leaves other tools' artifacts alone.
pub const WRITTEN_BY: &str = "dev.tplbuild.written-by";

/// The repository of `image`, with no tag or digest.
fn repo_of(image: &Reference) -> Reference {
    Reference {
        tag: None,
        digest: None,
        ..image.clone()
    }
}

/// `repo@digest`, with no tag (a manifest put there is not tagged).
fn pinned(repo: &Reference, digest: Digest) -> Reference {
    Reference {
        tag: None,
        digest: Some(digest),
        ..repo.clone()
    }
}

/// The referrers tag of an image: `sha256-<hex>`.
pub fn referrers_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

/// `existing` with `added` in it: an artifact already listed (same digest)
/// is not listed twice, an older one tplbuild wrote of the same
/// artifactType is replaced, everything else keeps its place.
pub fn merge_index(existing: Option<ImageIndex>, added: &[Descriptor]) -> ImageIndex {
    let mut index = existing.unwrap_or(ImageIndex {
        schema_version: 2,
        media_type: Some(MediaType::OCI_INDEX.to_string()),
        artifact_type: None,
        manifests: vec![],
        annotations: BTreeMap::new(),
    });
    for d in added {
        index.manifests.retain(|m| {
            m.digest == d.digest
                || m.artifact_type != d.artifact_type
                || !m.annotations.contains_key(WRITTEN_BY)
        });
        if !index.manifests.iter().any(|m| m.digest == d.digest) {
            index.manifests.push(d.clone());
        }
    }
    index
}

/// Push the artifacts to `image`'s repository and make them findable:
/// through the referrers API when the registry has one, else by updating
/// the `sha256-<hex>` index. Returns the referrers tag when it was written.
pub async fn push(
    store: &Store,
    client: &Client,
    image: &Reference,
    subject: &Digest,
    artifacts: &[Artifact],
) -> Result<Option<String>, AttachError> {
    let err = |what: &str| {
        let what = what.to_string();
        let image = image.to_string();
        move |source| AttachError::Registry {
            what,
            image,
            source: Box::new(source),
        }
    };
    let repo = repo_of(image);
    for a in artifacts {
        for bytes in [EMPTY, &a.document[..]] {
            // Pushed from a temp file, not kept in the store: the documents
            // are cheap to make again and the store keeps layers.
            let mut tmp = tempfile::NamedTempFile::new_in(store.tmp_dir()).map_err(|source| {
                AttachError::Layout {
                    dir: store.tmp_dir().display().to_string(),
                    source,
                }
            })?;
            std::io::Write::write_all(&mut tmp, bytes).map_err(|source| AttachError::Layout {
                dir: store.tmp_dir().display().to_string(),
                source,
            })?;
            let desc = Descriptor::new(&a.artifact_type, Digest::of(bytes), bytes.len() as u64);
            client
                .push_blob_file(&repo, &desc, tmp.path(), None)
                .await
                .map_err(err(&a.artifact_type))?;
        }
        client
            .put_manifest(
                &pinned(&repo, a.digest()),
                &a.manifest_bytes,
                MediaType::OCI_MANIFEST,
            )
            .await
            .map_err(err(&a.artifact_type))?;
    }
    if client
        .referrers(&repo, subject)
        .await
        .map_err(err("the referrers"))?
        .is_some()
    {
        return Ok(None);
    }
    let tag = referrers_tag(subject);
    let tagged = repo.with_tag(&tag);
    let existing = match client.get_manifest(&tagged).await {
        Ok(m) => Some(serde_json::from_slice::<ImageIndex>(&m.bytes).map_err(|_| {
            AttachError::BadIndex {
                repo: repo.repo_name(),
                tag: tag.clone(),
            }
        })?),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(err("the referrers index")(e)),
    };
    let added: Vec<Descriptor> = artifacts.iter().map(Artifact::descriptor).collect();
    let index = merge_index(existing, &added);
    let bytes = serde_json::to_vec(&index).expect("index serialises");
    client
        .put_manifest(&tagged, &bytes, MediaType::OCI_INDEX)
        .await
        .map_err(err("the referrers index"))?;
    Ok(Some(tag))
}

/// The artifacts of `subject` in a registry, found through the referrers
/// API or the tag scheme (empty when there are none).
pub async fn list(
    client: &Client,
    image: &Reference,
    subject: &Digest,
) -> Result<Vec<Descriptor>, RegistryError> {
    let repo = repo_of(image);
    if let Some(index) = client.referrers(&repo, subject).await? {
        return Ok(index.manifests);
    }
    match client
        .get_manifest(&repo.with_tag(referrers_tag(subject)))
        .await
    {
        Ok(m) => Ok(serde_json::from_slice::<ImageIndex>(&m.bytes)
            .map(|i| i.manifests)
            .unwrap_or_default()),
        Err(e) if e.is_not_found() => Ok(vec![]),
        Err(e) => Err(e),
    }
}

/// The document of the first artifact of `artifact_type` attached to
/// `subject`, verified against its digests; `None` if there is none.
pub async fn fetch(
    client: &Client,
    image: &Reference,
    subject: &Digest,
    artifact_type: &str,
) -> Result<Option<Vec<u8>>, RegistryError> {
    let listed = list(client, image, subject).await?;
    let Some(desc) = listed
        .iter()
        .find(|d| d.artifact_type.as_deref() == Some(artifact_type))
    else {
        return Ok(None);
    };
    let m = client
        .get_manifest(&image.with_digest(desc.digest.clone()))
        .await?;
    let manifest: Manifest = match serde_json::from_slice(&m.bytes) {
        Ok(m) => m,
        Err(_) => return Ok(None),
    };
    // Only what really names this image: a stale tag-scheme entry could
    // point anywhere.
    if manifest.subject.as_ref().map(|s| &s.digest) != Some(subject) {
        return Ok(None);
    }
    let Some(layer) = manifest.layers.first() else {
        return Ok(None);
    };
    let mut sink = VecSink::default();
    client.pull_blob(image, layer, &mut sink).await?;
    Ok(Some(sink.into_inner()))
}

/// The document of the first artifact of `artifact_type` whose subject is
/// `subject` in an OCI layout, if any.
pub fn fetch_from_layout(
    dir: &Path,
    subject: &Digest,
    artifact_type: &str,
) -> Result<Option<Vec<u8>>, AttachError> {
    let io_err = |source| AttachError::Layout {
        dir: dir.display().to_string(),
        source,
    };
    let blob = |d: &Digest| -> Result<Vec<u8>, AttachError> {
        let bytes = fs_err::read(dir.join("blobs").join("sha256").join(d.hex())).map_err(io_err)?;
        if Digest::of(&bytes) != *d {
            return Err(io_err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("blob {d} does not match its digest"),
            )));
        }
        Ok(bytes)
    };
    let index: ImageIndex = match fs_err::read(dir.join("index.json")) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| io_err(e.into()))?,
        Err(e) => return Err(io_err(e)),
    };
    for desc in index
        .manifests
        .iter()
        .filter(|d| d.artifact_type.as_deref() == Some(artifact_type))
    {
        let manifest: Manifest =
            serde_json::from_slice(&blob(&desc.digest)?).map_err(|e| io_err(e.into()))?;
        if manifest.subject.as_ref().map(|s| &s.digest) == Some(subject) {
            if let Some(layer) = manifest.layers.first() {
                return Ok(Some(blob(&layer.digest)?));
            }
        }
    }
    Ok(None)
}

/// Write the artifacts into an OCI layout next to their image: the blobs,
/// and each manifest listed in `index.json` (with its artifactType), as
/// the image layout spec has referrers found.
pub fn write_to_layout(dir: &Path, artifacts: &[Artifact]) -> Result<(), AttachError> {
    let io_err = |source| AttachError::Layout {
        dir: dir.display().to_string(),
        source,
    };
    let blobs = dir.join("blobs").join("sha256");
    fs_err::create_dir_all(&blobs).map_err(io_err)?;
    for a in artifacts {
        for bytes in [EMPTY, &a.document[..], &a.manifest_bytes[..]] {
            let path = blobs.join(Digest::of(bytes).hex());
            if !path.exists() {
                crate::store::write_atomic(dir, &path, bytes).map_err(io_err)?;
            }
        }
    }
    let added: Vec<Descriptor> = artifacts.iter().map(Artifact::descriptor).collect();
    let path = dir.join("index.json");
    let index = merge_index(Some(crate::store::index::read_index(&path)?), &added);
    let bytes = serde_json::to_vec_pretty(&index).expect("an index always serialises");
    crate::store::write_atomic(dir, &path, &bytes).map_err(io_err)?;
    let _ = fs_err::remove_dir(dir.join("tmp"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Descriptor {
        Descriptor::new(MediaType::OCI_MANIFEST, Digest::of(b"image"), 123)
    }

    #[test]
    fn an_artifact_names_its_subject_and_type() {
        let a = Artifact::new(&subject(), "application/spdx+json", b"{}".to_vec(), 0);
        let m: serde_json::Value = serde_json::from_slice(&a.manifest_bytes).unwrap();
        assert_eq!(m["artifactType"], "application/spdx+json");
        assert_eq!(m["subject"]["digest"], Digest::of(b"image").to_string());
        assert_eq!(m["config"]["mediaType"], EMPTY_MEDIA_TYPE);
        assert_eq!(m["layers"][0]["mediaType"], "application/spdx+json");
        assert_eq!(
            a.descriptor().artifact_type.as_deref(),
            Some("application/spdx+json")
        );
        // Same inputs, same digest: a rebuild does not add a second entry.
        let b = Artifact::new(&subject(), "application/spdx+json", b"{}".to_vec(), 0);
        assert_eq!(a.digest(), b.digest());
    }

    #[test]
    fn a_newer_artifact_of_ours_replaces_the_older_one_and_leaves_others() {
        let theirs = {
            let mut d = Descriptor::new(MediaType::OCI_MANIFEST, Digest::of(b"scan"), 5);
            d.artifact_type = Some(IN_TOTO.into());
            d
        };
        let old = Artifact::new(&subject(), IN_TOTO, b"run 1".to_vec(), 0).descriptor();
        let new = Artifact::new(&subject(), IN_TOTO, b"run 2".to_vec(), 0).descriptor();
        let spdx =
            Artifact::new(&subject(), "application/spdx+json", b"{}".to_vec(), 0).descriptor();
        let first = merge_index(None, &[theirs.clone(), old, spdx.clone()]);
        let merged = merge_index(Some(first), std::slice::from_ref(&new));
        let digests: Vec<_> = merged.manifests.iter().map(|d| d.digest.clone()).collect();
        assert_eq!(digests, [theirs.digest, spdx.digest, new.digest]);
    }

    #[test]
    fn merging_keeps_what_is_there_and_adds_each_artifact_once() {
        let other = Descriptor::new(MediaType::OCI_MANIFEST, Digest::of(b"sig"), 5);
        let a = Artifact::new(&subject(), IN_TOTO, b"x".to_vec(), 0).descriptor();
        let first = merge_index(None, std::slice::from_ref(&a));
        let existing = merge_index(Some(first), std::slice::from_ref(&other));
        let merged = merge_index(Some(existing), std::slice::from_ref(&a));
        let digests: Vec<_> = merged.manifests.iter().map(|d| d.digest.clone()).collect();
        assert_eq!(digests, [a.digest, other.digest]);
        assert_eq!(merged.media_type.as_deref(), Some(MediaType::OCI_INDEX));
    }

    #[test]
    fn a_layout_lists_the_artifacts_once_and_still_resolves_its_image() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("home")).unwrap();
        let image = crate::sbom::tests::sample(&store);
        crate::transfer::store_image(&store, &image).unwrap();
        let layout = dir.path().join("layout");
        crate::transfer::write_layout_image(&store, &image, &layout, "latest").unwrap();
        let run = |doc: &[u8]| {
            let a = Artifact::new(&image.descriptor(), IN_TOTO, doc.to_vec(), 0);
            write_to_layout(&layout, &[a]).unwrap();
        };
        run(b"first run");
        run(b"second run");
        let found = fetch_from_layout(&layout, &image.digest(), IN_TOTO).unwrap();
        assert_eq!(found.as_deref(), Some(&b"second run"[..]));
        // Untagged (as other tools write layouts): the one image is still found.
        let path = layout.join("index.json");
        let mut index = crate::store::index::read_index(&path).unwrap();
        assert_eq!(index.manifests.len(), 2, "{index:?}");
        for d in &mut index.manifests {
            d.annotations.remove(crate::store::index::REF_NAME);
        }
        fs_err::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
        let platform = image.config.platform();
        let read =
            crate::transfer::read_layout_image(&store, &layout, "latest", None, &platform).unwrap();
        assert_eq!(read.digest(), image.digest());
    }

    #[test]
    fn the_referrers_tag_is_the_digest_with_a_dash() {
        let d = Digest::of(b"image");
        assert_eq!(referrers_tag(&d), format!("sha256-{}", d.hex()));
    }
}
