//! Facts read from a rootfs folder: the Debian release and architecture
//! from os-release and dpkg, and the installed package list.

use std::path::Path;

use crate::image::Package;
use crate::oci::Platform;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootfsInfo {
    /// `ID` from os-release (`debian`).
    pub os_id: Option<String>,
    /// `VERSION_CODENAME` (`bookworm`), or the suite guessed from apt sources.
    pub suite: Option<String>,
    /// dpkg architecture (`amd64`, `arm64`, `armhf`…).
    pub dpkg_arch: Option<String>,
    /// Installed packages, sorted by name.
    pub packages: Vec<Package>,
    /// Seconds since the epoch of the last dpkg database write.
    pub dpkg_mtime: Option<i64>,
}

impl RootfsInfo {
    pub fn read(root: &Path) -> Self {
        let os_release = ["etc/os-release", "usr/lib/os-release"]
            .iter()
            .find_map(|p| read_regular(root, p));
        let field = |k: &str| {
            os_release.as_deref().and_then(|s| {
                s.lines().find_map(|l| {
                    let v = l.strip_prefix(k)?.strip_prefix('=')?;
                    Some(v.trim_matches('"').to_string())
                })
            })
        };
        let status = read_regular(root, "var/lib/dpkg/status").unwrap_or_default();
        let packages = parse_dpkg_status(&status);
        let dpkg_arch = packages
            .iter()
            .find(|p| p.name == "dpkg")
            .or_else(|| packages.iter().find(|p| p.architecture != "all"))
            .map(|p| p.architecture.clone());
        let dpkg_mtime = fs_err::symlink_metadata(root.join("var/lib/dpkg/status"))
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::mtime(&m));
        RootfsInfo {
            os_id: field("ID"),
            suite: field("VERSION_CODENAME").filter(|s| !s.is_empty()),
            dpkg_arch,
            packages,
            dpkg_mtime,
        }
    }

    pub fn has_os_release(&self) -> bool {
        self.os_id.is_some()
    }

    /// The OCI platform matching the dpkg architecture.
    pub fn platform(&self) -> Option<Platform> {
        self.dpkg_arch.as_deref().and_then(dpkg_arch_to_platform)
    }
}

/// Read a regular file inside `root` without following a symlink out of it.
fn read_regular(root: &Path, rel: &str) -> Option<String> {
    let path = root.join(rel);
    let meta = fs_err::symlink_metadata(&path).ok()?;
    if meta.file_type().is_symlink() {
        // os-release is commonly a relative link to ../usr/lib/os-release;
        // follow only links that stay inside the rootfs.
        let target = fs_err::read_link(&path).ok()?;
        if target.is_absolute() {
            return read_regular(root, target.strip_prefix("/").ok()?.to_str()?);
        }
        let joined = Path::new(rel).parent()?.join(target);
        let mut parts: Vec<&str> = vec![];
        for c in joined.to_str()?.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    parts.pop()?;
                }
                c => parts.push(c),
            }
        }
        let inner = parts.join("/");
        let m = fs_err::symlink_metadata(root.join(&inner)).ok()?;
        return m
            .is_file()
            .then(|| fs_err::read_to_string(root.join(inner)).ok())?;
    }
    meta.is_file().then(|| fs_err::read_to_string(path).ok())?
}

pub use crate::image::parse_dpkg_status;

pub fn dpkg_arch_to_platform(arch: &str) -> Option<Platform> {
    let (a, v) = match arch {
        "amd64" => ("amd64", None),
        "arm64" => ("arm64", None),
        "armhf" => ("arm", Some("v7")),
        "armel" => ("arm", Some("v5")),
        "i386" => ("386", None),
        "ppc64el" => ("ppc64le", None),
        "s390x" => ("s390x", None),
        "riscv64" => ("riscv64", None),
        "mips64el" => ("mips64le", None),
        _ => return None,
    };
    Some(Platform {
        architecture: a.into(),
        os: "linux".into(),
        variant: v.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Package: dpkg\nStatus: install ok installed\nArchitecture: arm64\nVersion: 1.21.22\n\nPackage: gone\nStatus: deinstall ok config-files\nArchitecture: arm64\nVersion: 1\n\nPackage: base-files\nStatus: install ok installed\nArchitecture: arm64\nVersion: 12.4+deb12u5\n";

    #[test]
    fn dpkg_status_lists_installed_packages_only_sorted() {
        let p = parse_dpkg_status(STATUS);
        let names: Vec<_> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["base-files", "dpkg"]);
    }

    #[test]
    fn rootfs_info_reads_suite_arch_through_relative_os_release_link() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs_err::create_dir_all(r.join("etc")).unwrap();
        fs_err::create_dir_all(r.join("usr/lib")).unwrap();
        fs_err::create_dir_all(r.join("var/lib/dpkg")).unwrap();
        fs_err::write(
            r.join("usr/lib/os-release"),
            "ID=debian\nVERSION_CODENAME=bookworm\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", r.join("etc/os-release")).unwrap();
        fs_err::write(r.join("var/lib/dpkg/status"), STATUS).unwrap();
        let info = RootfsInfo::read(r);
        assert_eq!(info.suite.as_deref(), Some("bookworm"));
        assert_eq!(info.os_id.as_deref(), Some("debian"));
        assert_eq!(info.platform().unwrap().to_string(), "linux/arm64");
        assert_eq!(info.packages.len(), 2);
    }

    #[test]
    fn os_release_link_out_of_the_rootfs_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        fs_err::create_dir_all(d.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(
            "../../../../../../etc/os-release",
            d.path().join("etc/os-release"),
        )
        .unwrap();
        assert!(!RootfsInfo::read(d.path()).has_os_release());
    }
}
