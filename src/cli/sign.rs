//! `tplbuild sign` and `tplbuild verify`, and the `--sign KEY` that
//! `template import` and `build --tag` share: cosign-format signatures
//! pushed beside an image (see [`crate::sign`]).

use std::path::{Path, PathBuf};

use clap::Args;

use super::template::parse_target;
use super::{Context, Failure};
use crate::oci::{Digest, Reference, Target};
use crate::registry::Client;
use crate::sign::{self, PrivateKey, PublicKey, SignError};

#[derive(Debug, Args)]
#[command(
    after_help = "The signature is cosign's key-based format (ECDSA P-256 over the \
    simple-signing payload, under the tag sha256-<hex>.sig), so `cosign verify --key` and \
    skopeo's sigstoreSigned policy accept it. Signing the same image twice with one key adds \
    nothing.\n\nExample:\n  \
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \\\n      \
    -out platform.pem\n  \
    openssl pkey -in platform.pem -pubout -out platform.pub\n  \
    tplbuild sign 127.0.0.1:5000/platform/base:2024.06 --key platform.pem"
)]
pub struct SignArgs {
    /// The image to sign: HOST/REPO:TAG (what the tag points at now) or HOST/REPO@DIGEST.
    #[arg(value_name = "REF")]
    pub reference: String,
    /// The private key: PEM, PKCS#8 (`PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`), P-256.
    #[arg(long, value_name = "KEY.pem")]
    pub key: PathBuf,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Succeeds when one of the keys made a valid signature whose payload \
    names the image's digest; prints the digest. Reads signatures written by tplbuild or by \
    `cosign sign --key`.\n\nExamples:\n  \
    tplbuild verify 127.0.0.1:5000/platform/base:2024.06 --key platform.pub\n  \
    tplbuild plan buildfiles/gateway --require-signed platform.pub \\\n      \
    --build-arg BASE=127.0.0.1:5000/platform/base:2024.06"
)]
pub struct VerifyArgs {
    /// The image: HOST/REPO:TAG or HOST/REPO@DIGEST.
    #[arg(value_name = "REF")]
    pub reference: String,
    /// A public key (PEM, `PUBLIC KEY`); repeatable: any one of them will do.
    #[arg(long, value_name = "PUB.pem", required = true)]
    pub key: Vec<PathBuf>,
}

/// A sign/verify error as the user sees it: the hint it carries, exit 1,
/// or exit 2 for a key that cannot be used.
pub(crate) fn failure(e: SignError, context: String) -> anyhow::Error {
    let mut f = match &e {
        SignError::BadKey { .. } | SignError::EncryptedKey { .. } | SignError::Io(_) => {
            Failure::bad_input(context)
        }
        _ => Failure::failed(context),
    };
    if let Some(h) = e.hint() {
        f = f.with_hint(h);
    }
    anyhow::Error::new(e).context(f)
}

/// `--sign KEY` (or `sign --key`), loaded before any work starts so a bad
/// key fails first.
pub(crate) fn load_signing_key(
    path: Option<&Path>,
    flag: &str,
) -> anyhow::Result<Option<PrivateKey>> {
    path.map(|p| PrivateKey::load(p).map_err(|e| failure(e, format!("{flag} {}", p.display()))))
        .transpose()
}

/// The registry reference a signature goes to; an OCI layout has none.
pub(crate) fn registry_target(t: &Target, flag: &str) -> anyhow::Result<Reference> {
    match t {
        Target::Registry(r) => Ok(r.clone()),
        Target::Layout { .. } => Err(Failure::bad_input(format!(
            "{flag}: {t} is an OCI layout on disk; signatures are pushed to a registry"
        ))
        .with_hint(
            "sign the image once it is in a registry: tplbuild sign HOST/REPO@DIGEST --key KEY.pem",
        )
        .into()),
    }
}

/// Sign `digest` in `repo`; returns the line that tells the user so
/// (naming the key's file, never anything of the key).
pub(crate) async fn sign_and_report(
    client: &Client,
    repo: &Reference,
    digest: &Digest,
    key: &PrivateKey,
) -> anyhow::Result<String> {
    let pinned = repo.with_digest(digest.clone());
    let signed = sign::sign(client, &pinned, key)
        .await
        .map_err(|e| failure(e, format!("signing {}@{digest}", repo.repo_name())))?;
    Ok(format!(
        "signed {}@{} with {}: {}{}",
        repo.repo_name(),
        signed.digest,
        key.path.display(),
        signed.signature_ref,
        if signed.added {
            ""
        } else {
            " (this signature was there already)"
        }
    ))
}

pub async fn sign_cmd(ctx: &Context, a: SignArgs) -> anyhow::Result<()> {
    let key = load_signing_key(Some(&a.key), "--key")?.expect("a key path was given");
    let r = registry_target(&parse_target(&a.reference)?, "sign")?;
    let client = ctx.client()?;
    let digest = match &r.digest {
        Some(d) => d.clone(),
        None => client.get_manifest(&r).await?.digest,
    };
    eprintln!("{}", sign_and_report(&client, &r, &digest, &key).await?);
    println!("{digest}");
    Ok(())
}

pub async fn verify_cmd(ctx: &Context, a: VerifyArgs) -> anyhow::Result<()> {
    let r = registry_target(&parse_target(&a.reference)?, "verify")?;
    let keys = a
        .key
        .iter()
        .map(|p| PublicKey::load(p).map_err(|e| failure(e, format!("--key {}", p.display()))))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client = ctx.client()?;
    let digest = match &r.digest {
        Some(d) => d.clone(),
        None => client.get_manifest(&r).await?.digest,
    };
    let context = format!("verifying {}@{digest}", r.repo_name());
    let set = sign::fetch(&client, &r, &digest)
        .await
        .map_err(|e| failure(e, context.clone()))?;
    let not_signed = |found: String| {
        failure(
            SignError::NotSigned {
                image: r.to_string(),
                digest: digest.to_string(),
                keys: key_list(&a.key),
                found,
            },
            context.clone(),
        )
    };
    let verified = match &set {
        None => {
            return Err(not_signed(format!(
                "there is no signature under {}:{}",
                r.repo_name(),
                sign::signature_tag(&digest)
            )))
        }
        Some(s) => s.verify(&digest, &keys).map_err(not_signed)?,
    };
    eprintln!(
        "verified {}@{digest}: signed by {} (payload names {})",
        r.repo_name(),
        verified.key.display(),
        verified.identity
    );
    println!("{digest}");
    Ok(())
}

pub(crate) fn key_list(keys: &[PathBuf]) -> String {
    keys.iter()
        .map(|k| k.display().to_string())
        .collect::<Vec<_>>()
        .join(" or ")
}
