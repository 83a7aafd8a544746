//! `identityd-wg`: the userspace WireGuard device as a process (what the node daemon runs in
//! each node's network namespace, and what the e2e tests start).
//!
//! ```text
//! identityd-wg run --config FILE      # device; re-reads FILE on SIGHUP or when it changes
//! identityd-wg pubkey --key FILE      # load (or generate, 0600) the node key, print its public key
//! identityd-wg kernel-check           # is kernel WireGuard usable here? (exit 1 when not)
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use identityd_wg::backend;
use identityd_wg::config::DeviceConfig;
use identityd_wg::device::{Device, DeviceSettings};
use identityd_wg::key::{KeyOrigin, NodeKey, PublicKey};
use identityd_wg::plan::{DesiredConfig, plan};
use identityd_wg::routes::Netlink;

#[derive(Parser, Debug)]
#[command(
    name = "identityd-wg",
    version,
    about = "identityd's userspace WireGuard device"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the device from a config file; re-read it on SIGHUP or when it changes.
    Run {
        /// The JSON config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the node's public key, generating the key (0600) if the file does not exist.
    Pubkey {
        /// The private key file.
        #[arg(long)]
        key: PathBuf,
    },
    /// Report whether kernel WireGuard can be used in this network namespace.
    KernelCheck,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Pubkey { key } => {
            let (k, _) = NodeKey::load_or_generate(&key)?;
            println!("{}", k.public_key());
            Ok(())
        }
        Cmd::KernelCheck => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let res = rt.block_on(async {
                let nl = Netlink::connect()?;
                let probe = format!("iddprobe{}", std::process::id() % 100_000);
                anyhow::Ok(backend::probe_kernel(&nl, &probe).await)
            })?;
            match res {
                Ok(()) => {
                    println!("kernel WireGuard: available");
                    Ok(())
                }
                Err(e) => {
                    println!("{e}");
                    std::process::exit(1);
                }
            }
        }
        Cmd::Run { config } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(run(&config))
        }
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

async fn converge(dev: &Device, nl: &Netlink, desired: &DesiredConfig) -> anyhow::Result<()> {
    let peers = dev.apply_peers(&desired.peers);
    let link_changed = nl.ensure_link(&desired.interface, desired.mtu).await?;
    let mut routes = nl
        .apply_routes(&desired.interface, desired.route_table, &desired.routes)
        .await?;
    if let Some((table, node_routes)) = &desired.node_routes {
        let r = nl
            .apply_routes(&desired.interface, *table, node_routes)
            .await?;
        routes.added.extend(r.added);
        routes.removed.extend(r.removed);
    }
    if !peers.is_empty() || link_changed || !routes.added.is_empty() || !routes.removed.is_empty() {
        tracing::info!(
            interface = %desired.interface,
            peers_added = peers.added,
            peers_removed = peers.removed,
            peers_updated = peers.updated,
            peers_replaced = peers.replaced,
            routes_added = ?routes.added,
            routes_removed = ?routes.removed,
            link_changed,
            "applied plan"
        );
    }
    Ok(())
}

fn load_plan(
    config: &Path,
    public_key: PublicKey,
) -> anyhow::Result<(DeviceConfig, DesiredConfig)> {
    let cfg = DeviceConfig::load(config)?;
    let desired = plan(&cfg.node_spec(public_key), &cfg.peers)?;
    Ok((cfg, desired))
}

/// Reads the configuration and its keys (generating a missing next key, 0600) and plans
/// against the current key.
fn load_keys_and_plan(
    config: &Path,
) -> anyhow::Result<(DeviceConfig, NodeKey, Option<NodeKey>, DesiredConfig)> {
    let cfg = DeviceConfig::load(config)?;
    let (current, _) = NodeKey::load_or_generate(&cfg.key_path)?;
    let next = match &cfg.next_key_path {
        Some(p) => Some(NodeKey::load_or_generate(p)?.0),
        None => None,
    };
    let desired = plan(&cfg.node_spec(current.public_key()), &cfg.peers)?;
    Ok((cfg, current, next, desired))
}

async fn run(config: &Path) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};

    let cfg = DeviceConfig::load(config)?;
    backend::choose(cfg.backend)?;
    let (key, origin) = NodeKey::load_or_generate(&cfg.key_path)?;
    tracing::info!(
        public_key = %key.public_key(),
        generated = (origin == KeyOrigin::Generated),
        "node key"
    );
    // The config's mtime before it is read: a change written while the device starts is
    // then seen by the first tick instead of being missed.
    let mut seen = mtime(config);
    let (cfg, desired) = load_plan(config, key.public_key())?;
    let dev = Device::start(
        key,
        &DeviceSettings {
            interface: cfg.interface.clone(),
            listen_port: cfg.listen_port,
            persist: cfg.persist,
            offload: cfg.offload,
            udp_gso: cfg.udp_gso,
            udp_gro: cfg.udp_gro,
            handshake_protection: cfg.handshake_protection,
            fwmark: cfg.fwmark,
        },
    )
    .with_context(|| format!("start device {}", cfg.interface))?;
    if let Some(next) = &cfg.next_key_path {
        let (next, _) = NodeKey::load_or_generate(next)?;
        let current = NodeKey::load(&cfg.key_path)?;
        dev.set_keys(current, Some(next));
    }
    dev.set_next_sends(!cfg.next_key_answer_only);
    let nl = Netlink::connect()?;
    converge(&dev, &nl, &desired).await?;
    println!(
        "ready interface={} public_key={} listen_port={}",
        dev.interface(),
        dev.public_key(),
        dev.listen_port()
    );

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    loop {
        let reload = tokio::select! {
            _ = hup.recv() => true,
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => {
                let now = mtime(config);
                let changed = now != seen;
                seen = now;
                changed
            }
        };
        if !reload {
            continue;
        }
        // The keys follow the configuration: a next key is added beside the current one, a
        // next key named as `key_path` becomes the current one (sessions to it kept).
        match load_keys_and_plan(config) {
            Ok((new_cfg, current, next, desired)) => {
                dev.set_keys(current, next);
                dev.set_next_sends(!new_cfg.next_key_answer_only);
                if new_cfg.listen_port != cfg.listen_port || new_cfg.interface != cfg.interface {
                    tracing::warn!(
                        "interface or listen_port changed in {}: restart to apply",
                        config.display()
                    );
                }
                if let Err(e) = converge(&dev, &nl, &desired).await {
                    tracing::error!(error = %format!("{e:#}"), "apply failed");
                }
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "config not applied, keeping the running one")
            }
        }
    }
    dev.remove_uapi_socket();
    tracing::info!(interface = %dev.interface(), persistent = cfg.persist, "stopping");
    Ok(())
}
