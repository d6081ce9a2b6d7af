//! The tar stream a COPY step sends through the engine's archive API
//! (never a bind mount, so a remote engine works the same).

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Owner and mode overrides from `--chown` / `--chmod`.
pub struct CopyAttrs {
    pub uid: u32,
    pub gid: u32,
    pub chmod: Option<u32>,
    pub mtime: u64,
}

/// Write a tar (paths relative to `/`) of `sources` placed at `dest`,
/// following Docker's COPY rules: a source folder's contents go into
/// `dest`; a file goes to `dest` itself unless `dest` ends with `/` or
/// there are several sources.
pub fn write_copy_tar(
    context: &Path,
    sources: &[String],
    dest: &str,
    attrs: &CopyAttrs,
    out: impl Write,
) -> std::io::Result<()> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let dest_rel = dest.trim_start_matches('/').trim_end_matches('/');
    let dest_is_dir = dest.ends_with('/') || sources.len() > 1 || dest_rel.is_empty();
    for src in sources {
        let path = context.join(src);
        let meta = fs_err::symlink_metadata(&path)?;
        if meta.is_dir() {
            add_tree(&mut tar, &path, Path::new(dest_rel), attrs)?;
        } else {
            let name = path.file_name().map(PathBuf::from).unwrap_or_default();
            let target = if dest_is_dir {
                Path::new(dest_rel).join(name)
            } else {
                PathBuf::from(dest_rel)
            };
            add_entry(&mut tar, &path, &target, attrs)?;
        }
    }
    tar.finish()
}

fn add_tree(
    tar: &mut tar::Builder<impl Write>,
    dir: &Path,
    at: &Path,
    attrs: &CopyAttrs,
) -> std::io::Result<()> {
    let mut children: Vec<_> = fs_err::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    children.sort();
    for c in children {
        let p = dir.join(&c);
        let target = at.join(&c);
        add_entry(tar, &p, &target, attrs)?;
        if fs_err::symlink_metadata(&p)?.is_dir() {
            add_tree(tar, &p, &target, attrs)?;
        }
    }
    Ok(())
}

fn add_entry(
    tar: &mut tar::Builder<impl Write>,
    path: &Path,
    target: &Path,
    attrs: &CopyAttrs,
) -> std::io::Result<()> {
    let meta = fs_err::symlink_metadata(path)?;
    let mut h = tar::Header::new_gnu();
    h.set_uid(attrs.uid as u64);
    h.set_gid(attrs.gid as u64);
    h.set_mtime(attrs.mtime);
    let mode = attrs.chmod.unwrap_or(meta.permissions().mode() & 0o7777);
    h.set_mode(mode);
    let ft = meta.file_type();
    if ft.is_symlink() {
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        let link = fs_err::read_link(path)?;
        tar.append_link(&mut h, target, link)
    } else if ft.is_dir() {
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        tar.append_data(&mut h, target, std::io::empty())
    } else if ft.is_file() {
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(meta.size());
        let f = fs_err::File::open(path)?;
        tar.append_data(&mut h, target, f)
    } else {
        Err(std::io::Error::other(format!(
            "{} is not a file, folder or symlink; COPY cannot send it",
            path.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(buf: &[u8]) -> Vec<(String, u32, u64)> {
        let mut a = tar::Archive::new(buf);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                    e.header().uid().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn folder_contents_go_into_dest_with_chown_and_chmod() {
        let d = tempfile::tempdir().unwrap();
        fs_err::create_dir_all(d.path().join("overlay/etc")).unwrap();
        fs_err::write(d.path().join("overlay/etc/motd"), "hi").unwrap();
        let attrs = CopyAttrs {
            uid: 5,
            gid: 6,
            chmod: Some(0o600),
            mtime: 0,
        };
        let mut buf = vec![];
        write_copy_tar(d.path(), &["overlay/".into()], "/", &attrs, &mut buf).unwrap();
        assert_eq!(
            names(&buf),
            vec![("etc".into(), 0o600, 5), ("etc/motd".into(), 0o600, 5)]
        );
    }

    #[test]
    fn a_file_goes_to_dest_or_into_a_dest_folder() {
        let d = tempfile::tempdir().unwrap();
        fs_err::write(d.path().join("app.conf"), "x").unwrap();
        let attrs = CopyAttrs {
            uid: 0,
            gid: 0,
            chmod: None,
            mtime: 0,
        };
        let mut a = vec![];
        write_copy_tar(
            d.path(),
            &["app.conf".into()],
            "/etc/app/app.conf",
            &attrs,
            &mut a,
        )
        .unwrap();
        assert_eq!(names(&a)[0].0, "etc/app/app.conf");
        let mut b = vec![];
        write_copy_tar(d.path(), &["app.conf".into()], "/etc/app/", &attrs, &mut b).unwrap();
        assert_eq!(names(&b)[0].0, "etc/app/app.conf");
    }

    /// Symlinks inside a COPY folder may point anywhere (the Buildfile
    /// check allows it), so nothing that reads COPY sources may follow
    /// one: not this tar, not the plan's input hashing.
    #[test]
    fn a_link_to_a_folder_outside_is_sent_as_a_link_and_never_read() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        fs_err::create_dir_all(&outside).unwrap();
        fs_err::write(outside.join("secret"), "TOP-SECRET-BYTES").unwrap();
        fs_err::create_dir_all(d.path().join("ctx/overlay")).unwrap();
        std::os::unix::fs::symlink(&outside, d.path().join("ctx/overlay/x")).unwrap();
        let attrs = CopyAttrs {
            uid: 0,
            gid: 0,
            chmod: None,
            mtime: 0,
        };
        let ctx = d.path().join("ctx");
        let mut buf = vec![];
        write_copy_tar(&ctx, &["overlay/".into()], "/", &attrs, &mut buf).unwrap();
        let mut a = tar::Archive::new(&buf[..]);
        let entries: Vec<(String, tar::EntryType, String)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().entry_type(),
                    e.link_name()
                        .unwrap()
                        .map(|l| l.display().to_string())
                        .unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            [(
                "x".to_string(),
                tar::EntryType::Symlink,
                outside.display().to_string()
            )]
        );
        assert!(!buf.windows(16).any(|w| w == b"TOP-SECRET-BYTES"));

        let inputs = crate::plan::inputs::copy_inputs(&ctx, &["overlay/".into()]).unwrap();
        assert_eq!(
            inputs.get("copy:overlay/x").map(String::as_str),
            Some(format!("symlink 777 {}", outside.display()).as_str())
        );
        assert_eq!(inputs.len(), 2, "the folder and the link: {inputs:?}");
        assert!(!inputs.keys().any(|k| k.contains("secret")), "{inputs:?}");
    }
}
