//! `tplbuild docs`, `tplbuild completion` and `tplbuild man`: what a user
//! with only the binary needs to learn it — the Buildfile reference and
//! the JSON event schema (the same text as `docs/` in the repository),
//! shell completion, and a man page generated from these very flags.

use std::io::Write;

use clap::{Args, CommandFactory, ValueEnum};

use super::Cli;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Topic {
    /// The Buildfile language: every instruction, ARG, KEEP, examples.
    Buildfile,
    /// The `build --progress json` events CI reads.
    ProgressJson,
    /// How the engine is found; remote engines, CI setups.
    Engines,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    tplbuild docs buildfile\n  \
    tplbuild docs progress-json | head -20")]
pub struct DocsArgs {
    #[arg(value_enum)]
    pub topic: Topic,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    source <(tplbuild completion bash)       # or into /etc/bash_completion.d/\n  \
    tplbuild completion zsh > _tplbuild      # then put it in a $fpath folder\n  \
    tplbuild completion fish > tplbuild.fish # into ~/.config/fish/completions/")]
pub struct CompletionArgs {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    tplbuild man > tplbuild.1   # then: man -l tplbuild.1")]
pub struct ManArgs {}

pub fn docs(a: DocsArgs) -> anyhow::Result<()> {
    let text = match a.topic {
        Topic::Buildfile => include_str!("../../docs/buildfile.md"),
        Topic::ProgressJson => include_str!("../../docs/progress-json.md"),
        Topic::Engines => include_str!("../../docs/engines.md"),
    };
    to_stdout(|out| out.write_all(text.as_bytes()))
}

pub fn completion(a: CompletionArgs) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "tplbuild", &mut script);
    to_stdout(|out| out.write_all(&script))
}

pub fn man(_: ManArgs) -> anyhow::Result<()> {
    let page = clap_mangen::Man::new(Cli::command());
    to_stdout(|out| page.render(out))
}

/// Write to stdout; a reader that stopped early (`| head`) is no error.
fn to_stdout(
    write: impl FnOnce(&mut std::io::StdoutLock<'static>) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match write(&mut out).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}
