//! Network-namespace topologies for tests.
//!
//! A [`Topology`] owns every namespace, link and process it creates and removes them in
//! `Drop`, so a panicking test leaves nothing behind. Names carry a tag unique to the test
//! run, so tests run in parallel without colliding. Interface names stay ≤ 15 bytes.

use std::fmt::Write as _;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use identityd_topology::{ClusterSpec, Created, Names, PodAddressing, Underlay};

use crate::tools;

/// A topology's names for the shared cluster shape: the topology's prefix for namespaces and
/// its tag for interfaces (≤ 15 bytes: tag 6 + role 1 + indices).
struct TaggedNames {
    prefix: String,
    tag: String,
}

impl Names for TaggedNames {
    fn node_ns(&self, node: usize) -> String {
        format!("{}-n{node}", self.prefix)
    }
    fn uplink(&self, node: usize) -> (String, String) {
        (
            format!("{}u{node}", self.tag),
            format!("{}e{node}", self.tag),
        )
    }
    fn pod_ns(&self, node: usize, pod: usize, _name: &str) -> String {
        if pod == 1 {
            format!("{}-p{node}", self.prefix)
        } else {
            format!("{}-p{node}x{pod}", self.prefix)
        }
    }
    fn pod_link(&self, node: usize, pod: usize, _name: &str) -> (String, String) {
        (
            format!("{}h{node}x{pod}", self.tag),
            format!("{}p{node}x{pod}", self.tag),
        )
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A set of network namespaces (and the links and processes inside them) owned by one test.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    tag: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    links: u32,
}

/// Runs a command, returning its output; panics with context when it cannot be started.
fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command and panics with its stderr unless it succeeds.
fn must(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Topology {
    /// A new, empty topology for the test `test` (a short, lowercase word). Panics unless root.
    #[must_use]
    pub fn new(test: &str) -> Self {
        crate::require_root();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let mut h: u32 = 2_166_136_261;
        for b in format!("{test}/{}/{seq}/{nanos}", std::process::id()).bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(16_777_619);
        }
        let tag = format!("{:06x}", h & 0x00ff_ffff);
        let short: String = test
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(12)
            .collect();
        Self {
            prefix: format!("idt-{short}-{tag}"),
            tag,
            namespaces: Vec::new(),
            children: Vec::new(),
            links: 0,
        }
    }

    /// The unique tag of this topology (6 hex digits), usable in other names.
    #[must_use]
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The full name of the namespace `name` of this topology.
    #[must_use]
    pub fn ns_name(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Creates the namespace `name` (loopback up) and returns its full name.
    pub fn add_ns(&mut self, name: &str) -> String {
        let full = self.ns_name(name);
        must(Command::new(tools::ip()).args(["netns", "add", &full]));
        self.namespaces.push(full.clone());
        self.exec(&full, &["ip", "link", "set", "lo", "up"]);
        full
    }

    fn next_ifname(&mut self, role: &str) -> String {
        self.links += 1;
        let mut s = format!("{}{role}{}", self.tag, self.links);
        s.truncate(15);
        s
    }

    /// Creates a bridge inside namespace `ns` (full name), up, with optional address `addr`
    /// (CIDR form). Returns the bridge's interface name.
    pub fn add_bridge(&mut self, ns: &str, addr: Option<&str>) -> String {
        let br = self.next_ifname("br");
        self.exec(ns, &["ip", "link", "add", &br, "type", "bridge"]);
        self.exec(ns, &["ip", "link", "set", &br, "up"]);
        if let Some(a) = addr {
            self.exec(ns, &["ip", "addr", "add", a, "dev", &br]);
        }
        br
    }

    /// Joins namespaces `a` and `b` (full names) with a veth pair, brings both ends up and
    /// assigns the optional addresses (CIDR form). Returns the interface names `(in a, in b)`.
    pub fn link(
        &mut self,
        a: &str,
        a_addr: Option<&str>,
        b: &str,
        b_addr: Option<&str>,
    ) -> (String, String) {
        let ia = self.next_ifname("a");
        let ib = format!("{}b{}", self.tag, self.links);
        must(Command::new(tools::ip()).args([
            "link", "add", &ia, "netns", a, "type", "veth", "peer", "name", &ib, "netns", b,
        ]));
        for (ns, ifc, addr) in [(a, &ia, a_addr), (b, &ib, b_addr)] {
            self.exec(ns, &["ip", "link", "set", ifc, "up"]);
            if let Some(addr) = addr {
                self.exec(ns, &["ip", "addr", "add", addr, "dev", ifc]);
            }
        }
        (ia, ib)
    }

    /// Attaches interface `ifc` (in namespace `ns`) to bridge `br` in the same namespace.
    pub fn enslave(&self, ns: &str, ifc: &str, br: &str) {
        self.exec(ns, &["ip", "link", "set", ifc, "master", br]);
    }

    /// Runs `args` inside `ns` and panics with its output unless it succeeds.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        must(
            Command::new(tools::ip())
                .args(["netns", "exec", ns])
                .args(args),
        )
    }

    /// Runs `args` inside `ns` and returns its output whatever the exit status.
    #[must_use]
    pub fn try_exec(&self, ns: &str, args: &[&str]) -> Output {
        run(Command::new(tools::ip())
            .args(["netns", "exec", ns])
            .args(args))
    }

    /// Starts `args` inside `ns` in the background; it is killed when the topology drops.
    /// Returns the child's index for [`Topology::child`].
    pub fn spawn(&mut self, ns: &str, args: &[&str]) -> usize {
        let child = Command::new(tools::ip())
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {args:?} in {ns}: {e}"));
        self.children.push(child);
        self.children.len() - 1
    }

    /// A background process started by [`Topology::spawn`].
    pub fn child(&mut self, idx: usize) -> &mut Child {
        &mut self.children[idx]
    }

    /// Runs `f` on a thread that has entered namespace `ns` (for netlink/bpf calls made by
    /// in-process code, such as attaching a tc program).
    pub fn run_in<F, R>(&self, ns: &str, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let path = format!("/run/netns/{ns}");
        std::thread::scope(|s| {
            s.spawn(|| {
                let file =
                    std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: setns on a valid namespace fd affects only this thread, which
                // exists for the duration of `f` and is not reused.
                #[allow(unsafe_code)]
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert!(
                    rc == 0,
                    "setns({path}): {}",
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Builds the cluster shape the lab uses (one plan, [`identityd_topology`]) inside this
    /// topology: an underlay namespace `u` with a bridge at 10.99.0.1/24, node namespaces
    /// `n{i}` at 10.99.0.(10+i) with a default route via the bridge (so anything not sent
    /// into a tunnel *would* leave in clear), and one pod namespace `p{i}` per node at
    /// 10.244.i.2/24 behind the node's 10.244.i.1; IPv6 off everywhere (no stray router
    /// solicitations in captures). Returns the spec (namespace and interface names, addresses).
    pub fn add_cluster(&mut self, nodes: usize) -> ClusterSpec {
        let names = TaggedNames {
            prefix: self.prefix.clone(),
            tag: self.tag.clone(),
        };
        let mut spec = ClusterSpec::standard(
            Underlay::Namespace {
                ns: self.ns_name("u"),
                bridge: format!("{}br0", self.tag),
            },
            nodes,
            &["pod"],
            2,
            PodAddressing::Subnet,
            &names,
        );
        spec.node_default_route = true;
        spec.disable_ipv6 = true;
        let steps = identityd_topology::plan(&spec).unwrap_or_else(|e| panic!("{e}"));
        let namespaces = &mut self.namespaces;
        identityd_topology::apply(&tools::ip(), &steps, |c| match c {
            Created::Namespace(n) => namespaces.push(n),
            Created::RootLink(l) => panic!("a test topology made root-namespace link {l}"),
        })
        .unwrap_or_else(|e| panic!("{e}"));
        spec
    }

    /// The namespaces this topology created (full names).
    #[must_use]
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }
}

/// The names of all network namespaces currently present.
#[must_use]
pub fn list_namespaces() -> Vec<String> {
    let out = run(Command::new(tools::ip()).args(["netns", "list"]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

impl Drop for Topology {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let mut failures = String::new();
        for ns in self.namespaces.iter().rev() {
            // Kill anything still running inside, then delete (veths and bridges go with it).
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            match Command::new("ip").args(["netns", "del", ns]).output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => {
                    let _ = write!(
                        failures,
                        "{ns}: {}; ",
                        String::from_utf8_lossy(&o.stderr).trim()
                    );
                }
                Err(e) => {
                    let _ = write!(failures, "{ns}: {e}; ");
                }
            }
        }
        if !failures.is_empty() && !std::thread::panicking() {
            panic!("topology cleanup failed: {failures}");
        }
    }
}
