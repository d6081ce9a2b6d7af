//! The build's provenance: an in-toto v1 statement whose subject is the
//! image and whose predicate is SLSA provenance v1. External parameters are
//! what the user chose (the Buildfile, its build args); resolved
//! dependencies are what the build read (the template by digest, the
//! lockfile); the byproducts are each step's key and layer, so anyone can
//! check which step made which layer.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::oci::Digest;

/// The build type URI of a Buildfile build.
pub const BUILD_TYPE: &str = "https://tplbuild.dev/buildtypes/buildfile/v1";
/// The builder id.
pub const BUILDER_ID: &str = "https://tplbuild.dev/builder/tplbuild";

/// What one step contributed.
#[derive(Debug, Clone)]
pub struct StepFact {
    /// `Buildfile:3`.
    pub location: String,
    /// `INSTALL openssh-server curl`.
    pub text: String,
    pub key: Digest,
    pub layer: Digest,
}

/// Everything the statement records about one build.
#[derive(Debug, Clone)]
pub struct BuildFacts {
    pub image_name: String,
    pub image: Digest,
    pub buildfile_path: String,
    pub buildfile: Digest,
    pub build_args: BTreeMap<String, String>,
    pub template_ref: String,
    pub template: Digest,
    /// The lockfile's path and digest, when the build followed one.
    pub lockfile: Option<(String, Digest)>,
    pub steps: Vec<StepFact>,
    /// `docker` or `podman`, and the version the daemon reports.
    pub engine: String,
    pub engine_version: String,
    pub platform: String,
    /// `SOURCE_DATE_EPOCH` of the build.
    pub epoch: i64,
}

fn digest_set(d: &Digest) -> Value {
    json!({ "sha256": d.hex() })
}

/// The statement, as canonical JSON bytes (keys in a fixed order).
pub fn statement(f: &BuildFacts) -> Vec<u8> {
    let mut deps = vec![json!({
        "uri": f.template_ref,
        "digest": digest_set(&f.template),
        "annotations": {"role": "template"},
    })];
    if let Some((path, d)) = &f.lockfile {
        deps.push(json!({
            "uri": format!("file:{path}"),
            "digest": digest_set(d),
            "annotations": {"role": "lockfile"},
        }));
    }
    let byproducts: Vec<Value> = f
        .steps
        .iter()
        .map(|s| {
            json!({
                "name": format!("{} {}", s.location, s.text),
                "digest": digest_set(&s.layer),
                "annotations": {"stepKey": s.key.to_string()},
            })
        })
        .collect();
    let doc = json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": f.image_name, "digest": digest_set(&f.image)}],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "buildfile": {"path": f.buildfile_path, "digest": digest_set(&f.buildfile)},
                    "buildArgs": f.build_args,
                },
                "internalParameters": {
                    "engine": f.engine,
                    "engineVersion": f.engine_version,
                    "platform": f.platform,
                    "sourceDateEpoch": f.epoch,
                },
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {
                    "id": BUILDER_ID,
                    "version": {"tplbuild": env!("CARGO_PKG_VERSION")},
                },
                "metadata": {"finishedOn": crate::epoch::rfc3339(f.epoch)},
                "byproducts": byproducts,
            },
        },
    });
    let mut out = serde_json::to_vec_pretty(&doc).expect("JSON serialises");
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> BuildFacts {
        BuildFacts {
            image_name: "127.0.0.1:5000/products/gateway:1".into(),
            image: Digest::of(b"image"),
            buildfile_path: "buildfiles/gateway/Buildfile".into(),
            buildfile: Digest::of(b"FROM x"),
            build_args: BTreeMap::from([("RELEASE".into(), "1".into())]),
            template_ref: "127.0.0.1:5000/platform/base:1".into(),
            template: Digest::of(b"template"),
            lockfile: Some((
                "buildfiles/gateway/Buildfile.lock".into(),
                Digest::of(b"lock"),
            )),
            steps: vec![StepFact {
                location: "Buildfile:3".into(),
                text: "INSTALL openssh-server".into(),
                key: Digest::of(b"key"),
                layer: Digest::of(b"layer"),
            }],
            engine: "docker".into(),
            engine_version: "20.10.24".into(),
            platform: "linux/amd64".into(),
            epoch: 1700000000,
        }
    }

    #[test]
    fn the_statement_records_inputs_steps_and_builder() {
        let v: Value = serde_json::from_slice(&statement(&facts())).unwrap();
        assert_eq!(v["_type"], "https://in-toto.io/Statement/v1");
        assert_eq!(v["predicateType"], "https://slsa.dev/provenance/v1");
        assert_eq!(
            v["subject"][0]["digest"]["sha256"],
            Digest::of(b"image").hex()
        );
        let p = &v["predicate"];
        assert_eq!(
            p["buildDefinition"]["externalParameters"]["buildArgs"]["RELEASE"],
            "1"
        );
        let deps = p["buildDefinition"]["resolvedDependencies"]
            .as_array()
            .unwrap();
        assert_eq!(deps[0]["digest"]["sha256"], Digest::of(b"template").hex());
        assert_eq!(deps[1]["annotations"]["role"], "lockfile");
        assert_eq!(
            p["buildDefinition"]["internalParameters"]["engineVersion"],
            "20.10.24"
        );
        assert_eq!(
            p["runDetails"]["builder"]["version"]["tplbuild"],
            env!("CARGO_PKG_VERSION")
        );
        let step = &p["runDetails"]["byproducts"][0];
        assert_eq!(step["digest"]["sha256"], Digest::of(b"layer").hex());
        assert_eq!(
            step["annotations"]["stepKey"],
            Digest::of(b"key").to_string()
        );
        assert_eq!(statement(&facts()), statement(&facts()));
    }
}
