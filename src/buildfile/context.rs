//! The on-disk half of COPY validation, used by `parse_file`: every source
//! must exist and, with symlinks resolved, stay inside the Buildfile's
//! folder. The build reads sources only after this check, so a Buildfile
//! cannot make it read `/etc/shadow` or a neighbour's secrets.
//!
//! Symlinks *inside* a source folder are another matter: COPY sends them
//! as links and never follows them (as Docker does), so what they point
//! to is read in the image, never on this host. A rootfs overlay is full
//! of them (`etc/localtime -> /usr/share/zoneinfo/UTC`, systemd's
//! `*.wants/` links), so they are not checked.

use std::io;
use std::path::Path;

use super::diagnostics::Reporter;
use super::parser::CopySource;

pub(crate) fn check_sources(context: &Path, sources: &[CopySource], rep: &mut Reporter) {
    if sources.is_empty() {
        return;
    }
    let root = match fs_err::canonicalize(context) {
        Ok(r) => r,
        Err(e) => {
            rep.error(
                Default::default(),
                0,
                format!("cannot open the build context: {e}"),
                None,
            );
            return;
        }
    };
    for s in sources {
        check_source(context, &root, s, rep);
    }
}

fn check_source(context: &Path, root: &Path, s: &CopySource, rep: &mut Reporter) {
    let path = context.join(&s.text);
    if let Err(e) = fs_err::symlink_metadata(&path) {
        let (msg, hint) = if e.kind() == io::ErrorKind::NotFound {
            let hint = if s.text.contains(['*', '?', '[']) {
                "wildcards are not supported: name the files, or a folder".to_string()
            } else {
                format!(
                    "sources are relative to the Buildfile's folder `{}`",
                    context.display()
                )
            };
            (
                format!("COPY source `{}` does not exist", s.text),
                Some(hint),
            )
        } else {
            (format!("cannot read COPY source `{}`: {e}", s.text), None)
        };
        rep.error(s.span, s.len, msg, hint);
        return;
    }
    let real = match fs_err::canonicalize(&path) {
        Ok(r) => r,
        Err(_) => {
            rep.error(
                s.span,
                s.len,
                format!("COPY source `{}` is a symlink that points nowhere", s.text),
                Some("to send the link itself, copy the folder that holds it".into()),
            );
            return;
        }
    };
    if !real.starts_with(root) {
        rep.error(
            s.span,
            s.len,
            format!(
                "COPY source `{}` leads outside the Buildfile's folder",
                s.text
            ),
            Some(if is_link(&path) {
                format!(
                    "it resolves to `{}` on this machine; to send the link itself, copy the folder that holds it",
                    real.display()
                )
            } else {
                format!("it resolves to `{}`", real.display())
            }),
        );
    }
}

fn is_link(path: &Path) -> bool {
    fs_err::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use crate::buildfile::{parse_file, BuildFile, Diagnostics};

    const FROM: &str = "FROM 127.0.0.1:5000/platform/base:1\n";

    fn context() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs_err::create_dir_all(dir.path().join("ctx/overlay/etc")).unwrap();
        fs_err::write(dir.path().join("ctx/overlay/etc/motd"), "hi\n").unwrap();
        fs_err::write(dir.path().join("secret"), "x").unwrap();
        dir
    }

    fn parse_in(dir: &tempfile::TempDir, body: &str) -> Result<BuildFile, Diagnostics> {
        let path = dir.path().join("ctx/Buildfile");
        fs_err::write(&path, format!("{FROM}{body}")).unwrap();
        parse_file(&path, &BTreeMap::new())
    }

    fn messages(r: Result<BuildFile, Diagnostics>) -> Vec<String> {
        r.unwrap_err()
            .0
            .into_iter()
            .map(|d| format!("{}:{} {}", d.line, d.col, d.message))
            .collect()
    }

    #[test]
    fn existing_sources_pass() {
        let dir = context();
        let f = parse_in(&dir, "COPY overlay/ /\nCOPY overlay/etc/motd /etc/motd\n").unwrap();
        assert_eq!(f.context, dir.path().join("ctx"));
    }

    #[test]
    fn missing_file_says_so_with_a_hint() {
        let e = parse_file(Path::new("/nonexistent/Buildfile"), &BTreeMap::new()).unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!(
            (e.0[0].line, e.0[0].message.as_str()),
            (0, "Buildfile `/nonexistent/Buildfile` does not exist")
        );
        assert!(e.0[0].hint.as_deref().unwrap().contains("-f FILE"));
    }

    #[test]
    fn missing_source_is_an_error_at_its_column() {
        let dir = context();
        assert_eq!(
            messages(parse_in(&dir, "COPY overlay/ nope /x/\n")),
            ["2:15 COPY source `nope` does not exist"]
        );
    }

    #[test]
    fn symlink_source_pointing_outside_is_rejected() {
        let dir = context();
        std::os::unix::fs::symlink("../secret", dir.path().join("ctx/link")).unwrap();
        assert_eq!(
            messages(parse_in(&dir, "COPY link /x\n")),
            ["2:6 COPY source `link` leads outside the Buildfile's folder"]
        );
        let e = parse_in(&dir, "COPY link /x\n").unwrap_err();
        let hint = e.0[0].hint.as_deref().unwrap();
        assert!(hint.contains("copy the folder that holds it"), "{hint}");
    }

    #[test]
    fn symlinks_inside_a_source_folder_are_not_followed_so_any_target_is_fine() {
        let dir = context();
        for (target, name) in [
            ("/usr/share/zoneinfo/Etc/UTC", "localtime"),
            ("../../../nowhere", "dangling"),
            ("motd", "fine"),
        ] {
            std::os::unix::fs::symlink(target, dir.path().join("ctx/overlay/etc").join(name))
                .unwrap();
        }
        // Even one to the secret next door: it is sent as a link, and the
        // image resolves it, never this host.
        std::os::unix::fs::symlink(
            dir.path().join("secret"),
            dir.path().join("ctx/overlay/etc/abs"),
        )
        .unwrap();
        if let Err(e) = parse_in(&dir, "COPY overlay/ /\n") {
            panic!("{:?}", e.0);
        }
    }

    #[test]
    fn parse_errors_and_disk_errors_are_reported_together() {
        let dir = context();
        assert_eq!(
            messages(parse_in(&dir, "INSTAL x\nCOPY nope /\n")),
            [
                "2:1 unknown instruction `INSTAL`",
                "3:6 COPY source `nope` does not exist"
            ]
        );
    }

    #[test]
    fn non_utf8_is_reported_at_the_byte() {
        let dir = context();
        let path = dir.path().join("ctx/Buildfile");
        fs_err::write(&path, b"FROM a:1\nRUN x\xff\n").unwrap();
        let e = parse_file(&path, &BTreeMap::new()).unwrap_err();
        assert_eq!(
            (e.0[0].line, e.0[0].col, e.0[0].message.as_str()),
            (2, 6, "the Buildfile is not UTF-8 text")
        );
    }
}
