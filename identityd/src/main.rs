use std::process::ExitCode;

use clap::Parser;
use identityd::certs_cli;
use identityd::cli::{CaCommand, Cli, Command, LabCommand, SvidCommand};

fn not_yet(what: &str) -> ExitCode {
    eprintln!("identityd {what}: not implemented yet");
    ExitCode::from(2)
}

fn report(r: Result<String, certs_cli::CliError>) -> ExitCode {
    match r {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
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
        Command::Ca(CaCommand::Init {
            trust_domain,
            dir,
            max_ttl,
            intermediate,
        }) => report(certs_cli::ca_init(
            &trust_domain,
            &dir,
            &max_ttl,
            intermediate,
        )),
        Command::Svid(SvidCommand::Issue {
            ca_dir,
            spiffe_id,
            out,
            ttl,
        }) => report(certs_cli::svid_issue(&ca_dir, &spiffe_id, &out, &ttl)),
        Command::Svid(SvidCommand::Inspect { file }) => report(certs_cli::svid_inspect(&file)),
        Command::Svid(SvidCommand::Verify {
            bundle,
            trust_domain,
            file,
        }) => report(certs_cli::svid_verify(
            &bundle,
            &file,
            trust_domain.as_deref(),
        )),
    }
}
