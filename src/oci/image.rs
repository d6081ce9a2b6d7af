//! Manifests, indexes and configs as serde values.
//!
//! Maps are `BTreeMap` so that what tplbuild writes is byte-stable. What it
//! reads is validated here (a manifest must not also be an index) but hashed
//! as received, elsewhere.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Digest, MediaType};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            platform: None,
            annotations: BTreeMap::new(),
            artifact_type: None,
        }
    }

    pub fn media(&self) -> MediaType {
        MediaType::parse(&self.media_type)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of the machine tplbuild runs on, in OCI spelling.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            architecture: architecture.to_string(),
            os: "linux".to_string(),
            variant: None,
        }
    }

    /// Parse `os/arch[/variant]`, as `--platform` takes it.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('/');
        let os = parts.next().filter(|p| !p.is_empty())?;
        let arch = parts.next().filter(|p| !p.is_empty())?;
        let variant = parts.next().map(str::to_string);
        if parts.next().is_some() {
            return None;
        }
        Some(Platform {
            architecture: arch.to_string(),
            os: os.to_string(),
            variant,
        })
    }

    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || other.variant.is_none() || self.variant == other.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ImageIndex {
    /// The first entry for `platform`.
    pub fn entry_for(&self, platform: &Platform) -> Option<&Descriptor> {
        self.manifests
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
    }

    /// The platforms the entries name, `, `-separated (for errors).
    pub fn platform_list(&self) -> String {
        self.manifests
            .iter()
            .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The image configuration. Unknown fields are dropped here, which is fine
/// because the config blob is always hashed from its original bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<RuntimeConfig>,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RuntimeConfig {
    #[serde(rename = "Env", default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(rename = "Labels", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

impl ImageConfig {
    pub fn platform(&self) -> Platform {
        Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            variant: self.variant.clone(),
        }
    }
}

/// A parsed manifest document: either an image manifest or an index.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // parsed once per pull; boxing buys nothing
pub enum ManifestDoc {
    Image(Manifest),
    Index(ImageIndex),
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("the document has both `layers` and `manifests`; it is neither a valid manifest nor a valid index")]
    Ambiguous,
    #[error("the document declares media type {declared} but was served as {served}")]
    MediaTypeMismatch { declared: String, served: String },
    #[error("media type {0} is not an image manifest or index")]
    Unsupported(String),
    #[error("malformed manifest JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl ManifestDoc {
    /// Parse manifest bytes. `served` is the Content-Type (or the
    /// descriptor's media type); when the document declares its own media
    /// type, the two must agree.
    pub fn parse(bytes: &[u8], served: Option<&str>) -> Result<Self, ManifestError> {
        let v: serde_json::Value = serde_json::from_slice(bytes)?;
        let has_layers = v.get("layers").is_some();
        let has_manifests = v.get("manifests").is_some();
        if has_layers && has_manifests {
            return Err(ManifestError::Ambiguous);
        }
        let declared = v
            .get("mediaType")
            .and_then(|m| m.as_str())
            .map(str::to_string);
        let served = served
            .map(|s| s.split(';').next().unwrap_or("").trim().to_string())
            .filter(|s| {
                !s.is_empty() && s != "application/json" && s != "application/octet-stream"
            });
        if let (Some(d), Some(s)) = (&declared, &served) {
            if d != s {
                return Err(ManifestError::MediaTypeMismatch {
                    declared: d.clone(),
                    served: s.clone(),
                });
            }
        }
        let media = declared.or(served);
        let is_index = match media.as_deref().map(MediaType::parse) {
            Some(m) if m.is_index() => true,
            Some(m) if m.is_manifest() => false,
            Some(MediaType::Other(o)) if !o.is_empty() => {
                return Err(ManifestError::Unsupported(o))
            }
            _ => has_manifests,
        };
        if is_index {
            Ok(ManifestDoc::Index(serde_json::from_value(v)?))
        } else {
            Ok(ManifestDoc::Image(serde_json::from_value(v)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_with_layers_and_manifests_is_rejected() {
        let doc = br#"{"schemaVersion":2,"layers":[],"manifests":[],"config":{}}"#;
        assert!(matches!(
            ManifestDoc::parse(doc, None),
            Err(ManifestError::Ambiguous)
        ));
    }

    #[test]
    fn media_type_disagreeing_with_content_type_is_rejected() {
        let doc = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[]}}"#,
            MediaType::OCI_INDEX
        );
        let err = ManifestDoc::parse(doc.as_bytes(), Some(MediaType::OCI_MANIFEST)).unwrap_err();
        assert!(
            matches!(err, ManifestError::MediaTypeMismatch { .. }),
            "{err}"
        );
    }

    #[test]
    fn platform_parses_os_arch_variant() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!(Platform::parse("linux").is_none());
        assert!(p.matches(&Platform::parse("linux/arm64").unwrap()));
        assert!(!p.matches(&Platform::parse("linux/amd64").unwrap()));
    }
}
