//! Template images: the base-platform team's side. `import` turns a rootfs
//! (folder or tarball) into a plain OCI image with one deterministic layer,
//! annotations describing the Debian release, and the dpkg package list in
//! the config so `inspect` can show it without pulling the layer.

pub mod rootfs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::image::{keys, package_lines, Image};
use crate::layer::{self, LayerOptions};
use crate::oci::{Compression, Descriptor, ImageConfig, Platform, RootFs, RuntimeConfig};
use crate::store::Store;
use rootfs::RootfsInfo;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{path} does not exist")]
    Missing { path: PathBuf },
    #[error("{path} is not a rootfs: it has no etc/os-release or usr/lib/os-release")]
    NotARootfs { path: PathBuf },
    #[error("{path} is neither a folder nor a tarball (.tar, .tar.gz, .tar.zst, .tar.xz)")]
    UnknownSource { path: PathBuf },
    #[error("the rootfs is {found} but --platform asked for {wanted}")]
    PlatformMismatch { found: String, wanted: String },
    #[error("unpacking {path}")]
    Unpack {
        path: PathBuf,
        #[source]
        source: layer::LayerError,
    },
    #[error("writing the template layer")]
    Layer(#[source] layer::LayerError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub struct ImportOptions {
    pub annotations: BTreeMap<String, String>,
    pub platform: Option<Platform>,
    /// Import even if the source does not look like a rootfs.
    pub force: bool,
    pub compression: Compression,
}

pub struct Imported {
    pub image: Image,
    pub info: RootfsInfo,
    pub warnings: Vec<String>,
}

/// Build the template image from `source` into the store (blocking: call
/// from `spawn_blocking`).
pub fn import(
    store: &Store,
    source: &Path,
    opts: &ImportOptions,
) -> Result<Imported, TemplateError> {
    let meta = fs_err::metadata(source).map_err(|_| TemplateError::Missing {
        path: source.to_path_buf(),
    })?;
    // A tarball is unpacked (safely) into a folder in the store first: the
    // layer writer sorts entries, which needs the whole tree.
    let unpacked;
    let root: &Path = if meta.is_dir() {
        source
    } else if meta.is_file() {
        unpacked = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(store.tmp_dir())?;
        let file = fs_err::File::open(source)?;
        let tar = layer::decompress(file.into_parts().0)?;
        layer::apply_layer(tar, unpacked.path()).map_err(|source_err| TemplateError::Unpack {
            path: source.to_path_buf(),
            source: source_err,
        })?;
        unpacked.path()
    } else {
        return Err(TemplateError::UnknownSource {
            path: source.to_path_buf(),
        });
    };

    let info = RootfsInfo::read(root);
    let mut warnings = vec![];
    if !info.has_os_release() {
        if !opts.force {
            return Err(TemplateError::NotARootfs {
                path: source.to_path_buf(),
            });
        }
        warnings.push(format!(
            "{} has no os-release; importing it anyway (--force)",
            source.display()
        ));
    }
    let found = info.platform();
    let platform = match (&opts.platform, &found) {
        (Some(want), Some(f)) if !want.matches(f) => {
            return Err(TemplateError::PlatformMismatch {
                found: f.to_string(),
                wanted: want.to_string(),
            })
        }
        (Some(want), _) => want.clone(),
        (None, Some(f)) => f.clone(),
        (None, None) => {
            warnings.push("no dpkg architecture found; using the host's platform".into());
            Platform::host()
        }
    };

    let epoch = source_date_epoch();
    let layer_opts = LayerOptions {
        epoch,
        compression: opts.compression,
        drop_volatile: false,
        hygiene: layer::Hygiene::keep_all(),
        exclude: vec![],
    };
    let mut writer = store.blob_writer()?;
    let written = layer::write_dir(root, &mut writer, &layer_opts).map_err(TemplateError::Layer)?;
    writer.commit(Some((&written.digest, written.size)))?;
    crate::stage::remember_uncompressed_size(store, &written.diff_id, written.uncompressed_size);

    // `created` must not depend on when the import ran, or importing the
    // same source twice would give two digests: SOURCE_DATE_EPOCH, else the
    // time dpkg last wrote its database (the end of the bootstrap).
    let created_secs = epoch
        .or(info.dpkg_mtime.map(|m| epoch.map_or(m, |e| m.min(e))))
        .unwrap_or(0);
    let created = rfc3339(created_secs);

    let mut labels = BTreeMap::new();
    if !info.packages.is_empty() {
        labels.insert(keys::PACKAGES.to_string(), package_lines(&info.packages));
    }
    let config = ImageConfig {
        created: Some(created.clone()),
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        variant: platform.variant.clone(),
        config: Some(RuntimeConfig {
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cmd: Some(vec!["/bin/sh".into()]),
            labels,
            ..Default::default()
        }),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![written.diff_id.clone()],
        },
        history: vec![],
    };
    let mut annotations = BTreeMap::new();
    annotations.insert(keys::CREATED.to_string(), created);
    if let Some(s) = &info.suite {
        annotations.insert(keys::SUITE.to_string(), s.clone());
    }
    if let Some(a) = &info.dpkg_arch {
        annotations.insert(keys::ARCH.to_string(), a.clone());
    }
    if let Some(o) = &info.os_id {
        annotations.insert(keys::OS_ID.to_string(), o.clone());
    }
    annotations.insert(
        keys::PACKAGE_COUNT.to_string(),
        info.packages.len().to_string(),
    );
    let apt_sources = crate::plan::apt::sources_in_dir(root);
    if !apt_sources.is_empty() {
        annotations.insert(
            keys::APT_SOURCES.to_string(),
            serde_json::to_string(&apt_sources).expect("sources serialise"),
        );
    }
    annotations.extend(opts.annotations.clone());
    let layer_desc = Descriptor::new(
        written.media_type.clone(),
        written.digest.clone(),
        written.size,
    );
    let image = Image::assemble(config, vec![layer_desc], annotations);
    crate::transfer::store_image(store, &image)?;
    Ok(Imported {
        image,
        info,
        warnings,
    })
}

pub use crate::epoch::{parse_rfc3339, rfc3339, source_date_epoch};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339(&rfc3339(1_700_000_000)), Some(1_700_000_000));
    }
}
