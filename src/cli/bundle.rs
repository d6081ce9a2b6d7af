//! `tplbuild bundle`: everything a Buildfile needs, in one folder that an
//! air-gapped machine builds from with `--offline`.
//!
//! The bundle is a tplbuild home: `OUT/store-v1` is an OCI image layout
//! holding the template (and the name its FROM resolved to), the layers and
//! records of every step already built, the locked .debs, and the
//! template's signatures (so that a FROM policy is checked offline too).
//! On the other machine: `tplbuild --home OUT build -f FILE --offline`.
//! With `--platform A,B` it holds every platform's template, steps and
//! .debs (each from that platform's lockfile).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use super::args::{make_locked_plan, BuildfileArgs};
use super::{human_size, Context};
use crate::oci::Descriptor;
use crate::store::Store;
use crate::transfer;

#[derive(Debug, Args)]
#[command(
    after_help = "Example (online, after `tplbuild lock` and a build):\n  \
    tplbuild bundle -f buildfiles/gateway/Buildfile gateway-bundle\n\
    then on the air-gapped machine:\n  \
    tplbuild --home gateway-bundle build buildfiles/gateway --offline -o gw.ext4"
)]
pub struct BundleArgs {
    #[command(flatten)]
    pub bf: BuildfileArgs,
    /// The folder to write (a tplbuild home whose store is an OCI layout).
    #[arg(value_name = "OUT")]
    pub out: PathBuf,
}

/// What one platform puts in the bundle.
struct Part {
    plan: crate::plan::Plan,
    records: Vec<crate::store::StepRecord>,
    debs: Vec<crate::oci::Digest>,
}

pub async fn bundle_cmd(ctx: &Context, a: BundleArgs) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let mut parts = vec![];
    let each = a.bf.per_platform()?;
    for bf in &each {
        let label = match (each.len() > 1, &bf.platform) {
            (true, Some(p)) => format!(" for {p}"),
            _ => String::new(),
        };
        let part = gather(ctx, &client, bf, &label).await;
        parts.push(match label.is_empty() {
            true => part?,
            false => part.with_context(|| format!("bundling{label}"))?,
        });
    }
    let several = parts.len() > 1;
    let store = &ctx.store;
    let out = Store::open(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    // Marks the store as a bundle: `tplbuild prune` leaves it alone.
    fs_err::write(
        out.root().join(crate::store::BUNDLE_MARKER),
        "made by `tplbuild bundle`: an offline machine builds from what is here, so `tplbuild prune` refuses to touch it without --force\n",
    )?;
    let mut bytes = 0;
    for part in &parts {
        let (plan, records, debs) = (&part.plan, &part.records, &part.debs);
        let base = &plan.base;
        let mut blobs: Vec<crate::oci::Digest> = vec![
            base.image.digest(),
            base.image.manifest.config.digest.clone(),
        ];
        blobs.extend(base.image.layers().iter().map(|l| l.digest.clone()));
        blobs.extend(records.iter().map(|r| r.layer.digest.clone()));
        blobs.extend(debs.iter().cloned());
        for d in &blobs {
            if out.has_blob(d) {
                continue;
            }
            let mut r = store.open_blob(d)?;
            let mut w = out.blob_writer()?;
            std::io::copy(&mut r, &mut w).with_context(|| format!("copying blob {d}"))?;
            bytes += w.written();
            w.commit(Some((d, store.blob_size(d).unwrap_or(0))))?;
        }
        for (desc, diff_id) in base.image.layers().iter().zip(base.image.diff_ids()) {
            let size = crate::stage::uncompressed_size(store, desc, diff_id)?;
            crate::stage::remember_uncompressed_size(&out, diff_id, size);
        }
        for rec in records {
            out.put_step(rec)?;
            crate::stage::remember_uncompressed_size(&out, &rec.diff_id, rec.uncompressed_size);
        }
        // FROM resolves offline by this name; the layout shows the template too.
        let mut signatures = 0;
        if let crate::oci::Target::Registry(r) =
            crate::oci::Target::parse(&plan.buildfile.from.reference)?
        {
            out.set_name(
                &transfer::resolved_name(&r, &plan.platform),
                &base.image.descriptor(),
            )?;
            // An offline build under a FROM policy verifies these.
            signatures = crate::sign::keep_for_offline(&out, &client, &r, &base.image.digest())
                .await
                .context("reading the template's signatures")?;
        }
        let desc: Descriptor = base.image.descriptor();
        let (name, label) = match several {
            true => (
                format!("template:{}", plan.platform.to_string().replace('/', "-")),
                format!("{}: ", plan.platform),
            ),
            false => ("template".to_string(), String::new()),
        };
        out.set_name(&name, &desc)?;
        eprintln!(
            "bundle {}: {label}the template ({} signature(s)), {} step layer(s), {} .deb(s)",
            a.out.display(),
            signatures,
            records.len(),
            debs.len(),
        );
    }
    eprintln!("bundle {}: {} written", a.out.display(), human_size(bytes));
    let platform = match several {
        true => " --platform PLATFORM",
        false => "",
    };
    eprintln!(
        "build from it with: tplbuild --home {} build -f {} --offline{platform}",
        a.out.display(),
        a.bf.buildfile().display()
    );
    Ok(())
}

/// One platform's plan, with its template's layers, its locked .debs and
/// its built steps in the store.
async fn gather(
    ctx: &Context,
    client: &crate::registry::Client,
    bf: &BuildfileArgs,
    label: &str,
) -> anyhow::Result<Part> {
    let plan = make_locked_plan(ctx, bf, false).await?;
    let store = &ctx.store;
    let base = &plan.base;
    transfer::ensure_blobs(store, client, &base.source, base.image.layers())
        .await
        .context("fetching the template's layers")?;
    let mut debs = vec![];
    if let Some(lock) = &plan.locked {
        crate::lock::fetch::fetch(store, lock, false, |p| {
            eprintln!("fetching {} {}", p.name, p.version)
        })
        .await
        .context("fetching the locked .debs")?;
        for p in lock.debs() {
            if let Some(Ok(d)) = p.digest() {
                debs.push(d);
            }
        }
    }
    // The steps built so far, in order: a step's key needs its parent's
    // layers, so the chain stops at the first step never built here.
    let mut parent = base.image.diff_ids().to_vec();
    let mut records = vec![];
    for step in &plan.steps {
        match store.get_step(&plan.key(step, &parent))? {
            Some(rec) => {
                parent.push(rec.diff_id.clone());
                records.push(rec);
            }
            None => {
                eprintln!(
                    "warning: step {} (`{}`) was never built here{label}; the bundle holds the steps before it \
                     (build once before bundling to include every step)",
                    step.number, step.text
                );
                break;
            }
        }
    }

    Ok(Part {
        plan,
        records,
        debs,
    })
}
