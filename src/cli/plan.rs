//! `tplbuild plan`: the build's own step walk without an executor, printed.
//! With `--platform A,B`, each platform's in turn (JSON: a list).

use serde_json::json;

use super::args::{parse_registry_ref, BuildfileArgs, PlanArgs};
use super::Context;
use crate::build::{self, job, HitSource, StepCache, StepStatus};
use crate::progress::{Progress, ProgressMode};

pub async fn plan_cmd(ctx: &Context, mut a: PlanArgs) -> anyhow::Result<()> {
    let path = a.path.take();
    a.bf = a.bf.with_path(path)?;
    let each = a.bf.per_platform()?;
    let several = each.len() > 1;
    let mut shown = vec![];
    for bf in &each {
        if several && !a.json {
            if !shown.is_empty() {
                println!();
            }
            println!("# {}", bf.platform.as_deref().unwrap_or_default());
        }
        shown.push(plan_one(ctx, &a, bf).await?);
    }
    if a.json {
        let v = match <[_; 1]>::try_from(shown) {
            Ok([one]) => one,
            Err(all) => serde_json::Value::Array(all),
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

/// One platform's plan: printed as text, or returned as JSON for `--json`.
async fn plan_one(
    ctx: &Context,
    a: &PlanArgs,
    bf: &BuildfileArgs,
) -> anyhow::Result<serde_json::Value> {
    let plan = super::args::make_locked_plan(ctx, bf, false).await?;
    let client = ctx.client()?;
    let quiet = Progress::new(ProgressMode::Plain);
    let refs = a
        .cache
        .cache_from
        .iter()
        .map(|s| parse_registry_ref(s, "--cache-from"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let caches = job::load_caches(&client, &refs, &quiet, &mut vec![]).await;
    let mut cache = StepCache::new(&ctx.store, &client, caches);
    let walked = build::walk::plan(&plan, &mut cache).await?;
    for w in &walked.warnings {
        quiet.warn(w);
    }
    let total = walked.steps.len();
    if a.json {
        let rows: Vec<_> = walked.steps.iter().map(plan_row).collect();
        return Ok(json!({
            "buildfile": plan.buildfile.path.display().to_string(),
            "from": plan.base.pinned,
            "platform": plan.platform.to_string(),
            "epoch": plan.epoch,
            "steps": rows,
        }));
    }
    println!("FROM {}", plan.base.pinned);
    for s in &walked.steps {
        let key = s
            .key
            .as_ref()
            .map(|k| k.hex()[..12].to_string())
            .unwrap_or_else(|| "-".repeat(12));
        let status = match &s.status {
            StepStatus::Hit { from } => format!("HIT ({})", source_name(from)),
            StepStatus::Miss { .. } | StepStatus::After(_) => "MISS".to_string(),
        };
        println!(
            "[{}/{total}] {:<40} {key}  {status}",
            s.number,
            truncate(&s.text, 40),
        );
        println!("      at {}", s.location);
        for reason in plan_reasons(&s.status) {
            println!("      {reason}");
        }
    }
    Ok(serde_json::Value::Null)
}

fn source_name(from: &HitSource) -> String {
    match from {
        HitSource::Local => "local".to_string(),
        HitSource::Registry(r) => r.to_string(),
    }
}

fn plan_reasons(status: &StepStatus) -> Vec<String> {
    match status {
        StepStatus::Hit { .. } => vec![],
        StepStatus::Miss { reasons } => reasons.clone(),
        StepStatus::After(n) => vec![format!("after step {n}")],
    }
}

/// One step of `plan --json`.
fn plan_row(s: &build::StepReport) -> serde_json::Value {
    let mut row = json!({
        "step": s.number,
        "location": s.location,
        "instruction": s.text,
        "key": s.key.as_ref().map(|k| k.to_string()),
        "status": match s.status { StepStatus::Hit { .. } => "HIT", _ => "MISS" },
    });
    match &s.status {
        StepStatus::Hit { from } => row["source"] = json!(source_name(from)),
        other => row["reasons"] = json!(plan_reasons(other)),
    }
    row
}

fn truncate(s: &str, n: usize) -> String {
    let first_line = s.lines().next().unwrap_or("");
    if first_line.chars().count() <= n && !s.contains('\n') {
        first_line.to_string()
    } else {
        let t: String = first_line.chars().take(n - 1).collect();
        format!("{t}…")
    }
}
