//! dpkg's own records, read as text: the status database (which packages
//! are installed, from which source package), the `info/*.list` file lists
//! and the diversions (which paths a package owns), and os-release (the
//! distro in a purl). Only what the SBOM needs; nothing here runs dpkg.

use std::collections::BTreeSet;

/// One installed package as dpkg's status file records it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Installed {
    pub name: String,
    pub architecture: String,
    pub version: String,
    /// The source package; dpkg leaves `Source:` out when it equals the
    /// binary name.
    pub source: String,
    /// The source version; `Source: NAME (VERSION)` gives it when it
    /// differs from the binary's.
    pub source_version: String,
}

/// Packages whose Status is `install ok installed`, sorted by name and
/// architecture.
pub fn installed(status: &str) -> Vec<Installed> {
    let mut out = vec![];
    for para in status.split("\n\n") {
        let field = |key: &str| {
            para.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .map(str::trim)
        };
        let (Some(name), Some(version), Some(st)) =
            (field("Package"), field("Version"), field("Status"))
        else {
            continue;
        };
        if !st.ends_with(" installed") {
            continue;
        }
        let (source, source_version) = match field("Source") {
            Some(s) => match s.split_once(' ') {
                Some((n, v)) => (
                    n.to_string(),
                    v.trim()
                        .trim_start_matches('(')
                        .trim_end_matches(')')
                        .to_string(),
                ),
                None => (s.to_string(), version.to_string()),
            },
            None => (name.to_string(), version.to_string()),
        };
        out.push(Installed {
            name: name.to_string(),
            architecture: field("Architecture").unwrap_or("").to_string(),
            version: version.to_string(),
            source,
            source_version,
        });
    }
    out.sort();
    out
}

/// The package a `var/lib/dpkg/info/NAME[:ARCH].list` file belongs to.
pub fn list_owner(path: &[u8]) -> Option<&str> {
    let name = std::str::from_utf8(path.strip_prefix(b"var/lib/dpkg/info/")?).ok()?;
    let name = name.strip_suffix(".list")?;
    Some(name.split(':').next().unwrap_or(name))
}

/// The paths a `.list` file names, relative (`/usr/bin/ssh` → `usr/bin/ssh`).
pub fn list_paths(list: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    list.split(|&b| b == b'\n')
        .map(crate::layer::clean_path)
        .filter(|p| !p.is_empty())
}

/// The paths `var/lib/dpkg/diversions` moved files to: dpkg records
/// (from, to, package) triples; the `to` path holds a package's file.
pub fn diverted_to(diversions: &[u8]) -> BTreeSet<Vec<u8>> {
    let lines: Vec<&[u8]> = diversions.split(|&b| b == b'\n').collect();
    lines
        .chunks(3)
        .filter(|c| c.len() == 3)
        .map(|c| crate::layer::clean_path(c[1]))
        .collect()
}

/// `debian-12` from os-release's `ID` and `VERSION_ID` (`debian` alone for
/// testing/sid, which have no VERSION_ID).
pub fn distro(os_release: &str) -> Option<String> {
    let get = |k: &str| {
        os_release.lines().find_map(|l| {
            let v = l.strip_prefix(k)?.strip_prefix('=')?;
            Some(v.trim().trim_matches('"').to_string())
        })
    };
    let id = get("ID")?;
    Some(match get("VERSION_ID") {
        Some(v) => format!("{id}-{v}"),
        None => id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Package: libssl3\nStatus: install ok installed\nArchitecture: amd64\n\
Source: openssl\nVersion: 3.0.15-1~deb12u1\n\n\
Package: openssh-server\nStatus: install ok installed\nArchitecture: amd64\n\
Source: openssh\nVersion: 1:9.2p1-2+deb12u3\n\n\
Package: libgcc-s1\nStatus: install ok installed\nArchitecture: amd64\n\
Source: gcc-12 (12.2.0-14)\nVersion: 12.2.0-14+deb12u1\n\n\
Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n\n\
Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2+b7\n";

    #[test]
    fn installed_packages_with_their_source() {
        let p = installed(STATUS);
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["bash", "libgcc-s1", "libssl3", "openssh-server"]);
        assert_eq!(
            (p[0].source.as_str(), p[0].source_version.as_str()),
            ("bash", "5.2.15-2+b7")
        );
        assert_eq!(
            (p[1].source.as_str(), p[1].source_version.as_str()),
            ("gcc-12", "12.2.0-14")
        );
        assert_eq!(p[2].source_version, "3.0.15-1~deb12u1");
        assert_eq!(p[3].version, "1:9.2p1-2+deb12u3");
    }

    #[test]
    fn list_files_name_their_package_and_paths() {
        assert_eq!(
            list_owner(b"var/lib/dpkg/info/libc6:amd64.list"),
            Some("libc6")
        );
        assert_eq!(list_owner(b"var/lib/dpkg/info/bash.list"), Some("bash"));
        assert_eq!(list_owner(b"var/lib/dpkg/info/bash.md5sums"), None);
        let paths: Vec<Vec<u8>> = list_paths(b"/.\n/bin\n/bin/bash\n").collect();
        assert_eq!(paths, [b"bin".to_vec(), b"bin/bash".to_vec()]);
    }

    #[test]
    fn diversions_give_the_new_paths() {
        let d = diverted_to(b"/bin/sh\n/bin/sh.distrib\ndash\n/usr/bin/x\n/usr/bin/x.real\nfoo\n");
        assert!(d.contains(b"bin/sh.distrib".as_slice()));
        assert!(d.contains(b"usr/bin/x.real".as_slice()));
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn distro_from_os_release() {
        let os = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\nID=debian\n";
        assert_eq!(distro(os).as_deref(), Some("debian-12"));
        assert_eq!(distro("ID=debian\n").as_deref(), Some("debian"));
    }
}
