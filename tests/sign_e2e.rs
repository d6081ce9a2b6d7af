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

#[path = "sign_e2e/bed.rs"]
mod bed;
mod common;
#[path = "sign_e2e/policy.rs"]
mod policy;

use bed::*;
use common::*;

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
