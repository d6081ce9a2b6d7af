//! Signed templates end to end, against the test bed's registry: `template
//! import --sign`, `sign`, `verify`, the FROM policy (`--require-signed`
//! and `require_signed` in the settings) on plan/lock/build, and a bundle
//! that carries the signatures for an `--offline` build.
//!
//! The signatures are checked independently of tplbuild: `openssl dgst
//! -verify` over the payload and signature read from the registry with
//! curl. (Debian 12's skopeo reads cosign attachments but is built with
//! sigstore verification disabled, so it can only show that it finds
//! them.) Keys are made with openssl per test binary; no test output may
//! contain any of their PEM text.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use common::*;

/// Keys and images made once for the whole binary, in repositories of
/// their own (other engineers' tests use the shared template's).
struct Bed {
    keys: tempfile::TempDir,
    /// `HOST/sign-e2e-PID/platform/base`: signed with `k.pem` on import.
    signed: String,
    /// The same image copied to another repository, never signed.
    unsigned: String,
    digest: String,
}

impl Bed {
    fn key(&self, name: &str) -> PathBuf {
        self.keys.path().join(name)
    }
    fn key_str(&self, name: &str) -> String {
        self.key(name).display().to_string()
    }
    /// The prefix every repository of this binary lives under.
    fn prefix() -> String {
        format!("{REGISTRY}/sign-e2e-{}", std::process::id())
    }
}

fn bed() -> &'static Bed {
    static BED: OnceLock<Bed> = OnceLock::new();
    BED.get_or_init(|| {
        let keys = tempfile::Builder::new()
            .prefix("sign-keys-")
            .tempdir_in(scratch())
            .unwrap();
        let d = keys.path().display();
        // k: PKCS#8 (genpkey); w: SEC1 "EC PRIVATE KEY" (ecparam), another key.
        sh_ok(&format!(
            "cd {d} && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out k.pem \
             && openssl pkey -in k.pem -pubout -out k.pub \
             && openssl ecparam -name prime256v1 -genkey -noout -out w.pem \
             && openssl ec -in w.pem -pubout -out w.pub"
        ));
        // The canary is armed before the first command that reads a key.
        KEY_LINES.get_or_init(|| key_lines(keys.path()));
        let signed = format!("{}/platform/base", Bed::prefix());
        let unsigned = format!("{}/unsigned/base", Bed::prefix());
        let env = Env::new();
        let tar = rootfs_tar().unwrap();
        let out = run_clean(
            &env,
            &[
                "template",
                "import",
                tar.to_str().unwrap(),
                &format!("{signed}:1"),
                "--sign",
                &format!("{d}/k.pem"),
            ],
        );
        assert!(out.status.success());
        let digest = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("signed {signed}@{digest} with {d}/k.pem")),
            "{stderr}"
        );
        env.ok(&["copy", &format!("{signed}:1"), &format!("{unsigned}:1")]);
        Bed {
            keys,
            signed,
            unsigned,
            digest,
        }
    })
}

/// Every PEM body line of the test keys: none may appear in any output.
fn key_lines(dir: &Path) -> Vec<String> {
    ["k.pem", "w.pem"]
        .iter()
        .flat_map(|k| {
            fs_err::read_to_string(dir.join(k))
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .collect()
}

/// Run tplbuild and check that its output holds no key material.
fn run_clean(env: &Env, args: &[&str]) -> Output {
    let out = env.run(args);
    assert_no_key_material(&out);
    out
}

fn assert_no_key_material(out: &Output) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = KEY_LINES
        .get()
        .expect("the keys are made before any command runs");
    for l in lines {
        assert!(
            !text.contains(l.as_str()),
            "key material in the output:\n{text}"
        );
    }
}

static KEY_LINES: OnceLock<Vec<String>> = OnceLock::new();

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn fails_with(env: &Env, args: &[&str], wants: &[&str]) -> String {
    let out = run_clean(env, args);
    assert!(
        !out.status.success(),
        "tplbuild {} succeeded",
        args.join(" ")
    );
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    for w in wants {
        assert!(text.contains(w), "wanted {w:?} in:\n{text}");
    }
    text
}

/// GET from the registry's API (path after /v2/) into `file`.
fn registry_get(path: &str, file: &Path) {
    sh_ok(&format!(
        "curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' -o {} http://{REGISTRY}/v2/{path}",
        file.display()
    ));
}

/// A repository's name on the registry (the part after `HOST/`).
fn repo_path(image: &str) -> &str {
    image.strip_prefix(&format!("{REGISTRY}/")).unwrap()
}

fn sig_tag(digest: &str) -> String {
    format!("{}.sig", digest.replace(':', "-"))
}

/// Push `file` as a blob into `repo` (POST then PUT, as any client does).
fn push_blob(repo: &str, file: &Path) -> String {
    let digest = format!(
        "sha256:{}",
        sh_ok(&format!("sha256sum {} | cut -d' ' -f1", file.display())).trim()
    );
    let location = sh_ok(&format!(
        "curl -sf -X POST -D - -o /dev/null http://{REGISTRY}/v2/{repo}/blobs/uploads/ | tr -d '\\r' | sed -n 's/^[Ll]ocation: //p'"
    ));
    let location = location.trim();
    let sep = if location.contains('?') { '&' } else { '?' };
    sh_ok(&format!(
        "curl -sf -X PUT -H 'Content-Type: application/octet-stream' --data-binary @{} '{location}{sep}digest={digest}'",
        file.display()
    ));
    digest
}

fn put_manifest(repo: &str, tag: &str, file: &Path) {
    sh_ok(&format!(
        "curl -sf -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary @{} http://{REGISTRY}/v2/{repo}/manifests/{tag}",
        file.display()
    ));
}

#[test]
fn an_imported_template_is_signed_in_cosign_format_and_openssl_verifies_it() {
    if !testbed("signed import") {
        return;
    }
    let b = bed();
    let env = Env::new();
    let repo = repo_path(&b.signed);
    let manifest_file = env.path("sig.json");
    fs_err::create_dir_all(env.dir.path()).unwrap();
    registry_get(
        &format!("{repo}/manifests/{}", sig_tag(&b.digest)),
        &manifest_file,
    );
    let m: serde_json::Value =
        serde_json::from_str(&fs_err::read_to_string(&manifest_file).unwrap()).unwrap();
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    let layer = &m["layers"][0];
    assert_eq!(
        layer["mediaType"],
        "application/vnd.dev.cosign.simplesigning.v1+json"
    );
    let payload = env.path("payload.json");
    registry_get(
        &format!("{repo}/blobs/{}", layer["digest"].as_str().unwrap()),
        &payload,
    );
    let p: serde_json::Value =
        serde_json::from_str(&fs_err::read_to_string(&payload).unwrap()).unwrap();
    assert_eq!(
        p["critical"]["image"]["docker-manifest-digest"],
        b.digest.as_str()
    );
    assert_eq!(
        p["critical"]["identity"]["docker-reference"],
        b.signed.as_str()
    );
    assert_eq!(p["critical"]["type"], "cosign container image signature");
    assert!(p["optional"].is_null());
    // The independent check: openssl over the bytes the registry serves.
    let sig = layer["annotations"]["dev.cosignproject.cosign/signature"]
        .as_str()
        .unwrap();
    fs_err::write(env.path("sig.b64"), sig).unwrap();
    let verify = |key: &str| {
        sh(&format!(
            "cd {} && base64 -d sig.b64 > sig.der && openssl dgst -sha256 -verify {} -signature sig.der payload.json",
            env.dir.path().display(),
            b.key_str(key)
        ))
    };
    let good = verify("k.pub");
    assert!(good.status.success());
    assert!(String::from_utf8_lossy(&good.stdout).contains("Verified OK"));
    assert!(
        !verify("w.pub").status.success(),
        "openssl accepts the wrong key"
    );

    // tplbuild's own verify agrees, and prints the digest.
    let out = run_clean(
        &env,
        &[
            "verify",
            &format!("{}:1", b.signed),
            "--key",
            &b.key_str("k.pub"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), b.digest);

    // skopeo finds the attachment (one signature) but cannot verify it:
    // Debian 12 builds it with sigstore disabled.
    let d = env.dir.path().display();
    fs_err::create_dir_all(env.path("registries.d")).unwrap();
    fs_err::write(
        env.path("registries.d/default.yaml"),
        format!("docker:\n  {REGISTRY}:\n    use-sigstore-attachments: true\n"),
    )
    .unwrap();
    let policy = |repo: &str| {
        format!(
            r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{repo}":[{{"type":"sigstoreSigned","keyPath":"{}","signedIdentity":{{"type":"matchRepository"}}}}]}}}}}}"#,
            b.key_str("k.pub")
        )
    };
    fs_err::write(env.path("policy-signed.json"), policy(&b.signed)).unwrap();
    fs_err::write(env.path("policy-unsigned.json"), policy(&b.unsigned)).unwrap();
    let copy = |which: &str, image: &str| {
        sh(&format!(
            "skopeo copy --src-tls-verify=false --policy {d}/policy-{which}.json --registries.d {d}/registries.d docker://{image}:1 oci:{d}/out-{which}:t"
        ))
    };
    let signed = copy("signed", &b.signed);
    let unsigned = copy("unsigned", &b.unsigned);
    let signed_err = String::from_utf8_lossy(&signed.stderr);
    if signed.status.success() {
        // A skopeo with sigstore support verified our signature.
        assert!(
            !unsigned.status.success(),
            "skopeo accepts an unsigned image"
        );
    } else {
        assert!(signed_err.contains("sigstore disabled"), "{signed_err}");
        assert!(String::from_utf8_lossy(&unsigned.stderr).contains("no signature exists"));
    }
}

#[test]
fn sign_and_verify_round_trip_and_each_bad_signature_is_refused_clearly() {
    if !testbed("sign/verify") {
        return;
    }
    let b = bed();
    let env = Env::new();
    fs_err::create_dir_all(env.path("tiny/etc")).unwrap();
    fs_err::write(env.path("tiny/etc/hello"), "hi\n").unwrap();
    let tiny = format!("{}:tiny", b.signed);
    let out = env.ok(&[
        "template",
        "import",
        env.path("tiny").to_str().unwrap(),
        &tiny,
        "--force",
        "--platform",
        "linux/amd64",
    ]);
    let tiny_digest = out.trim().to_string();
    let k_pub = b.key_str("k.pub");
    let w_pub = b.key_str("w.pub");

    // Unsigned: a missing signature says where it looked.
    fails_with(
        &env,
        &["verify", &tiny, "--key", &k_pub],
        &[
            &tiny_digest,
            &k_pub,
            "there is no signature under",
            &sig_tag(&tiny_digest),
        ],
    );

    // Sign with the SEC1 key; twice adds nothing (ECDSA per RFC 6979).
    let out = run_clean(
        &env,
        &["--debug", "sign", &tiny, "--key", &b.key_str("w.pem")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), tiny_digest);
    let again = run_clean(&env, &["sign", &tiny, "--key", &b.key_str("w.pem")]);
    assert!(
        stderr(&again).contains("there already"),
        "{}",
        stderr(&again)
    );
    env.ok(&["verify", &tiny, "--key", &w_pub]);
    // Either of two keys will do; the wrong one alone fails, naming it.
    env.ok(&["verify", &tiny, "--key", &k_pub, "--key", &w_pub]);
    fails_with(
        &env,
        &["verify", &tiny, "--key", &k_pub],
        &[&tiny_digest, &k_pub, "none made by this key"],
    );

    // Tampered payload: the same signature over changed bytes.
    let repo = repo_path(&b.signed);
    let m_file = env.path("tiny-sig.json");
    registry_get(
        &format!("{repo}/manifests/{}", sig_tag(&tiny_digest)),
        &m_file,
    );
    let mut m: serde_json::Value =
        serde_json::from_str(&fs_err::read_to_string(&m_file).unwrap()).unwrap();
    let payload = env.path("payload.json");
    registry_get(
        &format!(
            "{repo}/blobs/{}",
            m["layers"][0]["digest"].as_str().unwrap()
        ),
        &payload,
    );
    let tampered = fs_err::read_to_string(&payload)
        .unwrap()
        .replace("sign-e2e", "sign-e2f");
    fs_err::write(&payload, &tampered).unwrap();
    let d = push_blob(repo, &payload);
    m["layers"][0]["digest"] = d.into();
    m["layers"][0]["size"] = tampered.len().into();
    fs_err::write(&m_file, serde_json::to_vec(&m).unwrap()).unwrap();
    put_manifest(repo, &sig_tag(&tiny_digest), &m_file);
    fails_with(
        &env,
        &["verify", &tiny, "--key", &w_pub],
        &["none made by this key"],
    );

    // A valid signature of another digest (the base's), under tiny's tag.
    let base_sig = env.path("base-sig.json");
    registry_get(
        &format!("{repo}/manifests/{}", sig_tag(&b.digest)),
        &base_sig,
    );
    put_manifest(repo, &sig_tag(&tiny_digest), &base_sig);
    fails_with(
        &env,
        &["verify", &tiny, "--key", &k_pub],
        &[&format!("it signs {}, not {tiny_digest}", b.digest)],
    );

    // Keys that cannot be used are bad input (exit 2), named, never shown.
    fs_err::write(env.path("cosign.key"), "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nZm9v\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n").unwrap();
    let out = run_clean(
        &env,
        &[
            "sign",
            &tiny,
            "--key",
            env.path("cosign.key").to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("PKCS#8"), "{}", stderr(&out));
    let out = run_clean(&env, &["--debug", "sign", &tiny, "--key", &k_pub]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no private key"), "{}", stderr(&out));
}

/// A Buildfile FROM `image` with one RUN step, in `env`.
fn buildfile(env: &Env, image: &str) -> String {
    let dir = env.path(&format!("bf-{}", image.rsplit('/').nth(1).unwrap()));
    fs_err::create_dir_all(&dir).unwrap();
    fs_err::write(
        dir.join("Buildfile"),
        format!("FROM {image}:1\nRUN echo signed-e2e > /etc/signed-e2e\n"),
    )
    .unwrap();
    dir.join("Buildfile").display().to_string()
}

fn step_events(out: &Output) -> usize {
    json_events(out)
        .iter()
        .filter(|e| e["event"].as_str().is_some_and(|s| s.starts_with("step")))
        .count()
}

#[test]
fn a_build_under_the_policy_runs_a_signed_from_and_refuses_others_before_any_step() {
    if !testbed("FROM policy") {
        return;
    }
    let b = bed();
    let env = Env::new();
    let signed_bf = buildfile(&env, &b.signed);
    let unsigned_bf = buildfile(&env, &b.unsigned);
    let k_pub = b.key_str("k.pub");
    let w_pub = b.key_str("w.pub");

    // Wrong key, and an unsigned FROM: refused at planning, nothing runs.
    for (bf, key, why) in [
        (&signed_bf, &w_pub, "none made by this key"),
        (&unsigned_bf, &k_pub, "there is no signature under"),
    ] {
        let args = [
            "build",
            "-f",
            bf,
            "--require-signed",
            key,
            "--progress",
            "json",
        ];
        let text = fails_with(
            &env,
            &args,
            &[
                &b.digest,
                key,
                why,
                "refused by the signature policy",
                "Buildfile:1: FROM",
            ],
        );
        let out = run_clean(&env, &args);
        assert_eq!(step_events(&out), 0, "a step started:\n{text}");
        fails_with(
            &env,
            &["plan", "-f", bf, "--require-signed", key],
            &[&b.digest, why],
        );
        fails_with(
            &env,
            &["lock", "-f", bf, "--require-signed", key],
            &[&b.digest, why],
        );
    }

    // The right key: it builds, and signs what it pushes.
    let product = format!("{}/products/gw:1", Bed::prefix());
    let out = run_clean(
        &env,
        &[
            "build",
            "-f",
            &signed_bf,
            "--require-signed",
            &k_pub,
            "--tag",
            &product,
            "--sign",
            &b.key_str("w.pem"),
        ],
    );
    assert!(out.status.success(), "{}", last_lines(&stderr(&out), 20));
    let built = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        stderr(&out).contains(&format!(
            "signed {}@{built}",
            product.trim_end_matches(":1")
        )),
        "{}",
        stderr(&out)
    );
    env.ok(&["verify", &product, "--key", &w_pub]);

    // The policy from the settings file, per repository prefix; relative
    // key paths are read beside the file.
    let config = env.path("config");
    fs_err::create_dir_all(&config).unwrap();
    fs_err::copy(b.key("k.pub"), config.join("platform.pub")).unwrap();
    fs_err::write(
        config.join("registries.toml"),
        format!("insecure = [\"{REGISTRY}\"]\n[require_signed]\n\"{}/platform/*\" = [\"platform.pub\"]\n\"{}/unsigned\" = [\"platform.pub\"]\n", Bed::prefix(), Bed::prefix()),
    )
    .unwrap();
    env.ok(&["plan", "-f", &signed_bf]);
    fails_with(
        &env,
        &["plan", "-f", &unsigned_bf],
        &[
            &b.digest,
            "platform.pub",
            "in registries.toml",
            "there is no signature under",
        ],
    );
    // Outside every prefix: no requirement.
    let other = env.path("bf-other");
    fs_err::create_dir_all(&other).unwrap();
    fs_err::write(
        other.join("Buildfile"),
        format!("FROM {TEMPLATE}\nRUN true\n"),
    )
    .unwrap();
    template();
    env.ok(&["plan", "-f", other.join("Buildfile").to_str().unwrap()]);
}

#[test]
fn a_bundle_carries_the_signatures_and_an_offline_build_verifies_them() {
    if !testbed("bundle signatures") {
        return;
    }
    let b = bed();
    let env = Env::new();
    let bf = buildfile(&env, &b.signed);
    let k_pub = b.key_str("k.pub");
    env.ok(&["build", "-f", &bf, "--require-signed", &k_pub]);
    let bundle = env.path("bundle");
    let out = run_clean(&env, &["bundle", "-f", &bf, bundle.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("(1 signature(s))"),
        "{}",
        stderr(&out)
    );

    // On the "air-gapped" side: the bundle as home, no registry asked.
    let offline = |key: &str| {
        let mut c = env.cmd();
        c.env("TPLBUILD_HOME", &bundle).args([
            "build",
            "-f",
            &bf,
            "--offline",
            "--require-signed",
            key,
            "--progress",
            "json",
        ]);
        let out = c.output().unwrap();
        assert_no_key_material(&out);
        out
    };
    let good = offline(&k_pub);
    assert!(good.status.success(), "{}", stderr(&good));
    let bad = offline(&b.key_str("w.pub"));
    assert!(!bad.status.success());
    let text = format!("{}{}", String::from_utf8_lossy(&bad.stdout), stderr(&bad));
    assert!(text.contains("the store (signatures:"), "{text}");
    assert!(text.contains("none made by this key"), "{text}");
    assert_eq!(step_events(&bad), 0, "{text}");
}

#[test]
fn a_multi_platform_template_signed_as_its_index_passes_online_and_from_a_bundle() {
    if !testbed("index signatures") {
        return;
    }
    let b = bed();
    let env = Env::new();
    fs_err::create_dir_all(env.dir.path()).unwrap();
    // An index over the (unsigned) template, as a multi-platform push makes.
    let repo = repo_path(&b.unsigned);
    let child = env.path("child.json");
    registry_get(&format!("{repo}/manifests/{}", b.digest), &child);
    let size = fs_err::metadata(&child).unwrap().len();
    let index = env.path("index.json");
    fs_err::write(
        &index,
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": b.digest, "size": size,
                "platform": {"architecture": "amd64", "os": "linux"},
            }],
        })
        .to_string(),
    )
    .unwrap();
    sh_ok(&format!(
        "curl -sf -X PUT -H 'Content-Type: application/vnd.oci.image.index.v1+json' --data-binary @{} http://{REGISTRY}/v2/{repo}/manifests/multi",
        index.display()
    ));
    let dir = env.path("bf-multi");
    fs_err::create_dir_all(&dir).unwrap();
    fs_err::write(
        dir.join("Buildfile"),
        format!("FROM {}:multi\nRUN echo multi > /etc/multi\n", b.unsigned),
    )
    .unwrap();
    let bf = dir.join("Buildfile").display().to_string();
    let k_pub = b.key_str("k.pub");
    fails_with(
        &env,
        &["plan", "-f", &bf, "--require-signed", &k_pub],
        &["there is no signature under"],
    );
    // `sign` signs what the tag names: the index, as cosign does.
    let out = run_clean(
        &env,
        &[
            "sign",
            &format!("{}:multi", b.unsigned),
            "--key",
            &b.key_str("k.pem"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let index_digest = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_ne!(index_digest, b.digest);
    env.ok(&["plan", "-f", &bf, "--require-signed", &k_pub]);

    let bundle = env.path("bundle");
    let out = run_clean(&env, &["bundle", "-f", &bf, bundle.to_str().unwrap()]);
    assert!(
        stderr(&out).contains("(1 signature(s))"),
        "{}",
        stderr(&out)
    );
    let mut c = env.cmd();
    c.env("TPLBUILD_HOME", &bundle).args([
        "build",
        "-f",
        &bf,
        "--offline",
        "--require-signed",
        &k_pub,
    ]);
    let out = c.output().unwrap();
    assert_no_key_material(&out);
    assert!(out.status.success(), "{}", stderr(&out));
}
