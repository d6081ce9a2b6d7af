//! Step keys: the sha256 of a canonical JSON document (keys sorted, no
//! whitespace) holding everything that can change a step's result.
//!
//! Nothing here uses `#[derive(Hash)]`: the bytes that are hashed are
//! written out explicitly, so an accidental change of the encoding changes
//! the pinned key in the tests below and fails loudly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::oci::Digest;

/// Bump when the meaning of a key changes (e.g. the layer normalization
/// changes), so old cache entries stop matching instead of lying.
/// 2: step layers are made canonical against the parent (no opaque markers).
/// 3: gzip layers are written in independent members (`layer::members`),
///    so the same tar gives other blob bytes than format 2 did.
pub const CACHE_FORMAT: u32 = 3;

/// Everything that goes into a step key.
#[derive(Debug, Clone)]
pub struct KeyInputs<'a> {
    /// The uncompressed digests of the layers below this step, in order.
    pub parent: &'a [Digest],
    /// `os/arch[/variant]`.
    pub platform: &'a str,
    /// SOURCE_DATE_EPOCH the layer's mtimes are clamped to.
    pub epoch: i64,
    /// Environment in effect (ENV so far), by name.
    pub env: &'a BTreeMap<String, String>,
    /// The canonical step definition (after ARG substitution).
    pub step: Value,
    /// Digests of what the step reads (COPY sources, apt archive state).
    pub inputs: &'a BTreeMap<String, String>,
    /// Per-device secrets the Buildfile keeps (`KEEP`).
    pub keep: &'a [String],
}

/// The key document itself, owned: what is hashed for the key, and what
/// is recorded beside every step (store records, the cache index, the
/// last build's note), so that a miss is explained from exactly the data
/// the key was made of. Fields are declared in sorted order: serialising
/// gives the canonical bytes (sorted keys, no whitespace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDoc {
    pub env: BTreeMap<String, String>,
    pub epoch: i64,
    pub format: u32,
    pub inputs: BTreeMap<String, String>,
    pub keep: Vec<String>,
    pub parent: Vec<Digest>,
    pub platform: String,
    /// The step definition with its object keys sorted.
    pub step: Value,
}

impl KeyDoc {
    /// The canonical bytes the key hashes.
    pub fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("key documents serialise")
    }

    pub fn key(&self) -> Digest {
        Digest::of(&self.bytes())
    }

    /// The document as a JSON value, for records.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("key documents serialise")
    }
}

impl KeyInputs<'_> {
    pub fn doc(&self) -> KeyDoc {
        KeyDoc {
            env: self.env.clone(),
            epoch: self.epoch,
            format: CACHE_FORMAT,
            inputs: self.inputs.clone(),
            keep: self.keep.to_vec(),
            parent: self.parent.to_vec(),
            platform: self.platform.to_string(),
            step: sort_value(&self.step),
        }
    }
}

#[cfg(test)]
fn step_key(k: &KeyInputs<'_>) -> Digest {
    k.doc().key()
}

/// Rebuild objects with sorted keys (serde_json's map keeps insertion order
/// in this crate's configuration).
pub fn sort_value(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, Value> =
                m.iter().map(|(k, v)| (k, sort_value(v))).collect();
            Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(sort_value).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample<'a>(
        parent: &'a [Digest],
        env: &'a BTreeMap<String, String>,
        inputs: &'a BTreeMap<String, String>,
    ) -> KeyInputs<'a> {
        KeyInputs {
            parent,
            platform: "linux/amd64",
            epoch: 1_700_000_000,
            env,
            step: json!({"kind": "RUN", "script": "echo hi"}),
            inputs,
            keep: &[],
        }
    }

    /// Pins the encoding. If this fails, the key format changed: bump
    /// CACHE_FORMAT deliberately and update the expected value.
    #[test]
    fn known_key_is_pinned() {
        let parent = [Digest::of(b"layer")];
        let env = BTreeMap::from([("A".to_string(), "1".to_string())]);
        let inputs = BTreeMap::new();
        let k = sample(&parent, &env, &inputs);
        assert_eq!(
            String::from_utf8(k.doc().bytes()).unwrap(),
            format!(
                r#"{{"env":{{"A":"1"}},"epoch":1700000000,"format":3,"inputs":{{}},"keep":[],"parent":["{}"],"platform":"linux/amd64","step":{{"kind":"RUN","script":"echo hi"}}}}"#,
                Digest::of(b"layer")
            )
        );
        assert_eq!(
            step_key(&k).to_string(),
            "sha256:c929273797bb319c9cebee2af29466bb1c8d279e7823a84cbe06c3765d1bc07f"
        );
    }

    #[test]
    fn object_key_order_in_the_step_does_not_matter() {
        let env = BTreeMap::new();
        let inputs = BTreeMap::new();
        let mut a = sample(&[], &env, &inputs);
        let mut b = a.clone();
        a.step = json!({"kind": "X", "a": 1, "b": 2});
        b.step = serde_json::from_str(r#"{"b":2,"a":1,"kind":"X"}"#).unwrap();
        assert_eq!(step_key(&a), step_key(&b));
    }

    #[test]
    fn every_input_changes_the_key() {
        let parent = [Digest::of(b"p")];
        let env = BTreeMap::new();
        let inputs = BTreeMap::new();
        let base = sample(&parent, &env, &inputs);
        let k0 = step_key(&base);
        let other_parent = [Digest::of(b"q")];
        assert_ne!(
            k0,
            step_key(&KeyInputs {
                parent: &other_parent,
                ..base.clone()
            })
        );
        assert_ne!(
            k0,
            step_key(&KeyInputs {
                epoch: 1,
                ..base.clone()
            })
        );
        assert_ne!(
            k0,
            step_key(&KeyInputs {
                platform: "linux/arm64",
                ..base.clone()
            })
        );
        let env2 = BTreeMap::from([("X".to_string(), "y".to_string())]);
        assert_ne!(
            k0,
            step_key(&KeyInputs {
                env: &env2,
                ..base.clone()
            })
        );
        let in2 = BTreeMap::from([("copy:a".to_string(), "d".to_string())]);
        assert_ne!(
            k0,
            step_key(&KeyInputs {
                inputs: &in2,
                ..base.clone()
            })
        );
        let keep = ["machine-id".to_string()];
        assert_ne!(
            k0,
            step_key(&KeyInputs {
                keep: &keep,
                ..base.clone()
            })
        );
    }
}
