use std::process::ExitCode;

use clap::Parser;
use identityd::certs_cli;
use identityd::cli::{CaCommand, Cli, Command, LabCommand, Mode, SvidCommand};
use identityd::daemon::config::{DaemonConfig, Role};
use identityd::lab;

fn not_yet(what: &str) -> ExitCode {
    eprintln!("identityd {what}: not implemented yet");
    ExitCode::from(2)
}

fn report<E: std::fmt::Display>(r: Result<String, E>) -> ExitCode {
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

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    }
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn run_daemon(config: &std::path::Path) -> ExitCode {
    init_logging();
    let cfg = match DaemonConfig::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cfg.role {
        Role::Ca => match runtime().block_on(identityd::daemon::ca::run(cfg)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Role::Node => match runtime().block_on(identityd::daemon::node::run(cfg)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run_daemon(&config),
        Command::Lab(LabCommand::Up {
            nodes,
            mode,
            dir,
            manifests,
        }) => {
            let encryption = match mode {
                Mode::Wireguard => "wireguard",
                Mode::Disabled => "disabled",
                Mode::Ipsec => {
                    eprintln!(
                        "error: --mode=ipsec: IPsec needs a kernel with ESP, which this machine lacks; not built yet"
                    );
                    return ExitCode::FAILURE;
                }
            };
            let opts = lab::UpOptions {
                nodes: usize::try_from(nodes).unwrap_or(usize::MAX),
                encryption: encryption.to_owned(),
                dir: dir.unwrap_or_else(lab::default_dir),
                manifests,
            };
            match lab::up(&opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!(
                        "error: {e}\n(the lab stays up for inspection; remove it with `identityd lab down --dir {}`)",
                        opts.dir.display()
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Command::Lab(LabCommand::Status { json, dir }) => {
            report(lab::status(&dir.unwrap_or_else(lab::default_dir), json))
        }
        Command::Lab(LabCommand::Down { dir }) => {
            report(lab::down(&dir.unwrap_or_else(lab::default_dir)))
        }
        Command::Lab(LabCommand::Workload { name, listen }) => {
            match runtime().block_on(lab::workload::serve(name, listen)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: --listen={listen}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Lab(LabCommand::Get { url, host, payload }) => {
            match runtime().block_on(lab::workload::get(
                &url,
                host.as_deref(),
                payload.as_deref(),
            )) {
                Ok((status, body)) => {
                    println!("{status} {}", body.lines().next().unwrap_or(""));
                    print!("{body}");
                    if status == 200 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status { json, socket } => match identityd::daemon::api::fetch(&socket) {
            Ok(s) if json => {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Ok(s) => {
                print!("{}", identityd::daemon::api::render(&s));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: --socket: {e} (is the daemon running?)");
                ExitCode::FAILURE
            }
        },
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
