//! Command-line definitions (clap) and the dispatch to each subcommand,
//! one file per subcommand. Errors travel up as `anyhow::Error`; `report`
//! prints them and picks the exit code.

mod args;
mod build;
mod bundle;
mod copy;
mod docs;
mod images;
mod lock;
mod plan;
mod prune;
mod resolve;
mod sbom;
mod sign;
mod template;

pub use crate::failure::{exit, Failure};
pub use crate::human::human_size;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::oci::Platform;
use crate::store::Store;

#[derive(Debug, Parser)]
#[command(
    name = "tplbuild",
    version,
    about = "Assemble Debian-based root filesystems from template images in an OCI registry",
    long_about = "tplbuild assembles root filesystems for Debian-based embedded products.\n\n\
        A base-platform team publishes a finished base rootfs as a template image \
        (`tplbuild template import`). A product team writes a short Buildfile \
        (FROM a template, INSTALL packages, COPY files, RUN commands) and runs \
        `tplbuild build`, which runs the apt steps in Docker or Podman and exports \
        an ext4/erofs/squashfs image, a bootable GPT disk, a tarball, a directory \
        or a new OCI image. \
        Every step is content-addressed and cached, locally and in the registry.",
    after_help = "A first build: publish a template, then build a Buildfile on it.\n  \
        tplbuild template import rootfs.tar 127.0.0.1:5000/platform/base:1\n  \
        tplbuild plan buildfiles/gateway\n  \
        tplbuild build buildfiles/gateway -o out/gateway.ext4\n  \
        tplbuild export gateway -o out/gateway.tar\n\n\
        Images are named like Docker's (`host[:port]/repo[:tag][@sha256:…]`), as an \
        OCI image layout on disk (`oci:DIR[:TAG]`), or by what this machine built \
        (`gateway`, `sha256:…`; see `tplbuild images`). A plain-HTTP registry such as \
        127.0.0.1:5000 is named in ~/.config/tplbuild/registries.toml (`insecure = \
        [\"127.0.0.1:5000\"]`) or with --insecure-registry. References: `tplbuild docs \
        buildfile`, `tplbuild docs progress-json`, `tplbuild docs engines`."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Where the content store lives.
    #[arg(long, global = true, env = "TPLBUILD_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Allow plain HTTP for this registry (repeatable). Loopback registries
    /// must be named too.
    #[arg(long = "insecure-registry", global = true, value_name = "HOST:PORT")]
    pub insecure_registries: Vec<String>,
    /// Print debug logs (credentials are never printed).
    #[arg(long, global = true)]
    pub debug: bool,
    /// How many layers are downloaded at once.
    #[arg(long, short = 'j', global = true, value_name = "N", default_value_t = crate::transfer::PARALLEL_FETCHES)]
    pub jobs: usize,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create and inspect template images (the base-platform team's side).
    #[command(subcommand)]
    Template(template::TemplateCommand),
    /// Fetch an image and all its layers into the local store.
    Pull(copy::PullArgs),
    /// Copy an image between registries and OCI layouts, like `crane copy`.
    Copy(copy::CopyArgs),
    /// Show each step of a Buildfile with its cache key, HIT or MISS and why.
    Plan(args::PlanArgs),
    /// Build a Buildfile: run the missing steps, cache them, export the result.
    Build(args::BuildArgs),
    /// Flatten any image into a tarball, folder, ext4/erofs/squashfs image or bootable disk.
    Export(copy::ExportArgs),
    /// List the builds this machine recorded (name, digest, size, age).
    Images(images::ImagesArgs),
    /// Write the template, step cache and locked .debs of a Buildfile into
    /// one folder an air-gapped machine builds from with --offline.
    Bundle(bundle::BundleArgs),
    /// Resolve the apt steps and write FILE.lock with the exact packages.
    Lock(lock::LockArgs),
    /// Download the .debs FILE.lock names into the store, verified.
    Fetch(lock::FetchArgs),
    /// Print the SBOM (SPDX or CycloneDX) of any Debian-based image.
    Sbom(sbom::SbomArgs),
    /// Sign an image in a registry with a private key (cosign's format).
    Sign(sign::SignArgs),
    /// Check an image's signatures against public keys (cosign's format).
    Verify(sign::VerifyArgs),
    /// Free the store of steps, exports and blobs not used for a while.
    Prune(prune::PruneArgs),
    /// Print a reference: the Buildfile language, the JSON events, engines.
    Docs(docs::DocsArgs),
    /// Print a shell completion script (bash, zsh, fish, …).
    Completion(docs::CompletionArgs),
    /// Print the man page (roff), generated from these flags.
    Man(docs::ManArgs),
}

pub fn init_tracing(debug: bool) {
    let filter = if debug {
        "tplbuild=debug,info"
    } else {
        "tplbuild=warn,warn"
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TPLBUILD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}

/// What every subcommand needs: the store, the registry client, settings.
pub struct Context {
    pub store: Store,
    pub global: GlobalArgs,
}

impl Context {
    pub fn new(global: GlobalArgs) -> anyhow::Result<Self> {
        let home = global.home.clone().unwrap_or_else(Store::default_home);
        let store = Store::open(&home).map_err(|e| {
            anyhow::anyhow!(e).context(format!("opening the store at {}", home.display()))
        })?;
        Ok(Context { store, global })
    }

    /// A registry client with the settings file plus `--insecure-registry`.
    pub fn client(&self) -> anyhow::Result<crate::registry::Client> {
        let mut settings = crate::registry::RegistrySettings::load()?;
        settings
            .insecure
            .extend(self.global.insecure_registries.iter().cloned());
        Ok(crate::registry::Client::new(settings)?)
    }
}

/// `--platform A,B` of `build`: one or more platforms, none twice.
pub fn parse_platforms(s: Option<&str>) -> anyhow::Result<Vec<Platform>> {
    let Some(s) = s else {
        return Ok(vec![Platform::host()]);
    };
    let mut out: Vec<Platform> = vec![];
    for one in s.split(',').map(str::trim) {
        let p = parse_platform(Some(one))?;
        if out.iter().any(|q| q.matches(&p)) {
            return Err(Failure::bad_input(format!("--platform names {p} twice")).into());
        }
        out.push(p);
    }
    Ok(out)
}

pub fn parse_platform(s: Option<&str>) -> anyhow::Result<Platform> {
    match s {
        None => Ok(Platform::host()),
        Some(s) if s.contains(',') => Err(Failure::bad_input(format!(
            "{s:?} names several platforms; this command takes one"
        ))
        .with_hint("`tplbuild build` takes a list, e.g. --platform linux/amd64,linux/arm64")
        .into()),
        Some(s) => Platform::parse(s).ok_or_else(|| {
            Failure::bad_input(format!("invalid platform {s:?}"))
                .with_hint("write it as OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm/v7")
                .into()
        }),
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    crate::transfer::set_jobs(cli.global.jobs);
    // Prune opens the store for itself alone, never shared first.
    // These need no store.
    let command = match cli.command {
        Command::Prune(a) => return prune::prune_cmd(&cli.global, a).await,
        Command::Docs(a) => return docs::docs(a),
        Command::Completion(a) => return docs::completion(a),
        Command::Man(a) => return docs::man(a),
        other => other,
    };
    let ctx = Context::new(cli.global)?;
    match command {
        Command::Template(t) => template::run(&ctx, t).await,
        Command::Pull(a) => copy::pull(&ctx, a).await,
        Command::Copy(a) => copy::copy(&ctx, a).await,
        Command::Plan(a) => plan::plan_cmd(&ctx, a).await,
        Command::Build(a) => build::build_cmd(&ctx, a).await,
        Command::Export(a) => copy::export(&ctx, a).await,
        Command::Images(a) => images::images(&ctx, a),
        Command::Bundle(a) => bundle::bundle_cmd(&ctx, a).await,
        Command::Lock(a) => lock::lock_cmd(&ctx, a).await,
        Command::Fetch(a) => lock::fetch_cmd(&ctx, a).await,
        Command::Sbom(a) => sbom::sbom_cmd(&ctx, a).await,
        Command::Sign(a) => sign::sign_cmd(&ctx, a).await,
        Command::Verify(a) => sign::verify_cmd(&ctx, a).await,
        Command::Prune(_) | Command::Docs(_) | Command::Completion(_) | Command::Man(_) => {
            unreachable!("handled above")
        }
    }
}

/// The exit code an error maps to and the hint it carries.
pub fn exit_code_and_hint(err: &anyhow::Error) -> (u8, Option<String>) {
    let mut code = exit::FAILURE;
    let mut hint = None;
    // A Failure may be the error itself, a context on it, or a cause.
    let failures = err
        .downcast_ref::<Failure>()
        .into_iter()
        .chain(err.chain().filter_map(|c| c.downcast_ref::<Failure>()));
    for f in failures {
        if code == exit::FAILURE {
            code = f.code;
        }
        if hint.is_none() {
            hint = f.hint.clone();
        }
    }
    // An output option the content proved wrong (`size=` too small) is
    // the user's to fix, found only once the content was known.
    if code == exit::FAILURE
        && err.chain().any(|c| {
            matches!(
                c.downcast_ref::<crate::export::ExportError>(),
                Some(crate::export::ExportError::TooSmall { .. })
            )
        })
    {
        code = exit::BAD_INPUT;
    }
    (code, hint)
}

/// Print an error chain and return the exit code.
pub fn report(err: &anyhow::Error) -> u8 {
    if let Some(f) = err.downcast_ref::<Failure>().filter(|f| f.preformatted) {
        eprint!("{}", f.message);
        return f.code;
    }
    let mut chain = err.chain();
    if let Some(first) = chain.next() {
        eprintln!("error: {first}");
    }
    for cause in chain {
        eprintln!("  caused by: {cause}");
    }
    let (code, hint) = exit_code_and_hint(err);
    if let Some(h) = hint {
        eprintln!("  hint: {h}");
    }
    code
}
