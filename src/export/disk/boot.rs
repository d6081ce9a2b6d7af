//! What a disk boots, taken from the image itself: the newest
//! `/boot/vmlinuz-*` with its `/boot/initrd.img-*`, systemd-boot's EFI
//! binary, and a Boot Loader Specification entry whose command line names
//! the root partition by PARTUUID.
//!
//! The tree is an image's content, so hostile input: every file is reached
//! without following a symlink (a link to `/etc/shadow` must not put the
//! build machine's file on the ESP).

use std::path::{Component, Path, PathBuf};

use super::DiskError;

/// What the CPU architecture decides: the DPS root type, the EFI file
/// names and the packages to name in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arch {
    /// Debian's name: `amd64`, `arm64`.
    pub debian: &'static str,
    /// Discoverable Partitions Specification root type for this arch.
    pub root_type: &'static str,
    /// systemd-boot's binary in the image.
    pub systemd_boot: &'static str,
    /// The removable-media path firmware boots without an NVRAM entry.
    pub efi_default: &'static str,
}

pub const AMD64: Arch = Arch {
    debian: "amd64",
    root_type: "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
    systemd_boot: "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
    efi_default: "EFI/BOOT/BOOTX64.EFI",
};

pub const ARM64: Arch = Arch {
    debian: "arm64",
    root_type: "b921b045-1df0-41c3-af44-4c6f280d3fae",
    systemd_boot: "usr/lib/systemd/boot/efi/systemd-bootaa64.efi",
    efi_default: "EFI/BOOT/BOOTAA64.EFI",
};

impl Arch {
    /// The arch for an OCI `architecture` (which is Go's name).
    pub fn from_oci(arch: &str) -> Result<Arch, DiskError> {
        match arch {
            "amd64" => Ok(AMD64),
            "arm64" => Ok(ARM64),
            other => Err(DiskError::UnsupportedArch {
                arch: other.to_string(),
            }),
        }
    }

    pub fn kernel_package(&self) -> String {
        format!("linux-image-{}", self.debian)
    }
}

/// The files of one boot: host paths inside the flattened tree, and the
/// entry that names them on the ESP.
#[derive(Debug, Clone)]
pub struct Boot {
    pub version: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub efi: PathBuf,
    pub title: String,
}

impl Boot {
    /// Find the kernel, its initrd and systemd-boot in `rootfs`.
    pub fn find(rootfs: &Path, arch: Arch) -> Result<Boot, DiskError> {
        let boot = inside(rootfs, "boot")?;
        let mut versions: Vec<String> = match fs_err::read_dir(&boot) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("vmlinuz-"))
                        .map(str::to_string)
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        versions.sort_by_key(|v| natural_key(v));
        let version = versions.pop().ok_or_else(|| DiskError::NoKernel {
            package: arch.kernel_package(),
        })?;
        let kernel =
            regular_file(rootfs, &format!("boot/vmlinuz-{version}"))?.ok_or_else(|| {
                DiskError::NoKernel {
                    package: arch.kernel_package(),
                }
            })?;
        let initrd =
            regular_file(rootfs, &format!("boot/initrd.img-{version}"))?.ok_or_else(|| {
                DiskError::NoInitrd {
                    version: version.clone(),
                }
            })?;
        let efi = regular_file(rootfs, arch.systemd_boot)?.ok_or(DiskError::NoBootloader {
            path: arch.systemd_boot,
        })?;
        // /etc/os-release is a link to this file on Debian.
        let title = ["usr/lib/os-release", "etc/os-release"]
            .iter()
            .find_map(|p| regular_file(rootfs, p).ok().flatten())
            .and_then(|p| fs_err::read_to_string(p).ok())
            .and_then(|s| pretty_name(&s))
            .unwrap_or_else(|| "Linux".into());
        Ok(Boot {
            version,
            kernel,
            initrd,
            efi,
            title,
        })
    }

    /// Names on the ESP (kernel, initrd), relative to its root.
    pub fn esp_kernel(&self) -> String {
        format!("vmlinuz-{}", self.version)
    }

    pub fn esp_initrd(&self) -> String {
        format!("initrd.img-{}", self.version)
    }

    /// The name of the entry file under `loader/entries/`.
    pub fn entry_name(&self) -> String {
        format!("tplbuild-{}.conf", self.version)
    }

    /// The Boot Loader Specification entry.
    pub fn entry(&self, options: &str) -> String {
        format!(
            "title {}\nversion {}\nlinux /{}\ninitrd /{}\noptions {}\n",
            self.title,
            self.version,
            self.esp_kernel(),
            self.esp_initrd(),
            options
        )
    }

    /// systemd-boot's `loader.conf`: boot the entry at once.
    pub fn loader_conf(&self) -> String {
        format!("default {}\ntimeout 0\n", self.entry_name())
    }
}

/// The kernel command line: the root partition, then the image's
/// `/etc/kernel/cmdline` (the kernel-install convention), then the
/// output's `cmdline=`.
pub fn command_line(
    rootfs: &Path,
    root_partuuid: &str,
    read_only: bool,
    extra: Option<&str>,
) -> Result<String, DiskError> {
    let mut parts = vec![
        format!("root=PARTUUID={root_partuuid}"),
        if read_only { "ro" } else { "rw" }.to_string(),
    ];
    if let Some(p) = regular_file(rootfs, "etc/kernel/cmdline")? {
        let text = fs_err::read_to_string(&p).map_err(DiskError::Io)?;
        parts.extend(text.split_whitespace().map(str::to_string));
    }
    if let Some(extra) = extra {
        parts.extend(extra.split_whitespace().map(str::to_string));
    }
    Ok(parts.join(" "))
}

/// `PRETTY_NAME` of an os-release file.
fn pretty_name(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|l| {
        let v = l.strip_prefix("PRETTY_NAME=")?;
        let v = v.trim().trim_matches('"').trim_matches('\'');
        (!v.is_empty() && !v.contains(['\n', '\0'])).then(|| v.to_string())
    })
}

/// `rel` under `root` with no symlink on the way: the host path, or an
/// error if a component is a link.
fn inside(root: &Path, rel: &str) -> Result<PathBuf, DiskError> {
    let mut p = root.to_path_buf();
    for c in Path::new(rel).components() {
        let Component::Normal(name) = c else {
            return Err(DiskError::Unsafe {
                path: rel.to_string(),
            });
        };
        p.push(name);
        if let Ok(m) = fs_err::symlink_metadata(&p) {
            if m.file_type().is_symlink() {
                return Err(DiskError::Unsafe {
                    path: rel.to_string(),
                });
            }
        }
    }
    Ok(p)
}

/// `rel` if it is a regular file reached without symlinks, `None` if it
/// is absent.
fn regular_file(root: &Path, rel: &str) -> Result<Option<PathBuf>, DiskError> {
    let p = inside(root, rel)?;
    match fs_err::symlink_metadata(&p) {
        Ok(m) if m.is_file() => Ok(Some(p)),
        Ok(_) => Err(DiskError::Unsafe {
            path: rel.to_string(),
        }),
        Err(_) => Ok(None),
    }
}

/// Version order for `6.1.0-9-amd64` < `6.1.0-10-amd64`: digit runs
/// compare as numbers.
fn natural_key(s: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 {
            out.push((rest[..digits].parse().unwrap_or(u64::MAX), String::new()));
            rest = &rest[digits..];
        } else {
            let text = rest.len() - rest.trim_start_matches(|c: char| !c.is_ascii_digit()).len();
            out.push((0, rest[..text].to_string()));
            rest = &rest[text..];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (p, body) in [
            ("boot/vmlinuz-6.1.0-9-amd64", "k9"),
            ("boot/initrd.img-6.1.0-9-amd64", "i9"),
            ("boot/vmlinuz-6.1.0-10-amd64", "k10"),
            ("boot/initrd.img-6.1.0-10-amd64", "i10"),
            (AMD64.systemd_boot, "efi"),
            (
                "etc/os-release",
                "NAME=x\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
            ),
        ] {
            let f = d.path().join(p);
            fs_err::create_dir_all(f.parent().unwrap()).unwrap();
            fs_err::write(f, body).unwrap();
        }
        d
    }

    #[test]
    fn finds_the_newest_kernel_its_initrd_and_systemd_boot() {
        let d = tree();
        let b = Boot::find(d.path(), AMD64).unwrap();
        assert_eq!(b.version, "6.1.0-10-amd64");
        assert_eq!(fs_err::read_to_string(&b.initrd).unwrap(), "i10");
        assert_eq!(b.title, "Debian GNU/Linux 12 (bookworm)");
        let entry = b.entry("root=PARTUUID=x rw");
        assert!(entry.contains("linux /vmlinuz-6.1.0-10-amd64\n"), "{entry}");
        assert!(
            entry.contains("initrd /initrd.img-6.1.0-10-amd64\n"),
            "{entry}"
        );
        assert!(b
            .loader_conf()
            .contains("default tplbuild-6.1.0-10-amd64.conf"));
    }

    #[test]
    fn no_kernel_names_the_package_to_install() {
        let d = tempfile::tempdir().unwrap();
        let e = Boot::find(d.path(), AMD64).unwrap_err().to_string();
        assert!(e.contains("INSTALL linux-image-amd64"), "{e}");
        let e = Boot::find(d.path(), ARM64).unwrap_err().to_string();
        assert!(e.contains("linux-image-arm64"), "{e}");
    }

    #[test]
    fn no_bootloader_names_systemd_boot_efi() {
        let d = tree();
        fs_err::remove_file(d.path().join(AMD64.systemd_boot)).unwrap();
        let e = Boot::find(d.path(), AMD64).unwrap_err().to_string();
        assert!(e.contains("systemd-boot-efi"), "{e}");
    }

    #[test]
    fn a_symlinked_kernel_is_refused_not_followed() {
        let d = tree();
        let k = d.path().join("boot/vmlinuz-6.1.0-10-amd64");
        fs_err::remove_file(&k).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", &k).unwrap();
        // The link is skipped as a candidate: the older, real kernel wins.
        let b = Boot::find(d.path(), AMD64).unwrap();
        assert_eq!(b.version, "6.1.0-9-amd64");
        // A linked folder on the way to the EFI binary is an error.
        let efi_dir = d.path().join("usr/lib/systemd/boot/efi");
        fs_err::remove_dir_all(&efi_dir).unwrap();
        std::os::unix::fs::symlink("/usr/lib", &efi_dir).unwrap();
        let e = Boot::find(d.path(), AMD64).unwrap_err();
        assert!(matches!(e, DiskError::Unsafe { .. }), "{e}");
    }

    #[test]
    fn command_line_is_root_then_image_file_then_option() {
        let d = tree();
        assert_eq!(
            command_line(d.path(), "abc", false, None).unwrap(),
            "root=PARTUUID=abc rw"
        );
        fs_err::create_dir_all(d.path().join("etc/kernel")).unwrap();
        fs_err::write(
            d.path().join("etc/kernel/cmdline"),
            "console=ttyS0\n  quiet\n",
        )
        .unwrap();
        assert_eq!(
            command_line(d.path(), "abc", true, Some("tplbuild.poweroff")).unwrap(),
            "root=PARTUUID=abc ro console=ttyS0 quiet tplbuild.poweroff"
        );
    }

    #[test]
    fn unknown_architectures_are_refused() {
        assert_eq!(Arch::from_oci("arm64").unwrap(), ARM64);
        assert!(Arch::from_oci("riscv64")
            .unwrap_err()
            .to_string()
            .contains("riscv64"));
    }
}
