//! `ferry completions` and `ferry man`: shell completion scripts and
//! manual pages, generated from the clap definitions in [`crate::cli`] so
//! they always match `--help`.

use std::io::Write;

use crate::cli::{CompletionsArgs, ManArgs};
use crate::exit::Failure;
use crate::output::Output;
use anyhow::Result;

/// Runs `ferry completions SHELL`: the script on stdout.
pub fn completions(args: CompletionsArgs) -> Result<()> {
    let mut command = crate::config::command();
    // Rendered into memory first: clap_complete panics when its writer
    // fails, and stdout may be a closed pipe (`| head`).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "ferry", &mut script);
    print(&script)
}

/// Runs `ferry man`: ferry(1) on stdout, or with `--dir` a page per
/// subcommand written into that folder.
pub fn man(args: ManArgs, out: &Output) -> Result<()> {
    // `ferry help` is no page of its own: `--help` is on every page.
    let command = crate::config::command().disable_help_subcommand(true);
    let Some(dir) = args.dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(command).render(&mut page)?;
        return print(&page);
    };
    let local = |what: &str, e: std::io::Error| {
        Failure::local(format!("cannot {what} {}: {e}", dir.display()))
    };
    std::fs::create_dir_all(&dir).map_err(|e| local("create the folder", e))?;
    clap_mangen::generate_to(command, &dir).map_err(|e| local("write the pages into", e))?;
    out.say(format!(
        "Wrote ferry.1 and a page for each subcommand into {}",
        dir.display()
    ));
    Ok(())
}

/// Writes generated text to stdout; a closed pipe is not an error.
fn print(text: &[u8]) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
