//! Links the `spate` binary with packed relative relocations (DT_RELR) where the
//! toolchain supports them (GNU ld ≥ 2.38 or lld, glibc ≥ 2.36).
//!
//! Why: the binary is position independent, and its ~115,000 relative
//! relocations took 2.7 MB of `.rela.dyn` that the dynamic loader reads at every
//! start, so those pages stayed resident in an idle server. Packed, the table is a
//! few kilobytes; what the loader does with it is unchanged (ASLR kept). The
//! linker leaves the binary unpacked when the C library does not support it.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os != "linux" || env != "gnu" {
        return;
    }
    if linker_packs_relocations() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the system linker knows `-z pack-relative-relocs`.
fn linker_packs_relocations() -> bool {
    Command::new("ld")
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("pack-relative-relocs"))
        .unwrap_or(false)
}
