//! `identityd crds` prints exactly the chart's `crds/identityd.io.yaml` (five CRDs).

use std::path::Path;
use std::process::Command;

#[test]
fn crds_command_output_equals_the_chart_crds_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_identityd"))
        .arg("crds")
        .output()
        .expect("running identityd crds");
    assert!(
        out.status.success(),
        "identityd crds failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/identityd/crds/identityd.io.yaml");
    let on_disk = std::fs::read(&file).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; generate it with `cargo run -p identityd -- crds > charts/identityd/crds/identityd.io.yaml`",
            file.display()
        )
    });
    assert!(
        out.stdout == on_disk,
        "charts/identityd/crds/identityd.io.yaml differs from `identityd crds`; regenerate it with\n  \
         cargo run -p identityd -- crds > charts/identityd/crds/identityd.io.yaml"
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.matches("kind: CustomResourceDefinition").count(), 5);
}
