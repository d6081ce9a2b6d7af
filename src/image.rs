//! An image as an immutable value: manifest and config, each with the exact
//! bytes that its digest covers.
//!
//! Changing an image (adding a layer, setting labels) returns a new value
//! with freshly serialised bytes; nothing edits a manifest in place. Bytes
//! that came from elsewhere are kept verbatim, so their digests stay true.

use std::collections::BTreeMap;

use crate::oci::{Descriptor, Digest, ImageConfig, Manifest, MediaType, RootFs, RuntimeConfig};

#[derive(Debug, Clone)]
pub struct Image {
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub config: ImageConfig,
    pub config_bytes: Vec<u8>,
}

/// Annotation and label keys that tplbuild writes.
pub mod keys {
    pub const CREATED: &str = "org.opencontainers.image.created";
    pub const BASE_NAME: &str = "org.opencontainers.image.base.name";
    pub const BASE_DIGEST: &str = "org.opencontainers.image.base.digest";
    pub const SUITE: &str = "dev.tplbuild.template.suite";
    pub const ARCH: &str = "dev.tplbuild.template.architecture";
    pub const OS_ID: &str = "dev.tplbuild.template.os";
    pub const PACKAGE_COUNT: &str = "dev.tplbuild.template.package-count";
    /// The apt sources of the rootfs (JSON list of `{uri, suite}`), so a
    /// plan can fetch the archive state without pulling the layers.
    pub const APT_SOURCES: &str = "dev.tplbuild.template.apt-sources";
    /// Config label with the dpkg package list, one `name version arch` per line.
    pub const PACKAGES: &str = "dev.tplbuild.packages";
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("malformed image config: {0}")]
    Config(#[source] serde_json::Error),
    #[error("malformed image manifest: {0}")]
    Manifest(#[source] serde_json::Error),
    #[error("the manifest lists {layers} layers but the config has {diff_ids} diff_ids")]
    LayerCount { layers: usize, diff_ids: usize },
}

impl Image {
    /// Wrap bytes read from a store or registry (already digest-verified).
    pub fn from_parts(manifest_bytes: Vec<u8>, config_bytes: Vec<u8>) -> Result<Self, ImageError> {
        let manifest: Manifest =
            serde_json::from_slice(&manifest_bytes).map_err(ImageError::Manifest)?;
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(ImageError::Config)?;
        if manifest.layers.len() != config.rootfs.diff_ids.len() {
            return Err(ImageError::LayerCount {
                layers: manifest.layers.len(),
                diff_ids: config.rootfs.diff_ids.len(),
            });
        }
        Ok(Image {
            manifest,
            manifest_bytes,
            config,
            config_bytes,
        })
    }

    /// Serialise a new image from a config and its layers.
    pub fn assemble(
        config: ImageConfig,
        layers: Vec<Descriptor>,
        annotations: BTreeMap<String, String>,
    ) -> Self {
        let config_bytes = serde_json::to_vec(&config).expect("config serialises");
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MediaType::OCI_MANIFEST.to_string()),
            artifact_type: None,
            config: Descriptor::new(
                MediaType::OCI_CONFIG,
                Digest::of(&config_bytes),
                config_bytes.len() as u64,
            ),
            layers,
            subject: None,
            annotations,
        };
        let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest serialises");
        Image {
            manifest,
            manifest_bytes,
            config,
            config_bytes,
        }
    }

    /// An empty image for `platform` (no layers yet).
    pub fn empty(config: ImageConfig) -> Self {
        Image::assemble(
            ImageConfig {
                rootfs: RootFs {
                    kind: "layers".into(),
                    diff_ids: vec![],
                },
                ..config
            },
            vec![],
            BTreeMap::new(),
        )
    }

    pub fn digest(&self) -> Digest {
        Digest::of(&self.manifest_bytes)
    }

    pub fn descriptor(&self) -> Descriptor {
        let mut d = Descriptor::new(
            self.manifest
                .media_type
                .clone()
                .unwrap_or_else(|| MediaType::OCI_MANIFEST.to_string()),
            self.digest(),
            self.manifest_bytes.len() as u64,
        );
        d.platform = Some(self.config.platform());
        d
    }

    pub fn layers(&self) -> &[Descriptor] {
        &self.manifest.layers
    }

    pub fn diff_ids(&self) -> &[Digest] {
        &self.config.rootfs.diff_ids
    }

    pub fn annotations(&self) -> &BTreeMap<String, String> {
        &self.manifest.annotations
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        self.config
            .config
            .as_ref()
            .map(|c| c.labels.clone())
            .unwrap_or_default()
    }

    /// A new image with one more layer on top.
    pub fn with_layer(&self, layer: Descriptor, diff_id: Digest) -> Self {
        let mut config = self.config.clone();
        config.rootfs.diff_ids.push(diff_id);
        let mut layers = self.manifest.layers.clone();
        layers.push(layer);
        Image::assemble(config, layers, self.manifest.annotations.clone())
    }

    /// A new image with the runtime config and annotations replaced.
    pub fn with_metadata(
        &self,
        runtime: RuntimeConfig,
        created: Option<String>,
        annotations: BTreeMap<String, String>,
    ) -> Self {
        let mut config = self.config.clone();
        config.config = Some(runtime);
        config.created = created;
        // History entries describe layers we may have replaced; keep none
        // rather than a wrong one.
        config.history.clear();
        Image::assemble(config, self.manifest.layers.clone(), annotations)
    }

    /// Total compressed size of the layers.
    pub fn layers_size(&self) -> u64 {
        self.manifest.layers.iter().map(|l| l.size).sum()
    }

    /// The package list stored by `template import`, if any.
    pub fn packages(&self) -> Vec<Package> {
        self.labels()
            .get(keys::PACKAGES)
            .map(|s| parse_package_lines(s))
            .unwrap_or_default()
    }
}

/// One installed Debian package.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
}

pub fn package_lines(pkgs: &[Package]) -> String {
    let mut s = String::new();
    for p in pkgs {
        s.push_str(&format!("{} {} {}\n", p.name, p.version, p.architecture));
    }
    s
}

pub fn parse_package_lines(s: &str) -> Vec<Package> {
    s.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some(Package {
                name: it.next()?.to_string(),
                version: it.next()?.to_string(),
                architecture: it.next().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// Parse dpkg's status database: packages whose Status is `install ok installed`.
pub fn parse_dpkg_status(status: &str) -> Vec<Package> {
    let mut out = vec![];
    for para in status.split("\n\n") {
        let mut name = None;
        let mut version = None;
        let mut arch = None;
        let mut installed = false;
        for line in para.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Architecture: ") {
                arch = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Status: ") {
                installed = v.trim().ends_with(" installed");
            }
        }
        if let (Some(n), Some(v), true) = (name, version, installed) {
            out.push(Package {
                name: n.to_string(),
                version: v.to_string(),
                architecture: arch.unwrap_or("").to_string(),
            });
        }
    }
    out.sort_by(|a, b| (&a.name, &a.architecture).cmp(&(&b.name, &b.architecture)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Image {
        Image::empty(ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            ..Default::default()
        })
    }

    #[test]
    fn with_layer_returns_a_new_image_and_keeps_the_old_one() {
        let a = base();
        let l = Descriptor::new(MediaType::OCI_LAYER_GZIP, Digest::of(b"l"), 1);
        let b = a.with_layer(l.clone(), Digest::of(b"t"));
        assert!(a.layers().is_empty());
        assert_eq!(b.layers(), &[l]);
        assert_eq!(b.diff_ids(), &[Digest::of(b"t")]);
        assert_ne!(a.digest(), b.digest());
        // The bytes are what the digest covers.
        assert_eq!(b.digest(), Digest::of(&b.manifest_bytes));
        assert_eq!(b.manifest.config.digest, Digest::of(&b.config_bytes));
    }

    #[test]
    fn assembling_the_same_inputs_gives_the_same_digest() {
        assert_eq!(base().digest(), base().digest());
    }

    #[test]
    fn package_lines_round_trip() {
        let p = vec![Package {
            name: "bash".into(),
            version: "5.2.15-2+b2".into(),
            architecture: "amd64".into(),
        }];
        assert_eq!(parse_package_lines(&package_lines(&p)), p);
    }
}
