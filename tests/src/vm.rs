//! The VM test bed: Debian's stock kernel under QEMU (TCG), for what this machine's kernel
//! lacks (ESP/XFRM with AES-GCM, kernel WireGuard).
//!
//! One boot runs one command and returns its output and exit status. The guest sees the
//! host's whole filesystem read-only over 9p, as its root, so the project's own test binaries,
//! iproute2, tcpdump and the rest run inside unchanged; `/tmp`, `/run`, `/var/tmp`, `/root`
//! and `/dev/shm` are the guest's own tmpfs (the workspace and the target folder stay visible
//! even when they live under one of those), and one host folder per boot is shared read-write
//! for the command's output. The stock kernel's modules are loaded from the tree
//! `scripts/bootstrap` unpacked into `.tools/vm/kernel`: the 9p and virtio modules from a
//! small initramfs (busybox), everything else with kmod's `modprobe` inside the guest — the
//! kernel's own module autoloading included.
//!
//! TCG only: KVM is not offered to the guest (nested KVM hangs on these machines; see
//! TOOLING.md). A missing QEMU, busybox, kmod or kernel tree is a loud failure naming the
//! bootstrap step, never a skip.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};

use crate::tools;

/// The environment variable set inside the guest to the guest kernel's release, so code can
/// tell it runs in the test bed.
pub const IN_VM_ENV: &str = "IDENTITYD_VM_BED";

/// The directories the guest gets as its own tmpfs (the host's stay untouched).
const GUEST_TMPFS: [&str; 5] = ["/tmp", "/run", "/var/tmp", "/root", "/dev/shm"];

/// The modules the initramfs loads, in this order's dependency closure, to mount the host's
/// filesystem: PCI virtio transport and 9p over virtio.
const BOOT_MODULES: [&str; 3] = ["virtio_pci", "9pnet_virtio", "9p"];

/// The found pieces of the bed.
#[derive(Debug, Clone)]
pub struct VmBed {
    qemu: PathBuf,
    busybox: PathBuf,
    modprobe: PathBuf,
    kernel_dir: PathBuf,
    release: String,
}

/// One boot: what to run and with what.
#[derive(Debug, Clone)]
pub struct VmRun {
    /// The command and its arguments (absolute program path, as on the host).
    pub argv: Vec<String>,
    /// Its working directory (a host path; must exist).
    pub cwd: PathBuf,
    /// Extra environment (besides PATH, HOME, TMPDIR, `RUST_BACKTRACE` and [`IN_VM_ENV`]).
    pub env: Vec<(String, String)>,
    /// Modules to load with `modprobe` before the command (names, as `modprobe` takes them).
    pub modules: Vec<String>,
    /// Wall-clock bound of the whole boot; QEMU is killed past it.
    pub timeout: Duration,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// Guest CPUs (TCG runs one host thread per vCPU).
    pub cpus: u32,
}

impl VmRun {
    /// `argv` in `cwd` with no extra environment or modules, 10 minutes, 2 GiB, 2 vCPUs.
    #[must_use]
    pub fn new(argv: Vec<String>, cwd: PathBuf) -> Self {
        Self {
            argv,
            cwd,
            env: Vec::new(),
            modules: Vec::new(),
            timeout: Duration::from_secs(600),
            mem_mib: 2048,
            cpus: 2,
        }
    }
}

/// What one boot gave.
#[derive(Debug, Clone)]
pub struct VmOutcome {
    /// The command's exit status (`None`: it did not finish, see `console`).
    pub status: Option<i32>,
    /// The command's standard output.
    pub stdout: String,
    /// The command's standard error.
    pub stderr: String,
    /// The guest's serial console (kernel messages, the initramfs' own errors).
    pub console: String,
    /// Seconds from power-on (guest uptime) until the command started.
    pub boot_secs: Option<f64>,
    /// Host wall-clock time of the whole boot, QEMU start to exit.
    pub wall: Duration,
}

impl VmOutcome {
    /// The last `n` lines of the console, for failure messages.
    #[must_use]
    pub fn console_tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.console.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl VmBed {
    /// Finds QEMU, a static busybox, kmod's modprobe and the kernel tree
    /// (`$IDENTITYD_VM_KERNEL`, or `.tools/vm/kernel`); panics naming what is missing and the
    /// bootstrap step that installs it.
    #[must_use]
    pub fn discover() -> Self {
        let kernel_dir = std::env::var_os("IDENTITYD_VM_KERNEL")
            .map_or_else(|| tools::tools_dir().join("vm/kernel"), PathBuf::from);
        let (qemu, busybox, modprobe) = (
            tools::qemu_system(),
            tools::busybox_static(),
            tools::modprobe(),
        );
        Self::with_kernel(qemu, busybox, modprobe, kernel_dir).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The bed with the kernel tree at `kernel_dir` (`RELEASE`, `boot/vmlinuz-<release>`,
    /// `lib/modules/<release>/modules.dep`).
    ///
    /// # Errors
    /// A missing piece of the tree, named with the bootstrap step that makes it.
    pub fn with_kernel(
        qemu: PathBuf,
        busybox: PathBuf,
        modprobe: PathBuf,
        kernel_dir: PathBuf,
    ) -> Result<Self> {
        let release_file = kernel_dir.join("RELEASE");
        let release = std::fs::read_to_string(&release_file)
            .map(|s| s.trim().to_owned())
            .map_err(|e| {
                anyhow::anyhow!(
                    "the VM test bed kernel is missing ({}: {e}): run `scripts/bootstrap` (as root), \
                     whose VM step downloads Debian's stock kernel package into .tools/vm/kernel",
                    release_file.display()
                )
            })?;
        let bed = Self {
            qemu,
            busybox,
            modprobe,
            kernel_dir,
            release,
        };
        for p in [bed.vmlinuz(), bed.modules_dir().join("modules.dep")] {
            anyhow::ensure!(
                p.is_file(),
                "the VM test bed kernel tree is incomplete: {} is missing; remove {} and run \
                 `scripts/bootstrap` again",
                p.display(),
                bed.kernel_dir.display()
            );
        }
        Ok(bed)
    }

    /// The guest kernel's release (`uname -r` inside).
    #[must_use]
    pub fn release(&self) -> &str {
        &self.release
    }

    fn vmlinuz(&self) -> PathBuf {
        self.kernel_dir
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    fn modules_dir(&self) -> PathBuf {
        self.kernel_dir.join("lib/modules").join(&self.release)
    }

    /// The dependency closure of `names`, dependencies first, as paths relative to the
    /// modules folder (from the tree's `modules.dep`).
    ///
    /// # Errors
    /// A name that is not a module of this kernel.
    pub fn module_order(&self, names: &[&str]) -> Result<Vec<String>> {
        let dep_file = self.modules_dir().join("modules.dep");
        let text = std::fs::read_to_string(&dep_file)
            .with_context(|| format!("read {}", dep_file.display()))?;
        let deps = parse_modules_dep(&text);
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in names {
            let path = deps
                .iter()
                .find(|(p, _)| module_name(p) == module_name(name))
                .map(|(p, _)| p.clone())
                .with_context(|| {
                    format!(
                        "`{name}` is not a module of kernel {} ({})",
                        self.release,
                        dep_file.display()
                    )
                })?;
            visit(&deps, &path, &mut seen, &mut order);
        }
        Ok(order)
    }

    /// Boots the guest, runs `run.argv` inside and powers off.
    ///
    /// # Errors
    /// The bed could not be prepared or QEMU not started; a command that fails or a guest that
    /// does not finish is an `Ok` outcome with its status (`None` when unfinished) and console.
    pub fn boot(&self, run: &VmRun) -> Result<VmOutcome> {
        let out_dir = unique_out_dir()?;
        let result = self.boot_in(run, &out_dir);
        // The folder holds the guest's output only; keep it when the boot failed.
        if matches!(&result, Ok(o) if o.status == Some(0)) {
            let _ = std::fs::remove_dir_all(&out_dir);
        }
        result
    }

    fn boot_in(&self, run: &VmRun, out: &Path) -> Result<VmOutcome> {
        anyhow::ensure!(!run.argv.is_empty(), "VmRun.argv is empty");
        anyhow::ensure!(
            run.cwd.is_dir(),
            "VmRun.cwd {} is not a folder",
            run.cwd.display()
        );
        let boot_modules = self.module_order(&BOOT_MODULES)?;
        self.module_order(&run.modules.iter().map(String::as_str).collect::<Vec<_>>())?;

        // Everything the guest must still see where a tmpfs would hide it.
        let keep: BTreeSet<PathBuf> = [tools::workspace_root(), target_dir(), out.to_path_buf()]
            .into_iter()
            .filter(|p| GUEST_TMPFS.iter().any(|t| p.starts_with(t)))
            .collect();
        // Guard against a keep path that is itself one of the tmpfs mount points.
        for k in &keep {
            anyhow::ensure!(
                !GUEST_TMPFS.iter().any(|t| Path::new(t) == k),
                "{} cannot be kept visible in the guest: it is a guest tmpfs",
                k.display()
            );
        }

        // The modprobe the guest uses, kernel autoloading included: kmod with the tree's root.
        let bin = out.join("bin");
        std::fs::create_dir_all(&bin)?;
        let wrapper = bin.join("modprobe");
        write_exec(
            &wrapper,
            &format!(
                "#!/bin/sh\nexec {} -d {} \"$@\"\n",
                sh_quote(&self.modprobe.to_string_lossy()),
                sh_quote(&self.kernel_dir.to_string_lossy())
            ),
        )?;
        std::fs::write(out.join("argv"), run.argv.join("\n"))?;
        write_exec(
            &out.join("guest.sh"),
            &self.guest_script(run, out, &wrapper),
        )?;
        let initrd = out.join("initrd.cpio");
        std::fs::write(
            &initrd,
            self.initramfs(&boot_modules, out, &keep)
                .context("build the initramfs")?,
        )?;

        let console = out.join("console.log");
        let mut cmd = Command::new(&self.qemu);
        cmd.args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-machine",
            "q35",
        ])
        .args([
            "-smp",
            &run.cpus.to_string(),
            "-m",
            &run.mem_mib.to_string(),
        ])
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .args(["-nic", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(self.vmlinuz())
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init mitigations=off",
        ])
        .arg("-virtfs")
        .arg("local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap")
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=out,security_model=none,multidevs=remap",
            out.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("start {}", self.qemu.display()))?;
        let finished = loop {
            if child.try_wait()?.is_some() {
                break true;
            }
            if start.elapsed() > run.timeout {
                let _ = child.kill();
                break false;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let qemu_out = child.wait_with_output()?;
        let wall = start.elapsed();
        let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap_or_default();
        let mut console_text = read("console.log");
        let qemu_err = String::from_utf8_lossy(&qemu_out.stderr);
        if !qemu_err.trim().is_empty() {
            let _ = write!(console_text, "\n[qemu stderr]\n{qemu_err}");
        }
        if !finished {
            let _ = write!(
                console_text,
                "\n[vm bed] killed after {:?} (timeout {:?})",
                wall, run.timeout
            );
        }
        Ok(VmOutcome {
            status: read("rc").trim().parse().ok(),
            stdout: read("stdout"),
            stderr: read("stderr"),
            console: console_text,
            boot_secs: read("boot-uptime")
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok()),
            wall,
        })
    }

    /// PID 1 after `switch_root` into the host's filesystem.
    fn guest_script(&self, run: &VmRun, out: &Path, wrapper: &Path) -> String {
        let o = out.to_string_lossy();
        let mut s = String::from("#!/bin/sh\n# identityd VM test bed: PID 1 inside the guest.\n");
        let _ = writeln!(
            s,
            "cat /proc/uptime > {}",
            sh_quote(&format!("{o}/boot-uptime"))
        );
        let _ = writeln!(
            s,
            "echo {} > /proc/sys/kernel/modprobe",
            sh_quote(&wrapper.to_string_lossy())
        );
        let path = format!(
            "{}:{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            out.join("bin").display(),
            tools::tools_dir().join("bin").display()
        );
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), path),
            ("HOME".into(), "/root".into()),
            ("TMPDIR".into(), "/tmp".into()),
            ("RUST_BACKTRACE".into(), "1".into()),
            (IN_VM_ENV.into(), self.release.clone()),
        ];
        env.extend(run.env.iter().cloned());
        for (k, v) in &env {
            let _ = writeln!(s, "export {k}={}", sh_quote(v));
        }
        let _ = writeln!(s, "(");
        for m in &run.modules {
            let _ = writeln!(s, "modprobe {} || exit 97", sh_quote(m));
        }
        let _ = writeln!(
            s,
            "cd {} || exit 98\n{}",
            sh_quote(&run.cwd.to_string_lossy()),
            run.argv
                .iter()
                .map(|a| sh_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let _ = writeln!(
            s,
            ") > {} 2> {}",
            sh_quote(&format!("{o}/stdout")),
            sh_quote(&format!("{o}/stderr"))
        );
        let _ = writeln!(s, "echo $? > {}", sh_quote(&format!("{o}/rc")));
        s.push_str("sync\necho o > /proc/sysrq-trigger\nsleep 30\n");
        s
    }

    /// The initramfs (newc cpio): busybox, the 9p/virtio modules and `/init`, which mounts the
    /// host's filesystem read-only with the guest's own writable folders and switches into it.
    fn initramfs(
        &self,
        modules: &[String],
        out: &Path,
        keep: &BTreeSet<PathBuf>,
    ) -> Result<Vec<u8>> {
        let mut init = String::from(
            "#!/bin/busybox sh\n\
             B=/bin/busybox\n\
             fail() { echo \"[vm bed init] $*\"; $B sleep 1; $B poweroff -f; }\n\
             $B mount -t proc proc /proc\n\
             $B mount -t sysfs sys /sys\n\
             $B mount -t devtmpfs dev /dev\n",
        );
        let mut cpio = Cpio::default();
        for d in ["bin", "m", "proc", "sys", "dev", "host", "keep"] {
            cpio.dir(d);
        }
        cpio.file("bin/busybox", 0o755, &std::fs::read(&self.busybox)?);
        for (i, m) in modules.iter().enumerate() {
            let data = std::fs::read(self.modules_dir().join(m))
                .with_context(|| format!("read module {m}"))?;
            cpio.file(&format!("m/{i:02}.ko"), 0o644, &data);
            let _ = writeln!(init, "$B insmod /m/{i:02}.ko || fail insmod {m}");
        }
        let opts = "trans=virtio,version=9p2000.L,msize=512000";
        let _ = writeln!(
            init,
            "$B mount -t 9p -o {opts},ro,cache=loose host /host || fail mount the host filesystem"
        );
        for (i, k) in keep.iter().enumerate() {
            let k = sh_quote(&k.to_string_lossy());
            let _ = writeln!(
                init,
                "$B mkdir -p /keep/{i} && $B mount --bind /host{k} /keep/{i} || fail keep {k}"
            );
        }
        for t in GUEST_TMPFS {
            let _ = writeln!(
                init,
                "$B mount -t tmpfs -o mode=1777 tmp /host{t} || fail tmpfs {t}"
            );
        }
        init.push_str(
            "$B mount -t proc proc /host/proc || fail proc\n\
             $B mount -t sysfs sys /host/sys || fail sysfs\n\
             $B mount -t devtmpfs dev /host/dev || fail devtmpfs\n\
             $B mkdir -p /host/dev/pts /host/dev/shm\n\
             $B mount -t devpts devpts /host/dev/pts\n\
             $B mount -t tmpfs -o mode=1777 shm /host/dev/shm\n\
             $B mount -t bpf bpf /host/sys/fs/bpf || fail bpffs\n\
             $B mount -t cgroup2 cgroup2 /host/sys/fs/cgroup || fail cgroup2\n\
             $B mkdir -p /host/run/netns\n",
        );
        for (i, k) in keep.iter().enumerate() {
            let k = sh_quote(&k.to_string_lossy());
            let _ = writeln!(
                init,
                "$B mkdir -p /host{k} && $B mount --move /keep/{i} /host{k} || fail move {k}"
            );
        }
        let o = sh_quote(&out.to_string_lossy());
        let _ = writeln!(
            init,
            "$B mount -t 9p -o {opts},cache=none out /host{o} || fail mount the output folder"
        );
        let _ = writeln!(
            init,
            "$B umount /proc /sys\n$B umount -l /dev\nexec $B switch_root /host /bin/sh {o}/guest.sh"
        );
        cpio.file("init", 0o755, init.as_bytes());
        Ok(cpio.finish())
    }
}

/// `target/` of the running test binary (`target/<profile>/deps/<exe>`), or
/// `$CARGO_TARGET_DIR`.
fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| tools::workspace_root().join("target"))
}

fn unique_out_dir() -> Result<PathBuf> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let d = target_dir()
        .join("vm-bed")
        .join(format!("{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
    Ok(d)
}

fn write_exec(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Single-quotes `s` for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `modules.dep` as (module path, its dependencies' paths).
fn parse_modules_dep(text: &str) -> Vec<(String, Vec<String>)> {
    text.lines()
        .filter_map(|l| {
            let (m, deps) = l.split_once(':')?;
            Some((
                m.trim().to_owned(),
                deps.split_whitespace().map(str::to_owned).collect(),
            ))
        })
        .collect()
}

/// `kernel/net/9p/9pnet_virtio.ko` → `9pnet_virtio`; `-` and `_` are the same to modprobe.
fn module_name(path_or_name: &str) -> String {
    let base = path_or_name.rsplit('/').next().unwrap_or(path_or_name);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

fn visit(
    deps: &[(String, Vec<String>)],
    path: &str,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<String>,
) {
    if !seen.insert(path.to_owned()) {
        return;
    }
    if let Some((_, ds)) = deps.iter().find(|(p, _)| p == path) {
        for d in ds {
            visit(deps, d, seen, order);
        }
    }
    order.push(path.to_owned());
}

/// A newc ("070701") cpio archive, the format the kernel unpacks as an initramfs.
#[derive(Default)]
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            u32::try_from(data.len()).expect("initramfs entry under 4 GiB"),
            0,
            0,
            0,
            0,
            u32::try_from(namesize).expect("short name"),
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | perm, data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, &[]);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_dep_closure_puts_dependencies_first_once() {
        let deps = parse_modules_dep(
            "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko\n\
             kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko\n\
             kernel/fs/netfs/netfs.ko:\n\
             kernel/net/9p/9pnet.ko:\n",
        );
        let mut seen = BTreeSet::new();
        let mut order = Vec::new();
        visit(&deps, "kernel/fs/9p/9p.ko", &mut seen, &mut order);
        assert_eq!(
            order,
            [
                "kernel/net/9p/9pnet.ko",
                "kernel/fs/netfs/netfs.ko",
                "kernel/fs/fscache/fscache.ko",
                "kernel/fs/9p/9p.ko"
            ]
        );
        assert_eq!(module_name("kernel/net/9p/9pnet_virtio.ko"), "9pnet_virtio");
        assert_eq!(module_name("xfrm-user"), "xfrm_user");
    }

    #[test]
    fn cpio_is_newc_with_a_trailer_and_aligned_entries() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.file("init", 0o755, b"#!/bin/sh\n");
        let b = c.finish();
        assert!(b.starts_with(b"070701"));
        assert_eq!(b.len() % 4, 0);
        let text = String::from_utf8_lossy(&b);
        assert!(text.contains("TRAILER!!!") && text.contains("init"));
        // mode field of the file entry (second header): 0x81ed = 0o100755.
        assert!(text.contains("000081ed"));
    }

    #[test]
    fn a_missing_kernel_tree_is_named_with_the_step_that_makes_it() {
        let dir = tempfile_dir();
        let p = PathBuf::from("/bin/true");
        let e = VmBed::with_kernel(p.clone(), p.clone(), p.clone(), dir.clone()).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("RELEASE") && msg.contains("scripts/bootstrap"),
            "{msg}"
        );
        std::fs::write(dir.join("RELEASE"), "6.1.0-0-amd64\n").unwrap();
        let e = VmBed::with_kernel(p.clone(), p.clone(), p, dir.clone()).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("vmlinuz-6.1.0-0-amd64") && msg.contains("incomplete"),
            "{msg}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "identityd-vmbed-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn sh_quote_survives_single_quotes() {
        assert_eq!(sh_quote("a'b"), "'a'\\''b'");
    }
}
