//! The inputs a step reads, reduced to digests for its key: COPY source
//! trees (paths, contents, modes and link targets, never mtimes) and the
//! state of the apt archives an INSTALL or REMOVE resolves against.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::oci::{Digest, Sha256};
use sha2::Digest as _;

/// One `copy:<source>/<path>` entry per file, dir and symlink under each
/// source, with value `<type> <mode> <content digest | link target>`.
pub fn copy_inputs(
    context: &Path,
    sources: &[String],
) -> std::io::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for src in sources {
        let path = context.join(src);
        walk(
            &path,
            &format!("copy:{}", src.trim_end_matches('/')),
            &mut out,
        )?;
    }
    Ok(out)
}

fn walk(path: &Path, name: &str, out: &mut BTreeMap<String, String>) -> std::io::Result<()> {
    let meta = fs_err::symlink_metadata(path)?;
    let mode = meta.permissions().mode() & 0o7777;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = fs_err::read_link(path)?;
        out.insert(
            name.to_string(),
            format!("symlink {mode:o} {}", target.display()),
        );
    } else if ft.is_dir() {
        out.insert(name.to_string(), format!("dir {mode:o}"));
        let mut children: Vec<_> = fs_err::read_dir(path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        children.sort();
        for c in children {
            let child_name = format!("{name}/{}", c.to_string_lossy());
            walk(&path.join(&c), &child_name, out)?;
        }
    } else if ft.is_file() {
        out.insert(
            name.to_string(),
            format!("file {mode:o} {}", file_digest(path)?),
        );
    } else {
        out.insert(
            name.to_string(),
            format!("special {mode:o} {}", meta.rdev()),
        );
    }
    Ok(())
}

fn file_digest(path: &Path) -> std::io::Result<Digest> {
    let mut f = fs_err::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Digest::from_hasher(h))
}

/// An apt source: `URI` and `suite`, from one-line or deb822 sources.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct AptSource {
    pub uri: String,
    pub suite: String,
}

impl AptSource {
    pub fn in_release_url(&self) -> String {
        format!(
            "{}/dists/{}/InRelease",
            self.uri.trim_end_matches('/'),
            self.suite
        )
    }
}

/// Parse `sources.list` lines (`deb [opts] URI SUITE COMP...`).
pub fn parse_sources_list(text: &str) -> Vec<AptSource> {
    let mut out = vec![];
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut rest: Vec<&str> = words.collect();
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            let end = rest.iter().position(|w| w.ends_with(']')).unwrap_or(0);
            rest.drain(..=end);
        }
        if let (Some(uri), Some(suite)) = (rest.first(), rest.get(1)) {
            out.push(AptSource {
                uri: uri.to_string(),
                suite: suite.to_string(),
            });
        }
    }
    out
}

/// Parse deb822 `.sources` stanzas.
pub fn parse_deb822(text: &str) -> Vec<AptSource> {
    let mut out = vec![];
    for stanza in text.split("\n\n") {
        let mut types = vec![];
        let mut uris = vec![];
        let mut suites = vec![];
        let mut enabled = true;
        for line in stanza.lines() {
            if line.trim_start().starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                let vals: Vec<String> = v.split_whitespace().map(str::to_string).collect();
                match k.trim().to_ascii_lowercase().as_str() {
                    "types" => types = vals,
                    "uris" => uris = vals,
                    "suites" => suites = vals,
                    "enabled" => enabled = v.trim() != "no",
                    _ => {}
                }
            }
        }
        if !enabled || !types.iter().any(|t| t == "deb") {
            continue;
        }
        for u in &uris {
            for s in &suites {
                out.push(AptSource {
                    uri: u.clone(),
                    suite: s.clone(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_list_with_options_and_comments() {
        let s = "# comment\ndeb [arch=amd64 signed-by=/x.gpg] http://deb.debian.org/debian bookworm main\ndeb-src http://x y z\ndeb http://security.debian.org/debian-security bookworm-security main # tail\n";
        let got = parse_sources_list(s);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0].in_release_url(),
            "http://deb.debian.org/debian/dists/bookworm/InRelease"
        );
        assert_eq!(got[1].suite, "bookworm-security");
    }

    #[test]
    fn deb822_sources() {
        let s = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nEnabled: no\nURIs: http://x\nSuites: y\n";
        let got = parse_deb822(s);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].suite, "bookworm-updates");
    }

    #[test]
    fn copy_inputs_ignore_mtime_but_see_content_and_mode() {
        let d = tempfile::tempdir().unwrap();
        let ctx = d.path();
        fs_err::create_dir_all(ctx.join("overlay/etc")).unwrap();
        fs_err::write(ctx.join("overlay/etc/motd"), "hi\n").unwrap();
        let srcs = vec!["overlay/".to_string()];
        let a = copy_inputs(ctx, &srcs).unwrap();
        assert!(a.contains_key("copy:overlay/etc/motd"), "{a:?}");
        // mtime only
        let f = fs_err::File::options()
            .write(true)
            .open(ctx.join("overlay/etc/motd"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(a, copy_inputs(ctx, &srcs).unwrap());
        // one byte
        fs_err::write(ctx.join("overlay/etc/motd"), "ho\n").unwrap();
        let b = copy_inputs(ctx, &srcs).unwrap();
        assert_ne!(a["copy:overlay/etc/motd"], b["copy:overlay/etc/motd"]);
        // mode
        fs_err::set_permissions(
            ctx.join("overlay/etc/motd"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        assert_ne!(b, copy_inputs(ctx, &srcs).unwrap());
    }
}
