use std::process::ExitCode;

use clap::Parser;
use identityd::cli::{CaCommand, Cli, Command, LabCommand, SvidCommand};

fn not_yet(what: &str) -> ExitCode {
    eprintln!("identityd {what}: not implemented yet");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { .. } => not_yet("run"),
        Command::Lab(LabCommand::Up { .. }) => not_yet("lab up"),
        Command::Lab(LabCommand::Status { .. }) => not_yet("lab status"),
        Command::Lab(LabCommand::Down { .. }) => not_yet("lab down"),
        Command::Status { .. } => not_yet("status"),
        Command::Audit(_) => not_yet("audit"),
        Command::Crds => not_yet("crds"),
        Command::Observe { .. } => not_yet("observe"),
        Command::Ca(CaCommand::Init { .. }) => not_yet("ca init"),
        Command::Svid(SvidCommand::Issue { .. }) => not_yet("svid issue"),
        Command::Svid(SvidCommand::Inspect { .. }) => not_yet("svid inspect"),
        Command::Svid(SvidCommand::Verify { .. }) => not_yet("svid verify"),
    }
}
