//! Before any step: the Buildfile parsed, FROM resolved to a digest, the
//! apt archives' state read (or the lockfile followed), so that every key
//! can be made. `build`, `plan`, `lock`, `fetch` and `bundle` all start
//! here, with the same Buildfile flags.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;

use crate::buildfile;
use crate::failure::Failure;
use crate::lock::Lockfile;
use crate::oci::{Platform, Target};
use crate::plan::{self, apt, Plan};
use crate::registry::Client;
use crate::sign;
use crate::store::Store;
use crate::transfer;

/// What the Buildfile flags say (`-f`, `--build-arg`, `--platform`).
#[derive(Debug, Clone)]
pub struct BuildfileSpec {
    pub file: PathBuf,
    pub args: BTreeMap<String, String>,
    pub platform: Platform,
    /// `--require-signed`: keys one of which must have signed the FROM
    /// image (on top of the registry settings' `require_signed`).
    pub require_signed: Vec<PathBuf>,
}

/// The plan `build`, `plan` and `bundle` use: with `FILE.lock` next to the
/// Buildfile, the apt steps follow it (no archive is asked anything), and
/// a lockfile that no longer matches the Buildfile is an error. Returns
/// the warnings to show (a lock resolved on another state).
pub async fn locked_plan(
    store: &Store,
    client: &Client,
    spec: &BuildfileSpec,
    offline: bool,
) -> anyhow::Result<(Plan, Vec<String>)> {
    let lock_path = Lockfile::path_for_platform(&spec.file, &spec.platform);
    if !lock_path.exists() {
        let plan = make(store, client, spec, !offline, offline).await?;
        let warnings = unused_args(spec, &plan.buildfile.args);
        return Ok((plan, warnings));
    }
    let lock = Lockfile::load(&lock_path).map_err(|e| {
        anyhow::Error::new(e).context(Failure::bad_input(format!(
            "reading {}",
            lock_path.display()
        )))
    })?;
    let plan = make(store, client, spec, false, offline).await?;
    lock.matches(&plan).map_err(|drift| {
        anyhow::Error::new(
            Failure::bad_input(format!("{} is out of date: {drift}", lock_path.display()))
                .with_hint(format!("run `tplbuild lock -f {}`", spec.file.display())),
        )
    })?;
    // The locked packages still install as they are (that is what a lock
    // is for), but they were resolved on another state: say so.
    let mut warnings: Vec<String> = unused_args(spec, &plan.buildfile.args);
    warnings.extend(lock
        .replay_drift(&plan)
        .into_iter()
        .map(|drift| {
            format!(
                "{drift}; the locked packages are used as they are (run `tplbuild lock -f {}` to resolve them again)",
                spec.file.display()
            )
        }));
    Ok((plan.with_lock(lock), warnings))
}

/// The ARGs the platform sets, as BuildKit names them: a Buildfile that
/// declares `ARG TARGETARCH` gets `arm64` when built for linux/arm64, so one
/// Buildfile can `INSTALL linux-image-${TARGETARCH}` for every platform.
pub const PLATFORM_ARGS: [&str; 4] = ["TARGETPLATFORM", "TARGETOS", "TARGETARCH", "TARGETVARIANT"];

/// `--build-arg`s plus the platform's ARGs, which the platform decides: a
/// `--build-arg TARGETARCH=…` does not override them.
fn with_platform_args(spec: &BuildfileSpec) -> BTreeMap<String, String> {
    let p = &spec.platform;
    let mut args = spec.args.clone();
    for (name, value) in PLATFORM_ARGS.into_iter().zip([
        p.to_string(),
        p.os.clone(),
        p.architecture.clone(),
        p.variant.clone().unwrap_or_default(),
    ]) {
        args.insert(name.to_string(), value);
    }
    args
}

/// A `--build-arg` the Buildfile declares no ARG for is most likely a typo
/// (Docker warns too): it changes nothing, so say so. One that names a
/// platform ARG is ignored, so say that.
fn unused_args(spec: &BuildfileSpec, declared: &BTreeMap<String, String>) -> Vec<String> {
    let platform = spec
        .args
        .keys()
        .filter(|k| PLATFORM_ARGS.contains(&k.as_str()))
        .map(|k| {
            format!(
                "--build-arg {k}: the platform sets {k} ({}); use --platform to change it",
                spec.platform
            )
        });
    spec.args
        .keys()
        .filter(|k| !PLATFORM_ARGS.contains(&k.as_str()))
        .filter(|k| !declared.contains_key(*k))
        .map(|k| {
            format!(
                "--build-arg {k}: {} declares no ARG {k}, so it changes nothing",
                spec.file.display()
            )
        })
        .chain(platform)
        .collect()
}

/// Parse the Buildfile and resolve everything a key needs, asking the apt
/// archives (`lock` does this: it resolves against them).
pub async fn unlocked_plan(
    store: &Store,
    client: &Client,
    spec: &BuildfileSpec,
) -> anyhow::Result<Plan> {
    make(store, client, spec, true, false).await
}

async fn make(
    store: &Store,
    client: &Client,
    spec: &BuildfileSpec,
    ask_archive: bool,
    offline: bool,
) -> anyhow::Result<Plan> {
    let file = &spec.file;
    let bf = buildfile::parse_file(file, &with_platform_args(spec)).map_err(|diags| {
        let n = diags.0.len();
        let mut f = Failure::bad_input(format!(
            "{diags}\n{n} error{} in {}; `tplbuild docs buildfile` describes every instruction\n",
            if n == 1 { "" } else { "s" },
            file.display()
        ));
        f.preformatted = true;
        // The diagnostics stay in the chain for `--progress json`'s location.
        anyhow::Error::new(diags).context(f)
    })?;
    let from = || {
        format!(
            "{}:{}: FROM {}",
            file.display(),
            bf.from.span.line,
            bf.from.reference
        )
    };
    let target = Target::parse(&bf.from.reference).map_err(|e| {
        anyhow::Error::new(e).context(
            Failure::bad_input(from()).with_hint("write HOST[:PORT]/REPO[:TAG] or oci:DIR[:TAG]"),
        )
    })?;
    let platform = &spec.platform;
    let resolved = if offline {
        transfer::resolve_offline(store, client, &target, platform).await
    } else {
        transfer::resolve(store, client, &target, platform)
            .await
            .map_err(anyhow::Error::new)
    };
    let base = resolved.map_err(|e| e.context(Failure::failed(from())))?;
    // The policy is checked on the digest the tag resolved to, before any
    // key is made or anything runs.
    let policy = sign::Policy::new(client.settings(), &spec.require_signed);
    let verified = sign::check_from(store, client, &policy, &target, &base.digest(), offline)
        .await
        .map_err(|e| {
            let hint = e.hint();
            let mut f = Failure::failed(format!("{}: refused by the signature policy", from()));
            if let Some(h) = hint {
                f = f.with_hint(h);
            }
            anyhow::Error::new(e).context(f)
        })?;
    for v in verified {
        tracing::info!(key = %v.key.display(), identity = %v.identity, "FROM {} is signed", base.digest());
    }
    let needs_apt = bf.instructions.iter().any(|i| {
        matches!(
            i.kind,
            buildfile::InstructionKind::Install { .. } | buildfile::InstructionKind::Remove { .. }
        )
    });
    let apt_state = if needs_apt && ask_archive {
        // A template made by tplbuild names its apt sources; others are read
        // from their layers (which then must be fetched).
        let sources = match apt::sources_in_annotations(&base.image) {
            Some(s) => s,
            None => {
                transfer::ensure_blobs(store, client, &base.source, base.image.layers())
                    .await
                    .context("fetching the template's layers to read its apt sources")?;
                let store = store.clone();
                let image = base.image.clone();
                tokio::task::spawn_blocking(move || apt::sources_in_image(&store, &image)).await??
            }
        };
        apt::archive_state(&sources).await
    } else {
        BTreeMap::new()
    };
    let platform = platform.clone();
    // COPY trees are hashed here: file reads, off the async threads.
    Ok(tokio::task::spawn_blocking(move || plan::make(bf, base, platform, &apt_state)).await??)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(platform: &str, args: &[(&str, &str)]) -> BuildfileSpec {
        BuildfileSpec {
            file: PathBuf::from("/ctx/Buildfile"),
            args: args
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            platform: Platform::parse(platform).unwrap(),
            require_signed: vec![],
        }
    }

    #[test]
    fn a_declared_targetarch_expands_to_the_platforms_and_a_build_arg_cannot_change_it() {
        let src = "FROM 127.0.0.1:5000/t:1\nARG TARGETARCH TARGETVARIANT TARGETPLATFORM\n\
                   INSTALL linux-image-${TARGETARCH}-${TARGETVARIANT}\nLABEL p=${TARGETPLATFORM}\n";
        let s = spec("linux/arm/v7", &[("TARGETARCH", "amd64")]);
        let bf = buildfile::parse_str(&s.file, src, &with_platform_args(&s)).unwrap();
        let steps = format!("{:?}", bf.instructions);
        assert!(steps.contains("linux-image-arm-v7"), "{steps}");
        assert!(steps.contains("linux/arm/v7"), "{steps}");
    }

    #[test]
    fn unused_and_platform_build_args_are_warned_about_and_declared_ones_are_not() {
        let s = spec(
            "linux/arm64",
            &[("TARGETARCH", "amd64"), ("VERSON", "2"), ("BASE", "x")],
        );
        let src = "ARG BASE\nFROM ${BASE}\nRUN true\n";
        let bf = buildfile::parse_str(&s.file, src, &with_platform_args(&s)).unwrap();
        let warnings = unused_args(&s, &bf.args);
        assert_eq!(
            warnings,
            [
                "--build-arg VERSON: /ctx/Buildfile declares no ARG VERSON, so it changes nothing",
                "--build-arg TARGETARCH: the platform sets TARGETARCH (linux/arm64); use --platform to change it",
            ]
        );
    }
}
