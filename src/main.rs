//! The `tplbuild` binary: parse the command line, run, and turn any error
//! into `error:` / `caused by:` / `hint:` lines and an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = tplbuild::cli::Cli::parse();
    tplbuild::cli::init_tracing(cli.global.debug);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(tplbuild::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => ExitCode::from(tplbuild::cli::report(&err)),
    }
}
