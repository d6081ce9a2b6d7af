//! What `tplbuild lock` changed, as a reader wants it: per step, each
//! package whose version moved (`old → new`), each added and each dropped.

use std::collections::BTreeMap;

use super::{LockedPackage, Lockfile};

/// One line of the diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Updated {
        name: String,
        old: String,
        new: String,
    },
    Added {
        name: String,
        version: String,
    },
    Removed {
        name: String,
        version: String,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Updated { name, old, new } => write!(f, "  {name} {old} → {new}"),
            Change::Added { name, version } => write!(f, "+ {name} {version}"),
            Change::Removed { name, version } => write!(f, "- {name} {version}"),
        }
    }
}

/// `name:arch` → version, for one step.
fn versions(pkgs: &[LockedPackage]) -> BTreeMap<String, (&str, &str)> {
    pkgs.iter()
        .map(|p| {
            (
                format!("{}:{}", p.name, p.architecture),
                (p.name.as_str(), p.version.as_str()),
            )
        })
        .collect()
}

/// Changes per step (by index), only steps that changed, in step order.
/// A package whose version stays but whose .deb changed (a rebuilt
/// archive) shows as `old → new` with the same version and `(rebuilt)`.
pub fn diff(old: Option<&Lockfile>, new: &Lockfile) -> Vec<(String, Vec<Change>)> {
    let mut out = vec![];
    for step in &new.steps {
        let before = old
            .and_then(|o| o.for_step(step.index))
            .map(|s| s.packages.as_slice())
            .unwrap_or(&[]);
        let (a, b) = (versions(before), versions(&step.packages));
        let mut changes = vec![];
        for (key, (name, v_new)) in &b {
            match a.get(key) {
                None => changes.push(Change::Added {
                    name: name.to_string(),
                    version: v_new.to_string(),
                }),
                Some((_, v_old)) if v_old != v_new => changes.push(Change::Updated {
                    name: name.to_string(),
                    old: v_old.to_string(),
                    new: v_new.to_string(),
                }),
                Some(_) => {
                    let sha = |pkgs: &[LockedPackage]| {
                        pkgs.iter()
                            .find(|p| format!("{}:{}", p.name, p.architecture) == *key)
                            .map(|p| p.sha256.clone())
                    };
                    if sha(before) != sha(&step.packages) {
                        changes.push(Change::Updated {
                            name: name.to_string(),
                            old: v_new.to_string(),
                            new: format!("{v_new} (rebuilt)"),
                        });
                    }
                }
            }
        }
        for (key, (name, v_old)) in &a {
            if !b.contains_key(key) {
                changes.push(Change::Removed {
                    name: name.to_string(),
                    version: v_old.to_string(),
                });
            }
        }
        if !changes.is_empty() {
            out.push((step.instruction.clone(), changes));
        }
    }
    out
}

/// The diff as text, or `None` when nothing changed.
pub fn render(old: Option<&Lockfile>, new: &Lockfile) -> Option<String> {
    let d = diff(old, new);
    if d.is_empty() {
        return None;
    }
    let mut s = String::new();
    for (instruction, changes) in d {
        s.push_str(&format!("{instruction}:\n"));
        for c in changes {
            s.push_str(&format!("  {c}\n"));
        }
    }
    Some(s)
}
