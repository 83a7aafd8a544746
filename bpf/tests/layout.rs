//! The C map layouts (`bpf/src/*_types.h`) and their `#[repr(C)]` Rust mirrors agree on
//! sizes and field offsets. A C probe including the real headers is compiled with clang and
//! run; its report is compared with `identityd_bpf::types::layouts()`.

use std::fmt::Write as _;
use std::process::Command;

#[test]
fn c_and_rust_layouts_match() {
    let src_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let dir = std::env::temp_dir().join(format!("idd-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/bpf.h>\n\
         #include \"counter_types.h\"\n#include \"classifier_types.h\"\nint main(void){\n",
    );
    for (ty, _, fields) in identityd_bpf::types::layouts() {
        writeln!(c, "printf(\"{ty} size %zu\\n\", sizeof(struct {ty}));").unwrap();
        for (f, _) in fields {
            writeln!(
                c,
                "printf(\"{ty} {f} %zu\\n\", offsetof(struct {ty}, {f}));"
            )
            .unwrap();
        }
    }
    for (name, _) in identityd_bpf::types::constants() {
        writeln!(
            c,
            "printf(\"const {name} %llu\\n\", (unsigned long long)({name}));"
        )
        .unwrap();
    }
    c.push_str("return 0;}\n");
    let probe_c = dir.join("probe.c");
    let probe = dir.join("probe");
    std::fs::write(&probe_c, c).unwrap();
    let multiarch = format!("-I/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let out = Command::new("clang")
        .arg(format!("-I{src_dir}"))
        .arg(multiarch)
        .arg(&probe_c)
        .arg("-o")
        .arg(&probe)
        .output()
        .expect("clang must be installed (scripts/bootstrap)");
    assert!(
        out.status.success(),
        "compiling the layout probe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&probe).output().unwrap();
    let report = String::from_utf8(out.stdout).unwrap();
    let mut expected = String::new();
    for (ty, size, fields) in identityd_bpf::types::layouts() {
        writeln!(expected, "{ty} size {size}").unwrap();
        for (f, off) in fields {
            writeln!(expected, "{ty} {f} {off}").unwrap();
        }
    }
    for (name, value) in identityd_bpf::types::constants() {
        writeln!(expected, "const {name} {value}").unwrap();
    }
    assert_eq!(report, expected, "C (left) and Rust (right) layouts differ");
    let _ = std::fs::remove_dir_all(&dir);
}
