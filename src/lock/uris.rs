//! The text side of resolving: the shell script a lock container runs and
//! the parsing of what it prints. apt-get's `--print-uris` lines
//! (`'URL' NAME_VER_ARCH.deb SIZE SHA256:HEX`) give each .deb's archive
//! path, sha256 and size without downloading it; `@@` marker lines frame
//! them per step. Kept free of I/O so it is unit-tested in milliseconds;
//! [`super::resolve`] runs the script.

use std::collections::BTreeMap;

use super::LockedPackage;
use crate::plan::{APT_NO_TRANSLATIONS, DPKG_UNSAFE_IO};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UriError {
    #[error("cannot read apt's --print-uris line {0:?}")]
    Malformed(String),
    #[error("apt printed no SHA256 for {0}: the archive's Packages index must carry SHA256 sums")]
    NoSha256(String),
    #[error("apt printed a package line before any step marker: {0:?}")]
    Orphan(String),
}

/// What one apt step asks of apt inside the lock container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptRequest {
    /// INSTALL (else REMOVE, which is apt-get purge).
    pub install: bool,
    /// Package arguments as apt takes them: `hello`, `hello=2.10-3`.
    pub args: Vec<String>,
    pub recommends: bool,
    /// ENV in effect for the step.
    pub env: BTreeMap<String, String>,
    /// Also carry the step out, so the next step resolves on its result.
    pub apply: bool,
    /// The Buildfile's COPY and RUN steps between the previous apt step
    /// and this one, carried out first: a RUN that adds an architecture or
    /// a COPY that adds an apt source or pin changes what apt resolves.
    pub before: Vec<Replay>,
}

/// A non-apt step, carried out in the lock container. `step` is its
/// number in the plan, printed in a `@@failed` line if it fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// A RUN: its script under `sh -c`, with the step's ENV.
    Run {
        step: usize,
        script: String,
        env: BTreeMap<String, String>,
    },
    /// A COPY: a tar of its files (paths relative to `/`) that was put in
    /// the container at this path before it started.
    Unpack { step: usize, tar: String },
}

/// The lock container's own folder: the replayed COPY steps' tars, and
/// the output of the replay running. Not under /tmp, which a RUN may
/// clean.
pub const LOCK_DIR: &str = "/.tplbuild-lock";

fn exports(env: &BTreeMap<String, String>) -> String {
    env.iter()
        .map(|(k, v)| format!("export {k}={}; ", sh_quote(v)))
        .collect()
}

/// The script lines that carry out `replays`. What a replay prints is
/// kept aside (it must not be read as apt's answer) and shown only when it
/// fails, after a `@@failed STEP` line.
fn replay_lines(replays: &[Replay]) -> String {
    let mut s = String::new();
    for r in replays {
        let (step, command) = match r {
            Replay::Run { step, script, env } => (
                step,
                format!("( {}sh -c {} )", exports(env), sh_quote(script)),
            ),
            // As the engines' archive upload does: owners and modes from
            // the tar, an existing symlink to a folder (merged /usr's
            // /lib) left a symlink.
            Replay::Unpack { step, tar } => (
                step,
                format!(
                    "tar -xpf {} -C / --same-owner --keep-directory-symlink",
                    sh_quote(tar)
                ),
            ),
        };
        s.push_str(&format!(
            "if ! {command} >{LOCK_DIR}/out 2>&1 </dev/null; then echo '@@failed {step}'; cat {LOCK_DIR}/out; exit 1; fi\n"
        ));
    }
    s
}

/// Update the package lists and print each InRelease's digest.
fn update_lines() -> String {
    format!(
        "apt-get update -qq {APT_NO_TRANSLATIONS}\n\
         for f in /var/lib/apt/lists/*_InRelease; do [ -e \"$f\" ] && echo \"@@inrelease $(sha256sum \"$f\")\"; done\n"
    )
}

/// Quote for `sh`: everything inside single quotes, `'` as `'\''`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The script for a lock container: carry out the COPY/RUN steps before
/// the first apt step, update the lists, print each list's InRelease
/// digest, then for each apt step carry out the COPY/RUN steps before it
/// (and update again if there were any), print what it would download
/// (INSTALL) or purge (REMOVE) and, unless it is the last, do it.
pub fn script(steps: &[AptRequest]) -> String {
    let mut s = format!("set -e\nexport DEBIAN_FRONTEND=noninteractive\nmkdir -p {LOCK_DIR}\n");
    // What comes before the first apt step runs before the one update.
    if let Some(first) = steps.first() {
        s.push_str(&replay_lines(&first.before));
    }
    s.push_str(&update_lines());
    for (i, step) in steps.iter().enumerate() {
        if i > 0 && !step.before.is_empty() {
            // A replayed step may have changed the sources: read them again.
            s.push_str(&replay_lines(&step.before));
            s.push_str(&update_lines());
        }
        let args: Vec<String> = step.args.iter().map(|a| sh_quote(a)).collect();
        let args = args.join(" ");
        let exports = exports(&step.env);
        s.push_str(&format!("echo '@@step {i}'\n( {exports}"));
        if step.install {
            // apt 2.6 prints the MD5Sum unless told which hash to show.
            let rec = if step.recommends {
                ""
            } else {
                "--no-install-recommends "
            };
            s.push_str(&format!(
                "apt-get install -y -qq {rec}-o Acquire::ForceHash=SHA256 --print-uris {args}"
            ));
            if step.apply {
                s.push_str(&format!(
                    " && apt-get install -y -qq {DPKG_UNSAFE_IO} {rec}{args} >/dev/null"
                ));
            }
        } else {
            // apt's simulation names what a purge removes (dependents
            // included); dpkg-query adds the version and architecture.
            s.push_str(&format!(
                "names=$(apt-get -s purge {args} | sed -n 's/^\\(Purg\\|Remv\\) \\([^ ]*\\) .*/\\2/p'); \
                 if [ -n \"$names\" ]; then dpkg-query -W -f='@@rm ${{binary:Package}} ${{Version}} ${{Architecture}}\\n' $names; fi"
            ));
            if step.apply {
                s.push_str(&format!(
                    " && apt-get purge -y -qq {DPKG_UNSAFE_IO} {args} >/dev/null"
                ));
            }
        }
        s.push_str(" )\n");
    }
    s
}

/// The step a failed lock container names in its `@@failed STEP` line,
/// and what that step printed.
pub fn failed_replay(lines: &[String]) -> Option<(usize, Vec<String>)> {
    let at = lines.iter().rposition(|l| l.starts_with("@@failed "))?;
    let step = lines[at]["@@failed ".len()..].trim().parse().ok()?;
    Some((step, lines[at + 1..].to_vec()))
}

/// Everything the lock container printed that matters.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// apt list file name (`deb.debian.org_debian_dists_bookworm_InRelease`) → hex sha256.
    pub in_release: BTreeMap<String, String>,
    /// Step position in the script → its packages, sorted.
    pub steps: BTreeMap<usize, Vec<LockedPackage>>,
    /// Lines that were none of ours (apt's warnings), for the user.
    pub other: Vec<String>,
}

/// Parse the container's output.
pub fn parse_output<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<Output, UriError> {
    let mut out = Output::default();
    let mut current: Option<usize> = None;
    for line in lines {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("@@step ") {
            let n = rest
                .trim()
                .parse()
                .map_err(|_| UriError::Malformed(line.to_string()))?;
            out.steps.entry(n).or_default();
            current = Some(n);
        } else if let Some(rest) = line.strip_prefix("@@inrelease ") {
            let mut words = rest.split_whitespace();
            if let (Some(hex), Some(path)) = (words.next(), words.next()) {
                let name = path.rsplit('/').next().unwrap_or(path);
                out.in_release.insert(name.to_string(), hex.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("@@rm ") {
            let pkg = parse_removed(rest).ok_or_else(|| UriError::Malformed(line.to_string()))?;
            let n = current.ok_or_else(|| UriError::Orphan(line.to_string()))?;
            out.steps.entry(n).or_default().push(pkg);
        } else if line.starts_with('\'') {
            let pkg = parse_print_uri(line)?;
            let n = current.ok_or_else(|| UriError::Orphan(line.to_string()))?;
            out.steps.entry(n).or_default().push(pkg);
        } else if !line.is_empty() {
            out.other.push(line.to_string());
        }
    }
    for pkgs in out.steps.values_mut() {
        pkgs.sort();
        pkgs.dedup();
    }
    Ok(out)
}

/// `NAME[:ARCH] VERSION ARCH` from dpkg-query.
fn parse_removed(s: &str) -> Option<LockedPackage> {
    let mut w = s.split_whitespace();
    let (name, version, arch) = (w.next()?, w.next()?, w.next()?);
    Some(LockedPackage {
        name: name.split(':').next().unwrap_or(name).to_string(),
        version: version.to_string(),
        architecture: arch.to_string(),
        filename: String::new(),
        sha256: String::new(),
        size: 0,
        uri: String::new(),
    })
}

/// One `--print-uris` line:
/// `'http://deb.debian.org/debian/pool/main/h/hello/hello_2.10-3_amd64.deb' hello_2.10-3_amd64.deb 53212 SHA256:…`.
/// The URL is percent-encoded (`+` as `%2b`), and so is the epoch's `:`
/// in the second field (`1%3a9.2p1-2`).
pub fn parse_print_uri(line: &str) -> Result<LockedPackage, UriError> {
    let bad = || UriError::Malformed(line.to_string());
    let rest = line.strip_prefix('\'').ok_or_else(bad)?;
    let (url, rest) = rest.split_once('\'').ok_or_else(bad)?;
    let mut words = rest.split_whitespace();
    let (file, size, hash) = (
        words.next().ok_or_else(bad)?,
        words.next().ok_or_else(bad)?,
        words.next().unwrap_or(""),
    );
    let size: u64 = size.parse().map_err(|_| bad())?;
    let file = percent_decode(file);
    let stem = file.strip_suffix(".deb").ok_or_else(bad)?;
    let mut parts = stem.splitn(3, '_');
    let (name, version, arch) = (
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
    );
    let sha256 = hash
        .strip_prefix("SHA256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| UriError::NoSha256(file.clone()))?
        .to_ascii_lowercase();
    // Debian's layout puts every .deb under `pool/`; the part before it
    // is the archive base, as in sources.list.
    let url = percent_decode(url);
    let (uri, filename) = match url.find("/pool/") {
        Some(i) => (url[..i].to_string(), url[i + 1..].to_string()),
        None => {
            let i = url.rfind('/').ok_or_else(bad)?;
            (url[..i].to_string(), url[i + 1..].to_string())
        }
    };
    Ok(LockedPackage {
        name: name.to_string(),
        version: version.to_string(),
        architecture: arch.to_string(),
        filename,
        sha256,
        size,
        uri,
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The name apt gives a suite's InRelease under /var/lib/apt/lists
/// (apt's `URItoFileName`: scheme and credentials dropped, `/` → `_`).
pub fn list_file_name(uri: &str, suite: &str) -> String {
    let no_scheme = uri.split_once("://").map(|(_, r)| r).unwrap_or(uri);
    let no_user = no_scheme
        .rsplit_once('@')
        .map(|(_, r)| r)
        .unwrap_or(no_scheme);
    let full = format!(
        "{}/dists/{}/InRelease",
        no_user.trim_end_matches('/'),
        suite
    );
    full.replace('/', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "'http://deb.debian.org/debian/pool/main/h/hello/hello_2.10-3_amd64.deb' hello_2.10-3_amd64.deb 53212 SHA256:ab12cd34ab12cd34ab12cd34ab12cd34ab12cd34ab12cd34ab12cd34ab12cd34";

    #[test]
    fn print_uri_line_gives_name_version_arch_path_hash_and_size() {
        let p = parse_print_uri(HELLO).unwrap();
        assert_eq!(p.name, "hello");
        assert_eq!(p.version, "2.10-3");
        assert_eq!(p.architecture, "amd64");
        assert_eq!(p.uri, "http://deb.debian.org/debian");
        assert_eq!(p.filename, "pool/main/h/hello/hello_2.10-3_amd64.deb");
        assert_eq!(p.size, 53212);
        assert_eq!(p.sha256, "ab12cd34".repeat(8));
        assert_eq!(
            p.url(),
            "http://deb.debian.org/debian/pool/main/h/hello/hello_2.10-3_amd64.deb"
        );
    }

    #[test]
    fn epoch_colon_and_plus_are_decoded() {
        let line = "'http://deb.debian.org/debian-security/pool/updates/main/o/openssh/openssh-server_9.2p1-2%2bdeb12u3_amd64.deb' openssh-server_1%3a9.2p1-2+deb12u3_amd64.deb 456 SHA256:ABCDEFABCDEFABCDEFABCDEFABCDEFABCDEFABCDEFABCDEFABCDEFABCDEFABCD";
        let p = parse_print_uri(line).unwrap();
        assert_eq!(p.version, "1:9.2p1-2+deb12u3");
        assert_eq!(p.uri, "http://deb.debian.org/debian-security");
        assert_eq!(
            p.filename,
            "pool/updates/main/o/openssh/openssh-server_9.2p1-2+deb12u3_amd64.deb"
        );
        assert_eq!(p.sha256, "abcdef".repeat(10) + "abcd");
    }

    #[test]
    fn md5_only_line_is_refused() {
        let line =
            "'http://x/debian/pool/main/h/hello/hello_1_amd64.deb' hello_1_amd64.deb 1 MD5Sum:0123";
        assert_eq!(
            parse_print_uri(line),
            Err(UriError::NoSha256("hello_1_amd64.deb".into()))
        );
    }

    #[test]
    fn truncated_line_is_malformed() {
        assert!(matches!(
            parse_print_uri("'http://x/pool/a.deb'"),
            Err(UriError::Malformed(_))
        ));
    }

    #[test]
    fn output_is_split_by_step_markers_and_sorted() {
        let text = format!(
            "W: some apt warning\n@@inrelease {h}  /var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease\n@@step 0\n{z}\n{HELLO}\n@@step 1\n@@rm libfoo:amd64 1.0-1 amd64\n",
            h = "0".repeat(64),
            z = HELLO.replace("hello", "zlib")
        );
        let out = parse_output(text.lines()).unwrap();
        assert_eq!(out.other, vec!["W: some apt warning"]);
        assert_eq!(
            out.in_release["deb.debian.org_debian_dists_bookworm_InRelease"],
            "0".repeat(64)
        );
        let names: Vec<_> = out.steps[&0].iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["hello", "zlib"]);
        let rm = &out.steps[&1][0];
        assert_eq!((rm.name.as_str(), rm.version.as_str()), ("libfoo", "1.0-1"));
        assert!(rm.sha256.is_empty());
    }

    #[test]
    fn package_line_before_a_step_is_an_error() {
        assert!(matches!(parse_output([HELLO]), Err(UriError::Orphan(_))));
    }

    #[test]
    fn list_file_name_follows_apt() {
        assert_eq!(
            list_file_name("http://deb.debian.org/debian/", "bookworm"),
            "deb.debian.org_debian_dists_bookworm_InRelease"
        );
        assert_eq!(
            list_file_name("http://deb.debian.org/debian-security", "bookworm-security"),
            "deb.debian.org_debian-security_dists_bookworm-security_InRelease"
        );
    }

    #[test]
    fn replayed_steps_run_in_order_and_later_ones_update_the_lists_again() {
        let req = |before| AptRequest {
            install: true,
            args: vec!["hello".into()],
            recommends: false,
            env: BTreeMap::new(),
            apply: true,
            before,
        };
        let run = |script: &str| Replay::Run {
            step: 1,
            script: script.into(),
            env: BTreeMap::from([("V".to_string(), "it's".to_string())]),
        };
        let s = script(&[
            req(vec![run("dpkg --add-architecture i386")]),
            req(vec![]),
            req(vec![Replay::Unpack {
                step: 4,
                tar: "/.tplbuild-lock/copy-4.tar".into(),
            }]),
        ]);
        let at = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("{needle} in {s}"));
        // The first replay comes before the one and only first update.
        assert!(
            at("( export V='it'\\''s'; sh -c 'dpkg --add-architecture i386' )")
                < at("apt-get update")
        );
        assert_eq!(s.matches("apt-get update -qq").count(), 2, "{s}");
        let unpack = at("tar -xpf '/.tplbuild-lock/copy-4.tar' -C /");
        // What a replay prints is kept out of apt's answer, and shown
        // after a marker naming the step if it fails.
        assert!(s.contains(
            "sh -c 'dpkg --add-architecture i386' ) >/.tplbuild-lock/out 2>&1 </dev/null; \
             then echo '@@failed 1'; cat /.tplbuild-lock/out; exit 1; fi"
        ));
        assert!(s.contains("then echo '@@failed 4'"), "{s}");
        assert!(at("@@step 1") < unpack && unpack < at("@@step 2"));
        assert!(unpack < s.rfind("apt-get update -qq").unwrap());
        assert!(s.rfind("apt-get update -qq").unwrap() < at("@@step 2"));
    }

    #[test]
    fn a_failed_replay_is_found_with_what_it_printed() {
        let lines: Vec<String> = ["@@inrelease x y", "@@failed 3", "sh: 1: nope: not found"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            failed_replay(&lines),
            Some((3, vec!["sh: 1: nope: not found".to_string()]))
        );
        assert_eq!(failed_replay(&lines[..1]), None);
    }

    #[test]
    fn script_quotes_packages_and_applies_all_but_the_last_step() {
        let req = |install, apply| AptRequest {
            install,
            args: vec!["hello=2.10-3".into(), "it's".into()],
            recommends: false,
            env: BTreeMap::new(),
            apply,
            before: vec![],
        };
        let s = script(&[req(true, true), req(false, false)]);
        assert!(s.contains("--print-uris 'hello=2.10-3' 'it'\\''s'"), "{s}");
        assert!(
            s.contains(&format!(
                "&& apt-get install -y -qq {DPKG_UNSAFE_IO} --no-install-recommends 'hello"
            )),
            "{s}"
        );
        assert!(
            s.contains(&format!("apt-get update -qq {APT_NO_TRANSLATIONS}\n")),
            "{s}"
        );
        assert!(s.contains("apt-get -s purge"));
        assert!(!s.contains("&& apt-get purge"));
    }
}
