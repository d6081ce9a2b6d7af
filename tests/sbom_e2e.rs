//! SBOM and provenance of the gateway example, checked by tools that are
//! not tplbuild: spdx-tools' `pyspdxtools`, cyclonedx-python-lib's JSON
//! validator, `dpkg-query` over the exported rootfs, `skopeo` and the
//! registry's own API. One build is shared by every test here.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;
use serde_json::Value;

struct Gateway {
    env: Env,
    digest: String,
    tag: String,
    repo: String,
}

impl Gateway {
    fn out(&self, name: &str) -> PathBuf {
        self.env.path("out").join(name)
    }
}

fn buildfile() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("buildfiles/gateway/Buildfile")
        .display()
        .to_string()
}

/// Build args and outputs of the shared build; a rebuild with them must
/// give the same SBOM.
fn build_args(g_tag: &str, out: &Path, suffix: &str) -> Vec<String> {
    let mut a: Vec<String> = [
        "build",
        "-f",
        &buildfile(),
        "--engine",
        "docker",
        "--progress",
        "plain",
        "--tag",
        g_tag,
        "--sbom-format",
        "spdx",
        "--sbom-format",
        "cyclonedx",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for o in [
        format!(
            "type=sbom,dest={}",
            out.join(format!("gateway{suffix}.spdx.json")).display()
        ),
        format!(
            "type=sbom,format=cyclonedx,dest={}",
            out.join(format!("gateway{suffix}.cdx.json")).display()
        ),
    ] {
        a.push("-o".into());
        a.push(o);
    }
    a
}

fn gateway() -> Option<&'static Gateway> {
    static G: OnceLock<Option<Gateway>> = OnceLock::new();
    G.get_or_init(|| {
        if !testbed("sbom: gateway") || !has_socket("/var/run/docker.sock") {
            return None;
        }
        template();
        let env = Env::new();
        let out = env.path("out");
        fs_err::create_dir_all(&out).unwrap();
        let repo = format!("sbom-e2e-{}/gateway", std::process::id());
        let tag = format!("{REGISTRY}/{repo}:1");
        let mut args = build_args(&tag, &out, "");
        for o in [
            format!("type=tar,dest={}", out.join("rootfs.tar").display()),
            format!("type=oci,dest={}", out.join("oci").display()),
        ] {
            args.push("-o".into());
            args.push(o);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let digest = env.ok(&args).trim().to_string();
        // The same build again, every step a hit, to the same tag: its
        // SBOMs must be the same bytes. Run here, before any test reads
        // the registry, since it replaces the provenance there (this run
        // used no engine); the first run's stays in the OCI layout.
        let again = build_args(&tag, &out, "-again");
        let again: Vec<&str> = again.iter().map(String::as_str).collect();
        assert_eq!(env.ok(&again).trim(), digest);
        // dpkg's database as the exported rootfs has it, for dpkg-query.
        let root = env.path("dpkg-root");
        fs_err::create_dir_all(&root).unwrap();
        sh_ok(&format!(
            "tar -xf {} -C {} --wildcards '*var/lib/dpkg/status'",
            out.join("rootfs.tar").display(),
            root.display()
        ));
        Some(Gateway {
            env,
            digest,
            tag,
            repo,
        })
    })
    .as_ref()
}

fn venv() -> PathBuf {
    std::env::var_os("TPLBUILD_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/tplbuild-testbed/venv".into())
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&fs_err::read(path).unwrap()).unwrap()
}

/// `dpkg-query -W` over the exported rootfs' dpkg database.
fn dpkg_query(g: &Gateway, format: &str, package: &str) -> String {
    let root = g.env.path("dpkg-root");
    sh_ok(&format!(
        "dpkg-query --admindir={}/var/lib/dpkg -W -f '{format}' {package}",
        root.display()
    ))
}

#[test]
fn gateway_spdx_validates_and_lists_every_package_dpkg_lists_with_its_step() {
    let Some(g) = gateway() else { return };
    let spdx = g.out("gateway.spdx.json");
    sh_ok(&format!(
        "{}/bin/pyspdxtools -i {}",
        venv().display(),
        spdx.display()
    ));
    let doc = json(&spdx);
    let mut listed: Vec<String> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["SPDXID"] != "SPDXRef-Image")
        .map(|p| {
            format!(
                "{} {}",
                p["name"].as_str().unwrap(),
                p["versionInfo"].as_str().unwrap()
            )
        })
        .collect();
    listed.sort();
    let mut dpkg: Vec<String> = dpkg_query(g, "${Package} ${Version}\\n", "")
        .lines()
        .map(str::to_string)
        .collect();
    dpkg.sort();
    assert_eq!(listed, dpkg, "the SBOM's packages are not dpkg-query -W's");

    let ssh_version = dpkg_query(g, "${Version}", "openssh-server");
    let pkg = |name: &str| {
        doc["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not in the SBOM"))
            .clone()
    };
    let ssh = pkg("openssh-server");
    assert_eq!(ssh["versionInfo"], ssh_version.as_str());
    let step = |p: &Value| p["annotations"][0]["comment"].as_str().unwrap().to_string();
    assert!(
        step(&ssh).ends_with("Buildfile:11 INSTALL openssh-server curl"),
        "{}",
        step(&ssh)
    );
    assert!(step(&pkg("libcurl4")).ends_with("INSTALL openssh-server curl"));
    assert!(step(&pkg("bash")).starts_with(&format!("tplbuild:step=FROM {TEMPLATE}@sha256:")));
    let purl = ssh["externalRefs"][0]["referenceLocator"].as_str().unwrap();
    assert!(
        purl.starts_with("pkg:deb/debian/openssh-server@1%3A9.2p1")
            && purl.ends_with("?arch=amd64&distro=debian-12"),
        "{purl}"
    );
    // COPY's files are listed as owned by no package, with their sha256.
    let motd = doc["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["fileName"] == "./etc/motd")
        .expect("the COPY'd /etc/motd is listed");
    let want = sh_ok(&format!(
        "sha256sum {}/buildfiles/gateway/overlay/etc/motd",
        env!("CARGO_MANIFEST_DIR")
    ));
    assert_eq!(
        motd["checksums"][1]["checksumValue"],
        want.split_whitespace().next().unwrap()
    );
    assert!(motd["comment"]
        .as_str()
        .unwrap()
        .ends_with("COPY overlay/ /"));
}

#[test]
fn gateway_cyclonedx_validates_with_cyclonedx_python_lib() {
    let Some(g) = gateway() else { return };
    let script = "import sys\n\
from cyclonedx.schema import SchemaVersion\n\
from cyclonedx.validation.json import JsonStrictValidator\n\
err = JsonStrictValidator(SchemaVersion.V1_6).validate_str(open(sys.argv[1]).read())\n\
print(err or 'valid')\n\
sys.exit(1 if err else 0)\n";
    let py = g.env.path("validate_cdx.py");
    fs_err::write(&py, script).unwrap();
    sh_ok(&format!(
        "{}/bin/python {} {}",
        venv().display(),
        py.display(),
        g.out("gateway.cdx.json").display()
    ));
    let doc = json(&g.out("gateway.cdx.json"));
    let ssh = doc["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "openssh-server")
        .unwrap();
    assert_eq!(
        ssh["version"],
        dpkg_query(g, "${Version}", "openssh-server").as_str()
    );
    assert_eq!(doc["metadata"]["component"]["version"], g.digest.as_str());
}

#[test]
fn a_rebuild_gives_byte_identical_sboms_and_replaces_its_provenance() {
    let Some(g) = gateway() else { return };
    let out = g.env.path("out");
    for ext in ["spdx.json", "cdx.json"] {
        let a = fs_err::read(out.join(format!("gateway.{ext}"))).unwrap();
        let b = fs_err::read(out.join(format!("gateway-again.{ext}"))).unwrap();
        assert!(a == b, "the {ext} SBOMs of two builds differ");
    }
    // Pushing again lists each kind of document once: the same SBOMs, and
    // the second run's provenance in place of the first's.
    let hex = g.digest.trim_start_matches("sha256:");
    let index = skopeo_raw(&format!("{REGISTRY}/{}:sha256-{hex}", g.repo));
    assert_eq!(index["manifests"].as_array().unwrap().len(), 3, "{index}");
}

fn skopeo_raw(reference: &str) -> Value {
    let out = sh_ok(&format!(
        "skopeo inspect --tls-verify=false --raw docker://{reference}"
    ));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn the_referrers_tag_lists_sbom_and_provenance_and_sbom_reads_them_back() {
    let Some(g) = gateway() else { return };
    let hex = g.digest.trim_start_matches("sha256:");
    let index = skopeo_raw(&format!("{REGISTRY}/{}:sha256-{hex}", g.repo));
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let entries = index["manifests"].as_array().unwrap();
    let mut types: Vec<&str> = entries
        .iter()
        .map(|d| d["artifactType"].as_str().unwrap())
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            "application/spdx+json",
            "application/vnd.cyclonedx+json",
            "application/vnd.in-toto+json"
        ]
    );
    for d in entries {
        let m = skopeo_raw(&format!(
            "{REGISTRY}/{}@{}",
            g.repo,
            d["digest"].as_str().unwrap()
        ));
        assert_eq!(m["subject"]["digest"], g.digest.as_str());
        assert_eq!(m["artifactType"], d["artifactType"]);
        assert_eq!(m["layers"][0]["mediaType"], d["artifactType"]);
    }

    // What `sbom` prints is what the build wrote, byte for byte.
    let printed = g.env.ok(&["sbom", &g.tag]);
    let written = fs_err::read_to_string(g.out("gateway.spdx.json")).unwrap();
    assert!(
        printed == written,
        "tplbuild sbom REF differs from the build's SBOM"
    );
    let printed = g.env.ok(&["sbom", &g.tag, "--format", "cyclonedx"]);
    let written = fs_err::read_to_string(g.out("gateway.cdx.json")).unwrap();
    assert!(printed == written, "the CycloneDX read back differs");
    // And from the OCI layout the build wrote.
    let layout = format!("oci:{}:latest", g.out("oci").display());
    let printed = g.env.ok(&["sbom", &layout]);
    assert!(printed == fs_err::read_to_string(g.out("gateway.spdx.json")).unwrap());
}

#[test]
fn the_provenance_names_template_buildfile_steps_and_engine() {
    let Some(g) = gateway() else { return };
    let hex = g.digest.trim_start_matches("sha256:");
    // The first run's statement, from the OCI layout it wrote: index.json
    // lists the artifact, its manifest names the image as subject.
    let layout = g.out("oci");
    let blob = |digest: &str| {
        fs_err::read_to_string(
            layout
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    let index: Value =
        serde_json::from_str(&fs_err::read_to_string(layout.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["artifactType"] == "application/vnd.in-toto+json")
        .expect("the layout lists the provenance");
    let m: Value = serde_json::from_str(&blob(entry["digest"].as_str().unwrap())).unwrap();
    assert_eq!(m["subject"]["digest"], g.digest.as_str());
    let blob = blob(m["layers"][0]["digest"].as_str().unwrap());
    let st: Value = serde_json::from_str(&blob).unwrap();
    assert_eq!(st["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(st["predicateType"], "https://slsa.dev/provenance/v1");
    assert_eq!(st["subject"][0]["digest"]["sha256"], hex);
    let def = &st["predicate"]["buildDefinition"];
    let buildfile_sha = sh_ok(&format!("sha256sum {}", buildfile()));
    assert_eq!(
        def["externalParameters"]["buildfile"]["digest"]["sha256"],
        buildfile_sha.split_whitespace().next().unwrap()
    );
    assert_eq!(def["externalParameters"]["buildArgs"]["VERSION"], "1.0.0");
    let template_hex = def["resolvedDependencies"][0]["digest"]["sha256"]
        .as_str()
        .unwrap();
    assert_eq!(format!("sha256:{template_hex}"), template());
    assert_eq!(def["internalParameters"]["engine"], "docker");
    assert!(!def["internalParameters"]["engineVersion"]
        .as_str()
        .unwrap()
        .is_empty());
    let steps = st["predicate"]["runDetails"]["byproducts"]
        .as_array()
        .unwrap();
    assert_eq!(steps.len(), 3);
    // Each step's layer is a layer of the image, in order, on top of the template's.
    let manifest = skopeo_raw(&format!("{REGISTRY}/{}@{}", g.repo, g.digest));
    let layers: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    for (step, layer) in steps.iter().zip(&layers[layers.len() - 3..]) {
        assert_eq!(
            format!("sha256:{}", step["digest"]["sha256"].as_str().unwrap()),
            *layer
        );
        assert!(step["annotations"]["stepKey"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"));
    }
    assert!(steps[0]["name"]
        .as_str()
        .unwrap()
        .ends_with("INSTALL openssh-server curl"));
}
