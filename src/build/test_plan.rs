//! What the build's unit tests share: a plan on an empty template that
//! needs no registry, and a registry client that retries nothing.

use std::collections::BTreeMap;
use std::path::Path;

use crate::image::Image;
use crate::oci::{ImageConfig, Platform};
use crate::plan::Plan;
use crate::registry::{Client, CredentialSource, RegistrySettings};
use crate::transfer::{BlobSource, Resolved};

/// Write `FROM 127.0.0.1:9/base:1` + `body` as `dir/Buildfile` and plan it
/// on an empty linux/amd64 template held in the store.
pub(super) fn plan_in(dir: &Path, body: &str) -> Plan {
    let path = dir.join("Buildfile");
    let src = format!("FROM 127.0.0.1:9/base:1\n{body}");
    fs_err::write(&path, &src).unwrap();
    let bf = crate::buildfile::parse_str(&path, &src, &BTreeMap::new()).unwrap();
    let image = Image::empty(ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        ..Default::default()
    });
    let base = Resolved {
        pinned: format!("127.0.0.1:9/base:1@{}", image.digest()),
        image,
        source: BlobSource::Store,
    };
    let platform = Platform::parse("linux/amd64").unwrap();
    crate::plan::make(bf, base, platform, &BTreeMap::new()).unwrap()
}

/// A client for `host` (plain HTTP) that fails at once rather than retry.
pub(super) fn client_for(host: &str) -> Client {
    let settings = RegistrySettings {
        max_retries: 0,
        ..RegistrySettings::default().with_insecure(host)
    };
    Client::with_credentials(settings, CredentialSource::None).unwrap()
}
