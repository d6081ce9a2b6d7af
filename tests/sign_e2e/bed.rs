//! The signing tests' shared bed: keys made with openssl, a template
//! imported (signed) and copied (unsigned) once per test binary in
//! repositories of their own, the canary that no output holds key
//! material, and plain-curl access to the registry for the independent
//! checks and the hand-made bad signatures.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use crate::common::*;

/// Keys and images made once for the whole binary, in repositories of
/// their own (other engineers' tests use the shared template's).
pub struct Bed {
    pub keys: tempfile::TempDir,
    /// `HOST/sign-e2e-PID/platform/base`: signed with `k.pem` on import.
    pub signed: String,
    /// The same image copied to another repository, never signed.
    pub unsigned: String,
    pub digest: String,
}

impl Bed {
    pub fn key(&self, name: &str) -> PathBuf {
        self.keys.path().join(name)
    }
    pub fn key_str(&self, name: &str) -> String {
        self.key(name).display().to_string()
    }
    /// The prefix every repository of this binary lives under.
    pub fn prefix() -> String {
        format!("{REGISTRY}/sign-e2e-{}", std::process::id())
    }
}

pub fn bed() -> &'static Bed {
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
pub fn key_lines(dir: &Path) -> Vec<String> {
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
pub fn run_clean(env: &Env, args: &[&str]) -> Output {
    let out = env.run(args);
    assert_no_key_material(&out);
    out
}

pub fn assert_no_key_material(out: &Output) {
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

pub static KEY_LINES: OnceLock<Vec<String>> = OnceLock::new();

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn fails_with(env: &Env, args: &[&str], wants: &[&str]) -> String {
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
pub fn registry_get(path: &str, file: &Path) {
    sh_ok(&format!(
        "curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' -o {} http://{REGISTRY}/v2/{path}",
        file.display()
    ));
}

/// A repository's name on the registry (the part after `HOST/`).
pub fn repo_path(image: &str) -> &str {
    image.strip_prefix(&format!("{REGISTRY}/")).unwrap()
}

pub fn sig_tag(digest: &str) -> String {
    format!("{}.sig", digest.replace(':', "-"))
}

/// Push `file` as a blob into `repo` (POST then PUT, as any client does).
pub fn push_blob(repo: &str, file: &Path) -> String {
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

pub fn put_manifest(repo: &str, tag: &str, file: &Path) {
    sh_ok(&format!(
        "curl -sf -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary @{} http://{REGISTRY}/v2/{repo}/manifests/{tag}",
        file.display()
    ));
}
