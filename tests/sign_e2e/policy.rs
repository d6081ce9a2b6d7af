//! The FROM policy: `--require-signed` and `require_signed` in the
//! settings on plan/lock/build, bundles carrying signatures for offline
//! builds, and multi-platform templates signed as their index.

use std::process::Output;

use crate::bed::*;
use crate::common::*;

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

/// Bundle `bf` (its template carries one signature) and return a build
/// from that bundle, `--offline`, under `--require-signed KEY`.
fn bundled<'a>(env: &'a Env, bf: &'a str) -> impl Fn(&str) -> Output + 'a {
    let bundle = env.path("bundle");
    let out = run_clean(env, &["bundle", "-f", bf, bundle.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("(1 signature(s))"), "{said}");
    // On the "air-gapped" side: the bundle as home, no registry asked.
    move |key: &str| {
        let mut c = env.cmd();
        c.env("TPLBUILD_HOME", &bundle).args([
            "build",
            "-f",
            bf,
            "--offline",
            "--require-signed",
            key,
            "--progress",
            "json",
        ]);
        let out = c.output().unwrap();
        assert_no_key_material(&out);
        out
    }
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
    let offline = bundled(&env, &bf);
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

    let out = bundled(&env, &bf)(&k_pub);
    assert!(out.status.success(), "{}", stderr(&out));
}
