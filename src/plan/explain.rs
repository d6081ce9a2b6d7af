//! Why a step missed: compare its key document ([`KeyDoc`], the very data
//! its key hashes) with the one recorded for the previous build of the
//! same Buildfile, field by field.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::key::KeyDoc;
use crate::oci::Digest;
use crate::store::Store;

/// What was recorded for one step of the last build of a Buildfile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedStep {
    pub text: String,
    pub key: Digest,
    /// The FROM reference, pinned: not a key input (the parent's layers
    /// are), but it names what changed when the template did.
    pub from: String,
    pub inputs: KeyDoc,
}

fn note_name(buildfile: &Path) -> Digest {
    let abs = fs_err::canonicalize(buildfile).unwrap_or_else(|_| buildfile.to_path_buf());
    // v2: the key document; a v1 note (flat inputs) is not read.
    Digest::of(format!("last-build-v2 {}", abs.display()).as_bytes())
}

pub fn load_previous(store: &Store, buildfile: &Path) -> Vec<RecordedStep> {
    store
        .get_note(&note_name(buildfile))
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

pub fn save(store: &Store, buildfile: &Path, steps: &[RecordedStep]) {
    if let Ok(v) = serde_json::to_value(steps) {
        let _ = store.put_note(&note_name(buildfile), &v);
    }
}

/// Human reasons why `now` differs from `before` ("overlay/etc/motd changed").
pub fn reasons(before: Option<&RecordedStep>, now: &RecordedStep) -> Vec<String> {
    let Some(before) = before else {
        return vec!["not built before".into()];
    };
    if before.text != now.text {
        return vec![format!("the instruction changed (was `{}`)", before.text)];
    }
    let (a, b) = (&before.inputs, &now.inputs);
    let mut out = vec![];
    if a.format != b.format {
        out.push("the cache format changed (another tplbuild version)".to_string());
    }
    if a.step != b.step {
        out.push("the instruction changed".to_string());
    }
    if a.parent != b.parent {
        out.push(if before.from != now.from {
            format!("FROM now points to {}", now.from)
        } else {
            "an earlier layer changed".to_string()
        });
    }
    if a.env != b.env {
        out.push("ENV changed".to_string());
    }
    if a.epoch != b.epoch {
        out.push("SOURCE_DATE_EPOCH changed".to_string());
    }
    if a.platform != b.platform {
        out.push("the platform changed".to_string());
    }
    if a.keep != b.keep {
        out.push("KEEP changed".to_string());
    }
    out.extend(input_reasons(&a.inputs, &b.inputs));
    if out.is_empty() {
        out.push("no recorded entry (cache was cleared?)".into());
    }
    // "an earlier layer changed" says little when something more precise is there.
    if out.len() > 1 {
        out.retain(|r| r != "an earlier layer changed");
    }
    out
}

/// What changed among the files and archives a step reads.
fn input_reasons(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut out = vec![];
    for k in keys {
        let (x, y) = (a.get(k), b.get(k));
        if x == y {
            continue;
        }
        out.push(match InputName::of(k) {
            InputName::Copy(path) => match (x, y) {
                (None, Some(_)) => format!("{path} was added"),
                (Some(_), None) => format!("{path} was removed"),
                _ => format!("{path} changed"),
            },
            InputName::Apt(suite) => format!("archive {suite} changed"),
            InputName::Locked(package) => format!("the locked {package} changed"),
            InputName::Other(name) => format!("{name} changed"),
        });
    }
    out.dedup();
    out
}

/// The kinds of step inputs, as `plan::inputs` and `Plan::with_lock` name them.
enum InputName<'a> {
    /// `copy:<source>/<path>`
    Copy(&'a str),
    /// `apt:<uri> <suite>`
    Apt(&'a str),
    /// `lock:<name>:<arch>`
    Locked(&'a str),
    Other(&'a str),
}

impl<'a> InputName<'a> {
    fn of(k: &'a str) -> Self {
        if let Some(path) = k.strip_prefix("copy:") {
            InputName::Copy(path)
        } else if let Some(rest) = k.strip_prefix("apt:") {
            InputName::Apt(rest.rsplit(' ').next().unwrap_or(rest))
        } else if let Some(rest) = k.strip_prefix("lock:") {
            InputName::Locked(rest.split(':').next().unwrap_or(rest))
        } else {
            InputName::Other(k)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(text: &str, inputs: &[(&str, &str)], keep: &[&str]) -> RecordedStep {
        let doc = KeyDoc {
            env: BTreeMap::new(),
            epoch: 0,
            format: 1,
            inputs: inputs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            keep: keep.iter().map(|k| k.to_string()).collect(),
            parent: vec![Digest::of(b"base")],
            platform: "linux/amd64".into(),
            step: serde_json::json!({"kind": "COPY"}),
        };
        RecordedStep {
            text: text.into(),
            key: doc.key(),
            from: "base:1@sha256:…".into(),
            inputs: doc,
        }
    }

    const APT: &str = "apt:http://deb.debian.org/debian bookworm-updates";

    #[test]
    fn reasons_name_the_changed_file_and_archive() {
        let before = step(
            "COPY overlay/ /",
            &[("copy:overlay/etc/motd", "file 644 a"), (APT, "x")],
            &[],
        );
        let now = step(
            "COPY overlay/ /",
            &[("copy:overlay/etc/motd", "file 644 b"), (APT, "y")],
            &[],
        );
        assert_eq!(
            reasons(Some(&before), &now),
            vec![
                "archive bookworm-updates changed",
                "overlay/etc/motd changed"
            ]
        );
        assert_eq!(reasons(None, &now), vec!["not built before"]);
    }

    #[test]
    fn a_keep_only_change_says_keep_changed() {
        let before = step("RUN x", &[], &[]);
        let now = step("RUN x", &[], &["machine-id"]);
        assert_ne!(before.key, now.key, "KEEP is in the key");
        assert_eq!(reasons(Some(&before), &now), vec!["KEEP changed"]);
    }

    #[test]
    fn a_new_template_says_where_from_points_now() {
        let before = step("RUN x", &[], &[]);
        let mut now = before.clone();
        now.inputs.parent = vec![Digest::of(b"new base")];
        now.from = "base:2@sha256:…".into();
        assert_eq!(
            reasons(Some(&before), &now),
            vec!["FROM now points to base:2@sha256:…"]
        );
        now.from = before.from.clone();
        assert_eq!(
            reasons(Some(&before), &now),
            vec!["an earlier layer changed"]
        );
    }

    #[test]
    fn the_same_document_is_a_cleared_cache() {
        let s = step("RUN x", &[], &[]);
        assert_eq!(
            reasons(Some(&s), &s),
            vec!["no recorded entry (cache was cleared?)"]
        );
    }
}
