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
        let warnings = unused_args(spec, &plan);
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
    let mut warnings: Vec<String> = unused_args(spec, &plan);
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

/// A `--build-arg` the Buildfile declares no ARG for is most likely a typo
/// (Docker warns too): it changes nothing, so say so.
fn unused_args(spec: &BuildfileSpec, plan: &Plan) -> Vec<String> {
    spec.args
        .keys()
        .filter(|k| !plan.buildfile.args.contains_key(*k))
        .map(|k| {
            format!(
                "--build-arg {k}: {} declares no ARG {k}, so it changes nothing",
                spec.file.display()
            )
        })
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
    let bf = buildfile::parse_file(file, &spec.args).map_err(|diags| {
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
