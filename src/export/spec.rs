//! `-o type=T,dest=D[,k=v…]`, parsed the way BuildKit's `--output` is, and
//! checked completely before anything is built: a typo in an option must
//! not surface after a ten-minute build.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

use super::{
    DirExporter, DiskExporter, DiskFormat, ErofsExporter, Exporter, Ext4Exporter, OutputKind,
    RootFs, SquashfsExporter, TarExporter,
};

/// In `dest`, replaced by the platform (see [`OutputSpec::for_platform`]).
pub const PLATFORM_PLACEHOLDER: &str = "{platform}";

/// `-o type=T,dest=D[,k=v...]` as BuildKit's --output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    pub kind: OutputKind,
    pub dest: PathBuf,
    /// Every option except `type` and `dest`, validated for `kind`.
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("output {spec:?}: {item:?} is not key=value")]
    NotKeyValue { spec: String, item: String },
    #[error("output {spec:?}: {key} is given twice")]
    Duplicate { spec: String, key: String },
    #[error("output {spec:?}: no type= (one of: {valid})")]
    MissingType { spec: String, valid: String },
    #[error("output {spec:?}: unknown type {kind:?} (one of: {valid})")]
    UnknownType {
        spec: String,
        kind: String,
        valid: String,
    },
    #[error("output {spec:?}: no dest= (where to write the {kind} output)")]
    MissingDest { spec: String, kind: OutputKind },
    #[error("output {spec:?}: {kind} has no option {key:?} ({valid})")]
    UnknownOption {
        spec: String,
        kind: OutputKind,
        key: String,
        valid: String,
    },
    #[error("output dest={dest}: every platform would write this one file")]
    SharedDest { dest: String },
    #[error("output {spec:?}: {key}={value:?} is not one of {valid}")]
    BadValue {
        spec: String,
        key: String,
        value: String,
        valid: String,
    },
    #[error("output {spec:?}: size={value:?} is not a size like 512M, 2G or 1073741824")]
    BadSize { spec: String, value: String },
    #[error("output {spec:?}: an unterminated quote (write a value with commas as \"key=a,b\")")]
    Quote { spec: String },
    #[error("output {spec:?}: {key}={value:?}: {reason}")]
    Invalid {
        spec: String,
        key: String,
        value: String,
        reason: String,
    },
}

/// The options each type accepts, with their allowed values (`None`: free
/// form, checked by [`check_value`]).
fn allowed(kind: OutputKind) -> &'static [(&'static str, Option<&'static [&'static str]>)] {
    match kind {
        OutputKind::Tar => &[("compression", Some(&["none", "gzip", "zstd"]))],
        OutputKind::Dir => &[("force", Some(&["true", "false"]))],
        OutputKind::Ext4 => &[("size", None), ("label", None), ("inodes", None)],
        OutputKind::Erofs => &[("compression", Some(&["lz4", "lz4hc", "none"]))],
        OutputKind::Squashfs => &[("compression", Some(&["gzip", "xz", "zstd", "lz4"]))],
        OutputKind::Disk => &[
            ("format", Some(&["raw", "qcow2"])),
            ("size", None),
            ("rootfs", Some(&["ext4", "erofs"])),
            ("cmdline", None),
            ("layout", None),
        ],
        OutputKind::Oci => &[("tag", None)],
        OutputKind::Sbom => &[("format", Some(&["spdx", "cyclonedx"]))],
    }
}

fn valid_types() -> String {
    OutputKind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for OutputKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OutputKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(valid_types)
    }
}

impl FromStr for OutputSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let err_spec = || spec.to_string();
        let mut pairs: BTreeMap<String, String> = BTreeMap::new();
        for item in split_fields(spec).ok_or_else(|| SpecError::Quote { spec: err_spec() })? {
            let item = item.as_str();
            let Some((k, v)) = item.split_once('=') else {
                return Err(SpecError::NotKeyValue {
                    spec: err_spec(),
                    item: item.to_string(),
                });
            };
            let k = k.trim();
            if k.is_empty() {
                return Err(SpecError::NotKeyValue {
                    spec: err_spec(),
                    item: item.to_string(),
                });
            }
            if pairs.insert(k.to_string(), v.to_string()).is_some() {
                return Err(SpecError::Duplicate {
                    spec: err_spec(),
                    key: k.to_string(),
                });
            }
        }
        let kind_s = pairs.remove("type").ok_or_else(|| SpecError::MissingType {
            spec: err_spec(),
            valid: valid_types(),
        })?;
        let kind: OutputKind = kind_s.parse().map_err(|valid| SpecError::UnknownType {
            spec: err_spec(),
            kind: kind_s.clone(),
            valid,
        })?;
        let dest = pairs
            .remove("dest")
            .filter(|d| !d.is_empty())
            .ok_or_else(|| SpecError::MissingDest {
                spec: err_spec(),
                kind,
            })?;
        let table = allowed(kind);
        for (key, value) in &pairs {
            let Some((_, values)) = table.iter().find(|(k, _)| k == key) else {
                let names: Vec<&str> = table.iter().map(|(k, _)| *k).collect();
                return Err(SpecError::UnknownOption {
                    spec: err_spec(),
                    kind,
                    key: key.clone(),
                    valid: format!("it takes dest= and {}", names.join("=, ") + "="),
                });
            };
            match values {
                Some(values) if !values.contains(&value.as_str()) => {
                    return Err(SpecError::BadValue {
                        spec: err_spec(),
                        key: key.clone(),
                        value: value.clone(),
                        valid: values.join("|"),
                    })
                }
                Some(_) => {}
                None => check_value(spec, key, value)?,
            }
        }
        Ok(OutputSpec {
            kind,
            dest: PathBuf::from(dest),
            options: pairs,
        })
    }
}

/// Split at commas as BuildKit's `--output` does (CSV): a field in double
/// quotes may hold commas, and `""` in it is one quote. `None` for an
/// unterminated quote.
fn split_fields(spec: &str) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            '"' if quoted => quoted = false,
            '"' if field.is_empty() => quoted = true,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    if quoted {
        return None;
    }
    fields.push(field);
    Some(fields)
}

fn check_value(spec: &str, key: &str, value: &str) -> Result<(), SpecError> {
    let invalid = |reason: &str| SpecError::Invalid {
        spec: spec.to_string(),
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    };
    match key {
        "size" => {
            let size = parse_size(value).ok_or_else(|| SpecError::BadSize {
                spec: spec.to_string(),
                value: value.to_string(),
            })?;
            if size < 8 * 1024 * 1024 {
                return Err(invalid("an ext4 or disk image needs at least 8M"));
            }
        }
        // ext4 keeps 16 bytes of label.
        "label" if value.len() > 16 => return Err(invalid("an ext4 label has at most 16 bytes")),
        "label" if value.contains(['\0', '\n']) => return Err(invalid("not a printable label")),
        "layout" if value.is_empty() => {
            return Err(invalid("the path of a layout file (docs/disk.md)"))
        }
        "cmdline" if value.trim().is_empty() || value.contains(['\0', '\n', '\r']) => {
            return Err(invalid("a kernel command line is one non-empty line"))
        }
        "inodes" => match value.parse::<u64>() {
            Ok(n) if n >= 16 && n <= u64::from(u32::MAX) => {}
            _ => return Err(invalid("not an inode count between 16 and 4294967295")),
        },
        "tag" => {
            let ok = !value.is_empty()
                && value.len() <= 128
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                && !value.starts_with(['.', '-']);
            if !ok {
                return Err(invalid(
                    "not an OCI tag ([A-Za-z0-9_][A-Za-z0-9._-]{0,127})",
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

/// `512M`, `2G`, `1.5G`, `4096k`, `1073741824`: binary units (K, M, G, T,
/// optionally followed by `iB` or `B`), rounded up to whole 4 KiB blocks.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return None;
    }
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return None,
    };
    let bytes = if let Some((int, frac)) = num.split_once('.') {
        if shift == 0 || frac.is_empty() || frac.contains('.') || frac.len() > 6 {
            return None;
        }
        let int: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
        let scale = 10u64.pow(frac.len() as u32);
        let frac: u64 = frac.parse().ok()?;
        int.checked_shl(shift)?
            .checked_add(frac.checked_shl(shift)? / scale)?
    } else {
        let n: u64 = num.parse().ok()?;
        let bytes = n.checked_shl(shift)?;
        // checked_shl only rejects a too-large shift, not overflow.
        if bytes >> shift != n {
            return None;
        }
        bytes
    };
    if bytes == 0 {
        return None;
    }
    Some(bytes.div_ceil(4096) * 4096)
}

impl OutputSpec {
    /// The exporter for this spec. `Oci` has none: it copies blobs, not a
    /// tree (see [`super::export_all`]).
    pub fn exporter(&self) -> Option<Box<dyn Exporter + Send + Sync>> {
        let opt = |k: &str| self.options.get(k).cloned();
        Some(match self.kind {
            OutputKind::Tar => Box::new(TarExporter::new(opt("compression").as_deref())),
            OutputKind::Dir => Box::new(DirExporter),
            OutputKind::Ext4 => Box::new(Ext4Exporter {
                size: opt("size").and_then(|s| parse_size(&s)),
                label: opt("label").unwrap_or_else(|| "rootfs".into()),
                inodes: opt("inodes").and_then(|s| s.parse().ok()),
            }),
            OutputKind::Erofs => Box::new(ErofsExporter {
                compression: opt("compression").unwrap_or_else(|| "lz4hc".into()),
            }),
            OutputKind::Squashfs => Box::new(SquashfsExporter {
                compression: opt("compression"),
            }),
            OutputKind::Disk => Box::new(DiskExporter {
                format: match opt("format").as_deref() {
                    Some("qcow2") => DiskFormat::Qcow2,
                    _ => DiskFormat::Raw,
                },
                size: opt("size").and_then(|s| parse_size(&s)),
                rootfs: match opt("rootfs").as_deref() {
                    Some("erofs") => RootFs::Erofs,
                    _ => RootFs::Ext4,
                },
                cmdline: opt("cmdline"),
                layout: opt("layout").map(PathBuf::from),
            }),
            OutputKind::Oci | OutputKind::Sbom => return None,
        })
    }

    /// This output for one platform of a build: `{platform}` in `dest`
    /// becomes e.g. `linux-arm64` (`linux-arm-v7`). When `several`
    /// platforms are built and `dest` has no placeholder, a folder output
    /// (`dir`, `oci`) gets one subfolder per platform; a file output would
    /// be overwritten, so that is an error.
    pub fn for_platform(
        &self,
        platform: &crate::oci::Platform,
        several: bool,
    ) -> Result<OutputSpec, SpecError> {
        let name = platform.to_string().replace('/', "-");
        let dest = self.dest.to_string_lossy();
        let dest = if dest.contains(PLATFORM_PLACEHOLDER) {
            PathBuf::from(dest.replace(PLATFORM_PLACEHOLDER, &name))
        } else if !several {
            self.dest.clone()
        } else if matches!(self.kind, OutputKind::Dir | OutputKind::Oci) {
            self.dest.join(name)
        } else {
            return Err(SpecError::SharedDest {
                dest: dest.to_string(),
            });
        };
        Ok(OutputSpec {
            dest,
            ..self.clone()
        })
    }

    /// Read and check the files the output names (a disk's `layout=`), so
    /// that a bad one fails before any build step, naming its line.
    pub fn check_files(&self) -> Result<(), super::DiskError> {
        match (self.kind, self.options.get("layout")) {
            (OutputKind::Disk, Some(path)) => {
                super::DiskLayout::load(std::path::Path::new(path)).map(drop)
            }
            _ => Ok(()),
        }
    }

    /// `force=true` on a `dir` output.
    pub fn force(&self) -> bool {
        self.options.get("force").map(String::as_str) == Some("true")
    }

    /// The format of an `sbom` output (default SPDX).
    pub fn sbom_format(&self) -> crate::sbom::Format {
        self.options
            .get("format")
            .and_then(|f| f.parse().ok())
            .unwrap_or_default()
    }

    /// The tag of an `oci` output.
    pub fn tag(&self) -> &str {
        self.options
            .get("tag")
            .map(String::as_str)
            .unwrap_or("latest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<OutputSpec, SpecError> {
        s.parse()
    }

    #[test]
    fn platform_placeholder_and_one_folder_per_platform() {
        let arm = crate::oci::Platform::parse("linux/arm/v7").unwrap();
        let o = parse("type=ext4,dest=out/{platform}.ext4").unwrap();
        let one = o.for_platform(&arm, true).unwrap();
        assert_eq!(one.dest, PathBuf::from("out/linux-arm-v7.ext4"));
        let d = parse("type=dir,dest=out").unwrap();
        assert_eq!(
            d.for_platform(&arm, true).unwrap().dest,
            PathBuf::from("out/linux-arm-v7")
        );
        assert_eq!(
            d.for_platform(&arm, false).unwrap().dest,
            PathBuf::from("out")
        );
        let f = parse("type=ext4,dest=out.ext4").unwrap();
        assert!(matches!(
            f.for_platform(&arm, true),
            Err(SpecError::SharedDest { .. })
        ));
        assert_eq!(
            f.for_platform(&arm, false).unwrap().dest,
            PathBuf::from("out.ext4")
        );
    }

    #[test]
    fn parses_type_dest_and_options_in_any_order() {
        let s = parse("dest=out/root.img,type=ext4,size=2G,label=ROOT").unwrap();
        assert_eq!(s.kind, OutputKind::Ext4);
        assert_eq!(s.dest, PathBuf::from("out/root.img"));
        assert_eq!(s.options.get("size").unwrap(), "2G");
        assert_eq!(s.options.get("label").unwrap(), "ROOT");
        assert!(!s.options.contains_key("type") && !s.options.contains_key("dest"));
    }

    #[test]
    fn unknown_type_lists_the_valid_ones() {
        let e = parse("type=vfat,dest=x").unwrap_err().to_string();
        assert!(e.contains("unknown type \"vfat\""), "{e}");
        assert!(
            e.contains("tar, dir, ext4, erofs, squashfs, disk, oci, sbom"),
            "{e}"
        );
    }

    #[test]
    fn missing_type_and_missing_dest_are_named() {
        assert!(matches!(
            parse("dest=x"),
            Err(SpecError::MissingType { .. })
        ));
        assert!(matches!(
            parse("type=tar"),
            Err(SpecError::MissingDest { .. })
        ));
        assert!(matches!(
            parse("type=tar,dest="),
            Err(SpecError::MissingDest { .. })
        ));
    }

    #[test]
    fn an_option_of_another_type_is_refused_with_the_valid_ones() {
        let e = parse("type=tar,dest=x,size=1G").unwrap_err();
        assert!(matches!(e, SpecError::UnknownOption { ref key, .. } if key == "size"));
        assert!(e.to_string().contains("compression="), "{e}");
    }

    #[test]
    fn a_bad_enumerated_value_lists_the_choices() {
        let e = parse("type=erofs,dest=x,compression=zstd")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lz4|lz4hc|none"), "{e}");
        assert!(parse("type=squashfs,dest=x,compression=zstd").is_ok());
        assert!(parse("type=tar,dest=x,compression=xz").is_err());
    }

    #[test]
    fn bad_sizes_are_refused() {
        for bad in [
            "",
            "abc",
            "12Q",
            "-1G",
            "1.2.3G",
            "0",
            "99999999999T",
            "1.5",
        ] {
            let r = parse(&format!("type=ext4,dest=x,size={bad}"));
            assert!(r.is_err(), "size={bad} was accepted");
        }
        let e = parse("type=ext4,dest=x,size=1M").unwrap_err().to_string();
        assert!(e.contains("at least 8M"), "{e}");
    }

    #[test]
    fn sizes_use_binary_units_and_round_up_to_blocks() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("4096k"), Some(4 << 20));
        assert_eq!(parse_size("1000"), Some(4096));
        assert_eq!(parse_size("1T"), Some(1 << 40));
    }

    #[test]
    fn duplicate_keys_and_bare_words_are_errors() {
        assert!(matches!(
            parse("type=tar,dest=a,dest=b"),
            Err(SpecError::Duplicate { .. })
        ));
        assert!(matches!(
            parse("type=tar,dest=a,gzip"),
            Err(SpecError::NotKeyValue { .. })
        ));
    }

    #[test]
    fn labels_and_tags_are_checked() {
        assert!(parse("type=ext4,dest=x,label=a-very-long-label-indeed").is_err());
        assert!(parse("type=oci,dest=x,tag=v1.0").is_ok());
        assert!(parse("type=oci,dest=x,tag=a/b").is_err());
        assert!(parse("type=ext4,dest=x,inodes=lots").is_err());
        assert!(parse("type=ext4,dest=x,inodes=65536").is_ok());
        let sbom = parse("type=sbom,dest=x.json,format=cyclonedx").unwrap();
        assert_eq!(sbom.sbom_format(), crate::sbom::Format::CycloneDx);
        assert_eq!(
            parse("type=sbom,dest=x.json").unwrap().sbom_format(),
            crate::sbom::Format::Spdx
        );
        assert!(parse("type=sbom,dest=x,format=swid").is_err());
    }

    #[test]
    fn disk_options_are_checked() {
        let s = parse("type=disk,dest=vm.img,format=qcow2,rootfs=erofs,size=2G").unwrap();
        assert_eq!(s.kind, OutputKind::Disk);
        let e = parse("type=disk,dest=vm.img,format=vmdk")
            .unwrap_err()
            .to_string();
        assert!(e.contains("raw|qcow2"), "{e}");
        assert!(parse("type=disk,dest=vm.img,rootfs=btrfs").is_err());
        assert!(parse("type=disk,dest=vm.img,cmdline=").is_err());
        assert!(parse("type=disk,dest=vm.img,label=x").is_err());
    }

    #[test]
    fn a_quoted_field_keeps_its_commas_as_buildkit_reads_it() {
        let s = parse(r#"type=disk,dest=vm.img,"cmdline=console=ttyS0,115200 quiet""#).unwrap();
        assert_eq!(s.options["cmdline"], "console=ttyS0,115200 quiet");
        let s = parse(r#""dest=a""b",type=tar"#).unwrap();
        assert_eq!(s.dest, PathBuf::from("a\"b"));
        assert!(matches!(
            parse(r#"type=disk,dest=x,"cmdline=a"#),
            Err(SpecError::Quote { .. })
        ));
        // An empty last field is still a bare word, as before.
        assert!(matches!(
            parse("type=tar,dest=a,"),
            Err(SpecError::NotKeyValue { .. })
        ));
    }

    #[test]
    fn dest_keeps_commas_out_but_equals_signs_in() {
        let s = parse("type=dir,dest=a=b,force=true").unwrap();
        assert_eq!(s.dest, PathBuf::from("a=b"));
        assert!(s.force());
    }
}
