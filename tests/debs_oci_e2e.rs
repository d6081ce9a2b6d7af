//! `tplbuild fetch --cache-to/--cache-from`: the locked .debs as an OCI
//! artifact in the loopback registry, shared between two empty stores.

mod common;

use std::path::{Path, PathBuf};

use common::{sh_ok, testbed, Env, REGISTRY, TEMPLATE};
use tplbuild::lock::Lockfile;

/// A tag no earlier run has used, so the merge starts from nothing.
fn fresh_tag(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{REGISTRY}/debs/x:{what}-{}-{nanos}", std::process::id())
}

/// `DIR/Buildfile` with `install`, locked in `env`.
fn locked(env: &Env, dir: &str, install: &str) -> PathBuf {
    let d = env.path(dir);
    fs_err::create_dir_all(&d).unwrap();
    let bf = d.join("Buildfile");
    fs_err::write(&bf, format!("FROM {TEMPLATE}\nINSTALL {install}\n")).unwrap();
    env.ok(&["lock", "-f", bf.to_str().unwrap()]);
    bf
}

fn shas(bf: &Path) -> Vec<String> {
    Lockfile::load(&Lockfile::path_for(bf))
        .unwrap()
        .debs()
        .iter()
        .map(|p| p.sha256.clone())
        .collect()
}

fn raw_manifest(reference: &str) -> serde_json::Value {
    let out = sh_ok(&format!(
        "skopeo inspect --raw --tls-verify=false docker://{reference}"
    ));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn debs_pushed_with_cache_to_let_an_empty_store_fetch_offline_and_a_second_lock_merges() {
    if !testbed("debs_oci") {
        return;
    }
    common::template();
    let tag = fresh_tag("ssh");
    let a = Env::new();
    let bf = locked(&a, "ssh", "openssh-client");
    let out = a.ok(&["fetch", "-f", bf.to_str().unwrap(), "--cache-to", &tag]);
    let ssh = shas(&bf);
    assert!(ssh.len() > 1, "openssh-client pulls in dependencies");
    assert!(
        out.contains(&format!("pushed {} .deb(s) to {tag}", ssh.len())),
        "{out}"
    );

    let m = raw_manifest(&tag);
    assert_eq!(m["artifactType"], "application/vnd.tplbuild.debs.v1+json");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.oci.empty.v1+json"
    );
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), ssh.len());
    let digests: Vec<&str> = layers
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    let mut sorted = digests.clone();
    sorted.sort();
    assert_eq!(digests, sorted, "layers are sorted by digest");
    for l in layers {
        assert_eq!(l["mediaType"], "application/vnd.debian.binary-package");
        let title = l["annotations"]["org.opencontainers.image.title"]
            .as_str()
            .unwrap();
        assert!(title.ends_with(".deb"), "{title}");
    }

    // A fresh store with the same Buildfile and lock: --offline forbids the
    // archive, so everything must come from the registry. An absent cache
    // before it is only a warning.
    let b = Env::new();
    let bdir = b.path("ssh");
    fs_err::create_dir_all(&bdir).unwrap();
    let bbf = bdir.join("Buildfile");
    fs_err::copy(&bf, &bbf).unwrap();
    fs_err::copy(Lockfile::path_for(&bf), Lockfile::path_for(&bbf)).unwrap();
    let absent = fresh_tag("absent");
    let out = b.run(&[
        "fetch",
        "-f",
        bbf.to_str().unwrap(),
        "--cache-from",
        &absent,
        "--cache-from",
        &tag,
        "--offline",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("no .deb cache at {absent}")),
        "{stderr}"
    );
    assert!(
        stdout.contains(&format!("{} from {tag}, 0 from the archive", ssh.len())),
        "{stdout}"
    );
    let store = tplbuild::store::Store::open(&b.home()).unwrap();
    let lock = Lockfile::load(&Lockfile::path_for(&bbf)).unwrap();
    assert!(tplbuild::lock::fetch::missing(&store, &lock)
        .unwrap()
        .is_empty());

    // A second lockfile pushed to the same tag keeps the first's .debs.
    let bf2 = locked(&a, "hello", "hello");
    a.ok(&["fetch", "-f", bf2.to_str().unwrap(), "--cache-to", &tag]);
    let m = raw_manifest(&tag);
    let listed: Vec<String> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    for sha in ssh.iter().chain(shas(&bf2).iter()) {
        assert!(
            listed.contains(&format!("sha256:{sha}")),
            "{sha} is still listed"
        );
    }
}

#[test]
fn cache_to_a_tag_holding_an_image_is_refused() {
    if !testbed("debs_oci_foreign") {
        return;
    }
    common::template();
    let env = Env::new();
    let bf = locked(&env, "hello", "hello");
    // A copy of the template, so that a bug here cannot clobber the
    // template other tests use.
    let image = fresh_tag("image");
    sh_ok(&format!(
        "skopeo copy --src-tls-verify=false --dest-tls-verify=false \
         docker://{TEMPLATE} docker://{image}"
    ));
    let before = raw_manifest(&image);
    let out = env.run(&["fetch", "-f", bf.to_str().unwrap(), "--cache-to", &image]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("holds something else"), "{stderr}");
    assert_eq!(raw_manifest(&image), before, "the image is untouched");
}

/// Several lockfiles pushing their .debs to one tag at once lose none: each
/// writer re-reads after its PUT, and again a little later, and merges
/// again if its .debs are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushes_to_one_tag_lose_no_deb() {
    if !testbed("concurrent .deb pushes") {
        return;
    }
    use tplbuild::lock::{LockedPackage, LockedStep};
    use tplbuild::oci::{Digest, Reference};
    use tplbuild::registry::{Client, RegistrySettings};

    let tag = fresh_tag("writers");
    let reference = Reference::parse(&tag).unwrap();
    let mut settings = RegistrySettings::default();
    settings.insecure.push(REGISTRY.to_string());
    let client = Client::new(settings).unwrap();
    let home = tempfile::tempdir().unwrap();
    let store = tplbuild::store::Store::open(home.path()).unwrap();

    // Six writers with three made-up .debs each.
    let mut locks = vec![];
    let mut all = std::collections::BTreeSet::new();
    for w in 0..6 {
        let mut packages = vec![];
        for i in 0..3 {
            let bytes = format!("writer {w} deb {i} {tag}").into_bytes();
            let digest = store.put_bytes(&bytes).unwrap();
            all.insert(digest.clone());
            packages.push(LockedPackage {
                name: format!("pkg{w}-{i}"),
                version: "1.0".into(),
                architecture: "amd64".into(),
                filename: format!("pool/main/p/pkg{w}-{i}_1.0_amd64.deb"),
                sha256: digest.hex().to_string(),
                size: bytes.len() as u64,
                uri: "http://deb.debian.org/debian".into(),
            });
        }
        locks.push(Lockfile::new(
            vec![],
            vec![LockedStep {
                index: 0,
                instruction: format!("INSTALL writer{w}"),
                replayed: String::new(),
                packages,
            }],
        ));
    }
    let pushes = locks.iter().map(|lock| {
        let (client, store, reference) = (&client, &store, &reference);
        async move {
            tplbuild::lock::artifact::push_debs(client, store, reference, lock)
                .await
                .unwrap()
        }
    });
    futures_util::future::join_all(pushes).await;

    let listed: std::collections::BTreeSet<Digest> = raw_manifest(&tag)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| Digest::parse(l["digest"].as_str().unwrap()).unwrap())
        .collect();
    let lost: Vec<_> = all.difference(&listed).collect();
    assert!(lost.is_empty(), "lost .debs: {lost:?}");
}
