//! The SBOM of a small two-layer image built in a temp store: packages
//! with the layer that brought them, licences, unowned files, both formats.

use super::*;
use crate::image::Image;
use crate::oci::{ImageConfig, MediaType};
use crate::store::Store;

enum E<'a> {
    File(&'a str, &'a [u8]),
    Link(&'a str, &'a str),
    Whiteout(&'a str),
}

fn tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            E::File(p, data) => {
                h.set_size(data.len() as u64);
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Link(p, target) => {
                h.set_size(0);
                h.set_entry_type(tar::EntryType::Symlink);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Whiteout(p) => {
                let (dir, name) = p.rsplit_once('/').unwrap();
                h.set_size(0);
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, format!("{dir}/.wh.{name}"), &b""[..])
                    .unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

const SHA1_PORT22: &str = "3fa4bb976dfee34ef92b20a9467abc0521a7a9c8";
const STATUS1: &str =
    "Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2+b7\n";
const COPYRIGHT: &[u8] = b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nCopyright: FSF\nLicense: GPL-3+\n";

pub(crate) fn sample(store: &Store) -> Image {
    let status2 = format!(
        "{STATUS1}\nPackage: openssh-server\nStatus: install ok installed\nArchitecture: amd64\n\
Source: openssh\nVersion: 1:9.2p1-2+deb12u3\n"
    );
    let l1 = tar(&[
        E::Link("bin", "usr/bin"),
        E::File("usr/bin/bash", b"#!bash"),
        E::File("var/lib/dpkg/status", STATUS1.as_bytes()),
        E::File(
            "var/lib/dpkg/info/bash.list",
            b"/.\n/bin\n/bin/bash\n/usr/share/doc/bash/copyright\n",
        ),
        E::File("usr/share/doc/bash/copyright", COPYRIGHT),
        E::File("usr/lib/os-release", b"ID=debian\nVERSION_ID=\"12\"\n"),
        E::File("etc/passwd", b"root:x:0:0"),
        E::File("etc/old.conf", b"old"),
    ]);
    let l2 = tar(&[
        E::File("var/lib/dpkg/status", status2.as_bytes()),
        E::File("var/lib/dpkg/info/openssh-server.list", b"/usr/sbin/sshd\n"),
        E::File("usr/sbin/sshd", b"sshd"),
        E::File("etc/gateway.conf", b"port=22\n"),
        E::Whiteout("etc/old.conf"),
    ]);
    let mut image = Image::empty(ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        ..Default::default()
    });
    for l in [l1, l2] {
        let d = store.put_bytes(&l).unwrap();
        let desc = crate::oci::Descriptor::new(MediaType::OCI_LAYER_TAR, d.clone(), l.len() as u64);
        image = image.with_layer(desc, d);
    }
    image
}

fn sbom(store: &Store, image: &Image) -> Sbom {
    let mut described = Described::plain("example:1".into(), image);
    described.layer_origins = vec![
        "FROM base@sha256:aa".into(),
        "Buildfile:2 INSTALL openssh-server".into(),
    ];
    described.deb_sha256.insert(
        ("bash".into(), "5.2.15-2+b7".into(), "amd64".into()),
        "ab".repeat(32),
    );
    Sbom {
        described,
        contents: scan(store, image).unwrap(),
    }
}

#[test]
fn packages_come_with_the_layer_that_brought_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let c = scan(&store, &sample(&store)).unwrap();
    let got: Vec<(&str, &str, usize)> = c
        .packages
        .iter()
        .map(|(p, l)| (p.name.as_str(), p.version.as_str(), *l))
        .collect();
    assert_eq!(
        got,
        [
            ("bash", "5.2.15-2+b7", 0),
            ("openssh-server", "1:9.2p1-2+deb12u3", 1)
        ]
    );
    assert_eq!(c.distro.as_deref(), Some("debian-12"));
    let bash: Vec<&String> = c.licences["bash"].iter().collect();
    assert_eq!(bash, ["GPL-3.0-or-later"]);
    assert!(!c.licences.contains_key("openssh-server"));
}

#[test]
fn unowned_files_are_listed_with_hashes_and_owned_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let c = scan(&store, &sample(&store)).unwrap();
    let paths: Vec<&str> = c.unowned.iter().map(|f| f.path.as_str()).collect();
    // usr/bin/bash is owned through the bin -> usr/bin link; the whiteout
    // removed etc/old.conf.
    assert!(!paths.contains(&"usr/bin/bash"), "{paths:?}");
    assert!(!paths.contains(&"usr/sbin/sshd"), "{paths:?}");
    assert!(!paths.contains(&"etc/old.conf"), "{paths:?}");
    let conf = c
        .unowned
        .iter()
        .find(|f| f.path == "etc/gateway.conf")
        .unwrap();
    assert_eq!(conf.layer, 1);
    assert_eq!(conf.sha256, Digest::of(b"port=22\n").hex());
    // sha1sum of "port=22\n".
    assert_eq!(conf.sha1, SHA1_PORT22);
    assert!(paths.contains(&"etc/passwd"));
    assert!(paths.contains(&"var/lib/dpkg/status"));
}

#[test]
fn spdx_names_packages_purls_steps_and_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let image = sample(&store);
    let s = sbom(&store, &image);
    let bytes = s.render(Format::Spdx);
    assert_eq!(
        bytes,
        sbom(&store, &image).render(Format::Spdx),
        "not deterministic"
    );
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["spdxVersion"], "SPDX-2.3");
    assert_eq!(v["creationInfo"]["created"], "1970-01-01T00:00:00Z");
    assert!(v["documentNamespace"]
        .as_str()
        .unwrap()
        .ends_with(image.digest().hex()));
    let ssh = &v["packages"][2];
    assert_eq!(ssh["name"], "openssh-server");
    assert_eq!(
        ssh["externalRefs"][0]["referenceLocator"],
        "pkg:deb/debian/openssh-server@1%3A9.2p1-2%2Bdeb12u3?arch=amd64&distro=debian-12"
    );
    assert_eq!(
        ssh["annotations"][0]["comment"],
        "tplbuild:step=Buildfile:2 INSTALL openssh-server"
    );
    assert_eq!(ssh["licenseDeclared"], "NOASSERTION");
    assert!(ssh["sourceInfo"]
        .as_str()
        .unwrap()
        .contains("openssh 1:9.2p1-2+deb12u3"));
    let bash = &v["packages"][1];
    assert_eq!(bash["licenseDeclared"], "GPL-3.0-or-later");
    assert_eq!(bash["checksums"][0]["checksumValue"], "ab".repeat(32));
    let files = v["files"].as_array().unwrap();
    let conf = files
        .iter()
        .find(|f| f["fileName"] == "./etc/gateway.conf")
        .unwrap();
    assert_eq!(
        conf["checksums"][1]["checksumValue"],
        Digest::of(b"port=22\n").hex()
    );
}

#[test]
fn cyclonedx_has_components_with_purls_properties_and_a_stable_serial() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let image = sample(&store);
    let bytes = sbom(&store, &image).render(Format::CycloneDx);
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["specVersion"], "1.6");
    let serial = v["serialNumber"].as_str().unwrap();
    assert!(
        serial.starts_with("urn:uuid:") && serial.len() == 45,
        "{serial}"
    );
    assert_eq!(bytes, sbom(&store, &image).render(Format::CycloneDx));
    let comps = v["components"].as_array().unwrap();
    let bash = &comps[0];
    assert_eq!(
        bash["purl"],
        "pkg:deb/debian/bash@5.2.15-2%2Bb7?arch=amd64&distro=debian-12"
    );
    assert_eq!(bash["licenses"][0]["expression"], "GPL-3.0-or-later");
    assert_eq!(bash["properties"][0]["value"], "FROM base@sha256:aa");
    assert!(comps
        .iter()
        .any(|c| c["type"] == "file" && c["name"] == "/etc/gateway.conf"));
}
