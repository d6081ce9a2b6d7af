//! `tplbuild build`: the flags mapped to a [`BuildRequest`], the job run
//! by [`crate::build::job`], its report printed.

use super::args::{parse_outputs, parse_registry_ref, BuildArgs};
use super::template::parse_target;
use super::{Context, Failure};
use crate::build::job::{self, BuildRequest};
use crate::build::{self, BuildError, BuildOptions};
use crate::oci::Target;
use crate::progress::Progress;

/// `tplbuild build`. Under `--progress json` every run ends with one
/// `result` event: the exit code, and the digest or the error (message,
/// causes, hint, and the step's location when a step failed).
pub async fn build_cmd(ctx: &Context, a: BuildArgs) -> anyhow::Result<()> {
    let mut progress = Progress::new(if a.quiet {
        crate::progress::ProgressMode::Quiet
    } else {
        a.progress
    });
    let result = build(ctx, a, &mut progress).await;
    match &result {
        Ok(digest) => progress.result(0, serde_json::json!({ "digest": digest })),
        Err(e) => {
            let (code, hint) = super::exit_code_and_hint(e);
            let location = e
                .chain()
                .find_map(|c| match c.downcast_ref::<BuildError>() {
                    Some(BuildError::StepFailed { location, .. })
                    | Some(BuildError::Step { location, .. }) => Some(location.clone()),
                    _ => None,
                })
                .or_else(|| {
                    e.chain()
                        .find_map(|c| c.downcast_ref::<crate::buildfile::Diagnostics>())
                        .and_then(|d| d.0.first())
                        .map(|d| match d.line {
                            0 => d.path.display().to_string(),
                            n => format!("{}:{n}:{}", d.path.display(), d.col),
                        })
                });
            progress.result(
                code,
                serde_json::json!({
                    "error": {
                        "message": e.to_string(),
                        "causes": e.chain().skip(1).map(|c| c.to_string()).collect::<Vec<_>>(),
                        "hint": hint,
                        "location": location,
                    },
                }),
            );
        }
    }
    result.map(|_| ())
}

async fn build(ctx: &Context, mut a: BuildArgs, progress: &mut Progress) -> anyhow::Result<String> {
    let started = std::time::Instant::now();
    let bf = std::mem::take(&mut a.path);
    let signing = super::sign::load_signing_key(a.sign.as_deref(), "--sign")?;
    let platforms = super::parse_platforms(a.bf.platform.as_deref())?;
    a.bf.platform = Some(platforms[0].to_string());
    let mut req = BuildRequest {
        buildfile: a.bf.with_path(bf)?.spec()?,
        options: BuildOptions {
            engine: a.engine.choice(),
            network: a.network.network(),
            diff: a.diff.choice(),
            no_cache: a.no_cache,
        },
        offline: a.offline,
        tags: a
            .tags
            .iter()
            .map(|t| parse_target(t))
            .collect::<anyhow::Result<_>>()?,
        outputs: parse_outputs(&a.outputs)?,
        cache_from: a
            .cache
            .cache_from
            .iter()
            .map(|s| parse_registry_ref(s, "--cache-from"))
            .collect::<anyhow::Result<_>>()?,
        cache_to: a
            .cache_to
            .as_deref()
            .map(|s| parse_registry_ref(s, "--cache-to"))
            .transpose()?,
        cache_mode: a.cache_mode,
        sbom_formats: a.sbom_formats.clone(),
    };
    if signing.is_some() && !req.tags.iter().any(|t| matches!(t, Target::Registry(_))) {
        return Err(Failure::bad_input(
            "--sign signs what --tag pushes to a registry, and no --tag names one",
        )
        .with_hint("add --tag HOST/REPO:TAG")
        .into());
    }
    let client = ctx.client()?;
    if platforms.len() > 1 {
        return build_platforms(
            ctx,
            &client,
            req,
            &platforms,
            progress,
            signing.as_ref(),
            started,
        )
        .await;
    }
    req.outputs = build::multi::outputs_for(&req.outputs, &platforms[0], false)?;
    let report = match job::run(&ctx.store, &client, req, progress).await {
        Ok(r) => r,
        Err(e) => return Err(explain_failure(e, progress)),
    };
    let tags = sign_published(&client, &report.published, signing.as_ref(), progress).await?;
    let (v, text) = build::summary(&report.built, &tags, started.elapsed());
    progress.summary(v, &text);
    let digest = report.built.image.digest().to_string();
    if report.exports.is_empty() && report.published.is_empty() {
        progress.fact(
            "hint",
            &format!(
                "kept in the store as {:?}; write it out with `tplbuild export {} -o rootfs.tar` (or .ext4, .erofs, .squashfs, a folder)",
                report.name, report.name
            ),
            serde_json::json!({ "name": report.name }),
        );
    }
    if !progress.is_json() {
        println!("{digest}");
    }
    Ok(digest)
}

/// `--platform A,B`: one build per platform, one index per tag. Prints
/// each platform's digest (and the index's, when tagged).
async fn build_platforms(
    ctx: &Context,
    client: &crate::registry::Client,
    req: BuildRequest,
    platforms: &[crate::oci::Platform],
    progress: &mut Progress,
    signing: Option<&crate::sign::PrivateKey>,
    started: std::time::Instant,
) -> anyhow::Result<String> {
    let report = match build::multi::run(&ctx.store, client, req, platforms, progress).await {
        Ok(r) => r,
        Err(e) => return Err(explain_failure(e, progress)),
    };
    // The index each tag names is what --sign signs: cosign signs what a
    // tag resolves to.
    let tags = sign_published(client, &report.published, signing, progress).await?;
    for (platform, r) in &report.platforms {
        let (v, text) = build::summary(&r.built, &tags, started.elapsed());
        progress.summary(v, &format!("{platform}: {text}"));
        if !progress.is_json() {
            println!("{} {platform}", r.built.image.digest());
        }
    }
    let digest = match report.published.first() {
        Some((_, d)) => d.to_string(),
        None => report.platforms[0].1.built.image.digest().to_string(),
    };
    if !progress.is_json() {
        for (t, d) in &report.published {
            println!("{d} {t}");
        }
    }
    Ok(digest)
}

/// Sign what each registry `--tag` names (with `--sign`); the tags, as
/// the summary lists them.
async fn sign_published(
    client: &crate::registry::Client,
    published: &[(Target, crate::oci::Digest)],
    signing: Option<&crate::sign::PrivateKey>,
    progress: &Progress,
) -> anyhow::Result<Vec<String>> {
    if let Some(key) = signing {
        for (t, d) in published {
            if let Target::Registry(r) = t {
                let line = super::sign::sign_and_report(client, r, d, key).await?;
                progress.note("sign", &line);
            }
        }
    }
    Ok(published.iter().map(|(t, _)| t.to_string()).collect())
}

/// Turn a failed step into the story a user needs: the location, the exit
/// code and the last lines of output.
fn explain_failure(e: anyhow::Error, progress: &Progress) -> anyhow::Error {
    if let Some(BuildError::StepFailed {
        step,
        location,
        text,
        code,
        tail,
    }) = e.downcast_ref::<BuildError>()
    {
        progress.step_failed(*step, location, text, *code, tail);
    }
    // A foreign binary the kernel could not run (a remote engine's host
    // has no qemu handler; local ones are checked up front): Docker says
    // so in the step's output, Podman in its error for the start.
    let said: Vec<String> = match e.downcast_ref::<BuildError>() {
        Some(BuildError::StepFailed { tail, .. }) => tail.clone(),
        _ => e.chain().map(|c| c.to_string()).collect(),
    };
    if let Some(hint) = said
        .iter()
        .find_map(|l| crate::emulation::hint_for_output(l))
    {
        return e.context(Failure::failed("the step's binaries could not run").with_hint(hint));
    }
    let interrupted = match e.downcast_ref::<BuildError>() {
        Some(BuildError::Interrupted(i)) => Some(i.exit_code),
        _ => e.downcast_ref::<build::Interrupted>().map(|i| i.exit_code),
    };
    match interrupted {
        Some(code) => e.context(Failure {
            message: "build interrupted; nothing was recorded for the unfinished step".into(),
            hint: None,
            code,
            preformatted: false,
        }),
        None => e,
    }
}
