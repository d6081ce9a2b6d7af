//! Media types tplbuild writes and the Docker ones it also reads.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaType {
    OciManifest,
    OciIndex,
    OciConfig,
    OciLayerGzip,
    OciLayerZstd,
    OciLayerTar,
    DockerManifest,
    DockerManifestList,
    DockerConfig,
    DockerLayerGzip,
    Other(String),
}

impl MediaType {
    pub const OCI_MANIFEST: &'static str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &'static str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &'static str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER_GZIP: &'static str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &'static str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const OCI_LAYER_TAR: &'static str = "application/vnd.oci.image.layer.v1.tar";
    pub const DOCKER_MANIFEST: &'static str =
        "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &'static str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &'static str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER_GZIP: &'static str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

    pub fn parse(s: &str) -> Self {
        // Content-Type headers may carry parameters; they do not change the type.
        let s = s.split(';').next().unwrap_or("").trim();
        match s {
            Self::OCI_MANIFEST => MediaType::OciManifest,
            Self::OCI_INDEX => MediaType::OciIndex,
            Self::OCI_CONFIG => MediaType::OciConfig,
            Self::OCI_LAYER_GZIP => MediaType::OciLayerGzip,
            Self::OCI_LAYER_ZSTD => MediaType::OciLayerZstd,
            Self::OCI_LAYER_TAR => MediaType::OciLayerTar,
            Self::DOCKER_MANIFEST => MediaType::DockerManifest,
            Self::DOCKER_MANIFEST_LIST => MediaType::DockerManifestList,
            Self::DOCKER_CONFIG => MediaType::DockerConfig,
            Self::DOCKER_LAYER_GZIP => MediaType::DockerLayerGzip,
            other => MediaType::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            MediaType::OciManifest => Self::OCI_MANIFEST,
            MediaType::OciIndex => Self::OCI_INDEX,
            MediaType::OciConfig => Self::OCI_CONFIG,
            MediaType::OciLayerGzip => Self::OCI_LAYER_GZIP,
            MediaType::OciLayerZstd => Self::OCI_LAYER_ZSTD,
            MediaType::OciLayerTar => Self::OCI_LAYER_TAR,
            MediaType::DockerManifest => Self::DOCKER_MANIFEST,
            MediaType::DockerManifestList => Self::DOCKER_MANIFEST_LIST,
            MediaType::DockerConfig => Self::DOCKER_CONFIG,
            MediaType::DockerLayerGzip => Self::DOCKER_LAYER_GZIP,
            MediaType::Other(s) => s,
        }
    }

    pub fn is_manifest(&self) -> bool {
        matches!(self, MediaType::OciManifest | MediaType::DockerManifest)
    }

    pub fn is_index(&self) -> bool {
        matches!(self, MediaType::OciIndex | MediaType::DockerManifestList)
    }

    /// How a layer blob of this type is compressed, if it is a layer.
    pub fn layer_compression(&self) -> Option<Compression> {
        match self {
            MediaType::OciLayerGzip | MediaType::DockerLayerGzip => Some(Compression::Gzip),
            MediaType::OciLayerZstd => Some(Compression::Zstd),
            MediaType::OciLayerTar => Some(Compression::None),
            _ => None,
        }
    }
}

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
