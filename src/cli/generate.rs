//! The hidden packaging commands: `generate-man` and
//! `generate-completions` write the man pages and the bash, zsh and fish
//! completions that `packaging/build.sh` puts into the packages.

use std::path::Path;

use clap::CommandFactory;

use super::{Cli, CliError, Context, MORE_HELP};

/// upkeep.1 and upkeep-SUBCOMMAND.1 into `dir`.
pub(super) fn man(dir: &Path) -> Result<(), CliError> {
    clap_mangen::generate_to(public_command(), dir)
        .with_context(|| format!("writing man pages to {}", dir.display()))
}

/// Completions for bash, zsh and fish into `dir`.
pub(super) fn completions(dir: &Path) -> Result<(), CliError> {
    use clap_complete::Shell;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut public_command(), "upkeep", dir)
            .with_context(|| format!("writing {shell} completions to {}", dir.display()))?;
    }
    Ok(())
}

/// The CLI as operators see it, for the man pages and completions: without
/// the hidden packaging commands (clap_complete would offer them).
fn public_command() -> clap::Command {
    let full = Cli::command();
    let shown: Vec<clap::Command> = full
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .cloned()
        .collect();
    clap::Command::new("upkeep")
        .version(env!("CARGO_PKG_VERSION"))
        .about(full.get_about().cloned().unwrap_or_default())
        .after_long_help(MORE_HELP)
        .subcommand_required(true)
        .subcommands(shown)
}
