//! The flags of `plan` and `build`, and of every command that reads a
//! Buildfile (`lock`, `fetch`, `bundle`): one definition each, mapped to
//! the build module's types here and nowhere else.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;

use super::template::parse_target;
use super::{parse_platform, Context, Failure};
use crate::build::prepare::{self, BuildfileSpec};
use crate::engine::DiffChoice;
use crate::engine::{EngineChoice, Network};
use crate::oci::{Reference, Target};
use crate::plan::Plan;
use crate::progress::ProgressMode;

/// `--engine`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum EngineArg {
    Auto,
    Docker,
    Podman,
}

/// `--diff`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DiffArg {
    /// The overlay upper dir when this process can read it, else the API.
    Auto,
    /// Only the overlay upper dir (local engine on overlay storage, as root).
    Upper,
    /// Only the engine's API (changes + export): any engine, local or remote.
    Api,
}

impl DiffArg {
    pub fn choice(self) -> DiffChoice {
        match self {
            DiffArg::Auto => DiffChoice::Auto,
            DiffArg::Upper => DiffChoice::Upper,
            DiffArg::Api => DiffChoice::Api,
        }
    }
}

/// `--network`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum NetworkArg {
    Host,
    None,
    Bridge,
}
impl EngineArg {
    pub fn choice(self) -> EngineChoice {
        match self {
            EngineArg::Auto => EngineChoice::Auto,
            EngineArg::Docker => EngineChoice::Docker,
            EngineArg::Podman => EngineChoice::Podman,
        }
    }
}

impl NetworkArg {
    pub fn network(self) -> Network {
        match self {
            NetworkArg::Host => Network::Host,
            NetworkArg::None => Network::None,
            NetworkArg::Bridge => Network::Bridge,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct BuildfileArgs {
    /// The Buildfile; its folder is the context COPY reads from.
    #[arg(
        short = 'f',
        long = "file",
        default_value = "Buildfile",
        value_name = "FILE"
    )]
    pub file: PathBuf,
    /// Set an ARG (repeatable).
    #[arg(long = "build-arg", value_name = "NAME=VALUE")]
    pub build_args: Vec<String>,
    /// Platform of the template to use (default: the host's). `build`,
    /// `lock` and `fetch` take a list (linux/amd64,linux/arm64) and act on
    /// each platform; foreign ones run under qemu-user (docs/platforms.md).
    #[arg(long, value_name = "OS/ARCH[/VARIANT][,…]")]
    pub platform: Option<String>,
    /// Refuse a FROM image that this public key (PEM) has not signed
    /// (repeatable: any one of the keys will do). `require_signed` in the
    /// registry settings names keys per repository prefix.
    #[arg(long = "require-signed", value_name = "PUB.pem")]
    pub require_signed: Vec<PathBuf>,
}

impl BuildfileArgs {
    /// The Buildfile: `-f DIR` means `DIR/Buildfile`, as `docker build -f`
    /// users expect of a folder.
    pub fn buildfile(&self) -> PathBuf {
        if self.file.is_dir() {
            self.file.join("Buildfile")
        } else {
            self.file.clone()
        }
    }

    /// Take the positional `PATH` of `build`/`plan` (a Buildfile, or a
    /// folder holding one, like `docker build DIR`) as `-f`.
    pub fn with_path(mut self, path: Option<PathBuf>) -> anyhow::Result<Self> {
        if let Some(p) = path {
            if self.file != Path::new("Buildfile") {
                return Err(Failure::bad_input(format!(
                    "both {} and -f {} name the Buildfile",
                    p.display(),
                    self.file.display()
                ))
                .with_hint("give one: a Buildfile, or a folder that holds one")
                .into());
            }
            self.file = p;
        }
        Ok(self)
    }

    /// One copy of these flags per platform `--platform A,B` names (one
    /// copy, unchanged, without a list), for commands that act on each
    /// platform in turn (`lock`, `fetch`).
    pub fn per_platform(&self) -> anyhow::Result<Vec<BuildfileArgs>> {
        if !self.platform.as_deref().is_some_and(|p| p.contains(',')) {
            return Ok(vec![self.clone()]);
        }
        Ok(super::parse_platforms(self.platform.as_deref())?
            .into_iter()
            .map(|p| BuildfileArgs {
                platform: Some(p.to_string()),
                ..self.clone()
            })
            .collect())
    }

    /// The lockfile for these flags' Buildfile and platform.
    pub fn lock_path(&self) -> anyhow::Result<PathBuf> {
        Ok(crate::lockfile::Lockfile::path_for_platform(
            &self.buildfile(),
            &parse_platform(self.platform.as_deref())?,
        ))
    }

    /// The flags as the build module takes them.
    pub fn spec(&self) -> anyhow::Result<BuildfileSpec> {
        Ok(BuildfileSpec {
            file: self.buildfile(),
            args: parse_build_args(&self.build_args)?,
            platform: parse_platform(self.platform.as_deref())?,
            require_signed: self.require_signed.clone(),
        })
    }
}

#[derive(Debug, Args)]
#[command(
    after_help = "Each step is shown with its location, its key and HIT (already built) \
    or MISS with the reason, compared with the previous build of the same Buildfile.\n\n\
    Examples:\n  tplbuild plan buildfiles/gateway\n  tplbuild plan buildfiles/gateway --json"
)]
pub struct PlanArgs {
    /// The Buildfile, or a folder holding one (the same as -f).
    #[arg(value_name = "PATH")]
    pub path: Option<PathBuf>,
    #[command(flatten)]
    pub bf: BuildfileArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    tplbuild build buildfiles/gateway -o out/gateway.ext4\n  \
    tplbuild build buildfiles/gateway -q\n  \
    tplbuild build buildfiles/gateway -o type=oci,dest=out/gateway-oci\n  \
    tplbuild build buildfiles/gateway --progress json \\\n      \
    --tag 127.0.0.1:5000/products/gateway:1 \\\n      \
    --cache-to 127.0.0.1:5000/cache/gateway\n\n\
    Steps run in Docker or Podman (through their Docker-compatible API), on the host \
    network by default. A step whose key was built before runs nothing.")]
pub struct BuildArgs {
    /// The Buildfile, or a folder holding one (the same as -f), as in
    /// `docker build DIR`.
    #[arg(value_name = "PATH")]
    pub path: Option<PathBuf>,
    #[command(flatten)]
    pub bf: BuildfileArgs,
    /// Print only the image digest (and warnings and errors).
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Which engine runs the steps. auto and docker use DOCKER_HOST or the
    /// current Docker context when one is set (tcp://, ssh://, unix://: that
    /// engine only), else the local Docker socket, then (auto) the Podman
    /// sockets; podman uses CONTAINER_HOST when set. docs/engines.md.
    #[arg(long, value_enum, default_value = "auto")]
    pub engine: EngineArg,
    /// The step containers' network.
    #[arg(long, value_enum, default_value = "host")]
    pub network: NetworkArg,
    /// Where each step's changes are read from. Every source gives the same
    /// layers; upper is faster but needs a local overlay engine and root.
    #[arg(long, value_enum, default_value = "auto", env = "TPLBUILD_DIFF")]
    pub diff: DiffArg,
    /// Run every step even if it was built before.
    #[arg(long)]
    pub no_cache: bool,
    /// Never download: the locked .debs must be in the store (`tplbuild fetch`).
    #[arg(long)]
    pub offline: bool,
    /// Also push or write the result here (repeatable): HOST/REPO:TAG or
    /// oci:DIR[:TAG]. Its SBOM and provenance are attached as OCI 1.1
    /// artifacts (referrers API, else the `sha256-<hex>` tag).
    #[arg(long = "tag", short = 't', value_name = "REF")]
    pub tags: Vec<String>,
    /// Sign what --tag pushes to a registry with this private key (PEM,
    /// P-256), in cosign's format.
    #[arg(long, value_name = "KEY.pem")]
    pub sign: Option<PathBuf>,
    /// The SBOM format(s) attached with --tag and -o type=oci (repeatable;
    /// default spdx).
    #[arg(long = "sbom-format", value_name = "spdx|cyclonedx", value_parser = parse_sbom_format)]
    pub sbom_formats: Vec<crate::sbom::Format>,
    /// Export the result: type=oci|tar|dir|ext4|erofs|squashfs|disk|sbom,dest=PATH[,opt=value] (repeatable).
    /// type=disk is a bootable GPT image: format=raw|qcow2, size=, rootfs=ext4|erofs, cmdline=, layout=FILE.toml.
    #[arg(long = "output", short = 'o', value_name = "type=T,dest=D")]
    pub outputs: Vec<String>,
    /// How to show progress.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Push the registry cache here after the build: HOST/REPO:TAG.
    #[arg(long = "cache-to", value_name = "REF")]
    pub cache_to: Option<String>,
    /// Which steps --cache-to pushes: min = the final image's layers, max = every step.
    #[arg(long = "cache-mode", value_enum, default_value = "max")]
    pub cache_mode: crate::cache::CacheMode,
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    /// Consult this registry cache after the local store (repeatable,
    /// searched in order): HOST/REPO:TAG as written by --cache-to.
    #[arg(long = "cache-from", value_name = "REF")]
    pub cache_from: Vec<String>,
}

pub(crate) fn parse_registry_ref(s: &str, flag: &str) -> anyhow::Result<Reference> {
    match parse_target(s)? {
        Target::Registry(r) => Ok(r),
        Target::Layout { .. } => Err(Failure::bad_input(format!(
            "{flag} {s}: a registry cache lives in a registry, not an OCI layout"
        ))
        .into()),
    }
}

fn parse_build_args(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            // `--build-arg NAME` takes the value from the environment, like Docker.
            _ => std::env::var(kv).map(|v| (kv.clone(), v)).map_err(|_| {
                Failure::bad_input(format!("--build-arg {kv:?} is not NAME=VALUE")).into()
            }),
        })
        .collect()
}

/// The plan `plan` and `bundle` use: the lockfile followed when there is
/// one (its drift warnings printed).
pub(crate) async fn make_locked_plan(
    ctx: &Context,
    a: &BuildfileArgs,
    offline: bool,
) -> anyhow::Result<Plan> {
    let client = ctx.client()?;
    let (plan, warnings) = prepare::locked_plan(&ctx.store, &client, &a.spec()?, offline).await?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    Ok(plan)
}

/// The plan `lock` resolves: the apt archives asked, no lockfile.
pub(crate) async fn make_plan(ctx: &Context, a: &BuildfileArgs) -> anyhow::Result<Plan> {
    let client = ctx.client()?;
    prepare::unlocked_plan(&ctx.store, &client, &a.spec()?).await
}

/// Parse `-o` values; a bad one is bad input (exit 2).
pub fn parse_sbom_format(s: &str) -> Result<crate::sbom::Format, String> {
    s.parse()
}

pub fn parse_outputs(items: &[String]) -> anyhow::Result<Vec<crate::export::OutputSpec>> {
    items
        .iter()
        .map(|o| {
            let spec = output_shorthand(o)
                .parse::<crate::export::OutputSpec>()
                .map_err(|e| anyhow::Error::new(Failure::bad_input(format!("-o {o}: {e}"))))?;
            spec.check_files().map_err(|e| {
                anyhow::Error::new(
                    Failure::bad_input(format!("-o {o}: {:#}", anyhow::Error::new(e)))
                        .with_hint("docs/disk.md describes the layout file"),
                )
            })?;
            Ok(spec)
        })
        .collect()
}

/// `-o PATH` (no `key=value`) as Docker users write it: the type from the
/// extension (`.tar[.gz|.zst]`, `.ext4`, `.erofs`, `.squashfs`/`.sqfs`, a
/// bootable disk as `.img` or `.qcow2`), else a folder (`type=dir`).
fn output_shorthand(o: &str) -> String {
    if o.contains('=') {
        return o.to_string();
    }
    let name = o.trim_end_matches('/').rsplit('/').next().unwrap_or(o);
    let ty = [
        (".tar", "tar"),
        (".tar.gz", "tar"),
        (".tar.zst", "tar"),
        (".ext4", "ext4"),
        (".erofs", "erofs"),
        (".squashfs", "squashfs"),
        (".sqfs", "squashfs"),
        (".img", "disk"),
        (".qcow2", "disk,format=qcow2"),
    ]
    .iter()
    .find(|(ext, _)| name.ends_with(ext))
    .map_or("dir", |(_, t)| t);
    format!("type={ty},dest={o}")
}

#[cfg(test)]
mod tests {
    use super::output_shorthand;

    #[test]
    fn an_output_path_alone_takes_its_type_from_the_extension() {
        assert_eq!(output_shorthand("out/x.tar"), "type=tar,dest=out/x.tar");
        assert_eq!(output_shorthand("x.tar.zst"), "type=tar,dest=x.tar.zst");
        assert_eq!(
            output_shorthand("/tmp/r.ext4"),
            "type=ext4,dest=/tmp/r.ext4"
        );
        assert_eq!(output_shorthand("a.sqfs"), "type=squashfs,dest=a.sqfs");
        assert_eq!(output_shorthand("vm.img"), "type=disk,dest=vm.img");
        assert_eq!(
            output_shorthand("out/vm.qcow2"),
            "type=disk,format=qcow2,dest=out/vm.qcow2"
        );
        assert_eq!(output_shorthand("rootfs/"), "type=dir,dest=rootfs/");
        assert_eq!(output_shorthand("type=oci,dest=o"), "type=oci,dest=o");
    }
}
