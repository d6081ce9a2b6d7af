//! What a new layer leaves out or rewrites: user excludes, files apt and
//! dpkg rewrite on every run (they would make equal steps give different
//! layers, DESIGN.md invariant 2), and per-device secrets (invariant 3).
//!
//! Decisions are made on relative paths and file types only, before any
//! content is read, except for `etc/shadow`, whose date field is rewritten.

use super::LayerOptions;

/// What becomes of one tree node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Keep,
    /// Left out with everything below it, and not reported.
    Excluded,
    /// Left out (with everything below it) as volatile.
    Volatile,
    /// Left out as a secret.
    Secret,
    /// Kept as an empty file: a secret that must exist (`etc/machine-id`).
    Emptied,
    /// `etc/shadow`: kept, with dates past the epoch clamped.
    Shadow,
}

/// The node's type as far as the rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeType {
    Dir,
    Regular { size: u64 },
    Other,
}

pub(crate) fn classify(rel: &[u8], ty: NodeType, opts: &LayerOptions) -> Verdict {
    if opts.exclude.iter().any(|ex| {
        let ex = ex.trim_matches('/').as_bytes();
        !ex.is_empty() && (rel == ex || (rel.starts_with(ex) && rel.get(ex.len()) == Some(&b'/')))
    }) {
        return Verdict::Excluded;
    }
    let (parent, name) = match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&b""[..], rel),
    };
    let is_dir = ty == NodeType::Dir;
    let is_reg = matches!(ty, NodeType::Regular { .. });
    let h = &opts.hygiene;

    if h.ssh_host_keys && parent == b"etc/ssh" && name.starts_with(b"ssh_host_") && !is_dir {
        return Verdict::Secret;
    }
    if h.machine_id {
        if rel == b"etc/machine-id" && matches!(ty, NodeType::Regular { size } if size > 0) {
            return Verdict::Emptied;
        }
        // Usually a symlink to /etc/machine-id, which is harmless.
        if rel == b"var/lib/dbus/machine-id" && is_reg {
            return Verdict::Secret;
        }
    }
    if h.random_seed
        && !is_dir
        && (rel == b"var/lib/systemd/random-seed" || rel == b"var/lib/systemd/credential.secret")
    {
        return Verdict::Secret;
    }

    if opts.drop_volatile && is_volatile(rel, parent, name, is_dir) {
        return Verdict::Volatile;
    }
    if is_reg && opts.epoch.is_some() && (rel == b"etc/shadow" || rel == b"etc/shadow-") {
        return Verdict::Shadow;
    }
    Verdict::Keep
}

/// Below these, everything goes (the directories themselves stay).
const EMPTIED_DIRS: &[&[u8]] = &[
    b"var/log/apt",
    b"var/cache/apt/archives/partial",
    b"tmp",
    b"var/tmp",
];

/// Exact files.
const VOLATILE_FILES: &[&[u8]] = &[
    b"var/log/dpkg.log",
    b"var/log/alternatives.log",
    b"var/log/bootstrap.log",
    b"var/cache/ldconfig/aux-cache",
    b"root/.bash_history",
];

fn is_volatile(rel: &[u8], parent: &[u8], name: &[u8], is_dir: bool) -> bool {
    if EMPTIED_DIRS.iter().any(|d| is_below(rel, d)) {
        return true;
    }
    // apt's lists: keep the directory skeleton (apt expects `partial/`),
    // drop every file, including `lock`.
    if is_below(rel, b"var/lib/apt/lists") && !is_dir {
        return true;
    }
    if is_dir {
        return false;
    }
    VOLATILE_FILES.contains(&rel)
        || (parent == b"var/cache/apt" && name.ends_with(b".bin"))
        || (parent == b"var/cache/apt/archives" && name.ends_with(b".deb"))
        || (parent == b"var/cache/debconf" && name.ends_with(b"-old"))
        || (parent == b"var/lib/dpkg" && name.ends_with(b"-old"))
}

fn is_below(rel: &[u8], dir: &[u8]) -> bool {
    rel.len() > dir.len() && rel.starts_with(dir) && rel[dir.len()] == b'/'
}

/// Clamp field 3 of each shadow line (days since 1970 of the last password
/// change, which useradd sets to today) to the epoch's day. Everything else
/// is kept byte for byte.
pub(crate) fn clamp_shadow(content: &[u8], epoch: i64) -> Vec<u8> {
    let max_day = epoch.max(0) as u64 / 86_400;
    let mut out = Vec::with_capacity(content.len());
    for line in content.split_inclusive(|&b| b == b'\n') {
        let fields: Vec<&[u8]> = line.splitn(4, |&b| b == b':').collect();
        let day = fields
            .get(2)
            .and_then(|f| std::str::from_utf8(f).ok())
            .and_then(|f| f.parse::<u64>().ok());
        match day {
            Some(day) if fields.len() == 4 && day > max_day => {
                out.extend_from_slice(fields[0]);
                out.push(b':');
                out.extend_from_slice(fields[1]);
                out.push(b':');
                out.extend_from_slice(max_day.to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(fields[3]);
            }
            _ => out.extend_from_slice(line),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> LayerOptions {
        LayerOptions {
            epoch: Some(1_700_000_000),
            ..LayerOptions::default()
        }
    }

    fn reg() -> NodeType {
        NodeType::Regular { size: 10 }
    }

    #[test]
    fn apt_and_dpkg_run_files_are_volatile_but_their_directories_stay() {
        let o = opts();
        for p in [
            "var/log/apt/history.log",
            "var/log/dpkg.log",
            "var/cache/apt/pkgcache.bin",
            "var/cache/apt/archives/curl_8.deb",
            "var/cache/apt/archives/partial/x.deb",
            "var/lib/apt/lists/lock",
            "var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease",
            "var/lib/apt/lists/auxfiles/x",
            "var/cache/ldconfig/aux-cache",
            "var/cache/debconf/config.dat-old",
            "var/lib/dpkg/status-old",
            "root/.bash_history",
            "tmp/x",
            "var/tmp/y",
        ] {
            assert_eq!(classify(p.as_bytes(), reg(), &o), Verdict::Volatile, "{p}");
        }
        for p in [
            "var/lib/apt/lists",
            "var/lib/apt/lists/partial",
            "var/lib/apt/lists/auxfiles",
            "tmp",
            "var/log/apt",
        ] {
            assert_eq!(
                classify(p.as_bytes(), NodeType::Dir, &o),
                Verdict::Keep,
                "{p}"
            );
        }
        for p in [
            "var/lib/dpkg/status",
            "var/cache/debconf/config.dat",
            "var/cache/apt/archives/lock",
            "tmpfile",
            "usr/lib/python3/__pycache__/x.pyc",
        ] {
            assert_eq!(classify(p.as_bytes(), reg(), &o), Verdict::Keep, "{p}");
        }
    }

    #[test]
    fn volatile_files_are_kept_when_not_asked_to_drop() {
        let o = LayerOptions {
            drop_volatile: false,
            ..opts()
        };
        assert_eq!(classify(b"var/log/dpkg.log", reg(), &o), Verdict::Keep);
    }

    #[test]
    fn secrets_are_removed_and_machine_id_emptied_per_flag() {
        let o = opts();
        assert_eq!(
            classify(b"etc/ssh/ssh_host_ed25519_key", reg(), &o),
            Verdict::Secret
        );
        assert_eq!(
            classify(b"etc/ssh/ssh_host_ed25519_key.pub", reg(), &o),
            Verdict::Secret
        );
        assert_eq!(classify(b"etc/ssh/sshd_config", reg(), &o), Verdict::Keep);
        assert_eq!(classify(b"etc/machine-id", reg(), &o), Verdict::Emptied);
        assert_eq!(
            classify(b"etc/machine-id", NodeType::Regular { size: 0 }, &o),
            Verdict::Keep
        );
        assert_eq!(
            classify(b"var/lib/dbus/machine-id", reg(), &o),
            Verdict::Secret
        );
        assert_eq!(
            classify(b"var/lib/dbus/machine-id", NodeType::Other, &o),
            Verdict::Keep,
            "the usual symlink stays"
        );
        assert_eq!(
            classify(b"var/lib/systemd/random-seed", reg(), &o),
            Verdict::Secret
        );
        let keep = LayerOptions {
            hygiene: super::super::Hygiene::keep_all(),
            ..opts()
        };
        assert_eq!(
            classify(b"etc/ssh/ssh_host_rsa_key", reg(), &keep),
            Verdict::Keep
        );
        assert_eq!(classify(b"etc/machine-id", reg(), &keep), Verdict::Keep);
    }

    #[test]
    fn exclude_covers_the_path_and_below_but_not_siblings_with_the_same_prefix() {
        let o = LayerOptions {
            exclude: vec!["/run/.containerenv".into(), "srv/".into()],
            ..opts()
        };
        assert_eq!(classify(b"run/.containerenv", reg(), &o), Verdict::Excluded);
        assert_eq!(classify(b"srv/a/b", reg(), &o), Verdict::Excluded);
        assert_eq!(classify(b"srvx", reg(), &o), Verdict::Keep);
    }

    #[test]
    fn shadow_change_dates_after_the_epoch_are_clamped_and_nothing_else_changes() {
        let epoch = 1_700_000_000; // day 19675
        let input =
            b"root:*:19999:0:99999:7:::\nbin:*:19000:0:99999:7:::\nbad line\nx:y:notanumber:\n";
        let out = clamp_shadow(input, epoch);
        assert_eq!(
            out,
            b"root:*:19675:0:99999:7:::\nbin:*:19000:0:99999:7:::\nbad line\nx:y:notanumber:\n"
        );
        assert_eq!(classify(b"etc/shadow", reg(), &opts()), Verdict::Shadow);
        let no_epoch = LayerOptions::default();
        assert_eq!(classify(b"etc/shadow", reg(), &no_epoch), Verdict::Keep);
    }
}
