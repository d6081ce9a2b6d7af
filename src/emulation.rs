//! Can this machine's kernel run a foreign platform's binaries?
//!
//! A step for `linux/arm64` on an amd64 host runs only if the kernel hands
//! aarch64 ELF files to an emulator (qemu-user) through `binfmt_misc`. The
//! engine does not check this: the step's first `sh` fails with "exec
//! format error", deep in apt output. So before a foreign-platform step
//! runs on a local engine, [`check`] reads the handlers in
//! `/proc/sys/fs/binfmt_misc` (or `$TPLBUILD_BINFMT_DIR`, which tests
//! point at a folder of their own) and matches them by the ELF header they
//! claim, not by name (Debian says `qemu-aarch64`, other set-ups differ).
//! The handler must be enabled and registered with the `F` (fix-binary)
//! flag, without which the interpreter is looked up inside the container's
//! rootfs, where it is not.
//!
//! A remote engine (`tcp://`, `ssh://`) runs on another kernel that we
//! cannot read; there the check is skipped and an "exec format error" from
//! the step gets the same hint (see [`hint_for_output`]).

use std::path::{Path, PathBuf};

use crate::oci::Platform;

/// Where the kernel lists its handlers, unless `$TPLBUILD_BINFMT_DIR` says.
pub const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// What to install (Debian) for the handlers [`check`] looks for.
pub const INSTALL_HINT: &str = "install qemu-user-static and binfmt-support \
(`apt-get install qemu-user-static binfmt-support`; they register the qemu \
handlers with the F flag), or check them with `update-binfmts --display`";

#[derive(Debug, thiserror::Error)]
pub enum EmulationError {
    #[error("this machine cannot run {platform} steps: no enabled binfmt_misc handler for {elf} binaries in {dir}")]
    NoHandler {
        platform: String,
        elf: &'static str,
        dir: PathBuf,
    },
    #[error("the binfmt_misc handler {path} for {platform} lacks the F (fix-binary) flag, so it cannot run inside containers")]
    NoFixBinary { platform: String, path: PathBuf },
}

impl EmulationError {
    pub fn hint(&self) -> String {
        match self {
            EmulationError::NoHandler { .. } => INSTALL_HINT.to_string(),
            EmulationError::NoFixBinary { .. } => {
                format!("re-register it with the F flag; Debian's {INSTALL_HINT}")
            }
        }
    }
}

/// The ELF header fields that tell an architecture apart: class (1 = 32
/// bit, 2 = 64 bit), byte order (1 = little endian) and `e_machine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Elf {
    name: &'static str,
    class: u8,
    data: u8,
    machine: u16,
}

/// The ELF identity of an OCI architecture (`None`: not one we know).
fn elf_of(arch: &str) -> Option<Elf> {
    let (name, class, data, machine) = match arch {
        "amd64" => ("x86-64", 2, 1, 62),
        "386" => ("i386", 1, 1, 3),
        "arm64" => ("aarch64", 2, 1, 183),
        "arm" => ("arm", 1, 1, 40),
        "riscv64" => ("riscv64", 2, 1, 243),
        "ppc64le" => ("ppc64le", 2, 1, 21),
        "s390x" => ("s390x", 2, 2, 22),
        "mips64le" => ("mips64el", 2, 1, 8),
        _ => return None,
    };
    Some(Elf {
        name,
        class,
        data,
        machine,
    })
}

/// Whether `host` runs `target`'s binaries without help (the same
/// architecture, or 32-bit x86 on amd64).
pub fn is_native(target: &Platform, host: &Platform) -> bool {
    target.architecture == host.architecture
        || (host.architecture == "amd64" && target.architecture == "386")
}

/// The binfmt directory to read: `$TPLBUILD_BINFMT_DIR` or [`BINFMT_DIR`].
pub fn binfmt_dir() -> PathBuf {
    std::env::var_os("TPLBUILD_BINFMT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(BINFMT_DIR))
}

/// Check that the kernel can run `platform`'s binaries here, reading the
/// handlers in `dir`. Native platforms and architectures we cannot name an
/// ELF machine for pass (the engine has the last word on those).
pub fn check(platform: &Platform, host: &Platform, dir: &Path) -> Result<(), EmulationError> {
    if is_native(platform, host) {
        return Ok(());
    }
    let Some(elf) = elf_of(&platform.architecture) else {
        return Ok(());
    };
    let mut without_f = None;
    let entries = fs_err::read_dir(dir).into_iter().flatten().flatten();
    for entry in entries {
        let name = entry.file_name();
        if name == "register" || name == "status" {
            continue;
        }
        let Ok(text) = fs_err::read_to_string(entry.path()) else {
            continue;
        };
        let Some(h) = Handler::parse(&text) else {
            continue;
        };
        if !h.enabled || !h.claims(elf) {
            continue;
        }
        if h.fix_binary {
            return Ok(());
        }
        without_f = Some(entry.path());
    }
    match without_f {
        Some(path) => Err(EmulationError::NoFixBinary {
            platform: platform.to_string(),
            path,
        }),
        None => Err(EmulationError::NoHandler {
            platform: platform.to_string(),
            elf: elf.name,
            dir: dir.to_path_buf(),
        }),
    }
}

/// The hint for a step whose output says the kernel could not run it.
pub fn hint_for_output(line: &str) -> Option<&'static str> {
    line.contains("exec format error").then_some(INSTALL_HINT)
}

/// One `binfmt_misc` entry, as the kernel prints it:
/// `enabled`, `interpreter …`, `flags: PF`, `offset 0`, `magic …`, `mask …`.
#[derive(Debug, PartialEq, Eq)]
struct Handler {
    enabled: bool,
    fix_binary: bool,
    offset: usize,
    magic: Vec<u8>,
    mask: Option<Vec<u8>>,
}

impl Handler {
    fn parse(text: &str) -> Option<Handler> {
        let mut h = Handler {
            enabled: false,
            fix_binary: false,
            offset: 0,
            magic: vec![],
            mask: None,
        };
        for line in text.lines() {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "enabled" => h.enabled = true,
                "flags:" => h.fix_binary = value.contains('F'),
                "offset" => h.offset = value.trim().parse().ok()?,
                "magic" => h.magic = hex(value.trim())?,
                "mask" => h.mask = Some(hex(value.trim())?),
                _ => {}
            }
        }
        // An extension-based handler (no magic) never claims an ELF file.
        (!h.magic.is_empty()).then_some(h)
    }

    /// Whether this handler takes ELF files of `elf`'s kind: the header
    /// of such a file, masked, equals the magic.
    fn claims(&self, elf: Elf) -> bool {
        let mut header = [0u8; 20];
        header[..4].copy_from_slice(b"\x7fELF");
        header[4] = elf.class;
        header[5] = elf.data;
        header[6] = 1; // EI_VERSION
        let (etype, machine) = if elf.data == 2 {
            ([0, 2], elf.machine.to_be_bytes())
        } else {
            ([2, 0], elf.machine.to_le_bytes())
        };
        header[16..18].copy_from_slice(&etype);
        header[18..20].copy_from_slice(&machine);
        self.magic.iter().enumerate().all(|(i, m)| {
            let Some(b) = header.get(self.offset + i) else {
                return false;
            };
            let mask = self.mask.as_ref().and_then(|m| m.get(i)).copied();
            b & mask.unwrap_or(0xff) == *m
        })
    }
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AARCH64: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n";
    const ARM: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/arm-binfmt-P\nflags: PF\noffset 0\nmagic 7f454c4601010100000000000000000002002800\nmask ffffffffffffff00fffffffffffffffffeffffff\n";

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            fs_err::write(d.path().join(name), text).unwrap();
        }
        fs_err::write(d.path().join("status"), "enabled\n").unwrap();
        d
    }

    #[test]
    fn debian_handlers_claim_their_architecture_only() {
        let a = Handler::parse(AARCH64).unwrap();
        assert!(a.claims(elf_of("arm64").unwrap()));
        assert!(!a.claims(elf_of("arm").unwrap()));
        assert!(!a.claims(elf_of("riscv64").unwrap()));
        let b = Handler::parse(ARM).unwrap();
        assert!(b.claims(elf_of("arm").unwrap()));
        assert!(!b.claims(elf_of("arm64").unwrap()));
    }

    #[test]
    fn a_handler_under_any_name_passes_the_check() {
        let d = dir_with(&[("aarch64-from-elsewhere", AARCH64)]);
        let host = p("linux/amd64");
        check(&p("linux/arm64"), &host, d.path()).unwrap();
        let err = check(&p("linux/arm/v7"), &host, d.path()).unwrap_err();
        assert!(matches!(err, EmulationError::NoHandler { elf: "arm", .. }));
    }

    #[test]
    fn an_empty_binfmt_dir_gives_the_install_hint() {
        let d = tempfile::tempdir().unwrap();
        let err = check(&p("linux/arm64"), &p("linux/amd64"), d.path()).unwrap_err();
        assert!(err.to_string().contains("linux/arm64"), "{err}");
        assert!(err.hint().contains("qemu-user-static"), "{}", err.hint());
    }

    #[test]
    fn disabled_or_without_f_flag_is_refused() {
        let disabled = AARCH64.replace("enabled\n", "disabled\n");
        let d = dir_with(&[("qemu-aarch64", &disabled)]);
        let host = p("linux/amd64");
        assert!(matches!(
            check(&p("linux/arm64"), &host, d.path()),
            Err(EmulationError::NoHandler { .. })
        ));
        let no_f = AARCH64.replace("flags: PF", "flags: P");
        let d = dir_with(&[("qemu-aarch64", &no_f)]);
        let err = check(&p("linux/arm64"), &host, d.path()).unwrap_err();
        assert!(matches!(err, EmulationError::NoFixBinary { .. }), "{err}");
    }

    #[test]
    fn exec_format_error_in_a_step_gets_the_install_hint() {
        let line = "exec /bin/sh: exec format error";
        assert_eq!(hint_for_output(line), Some(INSTALL_HINT));
        assert_eq!(hint_for_output("E: Unable to locate package hello"), None);
    }

    #[test]
    fn native_platforms_need_no_handler() {
        let empty = tempfile::tempdir().unwrap();
        check(&p("linux/amd64"), &p("linux/amd64"), empty.path()).unwrap();
        check(&p("linux/386"), &p("linux/amd64"), empty.path()).unwrap();
        check(&p("linux/arm64"), &p("linux/arm64"), empty.path()).unwrap();
    }
}
