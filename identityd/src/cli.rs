//! The command-line contract of DESIGN.md.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// identityd — encrypted, authenticated traffic between workloads, without sidecars.
#[derive(Debug, Parser)]
#[command(name = "identityd", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (`role: node`: WireGuard datapath, classifier, local API; `role: ca` is not built yet).
    Run {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// A cluster of network namespaces on this machine.
    #[command(subcommand)]
    Lab(LabCommand),
    /// Ask the local daemon: peers, handshakes, paths, counters.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// The daemon's API socket.
        #[arg(long, default_value = "/run/identityd/api.sock")]
        socket: PathBuf,
    },
    /// Check that traffic is encrypted and identities are in place (live on a lab, or static on manifests).
    Audit(AuditArgs),
    /// Certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// SPIFFE X.509-SVIDs.
    #[command(subcommand)]
    Svid(SvidCommand),
    /// Print the CRD YAML (the chart's `crds/` is generated from it).
    Crds,
    /// Flows with their path verdict (from the classifiers of a lab's nodes).
    Observe {
        /// Keep streaming.
        #[arg(long)]
        follow: bool,
        /// L7 flow records from the node Envoys (requests and L4 mTLS connections with both
        /// SPIFFE IDs, status, latency, path) instead of the classifiers' L3/L4 verdicts.
        #[arg(long)]
        l7: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Lab directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// With `--l7`: read one node daemon's telemetry socket (`<runDir>/telemetry.sock`,
        /// the local API on a node) instead of a lab's.
        #[arg(long, requires = "l7")]
        socket: Option<PathBuf>,
    },
    /// Success rate, request rate and latency percentiles per service (and caller identity)
    /// over a recent window, from the node Envoys' request telemetry (like `linkerd viz stat`).
    Stat {
        /// Window, seconds (at most 60).
        #[arg(long, default_value_t = 60)]
        window: u64,
        /// `outbound` (the callers' side, default), `inbound` (the callees') or `ingress`.
        #[arg(long, default_value = "outbound")]
        direction: String,
        /// One row per caller identity.
        #[arg(long)]
        by_caller: bool,
        /// JSON.
        #[arg(long)]
        json: bool,
        /// Lab directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Read one node daemon's telemetry socket (`<runDir>/telemetry.sock`) instead of a
        /// lab's.
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Live table of the busiest routes (requests per second, success, p50/p99), refreshed in
    /// the terminal (like `linkerd viz top`).
    Top {
        /// Window, seconds (at most 60).
        #[arg(long, default_value_t = 10)]
        window: u64,
        /// `outbound` (the callers' side, default), `inbound` or `ingress`.
        #[arg(long, default_value = "outbound")]
        direction: String,
        /// Rows shown.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 2)]
        interval: u64,
        /// Stop after this many refreshes (0: until interrupted).
        #[arg(long, default_value_t = 0)]
        iterations: u64,
        /// One JSON array of rows per refresh, one per line.
        #[arg(long)]
        json: bool,
        /// Lab directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Read one node daemon's telemetry socket (`<runDir>/telemetry.sock`) instead of a
        /// lab's.
        #[arg(long)]
        socket: Option<PathBuf>,
    },
}

/// Encryption modes.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Mode {
    /// WireGuard between nodes.
    Wireguard,
    /// IPsec between nodes.
    Ipsec,
    /// No network-layer encryption.
    Disabled,
}

/// `identityd lab …`
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the lab: nodes and pods as namespaces, a daemon per node, WireGuard between them.
    Up {
        /// Number of nodes (1..=9).
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Encryption mode.
        #[arg(long, value_enum, default_value_t = Mode::Wireguard)]
        mode: Mode,
        /// Lab directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Extra manifests to apply.
        #[arg(long)]
        manifests: Option<PathBuf>,
        /// Run the CA role and every node daemon (with its WireGuard device and Envoy) as
        /// podman containers of this identityd image (`make image`; `. scripts/containers-env`
        /// first so podman finds its storage).
        #[arg(long)]
        image: Option<String>,
    },
    /// Show the lab's status (every node daemon's view).
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Lab directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Remove every namespace, link and process the lab made.
    Down {
        /// Lab directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// (internal) The HTTP workload run in each lab pod.
    #[command(hide = true)]
    Workload {
        /// Pod name.
        #[arg(long)]
        name: String,
        /// Listen address.
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
    /// Measure the mesh's latency cost on a running lab: fixed-rate load client-1 → web-2
    /// through (a) WireGuard only, (b) L4 mTLS, (c) L7 mTLS; writes a JSON report.
    BenchMesh {
        /// Lab directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Target rates (requests per second).
        #[arg(long, value_delimiter = ',', default_value = "1000,3000")]
        rates: Vec<u32>,
        /// Seconds per run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Report file.
        #[arg(long, default_value = "target/bench-reports/mesh_latency.json")]
        out: PathBuf,
        /// Also run the mTLS paths with n1's and n2's daemons restarted on
        /// `telemetry.accessLogs: false`, and report the telemetry overhead.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        telemetry_ab: bool,
        /// Interleaved (off, on) rounds of the telemetry A/B; medians are compared.
        #[arg(long, default_value_t = 2)]
        ab_rounds: u32,
    },
    /// Measure packet loss on a running lab while n2's WireGuard side is disturbed (its device
    /// killed, its daemon and device killed and the daemon restarted, a key rotation), under a
    /// fixed-rate ping between every pair of nodes; writes a JSON report.
    BenchRecovery {
        /// Lab directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Scenarios to run: device-kill, daemon-device-kill, rotation, rotation-frozen,
        /// ca-rollover.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "device-kill,daemon-device-kill,rotation,rotation-frozen,ca-rollover"
        )]
        scenarios: Vec<String>,
        /// Packets per second of each flow.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Seconds of each flow.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// How long n2's daemon stays dead in daemon-device-kill, milliseconds.
        #[arg(long, default_value_t = 3000)]
        restart_delay_ms: u64,
        /// Report file.
        #[arg(long, default_value = "target/bench-reports/recovery.json")]
        out: PathBuf,
    },
    /// (internal) Fixed-rate (open-loop) load from inside a lab pod; prints a JSON report.
    #[command(hide = true)]
    Load {
        /// `IP:PORT`.
        addr: std::net::SocketAddr,
        /// `http` (GET, one per connection) or `tcp` (the kv protocol's PING).
        #[arg(long, default_value = "http")]
        kind: String,
        /// Host header for http.
        #[arg(long, default_value = "web.shop")]
        host: String,
        /// Requests per second.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// (internal) One long-lived kv connection from inside a lab pod; prints a JSON report.
    #[command(hide = true)]
    Stream {
        /// `IP:PORT`.
        addr: std::net::SocketAddr,
        /// Milliseconds between PINGs.
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
        /// Seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// (internal) Probes lab servers from inside a lab pod, all at once; prints one `true` or
    /// `false` per target, in order.
    #[command(hide = true)]
    Probe {
        /// `tcp:IP:PORT` or `udp:IP:PORT` (repeatable).
        #[arg(long = "target")]
        targets: Vec<crate::lab::workload::ProbeTarget>,
        /// Milliseconds each probe may take.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// (internal) A TCP line exchange from inside a lab pod (the lab's TCP protocols).
    #[command(hide = true)]
    Tcp {
        /// `IP:PORT`.
        addr: std::net::SocketAddr,
        /// Read the server's greeting line before sending (a server-first protocol).
        #[arg(long)]
        greeting: bool,
        /// A line to send (repeatable); one line is read back for each.
        #[arg(long)]
        send: Vec<String>,
    },
    /// (internal) An HTTP GET from inside a lab pod.
    #[command(hide = true)]
    Get {
        /// `http://IP:PORT/path` or `https://IP:PORT/path`.
        url: String,
        /// Host header.
        #[arg(long)]
        host: Option<String>,
        /// A marker sent in an `x-payload` header.
        #[arg(long)]
        payload: Option<String>,
        /// For https: the PEM roots to verify the server certificate with (the lab's bundle).
        #[arg(long)]
        ca: Option<std::path::PathBuf>,
    },
}

/// Output formats of `audit` (owned by the audit module).
pub use crate::audit::AuditFormat;

/// `identityd audit` arguments.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// A lab or FileSource directory.
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// With --source: run the live checks on the node reports the daemons wrote
    /// (`cluster/.reports/`, what `--kube` reads from the API server) instead of asking each
    /// daemon.
    #[arg(long, requires = "source")]
    pub from_reports: bool,
    /// Read the cluster from Kubernetes (kubeconfig or in-cluster): static checks plus what
    /// the daemons and the controller wrote back (published nodes, Accepted conditions, failed
    /// key rotations).
    #[arg(long)]
    pub kube: bool,
    /// What a CI job deploys: rendered manifests (`helm template` output), Helm values
    /// files, or cluster YAML — a file, a directory, or `-` for standard input.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// Checks that must run and pass, comma-separated: a skipped (or absent) one fails.
    #[arg(long, value_delimiter = ',')]
    pub require: Vec<String>,
    /// `config.encryption` fails unless host-network traffic is encrypted too.
    #[arg(long)]
    pub require_node_encryption: bool,
    /// `config.encryption` fails when `mtls.defaultMode` is weaker than this.
    #[arg(long, value_parser = ["strict", "permissive", "disabled"])]
    pub min_default_mtls: Option<String>,
    /// Print what CHECK proves and how to fix a failure, then exit.
    #[arg(long, value_name = "CHECK")]
    pub explain: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = AuditFormat::Text)]
    pub format: AuditFormat,
    /// Exit non-zero when a check of this severity or worse fails.
    #[arg(long, value_enum, default_value_t = FailOn::Error)]
    pub fail_on: FailOn,
    /// Namespaces that must carry `identityd.io/mtls` (static checks), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub require_mtls: Vec<String>,
    /// A WireGuard handshake older than this fails (live), e.g. `3m`.
    #[arg(long, default_value = "3m")]
    pub max_handshake_age: String,
    /// An SVID expiring sooner than this fails (live), e.g. `10m`.
    #[arg(long, default_value = "10m")]
    pub min_svid_lifetime: String,
    /// An IdentitydNodeReport older than this fails `nodes.reporting` (`--kube`,
    /// `--from-reports`), e.g. `10m` (twice the daemons' default heartbeat).
    #[arg(long, default_value = "10m")]
    pub max_report_age: String,
}

/// `--fail-on`.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum FailOn {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warning,
    /// Anything that is not a pass.
    Info,
}

/// `identityd ca …`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a CA (self-signed ECDSA P-256 root) in a directory.
    Init {
        /// Trust domain, e.g. `cluster.local`.
        #[arg(long)]
        trust_domain: String,
        /// Directory to write the CA into (created 0700; must not hold a CA yet).
        #[arg(long)]
        dir: PathBuf,
        /// Longest SVID lifetime the CA grants.
        #[arg(long, default_value = "24h")]
        max_ttl: String,
        /// Sign SVIDs with an intermediate under the root.
        #[arg(long)]
        intermediate: bool,
    },
}

/// `identityd svid …`
#[derive(Debug, Subcommand)]
pub enum SvidCommand {
    /// Issue an X.509-SVID with a locally generated key.
    Issue {
        /// The CA directory.
        #[arg(long)]
        ca_dir: PathBuf,
        /// The SPIFFE ID, e.g. `spiffe://cluster.local/ns/shop/sa/web`.
        #[arg(long)]
        spiffe_id: String,
        /// Output directory (svid.pem, key.pem, bundle.pem).
        #[arg(long)]
        out: PathBuf,
        /// Requested lifetime (e.g. 1h, 30m, 90s).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Print an SVID's SPIFFE ID, validity and chain.
    Inspect {
        /// A PEM file (leaf first).
        file: PathBuf,
    },
    /// Sign an IdentitydNode file (its spec.proof) with an SVID: node daemons sign their own
    /// objects; this is for objects a node does not publish itself, and for tests.
    SignNode {
        /// Directory of the signing SVID (svid.pem, key.pem), e.g. from `svid issue`.
        #[arg(long)]
        svid_dir: PathBuf,
        /// The proof's generation (default: milliseconds since the Unix epoch).
        #[arg(long)]
        generation: Option<i64>,
        /// The IdentitydNode YAML file (rewritten in place).
        file: PathBuf,
    },
    /// Verify an SVID chain against a trust bundle.
    Verify {
        /// Trust bundle (PEM).
        #[arg(long)]
        bundle: PathBuf,
        /// Trust domain of the bundle (default: from the roots' URI SAN).
        #[arg(long)]
        trust_domain: Option<String>,
        /// The SVID (PEM, leaf first).
        file: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_lists_every_subcommand_of_the_contract() {
        let help = Cli::command().render_long_help().to_string();
        for sub in [
            "run", "lab", "status", "audit", "ca", "svid", "crds", "observe", "stat", "top",
        ] {
            assert!(
                help.contains(sub),
                "`identityd --help` lists `{sub}`:\n{help}"
            );
        }
        let mut cmd = Cli::command();
        let lab = cmd
            .find_subcommand_mut("lab")
            .unwrap()
            .render_long_help()
            .to_string();
        for sub in ["up", "status", "down"] {
            assert!(lab.contains(sub), "`identityd lab --help` lists `{sub}`");
        }
        let svid = cmd
            .find_subcommand_mut("svid")
            .unwrap()
            .render_long_help()
            .to_string();
        for sub in ["issue", "inspect", "verify"] {
            assert!(svid.contains(sub), "`identityd svid --help` lists `{sub}`");
        }
    }
}
