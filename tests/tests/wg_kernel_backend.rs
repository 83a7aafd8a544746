//! The kernel WireGuard backend is detected, not faked: this kernel has no WireGuard module,
//! and `identityd-wg kernel-check` says so (exit 1) after asking the kernel for a link of
//! kind `wireguard` inside a fresh namespace.

mod wg_support;

use std::path::Path;

use identityd_tests::netns::Topology;

#[test]
fn wg_kernel_backend_reports_whether_the_module_exists() {
    let bin = wg_support::wg_bin();
    let mut t = Topology::new("wgkernel");
    let ns = t.add_ns("a");
    let out = t.try_exec(&ns, &[bin.to_str().unwrap(), "kernel-check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if Path::new("/sys/module/wireguard").exists() {
        assert!(
            out.status.success(),
            "module present, kernel-check must succeed: {out:?}"
        );
        assert!(stdout.contains("available"), "{stdout}");
    } else {
        assert_eq!(
            out.status.code(),
            Some(1),
            "no module: kernel-check must fail: {out:?}"
        );
        assert!(
            stdout.contains("kernel WireGuard is not available")
                && stdout.contains("RTM_NEWLINK kind=wireguard"),
            "the error says what was checked: {stdout}"
        );
    }
}
