//! Images this machine built, found by the name or digest the user typed
//! (`tplbuild export gateway`, `export sha256:bc16…`, `export @sha256:…`),
//! without a registry.
//!
//! A build is recorded in the store's `index.json` as `build:NAME` (NAME is
//! the Buildfile's folder) and under each `--tag` as `tag:REF` (which a
//! command uses only when that registry cannot answer: a registry
//! reference means the registry). Its layers are not all local: a
//! step found in a registry cache stays there until an output needs it. So
//! the record carries, as an annotation, where each blob can be fetched
//! from ([`Sources`]), and an export of a recorded build fetches what is
//! missing from there.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{load_image, BlobSource, Resolved, Sources, TransferError};
use crate::image::Image;
use crate::oci::{Descriptor, Digest, ManifestDoc, Platform, Reference};
use crate::store::index::REF_NAME;
use crate::store::{Store, StoreError};

/// The annotation on a recorded build: where its blobs can be fetched from.
pub const SOURCES: &str = "dev.tplbuild.sources";
/// The annotation on a recorded build: when it was recorded (Unix seconds).
pub const RECORDED: &str = "dev.tplbuild.recorded";
/// The store-name prefix of builds.
pub const BUILD_PREFIX: &str = "build:";
/// The store-name prefix of `--tag`s a build published.
pub const TAG_PREFIX: &str = "tag:";

/// How a short digest must at least be written (`sha256:` + 7 hex digits,
/// as `git` and Docker abbreviate).
const MIN_PREFIX: usize = 7;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{typed:?} matches several images in the store: {candidates}")]
    Ambiguous { typed: String, candidates: String },
    #[error("{typed} was built for {available}; {}", match .wanted {
        Some(p) => format!("not for {p}"),
        None => format!("this machine is {}", Platform::host()),
    })]
    NoPlatform {
        typed: String,
        /// The platform asked for (`None`: none was, and the host's is not there).
        wanted: Option<Platform>,
        available: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
}

/// One named image in the store, as `tplbuild images` lists it.
#[derive(Debug, Clone)]
pub struct LocalImage {
    /// The name as the user types it: `gateway`, a tag, or a pulled
    /// reference.
    pub name: String,
    /// The name as recorded in `index.json`.
    pub recorded_as: String,
    pub kind: LocalKind,
    pub descriptor: Descriptor,
    /// Unix seconds; `None` for records older than this annotation.
    pub recorded: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalKind {
    /// A `tplbuild build` result.
    Build,
    /// A `--tag` a build published.
    Tag,
    /// A template or image resolved from a registry (pull, FROM).
    Pulled,
    /// Named by `tplbuild bundle` or by hand.
    Other,
}

impl LocalImage {
    fn from_descriptor(desc: Descriptor) -> Option<Self> {
        let recorded_as = desc.annotations.get(REF_NAME)?.clone();
        let (kind, name) = if let Some(n) = recorded_as.strip_prefix(BUILD_PREFIX) {
            (LocalKind::Build, n.to_string())
        } else if let Some(n) = recorded_as.strip_prefix(TAG_PREFIX) {
            (LocalKind::Tag, n.to_string())
        } else if let Some(rest) = recorded_as.strip_prefix("resolved:") {
            // resolved:PLATFORM:REF — the platform has one or two '/'.
            let name = rest.split_once(':').map_or(rest, |(_, r)| r).to_string();
            (LocalKind::Pulled, name)
        } else {
            (LocalKind::Other, recorded_as.clone())
        };
        let recorded = desc.annotations.get(RECORDED).and_then(|s| s.parse().ok());
        Some(LocalImage {
            name,
            recorded_as,
            kind,
            descriptor: desc,
            recorded,
        })
    }
}

/// Every named image in the store, newest first.
pub fn list(store: &Store) -> Result<Vec<LocalImage>, StoreError> {
    let mut all: Vec<LocalImage> = store
        .named()?
        .into_iter()
        .filter_map(LocalImage::from_descriptor)
        .collect();
    all.sort_by(|a, b| b.recorded.cmp(&a.recorded).then(a.name.cmp(&b.name)));
    Ok(all)
}

/// Record a build under `name` (and `kind`'s prefix), with where its
/// blobs come from.
pub fn record(
    store: &Store,
    recorded_as: &str,
    desc: &Descriptor,
    sources: &Sources,
) -> Result<(), StoreError> {
    let mut desc = desc.clone();
    desc.annotations.insert(
        SOURCES.to_string(),
        serde_json::to_string(&SourcesRecord::from(sources)).expect("sources serialise"),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    store.set_name_stamped(recorded_as, &desc, RECORDED, &now.to_string())
}

/// Record a multi-platform build (`build --platform A,B`) under
/// `recorded_as`: the index naming each platform's image, and where every
/// platform's blobs come from. `tplbuild export NAME --platform P` then
/// finds P's image in it.
pub fn record_index(
    store: &Store,
    recorded_as: &str,
    images: &[Image],
    sources: &[&Sources],
) -> Result<Descriptor, LocalError> {
    let bytes = super::index_bytes(images).map_err(TransferError::from)?;
    let digest = store.put_bytes(&bytes)?;
    let desc = Descriptor::new(crate::oci::MediaType::OCI_INDEX, digest, bytes.len() as u64);
    let mut all = match sources.first() {
        Some(s) => (*s).clone(),
        None => Sources::new(BlobSource::Store),
    };
    for s in sources.iter().skip(1) {
        for (d, r) in &s.layers {
            all.add(d.clone(), r.clone());
        }
    }
    record(store, recorded_as, &desc, &all)?;
    Ok(desc)
}

/// The image `digest` names in the store, or, when it names a
/// multi-platform index, the image for `platform` (default: this
/// machine's) in it.
fn image_for(
    store: &Store,
    digest: &Digest,
    typed: &str,
    platform: Option<&Platform>,
) -> Result<Image, LocalError> {
    let bytes = store.read_bytes(digest)?;
    let index = match ManifestDoc::parse(&bytes, None).map_err(TransferError::from)? {
        ManifestDoc::Image(_) => return Ok(load_image(store, digest)?),
        ManifestDoc::Index(index) => index,
    };
    let wanted = platform.cloned().unwrap_or_else(Platform::host);
    match index.entry_for(&wanted) {
        Some(d) => Ok(load_image(store, &d.digest)?),
        None => Err(LocalError::NoPlatform {
            typed: typed.to_string(),
            wanted: platform.cloned(),
            available: index.platform_list(),
        }),
    }
}

/// The platforms of a multi-platform record and each one's image; `None`
/// for a record of one image.
pub fn platforms_of(
    store: &Store,
    desc: &Descriptor,
) -> Result<Option<Vec<(Platform, Image)>>, LocalError> {
    if !desc.media().is_index() {
        return Ok(None);
    }
    let bytes = store.read_bytes(&desc.digest)?;
    let ManifestDoc::Index(index) =
        ManifestDoc::parse(&bytes, None).map_err(TransferError::from)?
    else {
        return Ok(None);
    };
    let mut all = vec![];
    for d in &index.manifests {
        let image = load_image(store, &d.digest)?;
        all.push((image.config.platform(), image));
    }
    Ok(Some(all))
}

/// The image the user means by `typed`, if the store has it: a digest
/// (`sha256:…`, `@sha256:…`, at least 7 hex digits), a build's name
/// (`gateway` or `build:gateway`), or a tag a build published. `None`
/// when nothing local matches (the caller then asks a registry). A
/// multi-platform build gives its image for `platform`, by default this
/// machine's; without that, the error lists the platforms it has.
pub fn find(
    store: &Store,
    typed: &str,
    platform: Option<&Platform>,
) -> Result<Option<Resolved>, LocalError> {
    let images = list(store)?;
    let bare = typed.strip_prefix('@').unwrap_or(typed);
    let found = if let Some(hex) = bare.strip_prefix("sha256:") {
        if hex.len() < MIN_PREFIX || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let mut hits: Vec<&LocalImage> = images
            .iter()
            .filter(|i| i.descriptor.digest.hex().starts_with(hex))
            .collect();
        hits.dedup_by(|a, b| a.descriptor.digest == b.descriptor.digest);
        let distinct: std::collections::BTreeSet<&Digest> =
            hits.iter().map(|i| &i.descriptor.digest).collect();
        if distinct.len() > 1 {
            return Err(LocalError::Ambiguous {
                typed: typed.to_string(),
                candidates: distinct
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        match hits.first() {
            Some(i) => Some((*i).clone()),
            // A full digest of a manifest the store holds, named or not
            // (an earlier build of the same Buildfile).
            None => match Digest::parse(bare) {
                Ok(d) if store.has_blob(&d) => {
                    let image = image_for(store, &d, typed, platform)?;
                    return Ok(Some(Resolved {
                        pinned: d.to_string(),
                        image,
                        source: BlobSource::Store,
                    }));
                }
                _ => None,
            },
        }
    } else {
        let wanted = |i: &&LocalImage| {
            matches!(i.kind, LocalKind::Build | LocalKind::Tag)
                && (i.name == bare || i.recorded_as == bare)
        };
        images.iter().find(wanted).cloned()
    };
    let Some(found) = found else {
        return Ok(None);
    };
    let image = image_for(store, &found.descriptor.digest, typed, platform)?;
    let source = match found
        .descriptor
        .annotations
        .get(SOURCES)
        .and_then(|s| serde_json::from_str::<SourcesRecord>(s).ok())
    {
        Some(r) => BlobSource::Mixed(Box::new(r.into())),
        None => BlobSource::Store,
    };
    Ok(Some(Resolved {
        pinned: format!("{}@{}", found.name, image.digest()),
        image,
        source,
    }))
}

/// [`Sources`] as recorded: references as the strings users write.
#[derive(Debug, Serialize, Deserialize)]
struct SourcesRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registry: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    layout: Option<std::path::PathBuf>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    layers: BTreeMap<String, String>,
}

impl From<&Sources> for SourcesRecord {
    fn from(s: &Sources) -> Self {
        let (registry, layout) = match &s.base {
            BlobSource::Registry(r) => (Some(r.to_string()), None),
            BlobSource::Layout(d) => (None, Some(d.clone())),
            BlobSource::Store | BlobSource::Mixed(_) => (None, None),
        };
        SourcesRecord {
            registry,
            layout,
            layers: s
                .layers
                .iter()
                .map(|(d, r)| (d.to_string(), r.to_string()))
                .collect(),
        }
    }
}

impl From<SourcesRecord> for Sources {
    fn from(r: SourcesRecord) -> Self {
        let base = match (r.registry.as_deref().map(Reference::parse), r.layout) {
            (Some(Ok(reference)), _) => BlobSource::Registry(reference),
            (_, Some(dir)) => BlobSource::Layout(dir),
            _ => BlobSource::Store,
        };
        let mut sources = Sources::new(base);
        for (d, r) in r.layers {
            if let (Ok(d), Ok(r)) = (Digest::parse(&d), Reference::parse(&r)) {
                sources.add(d, r);
            }
        }
        sources
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    #[test]
    fn sources_survive_the_record() {
        let mut s = Sources::new(BlobSource::Registry(
            Reference::parse("127.0.0.1:5000/platform/base:1").unwrap(),
        ));
        s.add(
            digest('a'),
            Reference::parse("127.0.0.1:5000/cache/gateway").unwrap(),
        );
        let text = serde_json::to_string(&SourcesRecord::from(&s)).unwrap();
        let back: Sources = serde_json::from_str::<SourcesRecord>(&text).unwrap().into();
        assert_eq!(
            back.registry_of(&digest('a')).unwrap().to_string(),
            "127.0.0.1:5000/cache/gateway"
        );
        assert_eq!(
            back.registry_of(&digest('b')).unwrap().to_string(),
            "127.0.0.1:5000/platform/base:1"
        );
    }

    fn image(platform: &str) -> Image {
        let p = Platform::parse(platform).unwrap();
        Image::empty(crate::oci::ImageConfig {
            architecture: p.architecture,
            os: p.os,
            variant: p.variant,
            ..Default::default()
        })
    }

    #[test]
    fn a_multi_platform_build_gives_the_platform_asked_for_or_lists_them() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        let host = Platform::host();
        let other = if host.architecture == "arm64" {
            "linux/riscv64"
        } else {
            "linux/arm64"
        };
        let images = [image(&host.to_string()), image(other)];
        for i in &images {
            super::super::store_image(&store, i).unwrap();
        }
        let sources = Sources::new(BlobSource::Store);
        let desc = record_index(&store, "build:multi", &images, &[&sources, &sources]).unwrap();
        assert!(desc.media().is_index());

        let find_for = |p: Option<&str>| {
            let p = p.map(|p| Platform::parse(p).unwrap());
            find(&store, "multi", p.as_ref())
        };
        let got = find_for(Some(other)).unwrap().unwrap();
        assert_eq!(got.image.digest(), images[1].digest());
        assert!(got.pinned.starts_with("multi@"), "{}", got.pinned);
        // Without --platform: this machine's.
        let got = find_for(None).unwrap().unwrap();
        assert_eq!(got.image.digest(), images[0].digest());
        // A platform it lacks: the error lists those it has.
        let err = find_for(Some("linux/s390x")).unwrap_err().to_string();
        assert!(err.contains("linux/s390x"), "{err}");
        assert!(
            err.contains(other) && err.contains(&host.to_string()),
            "{err}"
        );
        let listed = platforms_of(&store, &desc).unwrap().unwrap();
        assert_eq!(listed.len(), 2);

        // Only foreign platforms, no --platform: an error naming them and
        // this machine's platform.
        let foreign = [image("linux/riscv64"), image("linux/s390x")];
        for i in &foreign {
            super::super::store_image(&store, i).unwrap();
        }
        record_index(&store, "build:boards", &foreign, &[&sources]).unwrap();
        let err = find(&store, "boards", None).unwrap_err().to_string();
        assert!(
            err.contains("linux/riscv64, linux/s390x") && err.contains(&host.to_string()),
            "{err}"
        );
    }

    #[test]
    fn names_are_read_by_kind() {
        let mut d = Descriptor::new(
            crate::oci::MediaType::OCI_MANIFEST.to_string(),
            digest('c'),
            10,
        );
        for (recorded, kind, name) in [
            ("build:gateway", LocalKind::Build, "gateway"),
            ("tag:oci:out:1", LocalKind::Tag, "oci:out:1"),
            (
                "resolved:linux/arm/v7:127.0.0.1:5000/base:1",
                LocalKind::Pulled,
                "127.0.0.1:5000/base:1",
            ),
            ("template", LocalKind::Other, "template"),
        ] {
            d.annotations
                .insert(REF_NAME.to_string(), recorded.to_string());
            let i = LocalImage::from_descriptor(d.clone()).unwrap();
            assert_eq!((i.kind, i.name.as_str()), (kind, name), "{recorded}");
        }
    }
}
