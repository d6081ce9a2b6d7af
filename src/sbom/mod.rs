//! Software bills of materials and build provenance for the images
//! tplbuild makes, imports or is pointed at.
//!
//! [`scan`] reads an image's layers straight from the store (no flattening)
//! and gives the installed Debian packages with the layer that brought
//! each, their DEP-5 licences, and every regular file no package owns.
//! [`Sbom`] joins that with what the build knows (which step each layer
//! is, the .deb sha256s of the lockfile) and writes it as SPDX 2.3 JSON
//! ([`spdx`]) or CycloneDX 1.6 JSON ([`cyclonedx`]); [`provenance`] writes
//! the in-toto SLSA v1 statement of a build; [`attach`] makes both into
//! OCI 1.1 artifacts whose `subject` is the image, for registries and
//! layouts. Every document is a function of the image and the epoch: no
//! clock, no random ids, everything sorted.

pub mod attach;
pub mod copyright;
pub mod cyclonedx;
pub mod dpkg;
pub mod provenance;
pub mod scan;
pub mod spdx;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

pub use scan::{scan, Contents, UnownedFile};

use crate::oci::Digest;

#[derive(Debug, thiserror::Error)]
pub enum SbomError {
    #[error("reading layer {layer} from the store")]
    Blob {
        layer: Digest,
        #[source]
        source: crate::store::StoreError,
    },
    #[error("reading the tar of layer {layer}")]
    Layer {
        layer: Digest,
        #[source]
        source: std::io::Error,
    },
}

/// The SBOM formats `--sbom-format` / `--format` accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Format {
    #[default]
    Spdx,
    CycloneDx,
}

impl Format {
    pub const ALL: [Format; 2] = [Format::Spdx, Format::CycloneDx];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Spdx => "spdx",
            Format::CycloneDx => "cyclonedx",
        }
    }

    /// The artifactType (and blob media type) registries file it under.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Spdx => "application/spdx+json",
            Format::CycloneDx => "application/vnd.cyclonedx+json",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| format!("unknown SBOM format {s:?} (one of: spdx, cyclonedx)"))
    }
}

/// What the SBOM says about the image as a whole and where its layers
/// came from; the rest is read from the layers.
#[derive(Debug, Clone)]
pub struct Described {
    /// How the image is named to users (`127.0.0.1:5000/products/gateway:1`,
    /// `build:gateway`).
    pub name: String,
    /// The image's manifest digest.
    pub digest: Digest,
    /// Seconds since 1970: the image's epoch, never the clock.
    pub created: i64,
    /// Per layer, bottom first: which step made it
    /// (`Buildfile:3 INSTALL openssh-server curl`, `FROM …@sha256:…`).
    pub layer_origins: Vec<String>,
    /// `.deb` sha256 by (name, version, architecture), where a lockfile
    /// knows it.
    pub deb_sha256: BTreeMap<(String, String, String), String>,
}

impl Described {
    /// Layers described only by their position (an image tplbuild did not make).
    pub fn plain(name: String, image: &crate::image::Image) -> Self {
        let created = image
            .config
            .created
            .as_deref()
            .and_then(crate::epoch::parse_rfc3339)
            .unwrap_or(0);
        Described {
            name,
            digest: image.digest(),
            created,
            layer_origins: image
                .layers()
                .iter()
                .enumerate()
                .map(|(i, l)| format!("layer {} ({})", i + 1, l.digest))
                .collect(),
            deb_sha256: BTreeMap::new(),
        }
    }

    fn origin(&self, layer: usize) -> String {
        self.layer_origins
            .get(layer)
            .cloned()
            .unwrap_or_else(|| format!("layer {}", layer + 1))
    }
}

/// One image's bill of materials, ready to be written in either format.
#[derive(Debug, Clone)]
pub struct Sbom {
    pub described: Described,
    pub contents: Contents,
}

/// A package as both writers present it.
struct PackageView<'a> {
    p: &'a dpkg::Installed,
    purl: String,
    step: String,
    licence: Option<String>,
    deb_sha256: Option<&'a String>,
}

impl Sbom {
    pub fn render(&self, format: Format) -> Vec<u8> {
        let doc = match format {
            Format::Spdx => spdx::document(self),
            Format::CycloneDx => cyclonedx::document(self),
        };
        let mut out = serde_json::to_vec_pretty(&doc).expect("JSON serialises");
        out.push(b'\n');
        out
    }

    fn packages(&self) -> impl Iterator<Item = PackageView<'_>> {
        let distro = self.contents.distro.as_deref().unwrap_or("debian");
        self.contents.packages.iter().map(move |(p, layer)| {
            let key = (p.name.clone(), p.version.clone(), p.architecture.clone());
            PackageView {
                p,
                purl: purl(p, distro),
                step: self.described.origin(*layer),
                licence: self
                    .contents
                    .licences
                    .get(&p.name)
                    .map(|l| l.iter().cloned().collect::<Vec<_>>().join(" AND ")),
                deb_sha256: self.described.deb_sha256.get(&key),
            }
        })
    }

    fn timestamp(&self) -> String {
        crate::epoch::rfc3339(self.described.created)
    }
}

/// Write a rendered SBOM to `dest` (a temp file beside it, renamed into
/// place: never half-written).
pub fn write_file(bytes: &[u8], dest: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".sbom-")
        .tempfile_in(parent)
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("creating a temp file in {}: {e}", parent.display()),
            )
        })?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dest).map_err(|e| {
        std::io::Error::new(
            e.error.kind(),
            format!("writing {}: {}", dest.display(), e.error),
        )
    })?;
    Ok(())
}

/// `pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-12`, with the
/// version percent-encoded as the purl spec asks (`:` of an epoch, `+`).
pub fn purl(p: &dpkg::Installed, distro: &str) -> String {
    let mut version = String::new();
    for b in p.version.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            version.push(b as char);
        } else {
            version.push_str(&format!("%{b:02X}"));
        }
    }
    format!(
        "pkg:deb/debian/{}@{}?arch={}&distro={}",
        p.name, version, p.architecture, distro
    )
}

/// The tplbuild that wrote a document.
fn tool() -> String {
    format!("tplbuild-{}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
pub(crate) mod tests;
