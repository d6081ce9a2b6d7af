//! `layout=disk.toml`: the partitions of a disk beyond the default ESP and
//! root — sizes, labels, a second root slot for A/B updates, data, swap.
//!
//! ```toml
//! [esp]
//! size = "256M"
//! [root]                  # the booted root: the kernel command line names it
//! size = "2G"
//! label = "root-a"
//! [[partition]]
//! label = "root-b"
//! type = "root"           # a second slot, never booted by this disk
//! contents = "copy"       # or "empty"
//! [[partition]]
//! label = "data"
//! type = "linux-generic"
//! size = "512M"
//! filesystem = "ext4"
//! ```
//!
//! The file is read and checked completely when `-o` is parsed, before any
//! build step; every error names the file, the line and the cause. The
//! checks that need the image (does the root fit its size?) run at export
//! time and name the line too.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::DiskError;
use crate::export::spec::parse_size;

const MIB: u64 = 1 << 20;
/// FAT32 with one-sector clusters needs 65525 clusters, about 33 MiB.
const ESP_MIN: u64 = 36 * MIB;
/// An ext4 with a journal in 4 KiB blocks.
const EXT4_MIN: u64 = 8 * MIB;
/// A swap area: the header page and a few pages to swap to.
const SWAP_MIN: u64 = MIB;
/// ext4 and swap labels hold 16 bytes.
const LABEL_MAX: usize = 16;

/// A partition's role, by its Discoverable Partitions Specification name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartType {
    /// The root type of the image's architecture: another root slot.
    Root,
    LinuxGeneric,
    Var,
    Home,
    Srv,
    Tmp,
    Swap,
}

impl PartType {
    /// The DPS type GUID; `root_type` is the architecture's root type.
    pub fn guid(self, root_type: &'static str) -> &'static str {
        match self {
            PartType::Root => root_type,
            PartType::LinuxGeneric => "0fc63daf-8483-4772-8e79-3d69d8477de4",
            PartType::Var => "4d21b016-b534-45c2-a9fb-5c16e091fd2d",
            PartType::Home => "933ac7e1-2eb4-4f13-b844-0e14e2aef915",
            PartType::Srv => "3b8f8425-20e0-4f3b-907f-1a25a76f98e8",
            PartType::Tmp => "7ec6f557-3bc5-4aca-b293-16ef5df639d1",
            PartType::Swap => "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f",
        }
    }

    fn name(self) -> &'static str {
        match self {
            PartType::Root => "root",
            PartType::LinuxGeneric => "linux-generic",
            PartType::Var => "var",
            PartType::Home => "home",
            PartType::Srv => "srv",
            PartType::Tmp => "tmp",
            PartType::Swap => "swap",
        }
    }

    /// Where systemd-gpt-auto-generator mounts a partition of this type
    /// found on the boot disk.
    fn auto_mounted_at(self) -> Option<&'static str> {
        match self {
            PartType::Var => Some("/var"),
            PartType::Home => Some("/home"),
            PartType::Srv => Some("/srv"),
            PartType::Tmp => Some("/var/tmp"),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Contents {
    /// Zeros, or the empty filesystem of `filesystem`.
    #[default]
    Empty,
    /// The booted root's bytes (a root slot only).
    Copy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filesystem {
    Ext4,
    Swap,
    None,
}

/// A size and the line it was written on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sized {
    pub bytes: u64,
    pub line: usize,
}

/// One `[[partition]]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extra {
    pub label: String,
    pub kind: PartType,
    pub contents: Contents,
    /// `None`: a root slot as large as the root.
    pub size: Option<Sized>,
    pub filesystem: Filesystem,
    pub line: usize,
}

/// A layout file, checked. [`DiskLayout::default`] is the disk without
/// one: an ESP and a root partition of automatic sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayout {
    /// The file, for errors found at export time.
    pub file: Option<PathBuf>,
    pub esp_size: Option<Sized>,
    pub root_size: Option<Sized>,
    pub root_label: String,
    pub extra: Vec<Extra>,
}

impl Default for DiskLayout {
    fn default() -> Self {
        DiskLayout {
            file: None,
            esp_size: None,
            root_size: None,
            root_label: "root".into(),
            extra: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    esp: Option<EspToml>,
    root: Option<RootToml>,
    #[serde(default)]
    partition: Vec<PartToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EspToml {
    size: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RootToml {
    size: Option<Spanned<String>>,
    label: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartToml {
    label: Spanned<String>,
    #[serde(rename = "type")]
    kind: Spanned<PartType>,
    contents: Option<Spanned<Contents>>,
    size: Option<Spanned<String>>,
    filesystem: Option<Spanned<Filesystem>>,
}

impl DiskLayout {
    /// Read and check the layout file `path`.
    pub fn load(path: &Path) -> Result<DiskLayout, DiskError> {
        let text = fs_err::read_to_string(path).map_err(|source| DiskError::LayoutRead {
            file: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Check the text of a layout file; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<DiskLayout, DiskError> {
        let err = |span: std::ops::Range<usize>, message: String| DiskError::Layout {
            file: path.to_path_buf(),
            line: line_of(text, span.start),
            message,
        };
        let raw: FileToml = toml::from_str(text).map_err(|e| {
            let mut message = e
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(": ");
            let span = e.span().unwrap_or(0..0);
            let at = text[..span.start.min(text.len())]
                .rfind('\n')
                .map_or(0, |n| n + 1);
            let header = text[at..].trim_start();
            if header.starts_with("[root]") || header.starts_with("[[root]]") {
                message.push_str(
                    "; a disk boots one root, [root]: add other root slots as \
                     [[partition]] with type = \"root\"",
                );
            }
            err(span, message)
        })?;
        let size = |s: &Spanned<String>, min: u64, what: &str| -> Result<Sized, DiskError> {
            let bytes = parse_size(s.get_ref()).ok_or_else(|| {
                err(
                    s.span(),
                    format!(
                        "size = {:?} is not a size like \"512M\" or \"2G\"",
                        s.get_ref()
                    ),
                )
            })?;
            if bytes < min {
                return Err(err(
                    s.span(),
                    format!(
                        "size = {:?} is too small: {what} needs at least {}M",
                        s.get_ref(),
                        min / MIB
                    ),
                ));
            }
            Ok(Sized {
                bytes: bytes.div_ceil(MIB) * MIB,
                line: line_of(text, s.span().start),
            })
        };
        let label = |s: &Spanned<String>| -> Result<String, DiskError> {
            let l = s.get_ref();
            let ok = !l.is_empty()
                && l.len() <= LABEL_MAX
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(err(
                    s.span(),
                    format!(
                        "label = {l:?}: a label is 1 to {LABEL_MAX} of A-Z a-z 0-9 . _ - \
                         (it names the GPT partition and its filesystem)"
                    ),
                ));
            }
            Ok(l.clone())
        };

        let mut layout = DiskLayout {
            file: Some(path.to_path_buf()),
            ..DiskLayout::default()
        };
        if let Some(esp) = &raw.esp {
            layout.esp_size = esp
                .size
                .as_ref()
                .map(|s| size(s, ESP_MIN, "an EFI system partition (FAT32)"))
                .transpose()?;
        }
        if let Some(root) = &raw.root {
            layout.root_size = root
                .size
                .as_ref()
                .map(|s| size(s, EXT4_MIN, "a root filesystem"))
                .transpose()?;
            if let Some(l) = &root.label {
                layout.root_label = label(l)?;
            }
        }
        let mut labels = vec!["esp".to_string(), layout.root_label.clone()];
        for p in &raw.partition {
            let kind = *p.kind.get_ref();
            let line = line_of(text, p.label.span().start);
            let name = label(&p.label)?;
            if labels.contains(&name) {
                return Err(err(
                    p.label.span(),
                    format!("label = {name:?} is taken: every partition needs its own label (\"esp\" is the EFI system partition's)"),
                ));
            }
            labels.push(name.clone());
            let contents = p
                .contents
                .as_ref()
                .map(|c| *c.get_ref())
                .unwrap_or_default();
            if contents == Contents::Copy && kind != PartType::Root {
                let span = p.contents.as_ref().expect("copy was written").span();
                return Err(err(
                    span,
                    format!(
                        "contents = \"copy\" copies the booted root; only a type = \"root\" slot takes it, not type = \"{}\"",
                        kind.name()
                    ),
                ));
            }
            let filesystem = match &p.filesystem {
                Some(f) => *f.get_ref(),
                None if kind == PartType::Swap => Filesystem::Swap,
                None => Filesystem::None,
            };
            let fs_span = || p.filesystem.as_ref().map_or(p.kind.span(), |f| f.span());
            if contents == Contents::Copy && p.filesystem.is_some() {
                return Err(err(
                    fs_span(),
                    "a copy of the root has the root's filesystem; leave filesystem out".into(),
                ));
            }
            if (filesystem == Filesystem::Swap) != (kind == PartType::Swap) {
                return Err(err(
                    fs_span(),
                    "a swap area goes with type = \"swap\", and a swap partition holds a swap area (filesystem = \"swap\", the default for it)".into(),
                ));
            }
            if let (Some(at), Filesystem::None) = (kind.auto_mounted_at(), filesystem) {
                return Err(err(
                    p.kind.span(),
                    format!(
                        "type = \"{}\" is mounted at {at} by systemd at boot, so it needs a filesystem: add filesystem = \"ext4\" (or use type = \"linux-generic\" for a partition left empty)",
                        kind.name()
                    ),
                ));
            }
            let min = match filesystem {
                Filesystem::Ext4 => EXT4_MIN,
                Filesystem::Swap => SWAP_MIN,
                Filesystem::None => MIB,
            };
            let sized = p
                .size
                .as_ref()
                .map(|s| size(s, min, &format!("partition {name:?}")))
                .transpose()?;
            match (&p.size, kind, contents) {
                (Some(s), _, Contents::Copy) => {
                    return Err(err(
                        s.span(),
                        "a copy of the root is as large as [root]; leave size out (set [root] size instead)".into(),
                    ))
                }
                (None, PartType::Root, _) => {}
                (None, _, _) => {
                    return Err(err(
                        p.kind.span(),
                        format!("partition {name:?} has no size; add e.g. size = \"512M\" (only a root slot takes the root's size)"),
                    ))
                }
                _ => {}
            }
            layout.extra.push(Extra {
                label: name,
                kind,
                contents,
                size: sized,
                filesystem,
                line,
            });
        }
        Ok(layout)
    }

    /// An error at `line` of the layout file (found at export time).
    pub fn error(&self, line: usize, message: String) -> DiskError {
        DiskError::Layout {
            file: self.file.clone().unwrap_or_default(),
            line,
            message,
        }
    }

    /// The layout as text for the export cache key: every value that
    /// shapes the disk, none of the file's formatting.
    pub fn canonical(&self) -> String {
        let size = |s: &Option<Sized>| s.map_or("auto".to_string(), |s| s.bytes.to_string());
        let mut out = format!(
            "esp={};root={},{}",
            size(&self.esp_size),
            size(&self.root_size),
            self.root_label
        );
        for e in &self.extra {
            let _ = write!(
                out,
                ";{},{},{:?},{},{:?}",
                e.label,
                e.kind.name(),
                e.contents,
                size(&e.size),
                e.filesystem
            );
        }
        out
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DiskLayout, String> {
        DiskLayout::parse(text, Path::new("disk.toml")).map_err(|e| e.to_string())
    }

    const AB: &str = r#"
[esp]
size = "256M"

[root]
size = "2G"
label = "root-a"

[[partition]]
label = "root-b"
type = "root"
contents = "copy"

[[partition]]
label = "data"
type = "linux-generic"
size = "512M"
filesystem = "ext4"

[[partition]]
label = "swap"
type = "swap"
size = "64M"
"#;

    #[test]
    fn an_ab_layout_with_data_and_swap_is_read_in_order() {
        let l = parse(AB).unwrap();
        assert_eq!(l.esp_size.unwrap().bytes, 256 * MIB);
        assert_eq!(l.root_size.unwrap().bytes, 2048 * MIB);
        assert_eq!(l.root_label, "root-a");
        let names: Vec<_> = l.extra.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(names, ["root-b", "data", "swap"]);
        assert_eq!(l.extra[0].kind, PartType::Root);
        assert_eq!(l.extra[0].contents, Contents::Copy);
        assert_eq!(l.extra[0].size, None);
        assert_eq!(l.extra[0].line, 10);
        assert_eq!(l.extra[1].filesystem, Filesystem::Ext4);
        assert_eq!(l.extra[1].size.unwrap().bytes, 512 * MIB);
        assert_eq!(l.extra[2].filesystem, Filesystem::Swap, "swap's default");
        assert_eq!(
            l.canonical(),
            "esp=268435456;root=2147483648,root-a;root-b,root,Copy,auto,None;\
             data,linux-generic,Empty,536870912,Ext4;swap,swap,Empty,67108864,Swap"
        );
    }

    #[test]
    fn an_empty_file_is_the_default_layout_but_for_its_name() {
        let l = parse("").unwrap();
        assert_eq!(
            DiskLayout {
                file: None,
                ..l.clone()
            },
            DiskLayout::default()
        );
        assert_eq!(l.canonical(), DiskLayout::default().canonical());
    }

    fn error_at(text: &str, line: usize, cause: &str) {
        let e = parse(text).unwrap_err();
        assert!(
            e.starts_with(&format!("disk.toml:{line}: ")),
            "want line {line}: {e}"
        );
        assert!(e.contains(cause), "want {cause:?}: {e}");
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        error_at(
            "[root]\nsize = \"1G\"\nlable = \"x\"\n",
            3,
            "unknown field `lable`",
        );
        error_at("[boot]\n", 1, "unknown field `boot`");
    }

    #[test]
    fn an_unknown_type_lists_the_dps_names() {
        error_at(
            "[[partition]]\nlabel = \"x\"\ntype = \"lvm\"\nsize = \"1G\"\n",
            3,
            "`linux-generic`",
        );
    }

    #[test]
    fn a_second_booted_root_is_refused_with_the_way_to_add_a_slot() {
        error_at(
            "[root]\nlabel = \"a\"\n[root]\nlabel = \"b\"\n",
            3,
            "[[partition]] with type = \"root\"",
        );
        error_at("[[root]]\nlabel = \"a\"\n", 1, "type = \"root\"");
    }

    #[test]
    fn sizes_too_small_or_malformed_are_refused() {
        error_at("[esp]\nsize = \"8M\"\n", 2, "at least 36M");
        error_at(
            "[[partition]]\nlabel = \"d\"\ntype = \"linux-generic\"\nfilesystem = \"ext4\"\nsize = \"2M\"\n",
            5,
            "at least 8M",
        );
        error_at("[root]\nsize = \"lots\"\n", 2, "not a size");
        error_at("[root]\nsize = 1024\n", 2, "expected a string");
        error_at(
            "[[partition]]\nlabel = \"d\"\ntype = \"linux-generic\"\n",
            3,
            "has no size",
        );
    }

    #[test]
    fn labels_contents_and_filesystems_must_fit_the_type() {
        error_at(
            "[[partition]]\nlabel = \"root\"\ntype = \"root\"\n",
            2,
            "is taken",
        );
        error_at(
            "[[partition]]\nlabel = \"a b\"\ntype = \"root\"\n",
            2,
            "1 to 16 of",
        );
        error_at(
            "[[partition]]\nlabel = \"d\"\ntype = \"linux-generic\"\ncontents = \"copy\"\nsize = \"1G\"\n",
            4,
            "only a type = \"root\" slot",
        );
        error_at(
            "[[partition]]\nlabel = \"b\"\ntype = \"root\"\ncontents = \"copy\"\nsize = \"1G\"\n",
            5,
            "leave size out",
        );
        error_at(
            "[[partition]]\nlabel = \"h\"\ntype = \"home\"\nsize = \"1G\"\n",
            3,
            "mounted at /home",
        );
        error_at(
            "[[partition]]\nlabel = \"d\"\ntype = \"linux-generic\"\nsize = \"1G\"\nfilesystem = \"swap\"\n",
            5,
            "type = \"swap\"",
        );
    }
}
