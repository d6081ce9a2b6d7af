//! tplbuild's own registry settings: which registries may be reached over
//! plain HTTP, which mirrors to try first when pulling, extra CA files and
//! how often to retry, and which keys must have signed the templates a
//! Buildfile may start from (`require_signed`, checked by
//! [`crate::sign::check_from`]).
//!
//! They come from `registries.toml` (see `registry-config/registries.toml`
//! for an example); the CLI adds `--insecure-registry` on top. The
//! [`Client`](super::Client) reads them once, when it is built.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::RegistryError;

/// How the client may reach registries.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySettings {
    /// `host:port` registries allowed over plain HTTP. Loopback registries
    /// are not implied: they must be named here too.
    pub insecure: Vec<String>,
    /// registry -> mirror hosts tried first, in order (pull only).
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Retries after the first attempt for transient failures.
    pub max_retries: u32,
    /// PEM files with extra CA certificates, on top of the system store
    /// (and of `$TPLBUILD_CA_FILE`).
    pub ca_files: Vec<PathBuf>,
    /// Repository prefix (`HOST`, `HOST/PATH`, `HOST/PATH/*`) -> public
    /// keys (PEM), any one of which must have signed a FROM image there.
    /// Relative paths are relative to the settings file.
    pub require_signed: BTreeMap<String, Vec<PathBuf>>,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            insecure: Vec::new(),
            mirrors: BTreeMap::new(),
            max_retries: 4,
            ca_files: Vec::new(),
            require_signed: BTreeMap::new(),
        }
    }
}

impl RegistrySettings {
    /// Load `$TPLBUILD_CONFIG_DIR/registries.toml` or
    /// `~/.config/tplbuild/registries.toml` if present, else the defaults.
    pub fn load() -> Result<Self, RegistryError> {
        match Self::default_path() {
            Some(path) if path.is_file() => Self::load_from(&path),
            _ => Ok(Self::default()),
        }
    }

    /// Where [`load`](Self::load) looks.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("TPLBUILD_CONFIG_DIR") {
            return Some(PathBuf::from(dir).join("registries.toml"));
        }
        std::env::var_os("HOME")
            .map(|home| PathBuf::from(home).join(".config/tplbuild/registries.toml"))
    }

    pub fn load_from(path: &Path) -> Result<Self, RegistryError> {
        let text = fs_err::read_to_string(path).map_err(RegistryError::Io)?;
        let mut settings = Self::parse(&text).map_err(|source| RegistryError::Settings {
            path: path.to_path_buf(),
            source,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        for keys in settings.require_signed.values_mut() {
            for k in keys.iter_mut() {
                *k = dir.join(&*k);
            }
        }
        Ok(settings)
    }

    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The same settings with one more insecure registry (`--insecure-registry`).
    pub fn with_insecure(mut self, host_port: impl Into<String>) -> Self {
        let h = host_port.into();
        if !self.insecure.contains(&h) {
            self.insecure.push(h);
        }
        self
    }

    pub fn is_insecure(&self, registry: &str) -> bool {
        self.insecure.iter().any(|h| h == registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_settings_file_parses() {
        let text = include_str!("../../registry-config/registries.toml");
        let s = RegistrySettings::parse(text).unwrap();
        assert!(s.is_insecure("127.0.0.1:5000"));
        assert_eq!(s.mirrors["docker.io"], vec!["127.0.0.1:5000".to_string()]);
        assert_eq!(s.max_retries, 4);
    }

    #[test]
    fn signing_keys_are_found_beside_the_settings_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registries.toml");
        fs_err::write(
            &path,
            "[require_signed]\n\"127.0.0.1:5000/platform/*\" = [\"platform.pub\", \"/etc/k.pub\"]\n",
        )
        .unwrap();
        let s = RegistrySettings::load_from(&path).unwrap();
        assert_eq!(
            s.require_signed["127.0.0.1:5000/platform/*"],
            vec![dir.path().join("platform.pub"), PathBuf::from("/etc/k.pub")]
        );
    }

    #[test]
    fn empty_settings_are_the_defaults() {
        assert_eq!(
            RegistrySettings::parse("").unwrap(),
            RegistrySettings::default()
        );
    }

    #[test]
    fn unknown_keys_are_rejected_so_typos_do_not_silently_do_nothing() {
        assert!(RegistrySettings::parse("insecur = [\"a:1\"]").is_err());
    }
}
