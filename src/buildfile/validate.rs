//! The small syntaxes inside instructions: ARG and ENV names, LABEL keys,
//! Debian package names and versions, `--chown`, `--chmod`, and COPY paths
//! (checked here lexically; `context` checks them on disk).

/// `[A-Za-z_][A-Za-z0-9_]*`, for ARG and ENV names.
pub(crate) fn is_arg_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Annotation keys such as `org.opencontainers.image.version`.
pub(crate) fn is_label_key(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':'))
}

/// Debian policy 5.6.1: lower-case alphanumerics and `+ - .`, at least two
/// characters, starting with an alphanumeric.
pub(crate) fn is_package_name(s: &str) -> bool {
    s.len() >= 2
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
}

/// `[EPOCH:]UPSTREAM[-REVISION]`, loosely: the characters dpkg allows, a
/// numeric epoch, and an upstream part that starts with a digit.
pub(crate) fn is_debian_version(s: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~' | ':' | '-');
    if s.is_empty() || !s.chars().all(allowed) {
        return false;
    }
    let upstream = match s.split_once(':') {
        Some((epoch, rest)) => {
            if epoch.is_empty() || !epoch.chars().all(|c| c.is_ascii_digit()) {
                return false;
            }
            rest
        }
        None => s,
    };
    upstream.starts_with(|c: char| c.is_ascii_digit()) && !upstream.ends_with('-')
}

/// USER or USER:GROUP, each numeric or a name (resolved at build time).
pub(crate) fn is_chown(s: &str) -> bool {
    let part = |p: &str| {
        if p.chars().all(|c| c.is_ascii_digit()) {
            return !p.is_empty() && p.parse::<u32>().is_ok();
        }
        p.len() <= 32
            && p.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    match s.split_once(':') {
        Some((u, g)) => part(u) && part(g),
        None => part(s),
    }
}

/// An octal mode of 1–4 digits, at most 07777.
pub(crate) fn parse_chmod(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 4 || !s.chars().all(|c| ('0'..='7').contains(&c)) {
        return None;
    }
    u32::from_str_radix(s, 8).ok()
}

/// A COPY source must stay inside the context, as text. (Symlinks are
/// checked on disk by `parse_file`.)
pub(crate) fn copy_source(s: &str) -> Result<(), (String, Option<String>)> {
    let inside =
        Some("sources are relative to the Buildfile's folder and stay inside it".to_string());
    if s.is_empty() {
        return Err(("empty COPY source".into(), None));
    }
    if s.starts_with('/') {
        return Err((format!("COPY source `{s}` is an absolute path"), inside));
    }
    let mut depth = 0usize;
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." if depth == 0 => {
                return Err((
                    format!("COPY source `{s}` leaves the Buildfile's folder"),
                    inside,
                ));
            }
            ".." => depth -= 1,
            _ => depth += 1,
        }
    }
    Ok(())
}

/// The destination, made absolute. With several sources it must name a
/// folder (end in `/`), as in Docker.
pub(crate) fn copy_dest(s: &str, sources: usize) -> Result<String, String> {
    if s.is_empty() {
        return Err("empty COPY destination".into());
    }
    if s.split('/').any(|c| c == "..") {
        return Err(format!("COPY destination `{s}` contains `..`"));
    }
    if sources > 1 && !s.ends_with('/') {
        return Err(format!(
            "COPY with several sources needs a folder destination ending in `/`, not `{s}`"
        ));
    }
    Ok(if s.starts_with('/') {
        s.to_string()
    } else {
        format!("/{s}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_follow_debian_policy() {
        for ok in [
            "curl",
            "g++",
            "libc6",
            "openssh-server",
            "0ad",
            "python3.11",
        ] {
            assert!(is_package_name(ok), "{ok}");
        }
        for bad in ["", "a", "Curl", "-x", "+x", "curl:amd64", "a b", "über"] {
            assert!(!is_package_name(bad), "{bad}");
        }
    }

    #[test]
    fn versions_are_checked_loosely() {
        for ok in ["1.0", "1:2.36-9+deb12u4", "2.0~rc1-1", "7.88.1-10+deb12u5"] {
            assert!(is_debian_version(ok), "{ok}");
        }
        for bad in ["", "a1.0", ":1.0", "x:1", "1.0 ", "1.0_2", "1.0-"] {
            assert!(!is_debian_version(bad), "{bad}");
        }
    }

    #[test]
    fn chown_takes_names_or_numbers() {
        for ok in ["0", "0:0", "root", "www-data:www-data", "1000:adm", "_apt"] {
            assert!(is_chown(ok), "{ok}");
        }
        for bad in ["", ":", "root:", "a b", "1x", "99999999999", "root:0:0"] {
            assert!(!is_chown(bad), "{bad}");
        }
    }

    #[test]
    fn chmod_is_octal_up_to_four_digits() {
        assert_eq!(parse_chmod("0644"), Some(0o644));
        assert_eq!(parse_chmod("755"), Some(0o755));
        assert_eq!(parse_chmod("4755"), Some(0o4755));
        for bad in ["", "8", "0x644", "07777 ", "17777", "rwx"] {
            assert_eq!(parse_chmod(bad), None, "{bad}");
        }
    }

    #[test]
    fn copy_sources_may_not_leave_the_context_lexically() {
        assert!(copy_source("overlay/").is_ok());
        assert!(copy_source("a/../b").is_ok());
        assert!(copy_source(".").is_ok());
        assert!(copy_source("../secret").is_err());
        assert!(copy_source("a/../../b").is_err());
        assert!(copy_source("/etc/passwd").is_err());
    }

    #[test]
    fn copy_dest_is_made_absolute() {
        assert_eq!(copy_dest("etc/", 1).unwrap(), "/etc/");
        assert_eq!(copy_dest("/", 2).unwrap(), "/");
        assert!(copy_dest("/etc/x", 2).is_err());
        assert!(copy_dest("/../x", 1).is_err());
    }
}
