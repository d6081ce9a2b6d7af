//! `tplbuild prune`: free the store of what has not been used for a while.

use std::time::Duration;

use clap::Args;

use super::{human_size, Failure, GlobalArgs};
use crate::store::{parse_age, Store};

#[derive(Args, Debug)]
#[command(after_help = "\
Removes step records, cached exports and blobs not used for --older-than \
(default 7d), and leftovers of killed runs. Images kept by name in the store \
(pulled templates) stay with all their blobs, and so does what a remaining \
step record needs. A build that used something touched it, so what CI uses \
every day stays. Waits for other tplbuild processes using the store to end.

--engine also removes what tplbuild loaded into the engine (the images \
tplbuild/state:* and tplbuild/layer:*, which `docker images` shows): a copy of \
store content that a later step loads again when it needs it. Images a \
container still uses stay.

Examples:
  tplbuild prune                    # what the last week did not use
  tplbuild prune --older-than 24h --dry-run
  tplbuild prune --all              # every step and export; named images stay
  tplbuild prune --engine --dry-run # and the images tplbuild loaded into Docker")]
pub struct PruneArgs {
    /// Remove what was not used for this long: 90s, 30m, 24h, 7d, 2w.
    #[arg(long, value_name = "AGE", default_value = "7d", conflicts_with = "all")]
    pub older_than: String,
    /// Remove every step record, export and unnamed blob, whatever its age.
    #[arg(long)]
    pub all: bool,
    /// Say what would go; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Prune a store that `tplbuild bundle` made, too.
    #[arg(long)]
    pub force: bool,
    /// Also remove the images tplbuild loaded into this engine (auto,
    /// docker or podman; auto when given alone).
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "auto", value_name = "ENGINE")]
    pub engine: Option<super::args::EngineArg>,
}

pub async fn prune_cmd(global: &GlobalArgs, a: PruneArgs) -> anyhow::Result<()> {
    let age = if a.all {
        Duration::ZERO
    } else {
        parse_age(&a.older_than).ok_or_else(|| {
            Failure::bad_input(format!("--older-than {:?} is not an age", a.older_than))
                .with_hint("write a number and a unit: 90s, 30m, 24h, 7d or 2w")
        })?
    };
    let home = global.home.clone().unwrap_or_else(Store::default_home);
    let store = Store::open_exclusive(&home, || {
        eprintln!(
            "waiting for the other tplbuild processes using {} to end …",
            home.display()
        );
    })
    .map_err(|e| anyhow::anyhow!(e).context(format!("opening the store at {}", home.display())))?;
    if store.root().join(crate::store::BUNDLE_MARKER).exists() && !a.force {
        return Err(Failure::bad_input(format!(
            "{} is a bundle made by `tplbuild bundle`: its steps and .debs are what an offline machine builds from, and pruning could remove them",
            home.display()
        ))
        .with_hint("pass --force to prune it all the same")
        .into());
    }
    let r = store.prune(age, a.dry_run)?;
    // The store is done with: release it before talking to the engine.
    drop(store);
    let engine = match a.engine {
        Some(choice) => Some(prune_engine(choice, a.dry_run).await?),
        None => None,
    };
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        if let Some(e) = &engine {
            v["engine_images"] = serde_json::to_value(e)?;
        }
        println!("{v}");
        return Ok(());
    }
    let verb = if a.dry_run { "would remove" } else { "removed" };
    println!(
        "{verb} {} step record(s), {} note(s), {} export(s), {} blob(s), {} leftover(s): {}; \
         kept {} blob(s), {}",
        r.step_records,
        r.notes,
        r.exports,
        r.blobs,
        r.tmp_files,
        human_size(r.bytes),
        r.kept_blobs,
        human_size(r.kept_bytes)
    );
    if let Some(e) = engine {
        println!(
            "{verb} {} image(s) tplbuild loaded into {}{}",
            e.removed.len(),
            e.engine,
            match e.in_use.len() {
                0 => String::new(),
                n => format!("; {n} in use by a container stayed"),
            }
        );
    }
    Ok(())
}

/// What `prune --engine` did.
#[derive(Debug, serde::Serialize)]
struct EnginePrune {
    engine: String,
    removed: Vec<String>,
    in_use: Vec<String>,
}

async fn prune_engine(
    choice: super::args::EngineArg,
    dry_run: bool,
) -> anyhow::Result<EnginePrune> {
    let engine = crate::engine::connect(choice.choice()).await?;
    let mut report = EnginePrune {
        engine: format!("{} at {}", engine.info().kind, engine.info().host),
        removed: vec![],
        in_use: vec![],
    };
    for image in engine.loaded_images().await? {
        if dry_run {
            report.removed.push(image.tag);
            continue;
        }
        match engine.remove_unused_image(&image.tag).await? {
            true => report.removed.push(image.tag),
            false => report.in_use.push(image.tag),
        }
    }
    Ok(report)
}
