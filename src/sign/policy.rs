//! The FROM policy: which public keys must have signed the template a
//! Buildfile starts from.
//!
//! Two sources, both checked: `require_signed` in `registries.toml`
//! (repository prefix -> keys; the longest matching prefix applies) and
//! `--require-signed KEY` on `plan`/`build`/`lock`/`fetch`/`bundle` (every
//! FROM). Each requirement is met by a valid signature from any one of its
//! keys (several keys allow a rotation); a signature may name the image
//! manifest or the index it was picked from. The check runs in planning, after
//! FROM is resolved to a digest and before anything runs; offline, it
//! reads the signatures the store (or bundle) kept.

use std::path::PathBuf;

use super::keys::PublicKey;
use super::remote::{self, Verified};
use super::{payload, SignError};
use crate::oci::{Descriptor, Digest, ManifestDoc, Reference, Target};
use crate::registry::{Client, RegistrySettings};
use crate::store::Store;

/// One requirement: where it comes from and the keys that may meet it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// For messages: `--require-signed`, or the settings' prefix.
    pub scope: String,
    pub keys: Vec<PathBuf>,
}

/// Every requirement that applies to some image.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// From the settings file: (prefix, rule).
    prefixes: Vec<(String, Rule)>,
    /// From `--require-signed`.
    everywhere: Option<Rule>,
}

impl Policy {
    pub fn new(settings: &RegistrySettings, required: &[PathBuf]) -> Self {
        Policy {
            prefixes: settings
                .require_signed
                .iter()
                .map(|(prefix, keys)| {
                    (
                        prefix.clone(),
                        Rule {
                            scope: format!("require_signed \"{prefix}\" in registries.toml"),
                            keys: keys.clone(),
                        },
                    )
                })
                .collect(),
            everywhere: (!required.is_empty()).then(|| Rule {
                scope: "--require-signed".into(),
                keys: required.to_vec(),
            }),
        }
    }

    /// The rules for the image `HOST/REPO`: `--require-signed`, and the
    /// settings' longest matching prefix.
    pub fn rules_for(&self, image: &str) -> Vec<&Rule> {
        let best = self
            .prefixes
            .iter()
            .filter(|(p, _)| prefix_matches(p, image))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, r)| r);
        self.everywhere.iter().chain(best).collect()
    }
}

/// `HOST`, `HOST/PATH` and `HOST/PATH/*` match by whole path components
/// (`…/platform` covers `…/platform/base`, not `…/platformx`); a prefix
/// ending in another `*` matches as a plain string prefix.
fn prefix_matches(prefix: &str, image: &str) -> bool {
    let component = prefix
        .strip_suffix("/*")
        .or_else(|| prefix.strip_suffix('/'))
        .unwrap_or(prefix);
    if let Some(raw) = component.strip_suffix('*') {
        return image.starts_with(raw);
    }
    image == component
        || image
            .strip_prefix(component)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Check the FROM `target`, resolved to `digest`, against `policy`. Returns
/// the signature that met each requirement (none when none applies).
/// Online, the signatures read from the registry are kept in the store.
pub async fn check_from(
    store: &Store,
    client: &Client,
    policy: &Policy,
    target: &Target,
    digest: &Digest,
    offline: bool,
) -> Result<Vec<Verified>, SignError> {
    let r = match target {
        Target::Registry(r) => r,
        Target::Layout { .. } => {
            return if policy.everywhere.is_some() {
                Err(SignError::NotInRegistry {
                    image: target.to_string(),
                })
            } else {
                Ok(vec![])
            }
        }
    };
    let rules = policy.rules_for(&r.repo_name());
    if rules.is_empty() {
        return Ok(vec![]);
    }
    let digests = signed_digests(store, client, r, digest, offline).await?;
    let mut sets = vec![];
    for d in &digests {
        let set = if offline {
            remote::load(store, r, d)?
        } else {
            let set = remote::fetch(client, r, d).await?;
            if let Some(s) = &set {
                remote::save(store, r, d, s)?;
            }
            set
        };
        sets.push((d, set));
    }
    let mut met = vec![];
    for rule in rules {
        let keys = rule
            .keys
            .iter()
            .map(|p| PublicKey::load(p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut whys = vec![];
        let mut verified = None;
        for (d, set) in &sets {
            let found = match set {
                None if offline => Err(format!(
                    "no signature of {d} was kept in this store or bundle (it would be under {}:{})",
                    r.repo_name(),
                    payload::signature_tag(d)
                )),
                None => Err(format!(
                    "there is no signature under {}:{}",
                    r.repo_name(),
                    payload::signature_tag(d)
                )),
                Some(s) => s.verify(d, &keys),
            };
            match found {
                Ok(v) => {
                    verified = Some(v);
                    break;
                }
                Err(why) => whys.push(why),
            }
        }
        match verified {
            Some(v) => met.push(v),
            None => {
                return Err(SignError::NotSigned {
                    image: r.to_string(),
                    digest: digest.to_string(),
                    keys: format!(
                        "{} ({})",
                        rule.keys
                            .iter()
                            .map(|k| k.display().to_string())
                            .collect::<Vec<_>>()
                            .join(" or "),
                        rule.scope
                    ),
                    found: whys.join("; "),
                })
            }
        }
    }
    Ok(met)
}

/// The digests a signature of this FROM may name: the image manifest's,
/// and, when the reference names an index the image was picked from, the
/// index's (`cosign sign` signs what the tag names, so a multi-platform
/// image is signed as its index). Online, the index is kept in `store`
/// under `index-of:REPO@DIGEST` so that an offline check (or a bundle made
/// with this store) knows it too.
pub(super) async fn signed_digests(
    store: &Store,
    client: &Client,
    r: &Reference,
    digest: &Digest,
    offline: bool,
) -> Result<Vec<Digest>, SignError> {
    let name = format!("index-of:{}@{digest}", r.repo_name());
    let mut out = vec![digest.clone()];
    if offline {
        if let Some(d) = store.lookup_name(&name)? {
            out.push(d.digest);
        }
        return Ok(out);
    }
    let top = client
        .get_manifest(r)
        .await
        .map_err(|source| SignError::Registry {
            context: format!("reading {r} to check its signatures"),
            source: Box::new(source),
        })?;
    if top.digest == *digest {
        return Ok(out);
    }
    let lists_it = matches!(
        ManifestDoc::parse(&top.bytes, Some(&top.media_type)),
        Ok(ManifestDoc::Index(i)) if i.manifests.iter().any(|m| m.digest == *digest)
    );
    if lists_it {
        let d = store.put_bytes(&top.bytes)?;
        let desc = Descriptor::new(top.media_type.clone(), d, top.bytes.len() as u64);
        store.set_name(&name, &desc)?;
        out.push(top.digest);
    }
    Ok(out)
}

/// Copy the signatures of `r`'s image `digest` (and of the index it was
/// picked from) from the registry into `out`, for offline checks. Returns
/// how many signatures were copied.
pub async fn keep_for_offline(
    out: &Store,
    client: &Client,
    r: &Reference,
    digest: &Digest,
) -> Result<usize, SignError> {
    let mut n = 0;
    for d in signed_digests(out, client, r, digest, false).await? {
        if let Some(set) = remote::fetch(client, r, &d).await? {
            remote::save(out, r, &d, &set)?;
            n += set.entries.len();
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_from_on_disk_is_refused_under_require_signed_and_free_otherwise() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        let client = Client::new(RegistrySettings::default()).unwrap();
        let target = Target::parse("oci:/srv/templates:base").unwrap();
        let digest = Digest::of(b"x");
        let free = Policy::new(&RegistrySettings::default(), &[]);
        assert!(check_from(&store, &client, &free, &target, &digest, false)
            .await
            .unwrap()
            .is_empty());
        let strict = Policy::new(&RegistrySettings::default(), &[PathBuf::from("k.pub")]);
        let e = check_from(&store, &client, &strict, &target, &digest, false)
            .await
            .unwrap_err();
        assert!(matches!(e, SignError::NotInRegistry { .. }), "{e}");
        assert!(e.to_string().contains("oci:/srv/templates"), "{e}");
    }

    #[test]
    fn prefixes_match_whole_components_and_the_longest_wins() {
        assert!(prefix_matches(
            "127.0.0.1:5000/platform",
            "127.0.0.1:5000/platform/base"
        ));
        assert!(prefix_matches(
            "127.0.0.1:5000/platform/*",
            "127.0.0.1:5000/platform/base"
        ));
        assert!(prefix_matches(
            "127.0.0.1:5000/platform/",
            "127.0.0.1:5000/platform/a/b"
        ));
        assert!(prefix_matches("127.0.0.1:5000", "127.0.0.1:5000/x"));
        assert!(!prefix_matches(
            "127.0.0.1:5000/platform",
            "127.0.0.1:5000/platformx/base"
        ));
        assert!(prefix_matches(
            "127.0.0.1:5000/plat*",
            "127.0.0.1:5000/platformx/base"
        ));
        assert!(!prefix_matches(
            "127.0.0.1:5000/platform",
            "127.0.0.1:5001/platform/base"
        ));

        let settings = RegistrySettings::parse(
            "[require_signed]\n\"127.0.0.1:5000\" = [\"/k/all.pub\"]\n\"127.0.0.1:5000/platform/*\" = [\"/k/platform.pub\"]\n",
        )
        .unwrap();
        let p = Policy::new(&settings, &[]);
        let keys = |image: &str| -> Vec<Vec<PathBuf>> {
            p.rules_for(image).iter().map(|r| r.keys.clone()).collect()
        };
        assert_eq!(
            keys("127.0.0.1:5000/platform/base"),
            vec![vec![PathBuf::from("/k/platform.pub")]]
        );
        assert_eq!(
            keys("127.0.0.1:5000/products/gw"),
            vec![vec![PathBuf::from("/k/all.pub")]]
        );
        assert!(keys("example.com/x").is_empty());
        let p = Policy::new(&settings, &[PathBuf::from("/k/cli.pub")]);
        assert_eq!(p.rules_for("example.com/x").len(), 1);
        assert_eq!(p.rules_for("127.0.0.1:5000/platform/base").len(), 2);
    }
}
