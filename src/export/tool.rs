//! Running Debian's filesystem tools: found on PATH or in the sbin folders
//! (a non-root PATH often lacks them), run with a pinned environment, and
//! failing with the package to install or the tool's own last words.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::ExportError;

/// A tool and the Debian package that ships it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub name: &'static str,
    pub package: &'static str,
}

pub const MKE2FS: Tool = Tool {
    name: "mke2fs",
    package: "e2fsprogs",
};
pub const MKFS_EROFS: Tool = Tool {
    name: "mkfs.erofs",
    package: "erofs-utils",
};
pub const MKSQUASHFS: Tool = Tool {
    name: "mksquashfs",
    package: "squashfs-tools",
};
pub const SFDISK: Tool = Tool {
    name: "sfdisk",
    package: "fdisk",
};
pub const MKFS_VFAT: Tool = Tool {
    name: "mkfs.vfat",
    package: "dosfstools",
};
/// Same package as mkfs.vfat, which has no version flag.
pub const FATLABEL: Tool = Tool {
    name: "fatlabel",
    package: "dosfstools",
};
pub const MMD: Tool = Tool {
    name: "mmd",
    package: "mtools",
};
pub const MCOPY: Tool = Tool {
    name: "mcopy",
    package: "mtools",
};
pub const MKSWAP: Tool = Tool {
    name: "mkswap",
    package: "util-linux",
};
pub const QEMU_IMG: Tool = Tool {
    name: "qemu-img",
    package: "qemu-utils",
};

impl Tool {
    /// The tool's path, or [`ExportError::ToolMissing`].
    pub fn find(&self) -> Result<PathBuf, ExportError> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
            .map(|d| d.join(self.name))
            .find(|p| is_executable(p))
            .ok_or(ExportError::ToolMissing {
                tool: self.name,
                package: self.package,
            })
    }

    /// A command for the tool with a clean locale, so its messages and
    /// number formats do not vary with the user's.
    pub fn command(&self) -> Result<Command, ExportError> {
        let mut cmd = Command::new(self.find()?);
        cmd.env("LC_ALL", "C").stdin(Stdio::null());
        Ok(cmd)
    }

    /// Run to completion; stdout on success, else the tail of stderr.
    pub fn run(&self, mut cmd: Command, dest: &Path) -> Result<Vec<u8>, ExportError> {
        tracing::debug!(tool = self.name, ?cmd, "running");
        let out = cmd.output().map_err(|source| ExportError::ToolSpawn {
            tool: self.name,
            source,
        })?;
        if !out.status.success() {
            let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
            if text.trim().is_empty() {
                text = String::from_utf8_lossy(&out.stdout).into_owned();
            }
            return Err(ExportError::ToolFailed {
                tool: self.name,
                dest: dest.to_path_buf(),
                status: out.status.to_string(),
                stderr: tail(&text, 12),
            });
        }
        Ok(out.stdout)
    }

    /// The tool's version line, for the export cache key: another version
    /// may lay out the same tree differently. `None` if it cannot be run.
    pub fn version(&self, args: &[&str]) -> Option<String> {
        let out = self.command().ok()?.args(args).output().ok()?;
        let text = [out.stdout, out.stderr].concat();
        let text = String::from_utf8_lossy(&text);
        text.lines()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_string())
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs_err::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The last `n` non-empty lines, joined: a tool's error is at its end.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_names_its_debian_package() {
        let t = Tool {
            name: "mkfs.tplbuild-no-such-tool",
            package: "tplbuild-tools",
        };
        let e = t.find().unwrap_err().to_string();
        assert!(e.contains("mkfs.tplbuild-no-such-tool"), "{e}");
        assert!(
            e.contains("install the Debian package tplbuild-tools"),
            "{e}"
        );
    }

    #[test]
    fn a_failing_tool_reports_the_end_of_its_stderr() {
        let t = Tool {
            name: "sh",
            package: "dash",
        };
        let mut cmd = t.command().unwrap();
        cmd.args(["-c", "echo noise >&2; echo 'the real reason' >&2; exit 3"]);
        let e = t.run(cmd, Path::new("/x")).unwrap_err().to_string();
        assert!(e.contains("the real reason"), "{e}");
        assert!(e.contains("exit status: 3"), "{e}");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\n\nb\nc\n", 2), "b\nc");
    }
}
