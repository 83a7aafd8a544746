use std::process::ExitCode;

use clap::Parser;
use identityd::certs_cli;
use identityd::cli::{CaCommand, Cli, Command, LabCommand, Mode, SvidCommand};
use identityd::daemon::config::{DaemonConfig, Role};
use identityd::lab;

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

fn run_audit(args: &identityd::cli::AuditArgs) -> ExitCode {
    use identityd::audit::{self, AuditOptions, Severity};
    if let Some(check) = &args.explain {
        return match audit::explain(check) {
            Some(text) => {
                println!("{check}\n\n{text}");
                ExitCode::SUCCESS
            }
            None => {
                eprintln!(
                    "error: --explain={check}: no such check; the checks are: {}",
                    audit::CHECKS
                        .iter()
                        .map(|(c, _)| *c)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                ExitCode::from(2)
            }
        };
    }
    for r in &args.require {
        if audit::explain(r).is_none() {
            eprintln!("error: --require={r}: no such check (see --explain)");
            return ExitCode::from(2);
        }
    }
    if args.source.is_none() && args.manifests.is_none() && !args.kube {
        eprintln!("error: give --source DIR (a lab), --kube, and/or --manifests PATH");
        return ExitCode::from(2);
    }
    let dur = |flag: &str, v: &str| {
        identityd_certs::duration::parse(v)
            .map(|d| d.as_secs())
            .map_err(|e| format!("--{flag}={v}: {e}"))
    };
    let (max_hs, min_svid, max_report) = match (
        dur("max-handshake-age", &args.max_handshake_age),
        dur("min-svid-lifetime", &args.min_svid_lifetime),
        dur("max-report-age", &args.max_report_age),
    ) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = AuditOptions {
        require_mtls: args.require_mtls.clone(),
        require_node_encryption: args.require_node_encryption,
        min_default_mtls: args
            .min_default_mtls
            .as_deref()
            .and_then(|m| serde_json::from_value(serde_json::Value::String(m.to_owned())).ok()),
        max_handshake_age_secs: max_hs,
        min_svid_lifetime_secs: min_svid,
        max_report_age_secs: max_report,
        ..AuditOptions::default()
    };
    let mut findings = Vec::new();
    if let Some(dir) = &args.source {
        let lab: identityd::lab::LabState = match std::fs::read(dir.join("lab.json"))
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "error: --source={}: not a lab directory (lab.json: {e})",
                    dir.display()
                );
                return ExitCode::from(2);
            }
        };
        let state = match identityd::source::FileSource::open(
            dir.join("cluster"),
            identityd::source::FileSourceOptions::default(),
        ) {
            Ok(s) => s.snapshot(),
            Err(e) => {
                eprintln!("error: --source={}: {e}", dir.display());
                return ExitCode::from(2);
            }
        };
        let nodes: Vec<Result<_, String>> = lab
            .nodes
            .iter()
            .map(|(name, run)| {
                identityd::daemon::api::fetch(&run.join("api.sock"))
                    .map_err(|e| format!("{name}: {e}"))
            })
            .collect();
        // Evidence for strict-mode drops: the dropped flows the classifiers reported.
        let mut opts = opts.clone();
        let _ = identityd::observe::run(dir, false, false, |l| {
            if l.contains(" dropped ") && opts.drop_flows.len() < 50 {
                opts.drop_flows
                    .push(l.split_whitespace().collect::<Vec<_>>().join(" "));
            }
        });
        if args.from_reports {
            match identityd::source::file::read_reports(&dir.join("cluster")) {
                Ok(reports) => {
                    findings.extend(audit::report_live(
                        &reports,
                        &state,
                        &opts,
                        std::time::SystemTime::now(),
                    ));
                    findings.push(audit::cluster_problems(&state));
                }
                Err(e) => {
                    eprintln!("error: --from-reports: {e}");
                    return ExitCode::from(2);
                }
            }
        } else {
            findings.extend(audit::live(&nodes, &state, &opts));
        }
    }
    if args.kube {
        // The cluster from KUBECONFIG / ~/.kube/config or the in-cluster service account.
        let snap = runtime().block_on(async {
            let client = kube::Client::try_default().await.map_err(|e| {
                format!("Kubernetes client configuration (kubeconfig or in-cluster): {e}")
            })?;
            let state =
                audit::kube_snapshot(client.clone(), std::time::Duration::from_secs(20)).await?;
            let reports = identityd::source::kube::list_reports(client)
                .await
                .map_err(|e| format!("{e} (are the chart's CRDs installed?)"));
            Ok::<_, String>((state, reports))
        });
        match snap {
            Ok((state, reports)) => {
                findings.extend(audit::cluster_checks(&state, &opts));
                match reports {
                    Ok(r) => findings.extend(audit::report_live(
                        &r,
                        &state,
                        &opts,
                        std::time::SystemTime::now(),
                    )),
                    Err(e) => {
                        eprintln!("error: --kube: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            Err(e) => {
                eprintln!("error: --kube: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(m) = &args.manifests {
        match audit::load_manifests(m) {
            Ok(m) => findings.extend(audit::static_checks(&m, &opts)),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    print!("{}", audit::render(&findings, args.format));
    let fail_on = match args.fail_on {
        identityd::cli::FailOn::Error => Severity::Error,
        identityd::cli::FailOn::Warning => Severity::Warning,
        identityd::cli::FailOn::Info => Severity::Info,
    };
    let unmet = audit::unmet_requirements(&findings, &args.require);
    for u in &unmet {
        eprintln!("audit: {u}");
    }
    if audit::failed(&findings, fail_on) || !unmet.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
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
            image,
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
                image,
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
        Command::Lab(LabCommand::BenchMesh {
            dir,
            rates,
            seconds,
            out,
            telemetry_ab,
            ab_rounds,
        }) => report(lab::bench::mesh(
            &dir.unwrap_or_else(lab::default_dir),
            &lab::bench::MeshBenchOptions {
                rates,
                seconds,
                out,
                telemetry_ab,
                ab_rounds,
            },
        )),
        Command::Lab(LabCommand::BenchRecovery {
            dir,
            scenarios,
            rate,
            seconds,
            restart_delay_ms,
            out,
        }) => report(lab::recovery::recovery(
            &dir.unwrap_or_else(lab::default_dir),
            &lab::recovery::RecoveryBenchOptions {
                scenarios,
                rate,
                seconds,
                restart_delay: std::time::Duration::from_millis(restart_delay_ms),
                out,
            },
        )),
        Command::Lab(LabCommand::Load {
            addr,
            kind,
            host,
            rate,
            seconds,
        }) => {
            let kind = match kind.as_str() {
                "http" => lab::workload::LoadKind::Http,
                "tcp" => lab::workload::LoadKind::Tcp,
                other => {
                    eprintln!("error: --kind={other}: must be http or tcp");
                    return ExitCode::from(2);
                }
            };
            let r = runtime().block_on(lab::workload::load(
                addr,
                kind,
                &host,
                rate,
                std::time::Duration::from_secs(seconds),
            ));
            println!("{}", serde_json::to_string(&r).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Command::Lab(LabCommand::Stream {
            addr,
            interval_ms,
            seconds,
        }) => {
            let r = runtime().block_on(lab::workload::stream(
                addr,
                std::time::Duration::from_millis(interval_ms.max(1)),
                std::time::Duration::from_secs(seconds),
            ));
            println!("{}", serde_json::to_string(&r).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Command::Lab(LabCommand::Tcp {
            addr,
            greeting,
            send,
        }) => match runtime().block_on(lab::workload::tcp_exchange(addr, greeting, &send)) {
            Ok(lines) => {
                for l in lines {
                    println!("{l}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Lab(LabCommand::Probe {
            targets,
            timeout_ms,
        }) => {
            let got = runtime().block_on(lab::workload::probe(
                &targets,
                std::time::Duration::from_millis(timeout_ms),
            ));
            for ok in got {
                println!("{ok}");
            }
            ExitCode::SUCCESS
        }
        Command::Lab(LabCommand::Workload { name, listen }) => {
            let tcp = lab::workload::serve_tcp(name.clone(), listen.ip());
            let udp = lab::workload::serve_udp(name.clone(), listen.ip());
            let http = lab::workload::serve(name, listen);
            match runtime().block_on(async { tokio::try_join!(http, tcp, udp).map(drop) }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: --listen={listen}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Lab(LabCommand::Get {
            url,
            host,
            payload,
            ca,
        }) => {
            match runtime().block_on(lab::workload::get(
                &url,
                host.as_deref(),
                payload.as_deref(),
                ca.as_deref(),
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
        Command::Audit(args) => run_audit(&args),
        Command::Crds => match identityd::model::crd::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Stat {
            window,
            direction,
            by_caller,
            json,
            dir,
            socket,
        } => {
            let dir = dir.unwrap_or_else(lab::default_dir);
            if !direction_is_known(&direction) {
                return ExitCode::FAILURE;
            }
            let group = if by_caller {
                identityd::observe::StatGroup::Caller
            } else {
                identityd::observe::StatGroup::Service
            };
            match identityd::observe::telemetry_sockets(&dir, socket.as_deref())
                .and_then(|nodes| identityd::observe::stat(&nodes, window, &direction, group))
            {
                Ok(rows) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&rows).unwrap_or_default()
                        );
                    } else {
                        print!("{}", identityd::observe::stat_table(&rows));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Top {
            window,
            direction,
            limit,
            interval,
            iterations,
            json,
            dir,
            socket,
        } => {
            use std::io::IsTerminal;
            let dir = dir.unwrap_or_else(lab::default_dir);
            if !direction_is_known(&direction) {
                return ExitCode::FAILURE;
            }
            let nodes = match identityd::observe::telemetry_sockets(&dir, socket.as_deref()) {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let tty = std::io::stdout().is_terminal();
            let mut done = 0u64;
            loop {
                match identityd::observe::top(&nodes, window, &direction, limit) {
                    Ok(rows) if json => {
                        println!("{}", serde_json::to_string(&rows).unwrap_or_default());
                    }
                    Ok(rows) => {
                        if tty {
                            print!("\x1b[H\x1b[2J");
                        }
                        print!(
                            "{}",
                            identityd::observe::top_table(&rows, window, &direction)
                        );
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                }
                done += 1;
                if iterations != 0 && done >= iterations {
                    return ExitCode::SUCCESS;
                }
                std::thread::sleep(std::time::Duration::from_secs(interval.max(1)));
            }
        }
        Command::Observe {
            follow,
            l7,
            json,
            dir,
            socket,
        } => {
            let dir = dir.unwrap_or_else(lab::default_dir);
            let res = if l7 {
                identityd::observe::telemetry_sockets(&dir, socket.as_deref()).and_then(|nodes| {
                    identityd::observe::run_l7(&nodes, follow, json, |l| println!("{l}"))
                })
            } else {
                identityd::observe::run(&dir, follow, json, |l| println!("{l}"))
            };
            match res {
                Ok(n) => {
                    if !json {
                        eprintln!("{n} flows");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
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
        Command::Svid(SvidCommand::SignNode {
            svid_dir,
            generation,
            file,
        }) => report(certs_cli::svid_sign_node(&svid_dir, &file, generation)),
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

/// `--direction` of `stat` and `top`: `outbound`, `inbound` or `ingress`; anything else is
/// reported, naming the value.
fn direction_is_known(direction: &str) -> bool {
    let ok = ["outbound", "inbound", "ingress"].contains(&direction);
    if !ok {
        eprintln!("error: --direction={direction}: want outbound, inbound or ingress");
    }
    ok
}
