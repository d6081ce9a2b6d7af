use std::path::Path;

use super::*;

fn pkg(name: &str, version: &str, sha_byte: char) -> LockedPackage {
    LockedPackage {
        name: name.into(),
        version: version.into(),
        architecture: "amd64".into(),
        filename: format!("pool/main/x/{name}/{name}_{version}_amd64.deb"),
        sha256: sha_byte.to_string().repeat(64),
        size: 1000,
        uri: "http://deb.debian.org/debian".into(),
    }
}

fn sample(packages: Vec<LockedPackage>) -> Lockfile {
    Lockfile::new(
        vec![LockedArchive {
            uri: "http://deb.debian.org/debian".into(),
            suite: "bookworm".into(),
            in_release_sha256: "e".repeat(64),
        }],
        vec![LockedStep {
            index: 0,
            instruction: "INSTALL hello zlib1g".into(),
            replayed: String::new(),
            packages,
        }],
    )
}

#[test]
fn toml_round_trip_keeps_every_field() {
    let mut removed = pkg("vim-tiny", "2:9.0.1378-2", 'a');
    removed.filename.clear();
    removed.sha256.clear();
    removed.size = 0;
    removed.uri.clear();
    let mut lock = sample(vec![pkg("hello", "2.10-3", 'b')]);
    lock.steps.push(LockedStep {
        index: 1,
        instruction: "REMOVE vim-tiny".into(),
        replayed: String::new(),
        packages: vec![removed],
    });
    let text = lock.to_toml().unwrap();
    let back = Lockfile::from_toml(&text, Path::new("Buildfile.lock")).unwrap();
    assert_eq!(back, lock);
    // A removed package carries no .deb fields at all.
    assert!(!text.contains("size = 0"), "{text}");
}

#[test]
fn encoding_is_stable_whatever_the_input_order() {
    let a = sample(vec![pkg("zlib1g", "1", 'c'), pkg("hello", "2", 'd')]);
    let mut b = sample(vec![pkg("hello", "2", 'd'), pkg("zlib1g", "1", 'c')]);
    // Even a hand-built value out of order encodes the same.
    b.steps[0].packages.reverse();
    assert_eq!(a.to_toml().unwrap(), b.to_toml().unwrap());
    let text = a.to_toml().unwrap();
    assert!(text.find("\"hello\"").unwrap() < text.find("\"zlib1g\"").unwrap());
}

#[test]
fn save_then_load_gives_the_same_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = Lockfile::path_for(&dir.path().join("Buildfile"));
    assert!(path.ends_with("Buildfile.lock"));
    let arm = crate::oci::Platform::parse("linux/arm/v7").unwrap();
    let armhf = Lockfile::path_for_platform(&dir.path().join("Buildfile"), &arm);
    assert!(
        armhf.ends_with("Buildfile.linux-arm-v7.lock"),
        "{}",
        armhf.display()
    );
    assert_eq!(path.file_name().unwrap(), "Buildfile.lock");
    let lock = sample(vec![pkg("hello", "2.10-3", 'b')]);
    lock.save(&path).unwrap();
    assert_eq!(Lockfile::load(&path).unwrap(), lock);
}

#[test]
fn newer_format_is_refused() {
    let text = sample(vec![])
        .to_toml()
        .unwrap()
        .replace("version = 1", "version = 2");
    assert!(matches!(
        Lockfile::from_toml(&text, Path::new("x.lock")),
        Err(LockError::Version { found: 2, .. })
    ));
}

#[test]
fn diff_shows_updates_additions_and_removals() {
    let old = sample(vec![
        pkg("openssh-server", "1:9.2p1-2+deb12u3", 'a'),
        pkg("gone", "1.0", 'b'),
    ]);
    let new = sample(vec![
        pkg("openssh-server", "1:9.2p1-2+deb12u5", 'c'),
        pkg("fresh", "2.0", 'd'),
    ]);
    let text = diff::render(Some(&old), &new).unwrap();
    assert_eq!(
        text,
        "INSTALL hello zlib1g:\n\
         \x20 + fresh 2.0\n\
         \x20   openssh-server 1:9.2p1-2+deb12u3 → 1:9.2p1-2+deb12u5\n\
         \x20 - gone 1.0\n"
    );
    assert_eq!(diff::render(Some(&new), &new), None);
}

#[test]
fn diff_flags_a_rebuilt_deb_with_the_same_version() {
    let old = sample(vec![pkg("hello", "2.10-3", 'a')]);
    let new = sample(vec![pkg("hello", "2.10-3", 'b')]);
    let text = diff::render(Some(&old), &new).unwrap();
    assert!(text.contains("hello 2.10-3 → 2.10-3 (rebuilt)"), "{text}");
}

#[test]
fn debs_lists_each_deb_once_across_steps() {
    let mut lock = sample(vec![pkg("hello", "1", 'a')]);
    lock.steps.push(LockedStep {
        index: 1,
        instruction: "INSTALL hello".into(),
        replayed: String::new(),
        packages: vec![pkg("hello", "1", 'a'), pkg("other", "1", 'b')],
    });
    let names: Vec<_> = lock.debs().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["hello", "other"]);
}

#[test]
fn deb_paths_names_stored_debs_by_their_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let bytes = b"not really a deb";
    let digest = store.put_bytes(bytes).unwrap();
    let mut p = pkg("hello", "2.10-3", 'a');
    p.sha256 = digest.hex().to_string();
    let step = LockedStep {
        index: 0,
        instruction: "INSTALL hello".into(),
        replayed: String::new(),
        packages: vec![p, pkg("absent", "1", 'f')],
    };
    let paths = deb_paths(&store, &step);
    assert_eq!(
        paths,
        vec![(
            store.blob_path(&digest),
            "hello_2.10-3_amd64.deb".to_string()
        )]
    );
}
