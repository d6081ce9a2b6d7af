//! Reading an overlayfs upper directory as a layer diff: how overlayfs
//! marks deletions and replaced directories, and which of its private
//! attributes make an upper directory unreadable as a diff on its own.
//!
//! Both the root (`trusted.overlay.*`) and the unprivileged `userxattr`
//! (`user.overlay.*`) spellings are understood, since Docker and rootful
//! Podman use the first and rootless Podman the second.

use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// What an upper-directory node stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpperNode {
    /// A file, directory, link or device the step created or changed.
    Plain,
    /// The lower node of this name was deleted.
    Whiteout,
    /// A directory whose lower contents are all hidden.
    OpaqueDir,
}

const PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];

fn overlay_attr<'a>(xattrs: &'a [(Vec<u8>, Vec<u8>)], suffix: &[u8]) -> Option<&'a [u8]> {
    xattrs.iter().find_map(|(k, v)| {
        PREFIXES
            .iter()
            .any(|p| k.strip_prefix(*p) == Some(suffix))
            .then_some(v.as_slice())
    })
}

/// Classify one node; `Err` names the overlay feature that makes the upper
/// directory incomplete (the caller falls back to the engine's archive API).
pub(crate) fn classify_upper(
    meta: &Metadata,
    xattrs: &[(Vec<u8>, Vec<u8>)],
) -> Result<UpperNode, String> {
    // metacopy: the upper file has the metadata but its data is in a lower
    // layer; redirect: a renamed directory whose contents stay below. In
    // both cases the upper tree alone would give a wrong layer.
    for feature in [&b"metacopy"[..], b"redirect"] {
        if overlay_attr(xattrs, feature).is_some() {
            return Err(format!(
                "uses overlay {} (mount option), which the upper directory alone cannot express",
                String::from_utf8_lossy(feature)
            ));
        }
    }
    let ft = meta.file_type();
    if ft.is_char_device() && meta.rdev() == 0 {
        return Ok(UpperNode::Whiteout);
    }
    // Whiteouts as empty files with an xattr: what overlayfs makes when it
    // cannot create a 0/0 device node (nested or unprivileged mounts).
    if ft.is_file() && meta.len() == 0 && overlay_attr(xattrs, b"whiteout").is_some() {
        return Ok(UpperNode::Whiteout);
    }
    if ft.is_dir() && overlay_attr(xattrs, b"opaque") == Some(b"y") {
        return Ok(UpperNode::OpaqueDir);
    }
    Ok(UpperNode::Plain)
}

/// Overlay's bookkeeping attributes are never copied into a layer: applied
/// to a directory that is later an overlay lower, they would change what
/// the mount shows.
pub(crate) fn is_overlay_private(name: &[u8]) -> bool {
    PREFIXES.iter().any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_private_attributes_are_recognised_in_both_namespaces() {
        assert!(is_overlay_private(b"trusted.overlay.opaque"));
        assert!(is_overlay_private(b"user.overlay.origin"));
        assert!(!is_overlay_private(b"user.mime_type"));
        assert!(!is_overlay_private(b"trusted.overlayx"));
    }

    #[test]
    fn opaque_needs_the_value_y_and_metacopy_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let meta = fs_err::metadata(dir.path()).unwrap();
        let opaque = vec![(b"user.overlay.opaque".to_vec(), b"y".to_vec())];
        assert_eq!(classify_upper(&meta, &opaque), Ok(UpperNode::OpaqueDir));
        let not = vec![(b"trusted.overlay.opaque".to_vec(), b"x".to_vec())];
        assert_eq!(classify_upper(&meta, &not), Ok(UpperNode::Plain));
        let meta_copy = vec![(b"trusted.overlay.metacopy".to_vec(), Vec::new())];
        assert!(classify_upper(&meta, &meta_copy)
            .unwrap_err()
            .contains("metacopy"));
    }
}
