//! Compiles every `bpf/src/*.c` with clang (`-O2 -g -target bpf`) into OUT_DIR.
//! Fails loudly when clang is missing: run `scripts/bootstrap`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let src = manifest.join("src");
    let lib = manifest.join("lib");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-changed={}", lib.display());
    println!("cargo:rerun-if-env-changed=IDENTITYD_CLANG");
    let clang = std::env::var("IDENTITYD_CLANG").unwrap_or_else(|_| "clang".to_owned());
    let multiarch = format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH);

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&src)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    sources.sort();
    for c in sources {
        let stem = c
            .file_stem()
            .context("source without a name")?
            .to_string_lossy()
            .into_owned();
        let obj = out.join(format!("{stem}.o"));
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-I{}", lib.display()))
            .arg(format!("-I{}", src.display()))
            .arg(format!("-I{multiarch}"))
            .arg("-c")
            .arg(&c)
            .arg("-o")
            .arg(&obj)
            .status()
            .with_context(|| {
                format!(
                    "running `{clang}` to compile {}: is clang installed? run scripts/bootstrap",
                    c.display()
                )
            })?;
        if !status.success() {
            bail!("clang failed on {} ({status})", c.display());
        }
    }
    Ok(())
}
