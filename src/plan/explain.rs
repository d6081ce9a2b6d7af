//! Why a step missed: compare its inputs with those recorded for the
//! previous build of the same Buildfile.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::oci::Digest;
use crate::store::Store;

/// What was recorded for one step of the last build of a Buildfile.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordedStep {
    pub text: String,
    pub key: Digest,
    pub inputs: BTreeMap<String, String>,
}

fn note_name(buildfile: &Path) -> Digest {
    let abs = fs_err::canonicalize(buildfile).unwrap_or_else(|_| buildfile.to_path_buf());
    Digest::of(format!("last-build-v1 {}", abs.display()).as_bytes())
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

/// Human reasons why `now` differs from `before` ("COPY overlay/: etc/motd changed").
pub fn reasons(
    text: &str,
    before: Option<&RecordedStep>,
    now: &BTreeMap<String, String>,
) -> Vec<String> {
    let Some(before) = before else {
        return vec!["not built before".into()];
    };
    if before.text != text {
        return vec![format!("the instruction changed (was `{}`)", before.text)];
    }
    let mut out = vec![];
    let keys: std::collections::BTreeSet<&String> =
        before.inputs.keys().chain(now.keys()).collect();
    for k in keys {
        let (a, b) = (before.inputs.get(k), now.get(k));
        if a == b {
            continue;
        }
        let what = match k.as_str() {
            "from" => format!(
                "FROM now points to {}",
                b.map(String::as_str).unwrap_or("?")
            ),
            "parent" => "an earlier layer changed".to_string(),
            "env" => "ENV changed".to_string(),
            "epoch" => "SOURCE_DATE_EPOCH changed".to_string(),
            "platform" => "the platform changed".to_string(),
            "definition" => "the instruction changed".to_string(),
            k if k.starts_with("copy:") => {
                let path = &k["copy:".len()..];
                match (a, b) {
                    (None, Some(_)) => format!("{path} was added"),
                    (Some(_), None) => format!("{path} was removed"),
                    _ => format!("{path} changed"),
                }
            }
            k if k.starts_with("apt:") => {
                let suite = k.rsplit(' ').next().unwrap_or(k);
                format!("archive {suite} changed")
            }
            other => format!("{other} changed"),
        };
        out.push(what);
    }
    if out.is_empty() {
        out.push("no recorded entry (cache was cleared?)".into());
    }
    // "an earlier layer changed" says little when something more precise is there.
    if out.len() > 1 {
        out.retain(|r| r != "an earlier layer changed");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_name_the_changed_file_and_archive() {
        let before = RecordedStep {
            text: "COPY overlay/ /".into(),
            key: Digest::of(b"k"),
            inputs: BTreeMap::from([
                ("copy:overlay/etc/motd".into(), "file 644 a".into()),
                (
                    "apt:http://deb.debian.org/debian bookworm-updates".into(),
                    "x".into(),
                ),
            ]),
        };
        let now = BTreeMap::from([
            ("copy:overlay/etc/motd".into(), "file 644 b".into()),
            (
                "apt:http://deb.debian.org/debian bookworm-updates".into(),
                "y".into(),
            ),
        ]);
        let r = reasons("COPY overlay/ /", Some(&before), &now);
        assert_eq!(
            r,
            vec![
                "archive bookworm-updates changed",
                "overlay/etc/motd changed"
            ]
        );
        assert_eq!(reasons("X", None, &now), vec!["not built before"]);
    }
}
