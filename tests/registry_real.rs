//! The registry client against the test bed's real registries: the
//! plain-HTTP one on 127.0.0.1:5000 and the TLS + basic-auth one on
//! 127.0.0.1:5443 (`bash scripts/testbed env` prints the variables).
//! Each test skips, saying why, when TPLBUILD_TEST_REGISTRY is unset.

use std::path::{Path, PathBuf};

use rand::RngCore;
use tplbuild::oci::{Descriptor, Digest, MediaType, Platform, Reference};
use tplbuild::registry::{
    Client, CredentialSource, PushOutcome, RegistryError, RegistrySettings, VecSink,
};

fn registry() -> Option<String> {
    match std::env::var("TPLBUILD_TEST_REGISTRY") {
        Ok(r) if !r.is_empty() => Some(r),
        _ => {
            eprintln!("skipped: TPLBUILD_TEST_REGISTRY is unset (run `eval \"$(bash scripts/testbed env)\"`)");
            None
        }
    }
}

fn tls_registry() -> Option<(String, String, String)> {
    registry()?;
    let host = std::env::var("TPLBUILD_TEST_TLS_REGISTRY").ok()?;
    let user = std::env::var("TPLBUILD_TEST_TLS_USER").ok()?;
    let pw_file = std::env::var("TPLBUILD_TEST_TLS_PASSWORD_FILE").ok()?;
    let password = fs_err::read_to_string(pw_file).ok()?.trim().to_string();
    Some((host, user, password))
}

fn unique(name: &str) -> String {
    format!("tplbuild-test/{name}-{:08x}", rand::random::<u32>())
}

fn insecure_client(reg: &str) -> Client {
    Client::with_credentials(
        RegistrySettings::default().with_insecure(reg),
        CredentialSource::None,
    )
    .unwrap()
}

/// A random blob written to `dir`, and its descriptor.
fn random_blob(dir: &Path, size: usize, media_type: &str) -> (Descriptor, PathBuf) {
    let mut data = vec![0u8; size];
    rand::thread_rng().fill_bytes(&mut data);
    write_blob(dir, &data, media_type)
}

fn write_blob(dir: &Path, data: &[u8], media_type: &str) -> (Descriptor, PathBuf) {
    let d = Digest::of(data);
    let path = dir.join(d.hex());
    fs_err::write(&path, data).unwrap();
    (Descriptor::new(media_type, d, data.len() as u64), path)
}

struct Pushed {
    manifest_bytes: Vec<u8>,
    digest: Digest,
    layers: Vec<(Descriptor, PathBuf)>,
}

/// Push layers + config + manifest for `platform` under `r`'s tag (or by
/// digest only when `r` has no tag).
async fn push_image(
    client: &Client,
    r: &Reference,
    dir: &Path,
    platform: &str,
    sizes: &[usize],
) -> Pushed {
    let p = Platform::parse(platform).unwrap();
    let layers: Vec<_> = sizes
        .iter()
        .map(|s| random_blob(dir, *s, MediaType::OCI_LAYER_GZIP))
        .collect();
    for (d, path) in &layers {
        client.push_blob_file(r, d, path, None).await.unwrap();
    }
    let config = serde_json::json!({
        "architecture": p.architecture,
        "os": p.os,
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|(d, _)| d.digest.to_string()).collect::<Vec<_>>()},
    });
    let (config_desc, config_path) = write_blob(
        dir,
        &serde_json::to_vec(&config).unwrap(),
        MediaType::OCI_CONFIG,
    );
    client
        .push_blob_file(r, &config_desc, &config_path, None)
        .await
        .unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MediaType::OCI_MANIFEST,
        "config": config_desc,
        "layers": layers.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(),
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let target = if r.tag.is_some() {
        r.clone()
    } else {
        r.with_digest(Digest::of(&bytes))
    };
    let digest = client
        .put_manifest(&target, &bytes, MediaType::OCI_MANIFEST)
        .await
        .unwrap();
    Pushed {
        manifest_bytes: bytes,
        digest,
        layers,
    }
}

#[tokio::test]
async fn push_then_pull_back_by_tag_and_digest() {
    let Some(reg) = registry() else { return };
    let client = insecure_client(&reg);
    let dir = tempfile::tempdir().unwrap();
    let r = Reference::parse(&format!("{reg}/{}:v1", unique("roundtrip"))).unwrap();
    let pushed = push_image(&client, &r, dir.path(), "linux/amd64", &[1, 4096, 5 << 20]).await;
    assert_eq!(pushed.digest, Digest::of(&pushed.manifest_bytes));

    let by_tag = client.get_manifest(&r).await.unwrap();
    assert_eq!(by_tag.bytes, pushed.manifest_bytes);
    assert_eq!(by_tag.digest, pushed.digest);
    assert_eq!(by_tag.media_type, MediaType::OCI_MANIFEST);
    let by_digest = client
        .get_manifest(&r.with_digest(pushed.digest.clone()))
        .await
        .unwrap();
    assert_eq!(by_digest, by_tag);

    for (d, path) in &pushed.layers {
        let mut sink = VecSink::default();
        client.pull_blob(&r, d, &mut sink).await.unwrap();
        assert_eq!(sink.into_inner(), fs_err::read(path).unwrap());
        assert_eq!(
            client.blob_exists(&r, &d.digest).await.unwrap(),
            Some(d.size)
        );
    }
    // A file sink, as the store uses it.
    let (big, big_path) = &pushed.layers[2];
    let out = dir.path().join("pulled");
    let mut f = tokio::fs::File::create(&out).await.unwrap();
    client.pull_blob(&r, big, &mut f).await.unwrap();
    tokio::io::AsyncWriteExt::flush(&mut f).await.unwrap();
    assert_eq!(
        Digest::of(&fs_err::read(&out).unwrap()),
        Digest::of(&fs_err::read(big_path).unwrap())
    );

    let resolved = client
        .resolve_image(&r, &Platform::parse("linux/amd64").unwrap())
        .await
        .unwrap();
    assert_eq!(resolved.reference.digest.as_ref(), Some(&pushed.digest));
    assert_eq!(resolved.parsed.layers.len(), 3);
    assert_eq!(resolved.config.architecture, "amd64");

    assert_eq!(client.list_tags(&r).await.unwrap(), vec!["v1".to_string()]);
    let missing = Digest::of(b"never pushed");
    assert_eq!(client.blob_exists(&r, &missing).await.unwrap(), None);
}

#[tokio::test]
async fn second_push_skips_blobs_the_registry_has() {
    let Some(reg) = registry() else { return };
    let client = insecure_client(&reg);
    let dir = tempfile::tempdir().unwrap();
    let r = Reference::parse(&format!("{reg}/{}:v1", unique("skip"))).unwrap();
    let (d, path) = random_blob(dir.path(), 1000, MediaType::OCI_LAYER_GZIP);
    assert_eq!(
        client.push_blob_file(&r, &d, &path, None).await.unwrap(),
        PushOutcome::Uploaded
    );
    assert_eq!(
        client.push_blob_file(&r, &d, &path, None).await.unwrap(),
        PushOutcome::Existed
    );
}

#[tokio::test]
async fn cross_repo_mount_avoids_the_upload() {
    let Some(reg) = registry() else { return };
    let client = insecure_client(&reg);
    let dir = tempfile::tempdir().unwrap();
    let a = Reference::parse(&format!("{reg}/{}", unique("mount-src"))).unwrap();
    let b = Reference::parse(&format!("{reg}/{}", unique("mount-dst"))).unwrap();
    let (d, path) = random_blob(dir.path(), 100_000, MediaType::OCI_LAYER_GZIP);
    client.push_blob_file(&a, &d, &path, None).await.unwrap();
    assert_eq!(
        client
            .push_blob_file(&b, &d, &path, Some(&a))
            .await
            .unwrap(),
        PushOutcome::Mounted
    );
    assert_eq!(
        client.blob_exists(&b, &d.digest).await.unwrap(),
        Some(d.size)
    );
    // Mounting from a repository that lacks the blob falls back to upload.
    let c = Reference::parse(&format!("{reg}/{}", unique("mount-dst2"))).unwrap();
    let empty = Reference::parse(&format!("{reg}/{}", unique("mount-empty"))).unwrap();
    assert_eq!(
        client
            .push_blob_file(&c, &d, &path, Some(&empty))
            .await
            .unwrap(),
        PushOutcome::Uploaded
    );
}

#[tokio::test]
async fn index_with_two_platforms_resolves_the_requested_one() {
    let Some(reg) = registry() else { return };
    let client = insecure_client(&reg);
    let dir = tempfile::tempdir().unwrap();
    let repo = Reference::parse(&format!("{reg}/{}", unique("multi"))).unwrap();
    let mut entries = Vec::new();
    for platform in ["linux/amd64", "linux/arm64"] {
        let pushed = push_image(&client, &repo, dir.path(), platform, &[10]).await;
        let mut d = Descriptor::new(
            MediaType::OCI_MANIFEST,
            pushed.digest,
            pushed.manifest_bytes.len() as u64,
        );
        d.platform = Platform::parse(platform);
        entries.push(d);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MediaType::OCI_INDEX,
        "manifests": entries,
    });
    let tagged = repo.with_tag("multi");
    client
        .put_manifest(
            &tagged,
            &serde_json::to_vec(&index).unwrap(),
            MediaType::OCI_INDEX,
        )
        .await
        .unwrap();

    let arm = client
        .resolve_image(&tagged, &Platform::parse("linux/arm64").unwrap())
        .await
        .unwrap();
    assert_eq!(arm.config.architecture, "arm64");
    assert_eq!(arm.reference.digest.as_ref(), Some(&entries[1].digest));

    let err = client
        .resolve_image(&tagged, &Platform::parse("linux/s390x").unwrap())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, RegistryError::NoMatchingPlatform { .. }),
        "{msg}"
    );
    assert!(
        msg.contains("linux/amd64") && msg.contains("linux/arm64"),
        "{msg}"
    );
}

#[tokio::test]
async fn missing_tag_is_a_not_found_error_naming_the_reference() {
    let Some(reg) = registry() else { return };
    let client = insecure_client(&reg);
    let r = Reference::parse(&format!("{reg}/{}:nope", unique("missing"))).unwrap();
    let err = client.get_manifest(&r).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert!(err.to_string().contains(&r.to_string()), "{err}");
}

#[tokio::test]
async fn plain_http_registry_not_named_insecure_gets_a_hint() {
    let Some(reg) = registry() else { return };
    let client =
        Client::with_credentials(RegistrySettings::default(), CredentialSource::None).unwrap();
    let r = Reference::parse(&format!("{reg}/x:1")).unwrap();
    let err = client.get_manifest(&r).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RegistryError::PlainHttp { .. }), "{err:?}");
    assert!(msg.contains(&format!("--insecure-registry {reg}")), "{msg}");
}

fn docker_config(dir: &Path, host: &str, user: &str, password: &str) -> PathBuf {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let path = dir.join("config.json");
    fs_err::write(
        &path,
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn tls_registry_with_basic_auth_round_trip() {
    let Some((host, user, password)) = tls_registry() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg_dir = dir.path().join("docker");
    fs_err::create_dir_all(&cfg_dir).unwrap();
    let cfg = docker_config(&cfg_dir, &host, &user, &password);
    let client = Client::with_credentials(
        RegistrySettings::default(),
        CredentialSource::Files(vec![cfg]),
    )
    .unwrap();
    let r = Reference::parse(&format!("{host}/{}:v1", unique("tls"))).unwrap();
    let pushed = push_image(&client, &r, dir.path(), "linux/amd64", &[2048]).await;
    let got = client.get_manifest(&r).await.unwrap();
    assert_eq!(got.digest, pushed.digest);
    let (d, path) = &pushed.layers[0];
    let mut sink = VecSink::default();
    client.pull_blob(&r, d, &mut sink).await.unwrap();
    assert_eq!(sink.into_inner(), fs_err::read(path).unwrap());
    assert!(!format!("{client:?}").contains(&password));
}

#[tokio::test]
async fn tls_registry_without_credentials_says_how_to_log_in() {
    let Some((host, user, password)) = tls_registry() else {
        return;
    };
    let client =
        Client::with_credentials(RegistrySettings::default(), CredentialSource::None).unwrap();
    let r = Reference::parse(&format!("{host}/tplbuild-test/none:1")).unwrap();
    let err = client.get_manifest(&r).await.unwrap_err();
    assert!(matches!(err, RegistryError::AuthRequired { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("docker login {host}"))
            && msg.contains(&format!("podman login {host}")),
        "{msg}"
    );

    // A wrong password is "rejected", and the right one never shows.
    let dir = tempfile::tempdir().unwrap();
    let cfg = docker_config(dir.path(), &host, &user, &format!("{password}-wrong"));
    let client = Client::with_credentials(
        RegistrySettings::default(),
        CredentialSource::Files(vec![cfg]),
    )
    .unwrap();
    let err = client.get_manifest(&r).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    assert!(!format!("{err:?} {err}").contains(&password));
}
