//! Marks become paths: policy routing for the WireGuard path and nftables TPROXY for the
//! proxy path, as a pure [`plan`] and an [`apply`] step (`ip rule`/`ip route` and `nft -f`,
//! in the calling thread's network namespace).
//!
//! ```text
//! mark 0x0e00 (WireGuard)  ip rule fwmark 0xe00/0xf00 lookup 202
//!                          table 202: default dev <wg>; blackhole default (metric high)
//! mark 0x0c00 (proxy)      ip rule fwmark 0xc00/0xf00 lookup 203
//!                          table 203: local default dev lo
//!                          nft: prerouting, mark 0xc00/0xf00, tcp → tproxy to :15001
//! mark 0x0d00 (IPsec)      nothing here: the XFRM policies match the mark (wg crate)
//! mark 0x0b00 (plaintext)  nothing here: the main table
//! ```
//!
//! Node encryption (when [`RoutingConfig::node_encryption`] is set): the node's own traffic
//! to peer node addresses goes into the tunnel too, except the tunnel's own datagrams:
//!
//! ```text
//! mark 0x0900 (tunnel socket)  ip rule fwmark 0x900/0xf00 lookup main   (priority 110)
//! everything else              ip rule lookup 204                        (priority 111)
//!                              table 204: <peer node>/32 dev <wg>, one per peer (the
//!                              device keeps them, like its pod CIDR routes)
//! ```
//!
//! The blackhole in table 202 keeps WireGuard-marked packets from falling through to the
//! main table (and the underlay, in clear) while the WireGuard interface is missing, e.g.
//! during a restart.
//!
//! The inbound half (when [`RoutingConfig::inbound`] is set):
//!
//! ```text
//! from the tunnel to the pod CIDR, tcp dport 15008   ip rule iif <wg> to <podCIDR> … lookup 203
//! this node's own connections to a pod's :15008     nft (table identityd-inbound) nat output:
//!                                                   redirect to :15008
//! other TCP from the tunnel to a strict pod          nft prerouting: counter drop
//! ```

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::types::{IDD_MARK_MASK, IDD_MARK_PROXY, IDD_MARK_TUNNEL_SOCKET, IDD_MARK_WIREGUARD};

/// The main routing table.
const MAIN_TABLE: u32 = 254;

/// A table as `ip rule show` names it.
fn table_name(t: u32) -> String {
    match t {
        MAIN_TABLE => "main".into(),
        255 => "local".into(),
        253 => "default".into(),
        t => t.to_string(),
    }
}

/// The policy-routing table of the WireGuard path (DESIGN.md).
pub const WIREGUARD_TABLE: u32 = 202;
/// The policy-routing table that delivers proxy-marked packets locally for TPROXY.
pub const PROXY_TABLE: u32 = 203;
/// Envoy's outbound (TPROXY) port.
pub const PROXY_PORT: u16 = 15001;
/// Priority of the first `ip rule` (the next ones follow).
pub const RULE_PRIORITY: u32 = 100;
/// Node encryption: the table of peer node-address routes through the tunnel.
pub const NODE_ENCRYPTION_TABLE: u32 = 204;
/// Node encryption: priority of the tunnel-socket rule (the node-table rule follows). After
/// the mark rules, so marked pod traffic keeps its path.
pub const NODE_ENCRYPTION_PRIORITY: u32 = 110;
/// The nftables table (family `inet`) holding the TPROXY rules.
pub const NFT_TABLE: &str = "identityd";
/// Metric of the fallback blackhole route in the WireGuard table.
pub const BLACKHOLE_METRIC: u32 = 4_000_000;
/// Envoy's inbound mTLS port.
pub const INBOUND_PORT: u16 = 15008;
/// Priority of the inbound rule (before the mark rules: it matches by interface and port).
pub const INBOUND_RULE_PRIORITY: u32 = 99;
/// The nftables table (family `inet`) of the inbound mTLS plumbing.
pub const NFT_INBOUND_TABLE: &str = "identityd-inbound";

/// The inbound mTLS plumbing of a node: connections from the tunnel to local pods' inbound
/// port are delivered to Envoy. (What may reach a strict pod is enforced by the classifier's
/// ingress strict on the pod's veth, for every source, not here.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundConfig {
    /// The tunnel interface connections arrive on.
    pub interface: String,
    /// The node's pod CIDR (`10.244.1.0/24`).
    pub pod_cidr: String,
    /// Envoy's inbound port (15008).
    pub port: u16,
}

/// What the node has, as the plan needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingConfig {
    /// The WireGuard interface, when the WireGuard path is in use.
    pub wireguard_interface: Option<String>,
    /// The TPROXY port of the node's Envoy, when the proxy path is in use.
    pub proxy_port: Option<u16>,
    /// The WireGuard table (default 202).
    pub wireguard_table: u32,
    /// The proxy table (default 203).
    pub proxy_table: u32,
    /// Priority of the first rule.
    pub rule_priority: u32,
    /// The nftables table name.
    pub nft_table: String,
    /// Plan IPv6 rules and routes too (default on; off for nodes with IPv6 disabled).
    pub ipv6: bool,
    /// The inbound mTLS plumbing, when the node runs Envoy for mTLS.
    pub inbound: Option<InboundConfig>,
    /// Node encryption: the table holding peer node-address routes (the tunnel's own
    /// datagrams, marked [`IDD_MARK_TUNNEL_SOCKET`], skip it).
    pub node_encryption_table: Option<u32>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            wireguard_interface: None,
            proxy_port: None,
            wireguard_table: WIREGUARD_TABLE,
            proxy_table: PROXY_TABLE,
            rule_priority: RULE_PRIORITY,
            nft_table: NFT_TABLE.to_owned(),
            ipv6: true,
            inbound: None,
            node_encryption_table: None,
        }
    }
}

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4 (`ip -4`).
    V4,
    /// IPv6 (`ip -6`).
    V6,
}

impl Family {
    fn flag(self) -> &'static str {
        match self {
            Self::V4 => "-4",
            Self::V6 => "-6",
        }
    }
}

/// `ip rule add priority P fwmark M/MASK lookup T`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    /// Family.
    pub family: Family,
    /// Priority.
    pub priority: u32,
    /// Mark value.
    pub fwmark: u32,
    /// Mark mask.
    pub mask: u32,
    /// Table.
    pub table: u32,
}

impl Rule {
    /// The `ip rule` arguments after `add`/`del`.
    #[must_use]
    pub fn args(&self) -> Vec<String> {
        vec![
            "priority".into(),
            self.priority.to_string(),
            "fwmark".into(),
            format!("{:#x}/{:#x}", self.fwmark, self.mask),
            "lookup".into(),
            self.table.to_string(),
        ]
    }

    /// How `ip rule show` prints it (after the `PRIORITY:` prefix).
    fn shown(&self) -> String {
        format!(
            "from all fwmark {:#x}/{:#x} lookup {}",
            self.fwmark,
            self.mask,
            table_name(self.table)
        )
    }
}

/// `ip rule add priority P lookup T` (every packet; the table's routes decide).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableRule {
    /// Family.
    pub family: Family,
    /// Priority.
    pub priority: u32,
    /// Table.
    pub table: u32,
}

impl TableRule {
    /// The `ip rule` arguments after `add`/`del`.
    #[must_use]
    pub fn args(&self) -> Vec<String> {
        vec![
            "priority".into(),
            self.priority.to_string(),
            "lookup".into(),
            self.table.to_string(),
        ]
    }

    /// How `ip rule show` prints it (after the `PRIORITY:` prefix).
    fn shown(&self) -> String {
        format!("from all lookup {}", self.table)
    }
}

/// `ip rule add priority P iif IFACE to CIDR ipproto tcp dport PORT lookup T`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRule {
    /// Family.
    pub family: Family,
    /// Priority.
    pub priority: u32,
    /// Incoming interface.
    pub iif: String,
    /// Destination CIDR.
    pub to: String,
    /// TCP destination port.
    pub dport: u16,
    /// Table.
    pub table: u32,
}

impl PortRule {
    /// The `ip rule` arguments after `add`/`del`.
    #[must_use]
    pub fn args(&self) -> Vec<String> {
        vec![
            "priority".into(),
            self.priority.to_string(),
            "iif".into(),
            self.iif.clone(),
            "to".into(),
            self.to.clone(),
            "ipproto".into(),
            "tcp".into(),
            "dport".into(),
            self.dport.to_string(),
            "lookup".into(),
            self.table.to_string(),
        ]
    }

    /// How `ip rule show` prints it (after the `PRIORITY:` prefix).
    fn shown(&self) -> String {
        format!(
            "from all to {} iif {} ipproto tcp dport {} lookup {}",
            self.to, self.iif, self.dport, self.table
        )
    }
}

/// The inbound nftables table: nat OUTPUT redirects this node's own connections to a local
/// pod's inbound port to Envoy (the listener restores the original destination).
#[must_use]
pub fn inbound_nft(table: &str, c: &InboundConfig) -> String {
    let port = c.port;
    format!(
        "table inet {table} {{\n\tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n\
         \t\tip daddr {} tcp dport {port} redirect to :{port}\n\t}}\n}}\n",
        c.pod_cidr
    )
}

/// What kind of route.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteType {
    /// `default dev IFACE`.
    Device(String),
    /// `local default dev lo` (deliver locally, for TPROXY).
    Local,
    /// `blackhole default`.
    Blackhole,
}

/// A default route in a policy table; `ip route replace` makes applying it idempotent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableRoute {
    /// Family.
    pub family: Family,
    /// Kind.
    pub kind: RouteType,
    /// Table.
    pub table: u32,
    /// Metric (`None`: the kernel's default 0).
    pub metric: Option<u32>,
}

impl TableRoute {
    /// The `ip route` arguments after `replace`/`del`.
    #[must_use]
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = match &self.kind {
            RouteType::Device(dev) => vec!["default".into(), "dev".into(), dev.clone()],
            RouteType::Local => vec!["local".into(), "default".into(), "dev".into(), "lo".into()],
            RouteType::Blackhole => vec!["blackhole".into(), "default".into()],
        };
        a.extend(["table".into(), self.table.to_string()]);
        if let Some(m) = self.metric {
            a.extend(["metric".into(), m.to_string()]);
        }
        a
    }
}

/// The desired rules, routes and nftables ruleset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoutingPlan {
    /// Policy rules, in priority order.
    pub rules: Vec<Rule>,
    /// Port-selected policy rules (the inbound mTLS rule).
    pub port_rules: Vec<PortRule>,
    /// Table rules (node encryption's node table).
    pub table_rules: Vec<TableRule>,
    /// The inbound nftables table definition, when [`RoutingConfig::inbound`] is set.
    pub inbound_nftables: Option<String>,
    /// Routes of the policy tables.
    pub routes: Vec<TableRoute>,
    /// The nftables table definition (`table inet NAME { … }`), when the proxy path is used.
    pub nftables: Option<String>,
    /// The nftables table name (to replace or delete it).
    pub nft_table: String,
    /// The tables this plan owns (their routes are replaced as a whole).
    pub tables: Vec<u32>,
}

/// The plan for `config`: pure, no I/O.
#[must_use]
pub fn plan(config: &RoutingConfig) -> RoutingPlan {
    let mut p = RoutingPlan {
        nft_table: config.nft_table.clone(),
        ..RoutingPlan::default()
    };
    let mut priority = config.rule_priority;
    let families: &[Family] = if config.ipv6 {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    if let Some(wg) = &config.wireguard_interface {
        for &family in families {
            p.rules.push(Rule {
                family,
                priority,
                fwmark: IDD_MARK_WIREGUARD,
                mask: IDD_MARK_MASK,
                table: config.wireguard_table,
            });
            p.routes.push(TableRoute {
                family,
                kind: RouteType::Device(wg.clone()),
                table: config.wireguard_table,
                metric: None,
            });
            p.routes.push(TableRoute {
                family,
                kind: RouteType::Blackhole,
                table: config.wireguard_table,
                metric: Some(BLACKHOLE_METRIC),
            });
        }
        p.tables.push(config.wireguard_table);
        priority += 1;
    }
    if let Some(port) = config.proxy_port {
        for &family in families {
            p.rules.push(Rule {
                family,
                priority,
                fwmark: IDD_MARK_PROXY,
                mask: IDD_MARK_MASK,
                table: config.proxy_table,
            });
            p.routes.push(TableRoute {
                family,
                kind: RouteType::Local,
                table: config.proxy_table,
                metric: None,
            });
        }
        p.tables.push(config.proxy_table);
        let mut nft = String::new();
        let _ = writeln!(nft, "table inet {} {{", config.nft_table);
        let _ = writeln!(nft, "\tchain prerouting {{");
        let _ = writeln!(
            nft,
            "\t\ttype filter hook prerouting priority mangle; policy accept;"
        );
        let fams: &[&str] = if config.ipv6 { &["ip", "ip6"] } else { &["ip"] };
        for &fam in fams {
            let _ = writeln!(
                nft,
                "\t\tmeta nfproto {} meta l4proto tcp meta mark & {IDD_MARK_MASK:#x} == {IDD_MARK_PROXY:#x} tproxy {fam} to :{port}",
                if fam == "ip" { "ipv4" } else { "ipv6" },
            );
        }
        let _ = writeln!(nft, "\t}}");
        let _ = writeln!(nft, "}}");
        p.nftables = Some(nft);
    }
    if let Some(table) = config.node_encryption_table {
        for &family in families {
            p.rules.push(Rule {
                family,
                priority: NODE_ENCRYPTION_PRIORITY,
                fwmark: IDD_MARK_TUNNEL_SOCKET,
                mask: IDD_MARK_MASK,
                table: MAIN_TABLE,
            });
            p.table_rules.push(TableRule {
                family,
                priority: NODE_ENCRYPTION_PRIORITY + 1,
                table,
            });
        }
    }
    if let Some(inb) = &config.inbound {
        p.port_rules.push(PortRule {
            family: Family::V4,
            priority: INBOUND_RULE_PRIORITY,
            iif: inb.interface.clone(),
            to: inb.pod_cidr.clone(),
            dport: inb.port,
            table: config.proxy_table,
        });
        p.inbound_nftables = Some(inbound_nft(NFT_INBOUND_TABLE, inb));
    }
    p
}

/// Errors of [`apply`] and [`remove`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoutingError {
    /// A command could not be started.
    #[error("running `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A command failed.
    #[error("`{command}` failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// What [`apply`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Rules added.
    pub rules_added: usize,
    /// Stale rules (at this plan's priorities, but different) removed.
    pub rules_removed: usize,
    /// Routes written (`ip route replace`, idempotent).
    pub routes_replaced: usize,
    /// Whether the nftables table was (re)written.
    pub nftables_written: bool,
    /// Whether the inbound nftables table was (re)written.
    pub inbound_nftables_written: bool,
}

fn run(program: &str, args: &[String], stdin: Option<&str>) -> Result<String, RoutingError> {
    let command = format!("{program} {}", args.join(" "));
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| RoutingError::Spawn {
        command: command.clone(),
        source,
    })?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input
            .write_all(text.as_bytes())
            .map_err(|source| RoutingError::Spawn {
                command: command.clone(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| RoutingError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(RoutingError::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

/// The `ip rule show` lines at `priority`, without the prefix.
fn rules_at(family: Family, priority: u32) -> Result<Vec<String>, RoutingError> {
    let out = run("ip", &strings(&[family.flag(), "rule", "show"]), None)?;
    let prefix = format!("{priority}:");
    Ok(out
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect())
}

/// Makes the rules at `priority` of `family` hold the one shown as `want` (added with
/// `add_args`): rules there that contain `ours` but differ are an older plan's and are
/// removed; others are left alone.
fn ensure_rule(
    family: Family,
    priority: u32,
    want: &str,
    add_args: Vec<String>,
    ours: &str,
    report: &mut ApplyReport,
) -> Result<(), RoutingError> {
    let mut have = false;
    for line in rules_at(family, priority)? {
        if line == want {
            have = true;
        } else if line.contains(ours) {
            let mut args = strings(&[family.flag(), "rule", "del", "priority"]);
            args.push(priority.to_string());
            args.extend(line.split_whitespace().map(str::to_owned));
            run("ip", &args, None)?;
            report.rules_removed += 1;
        }
    }
    if !have {
        let mut args = strings(&[family.flag(), "rule", "add"]);
        args.extend(add_args);
        run("ip", &args, None)?;
        report.rules_added += 1;
    }
    Ok(())
}

/// Makes the kernel match `plan`: adds missing rules and removes stale ones at the plan's
/// priorities, replaces the table routes, and atomically replaces the nftables table.
/// Running it again changes nothing (`rules_added == 0`).
///
/// # Errors
/// When `ip` or `nft` is missing or refuses a change.
pub fn apply(plan: &RoutingPlan) -> Result<ApplyReport, RoutingError> {
    let mut report = ApplyReport::default();
    for rule in &plan.rules {
        // One of ours from an older plan at this priority is a mark rule.
        ensure_rule(
            rule.family,
            rule.priority,
            &rule.shown(),
            rule.args(),
            "fwmark",
            &mut report,
        )?;
    }
    if plan.table_rules.is_empty() {
        // Node encryption turned off: an older plan's rules at its priorities go.
        for family in [Family::V4, Family::V6] {
            for priority in [NODE_ENCRYPTION_PRIORITY, NODE_ENCRYPTION_PRIORITY + 1] {
                for line in rules_at(family, priority).unwrap_or_default() {
                    let mut args = strings(&[family.flag(), "rule", "del", "priority"]);
                    args.push(priority.to_string());
                    args.extend(line.split_whitespace().map(str::to_owned));
                    run("ip", &args, None)?;
                    report.rules_removed += 1;
                }
            }
        }
    }
    for rule in &plan.table_rules {
        // A node-table rule of an older plan names another table.
        ensure_rule(
            rule.family,
            rule.priority,
            &rule.shown(),
            rule.args(),
            "lookup",
            &mut report,
        )?;
    }
    for rule in &plan.port_rules {
        // An inbound rule of an older plan (another CIDR or interface) selects a port.
        ensure_rule(
            rule.family,
            rule.priority,
            &rule.shown(),
            rule.args(),
            " dport ",
            &mut report,
        )?;
    }
    for route in &plan.routes {
        let mut args = strings(&[route.family.flag(), "route", "replace"]);
        args.extend(route.args());
        run("ip", &args, None)?;
        report.routes_replaced += 1;
    }
    if let Some(nft) = &plan.nftables {
        // Create-then-delete-then-define in one transaction: an atomic replacement.
        let text = format!(
            "table inet {t}\ndelete table inet {t}\n{nft}",
            t = plan.nft_table
        );
        run("nft", &strings(&["-f", "-"]), Some(&text))?;
        report.nftables_written = true;
    }
    if let Some(nft) = &plan.inbound_nftables {
        let text =
            format!("table inet {NFT_INBOUND_TABLE}\ndelete table inet {NFT_INBOUND_TABLE}\n{nft}");
        run("nft", &strings(&["-f", "-"]), Some(&text))?;
        report.inbound_nftables_written = true;
    }
    Ok(report)
}

/// What `plan` installs beyond `keep` (rules, routes and tables `keep` does not have; its
/// nftables tables unless `keep` has them too): removing it leaves `keep` untouched, with no
/// moment without `keep`'s rules.
#[must_use]
pub fn beyond(plan: &RoutingPlan, keep: &RoutingPlan) -> RoutingPlan {
    RoutingPlan {
        rules: plan
            .rules
            .iter()
            .filter(|r| !keep.rules.contains(r))
            .cloned()
            .collect(),
        port_rules: plan
            .port_rules
            .iter()
            .filter(|r| !keep.port_rules.contains(r))
            .cloned()
            .collect(),
        table_rules: plan
            .table_rules
            .iter()
            .filter(|r| !keep.table_rules.contains(r))
            .cloned()
            .collect(),
        inbound_nftables: plan
            .inbound_nftables
            .clone()
            .filter(|_| keep.inbound_nftables.is_none()),
        routes: plan
            .routes
            .iter()
            .filter(|r| !keep.routes.contains(r))
            .cloned()
            .collect(),
        nftables: plan.nftables.clone().filter(|_| keep.nftables.is_none()),
        nft_table: plan.nft_table.clone(),
        tables: plan
            .tables
            .iter()
            .filter(|t| !keep.tables.contains(t))
            .copied()
            .collect(),
    }
}

/// Removes what `plan` installs (rules, table routes, the nftables table). Missing pieces
/// are not an error.
///
/// # Errors
/// When `ip` or `nft` is missing.
pub fn remove(plan: &RoutingPlan) -> Result<(), RoutingError> {
    for rule in &plan.rules {
        let mut args = strings(&[rule.family.flag(), "rule", "del"]);
        args.extend(rule.args());
        match run("ip", &args, None) {
            Ok(_) | Err(RoutingError::Failed { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    for route in &plan.routes {
        let mut args = strings(&[route.family.flag(), "route", "del"]);
        args.extend(route.args());
        match run("ip", &args, None) {
            Ok(_) | Err(RoutingError::Failed { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    for rule in &plan.table_rules {
        let mut args = strings(&[rule.family.flag(), "rule", "del"]);
        args.extend(rule.args());
        match run("ip", &args, None) {
            Ok(_) | Err(RoutingError::Failed { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    for rule in &plan.port_rules {
        let mut args = strings(&[rule.family.flag(), "rule", "del"]);
        args.extend(rule.args());
        match run("ip", &args, None) {
            Ok(_) | Err(RoutingError::Failed { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    if plan.nftables.is_some() {
        let text = format!(
            "table inet {t}\ndelete table inet {t}\n",
            t = plan.nft_table
        );
        run("nft", &strings(&["-f", "-"]), Some(&text))?;
    }
    if plan.inbound_nftables.is_some() {
        let text =
            format!("table inet {NFT_INBOUND_TABLE}\ndelete table inet {NFT_INBOUND_TABLE}\n");
        run("nft", &strings(&["-f", "-"]), Some(&text))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_encryption_sends_the_tunnel_socket_to_main_and_the_rest_through_the_node_table() {
        let p = plan(&RoutingConfig {
            wireguard_interface: Some("idd1".into()),
            node_encryption_table: Some(NODE_ENCRYPTION_TABLE),
            ipv6: false,
            ..RoutingConfig::default()
        });
        let rules: Vec<String> = p.rules.iter().map(|r| r.args().join(" ")).collect();
        assert_eq!(
            rules,
            [
                "priority 100 fwmark 0xe00/0xf00 lookup 202",
                "priority 110 fwmark 0x900/0xf00 lookup 254"
            ]
        );
        assert_eq!(
            p.rules[1].shown(),
            "from all fwmark 0x900/0xf00 lookup main"
        );
        assert_eq!(p.table_rules.len(), 1);
        assert_eq!(p.table_rules[0].args().join(" "), "priority 111 lookup 204");
        assert_eq!(p.table_rules[0].shown(), "from all lookup 204");
        // Off: none of it.
        let off = plan(&RoutingConfig {
            wireguard_interface: Some("idd1".into()),
            ipv6: false,
            ..RoutingConfig::default()
        });
        assert_eq!(off.rules.len(), 1);
        assert!(off.table_rules.is_empty());
    }

    #[test]
    fn removing_the_proxy_part_keeps_the_base_rules() {
        let base = RoutingConfig {
            wireguard_interface: Some("idd1".into()),
            node_encryption_table: Some(NODE_ENCRYPTION_TABLE),
            ipv6: false,
            ..RoutingConfig::default()
        };
        let full = plan(&RoutingConfig {
            proxy_port: Some(PROXY_PORT),
            ..base.clone()
        });
        let rest = beyond(&full, &plan(&base));
        let rules: Vec<String> = rest.rules.iter().map(|r| r.args().join(" ")).collect();
        assert_eq!(rules, ["priority 101 fwmark 0xc00/0xf00 lookup 203"]);
        assert!(rest.table_rules.is_empty());
        assert!(rest.routes.iter().all(|r| r.table == PROXY_TABLE));
        assert!(rest.nftables.is_some());
    }

    #[test]
    fn nothing_configured_plans_nothing() {
        let p = plan(&RoutingConfig::default());
        assert!(p.rules.is_empty() && p.routes.is_empty() && p.nftables.is_none());
    }

    #[test]
    fn wireguard_mark_goes_to_table_202_with_a_blackhole_fallback() {
        let p = plan(&RoutingConfig {
            wireguard_interface: Some("idd1".into()),
            ..RoutingConfig::default()
        });
        assert_eq!(p.rules.len(), 2);
        for (r, fam) in p.rules.iter().zip([Family::V4, Family::V6]) {
            assert_eq!(r.family, fam);
            assert_eq!(
                r.args().join(" "),
                "priority 100 fwmark 0xe00/0xf00 lookup 202"
            );
        }
        let routes: Vec<String> = p
            .routes
            .iter()
            .map(|r| format!("{:?} {}", r.family, r.args().join(" ")))
            .collect();
        assert_eq!(
            routes,
            [
                "V4 default dev idd1 table 202",
                "V4 blackhole default table 202 metric 4000000",
                "V6 default dev idd1 table 202",
                "V6 blackhole default table 202 metric 4000000",
            ]
        );
        assert!(p.nftables.is_none());
        assert_eq!(p.tables, [202]);
    }

    #[test]
    fn proxy_mark_is_delivered_locally_and_tproxied_to_envoy() {
        let p = plan(&RoutingConfig {
            wireguard_interface: Some("idd1".into()),
            proxy_port: Some(PROXY_PORT),
            ..RoutingConfig::default()
        });
        let rules: Vec<String> = p.rules.iter().map(|r| r.args().join(" ")).collect();
        assert_eq!(
            rules,
            [
                "priority 100 fwmark 0xe00/0xf00 lookup 202",
                "priority 100 fwmark 0xe00/0xf00 lookup 202",
                "priority 101 fwmark 0xc00/0xf00 lookup 203",
                "priority 101 fwmark 0xc00/0xf00 lookup 203",
            ]
        );
        assert!(
            p.routes
                .iter()
                .any(|r| r.args().join(" ") == "local default dev lo table 203")
        );
        let nft = p.nftables.unwrap();
        assert!(nft.starts_with("table inet identityd {"), "{nft}");
        assert!(nft.contains("type filter hook prerouting priority mangle; policy accept;"));
        assert!(nft.contains(
            "meta nfproto ipv4 meta l4proto tcp meta mark & 0xf00 == 0xc00 tproxy ip to :15001"
        ));
        assert!(nft.contains(
            "meta nfproto ipv6 meta l4proto tcp meta mark & 0xf00 == 0xc00 tproxy ip6 to :15001"
        ));
    }

    #[test]
    fn ipv4_only_nodes_get_no_ipv6_rules_routes_or_tproxy() {
        let p = plan(&RoutingConfig {
            wireguard_interface: Some("idd1".into()),
            proxy_port: Some(PROXY_PORT),
            ipv6: false,
            ..RoutingConfig::default()
        });
        assert!(p.rules.iter().all(|r| r.family == Family::V4));
        assert!(p.routes.iter().all(|r| r.family == Family::V4));
        assert!(!p.nftables.unwrap().contains("ip6"));
    }

    #[test]
    fn inbound_rule_and_ruleset_redirect_local_connections_and_drop_nothing() {
        let inbound = InboundConfig {
            interface: "idd1".into(),
            pod_cidr: "10.244.1.0/24".into(),
            port: INBOUND_PORT,
        };
        let p = plan(&RoutingConfig {
            wireguard_interface: Some("idd1".into()),
            proxy_port: Some(PROXY_PORT),
            ipv6: false,
            inbound: Some(inbound.clone()),
            ..RoutingConfig::default()
        });
        assert_eq!(
            p.port_rules[0].args().join(" "),
            "priority 99 iif idd1 to 10.244.1.0/24 ipproto tcp dport 15008 lookup 203"
        );
        // As `ip rule show` prints it (checked against iproute2).
        assert_eq!(
            p.port_rules[0].shown(),
            "from all to 10.244.1.0/24 iif idd1 ipproto tcp dport 15008 lookup 203"
        );
        let rs = p.inbound_nftables.unwrap();
        assert!(rs.starts_with("table inet identityd-inbound {"), "{rs}");
        assert!(
            rs.contains("ip daddr 10.244.1.0/24 tcp dport 15008 redirect to :15008"),
            "{rs}"
        );
        // A mode change never leaves a drop behind: enforcement is the classifier's.
        assert!(!rs.contains("drop"), "{rs}");
    }

    #[test]
    fn rules_render_as_ip_rule_show_prints_them() {
        let r = Rule {
            family: Family::V4,
            priority: 100,
            fwmark: 0x0e00,
            mask: 0x0f00,
            table: 202,
        };
        assert_eq!(r.shown(), "from all fwmark 0xe00/0xf00 lookup 202");
    }
}
