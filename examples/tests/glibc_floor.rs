//! What the binaries ask of the system: the released gateway and sidecar
//! (`scripts/release`, built against glibc 2.31) run on glibc 2.31 and
//! later, and the benchmarked build's link order never fails a build.

use std::path::{Path, PathBuf};
use std::process::Command;

use mesh_testkit::peers::require_command;

/// The newest glibc this project's released binaries may need.
const FLOOR: (u32, u32) = (2, 31);

/// The `GLIBC_x.y` versions `binary` needs, and whether it needs the
/// loader to know DT_RELR (`GLIBC_ABI_DT_RELR`, glibc 2.36).
fn glibc_needs(binary: &Path) -> (Vec<(u32, u32)>, bool) {
    require_command("readelf", "apt-get install binutils");
    let out = Command::new("readelf").arg("--version-info").arg("--wide").arg(binary).output().expect("readelf");
    assert!(out.status.success(), "readelf {}: {}", binary.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut versions: Vec<(u32, u32)> = text
        .split(|c: char| c.is_whitespace())
        .filter_map(|word| word.strip_prefix("GLIBC_2."))
        .filter_map(|rest| {
            let mut parts = rest.split('.');
            Some((2, parts.next()?.parse().ok()?))
        })
        .collect();
    versions.sort();
    versions.dedup();
    (versions, text.contains("GLIBC_ABI_DT_RELR"))
}

fn target_dir() -> PathBuf {
    // Tests run from <target>/debug/deps.
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors().nth(3).expect("the target directory").to_path_buf()
}

#[test]
fn released_gateway_and_sidecar_need_at_most_glibc_2_31() {
    let dir = target_dir().join("x86_64-unknown-linux-gnu").join("release");
    for name in ["gateway", "sidecar"] {
        let binary = dir.join(name);
        assert!(binary.is_file(), "{} is missing: build the released binaries with scripts/release", binary.display());
        let (versions, relr) = glibc_needs(&binary);
        let newest = versions.last().copied().expect("a dynamically linked binary names glibc versions");
        assert!(newest <= FLOOR, "{name} needs GLIBC_{}.{} (floor {FLOOR:?}): {versions:?}", newest.0, newest.1);
        assert!(!relr, "{name} needs DT_RELR support (glibc 2.36)");
    }
}

#[test]
fn everyday_builds_do_not_pack_relocations() {
    // The test build takes the same path through build.rs as `release`:
    // neither is a benchmarked profile.
    for binary in [env!("CARGO_BIN_EXE_gateway"), env!("CARGO_BIN_EXE_sidecar")] {
        let (versions, relr) = glibc_needs(Path::new(binary));
        assert!(!versions.is_empty(), "{binary}: no GLIBC_ versions read");
        assert!(!relr, "{binary} was linked with -z pack-relative-relocs");
    }
}

#[test]
fn a_stale_order_file_still_links() {
    // Names the build lacks (another toolchain, changed dependencies) and
    // lines that are no symbol at all: the linker must lay out what it
    // knows and say nothing, as examples/build.rs relies on.
    let dir = tempfile::tempdir().unwrap();
    let order = dir.path().join("stale.order");
    std::fs::write(&order, "_ZN4gone8function17h0123456789abcdefE\nnot a symbol\n\nmain\n").unwrap();
    let source = dir.path().join("probe.rs");
    std::fs::write(&source, "fn main() {}\n").unwrap();
    let link = |extra: &[String]| {
        let mut rustc = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()));
        rustc.arg(&source).arg("-o").arg(dir.path().join("probe"));
        for arg in extra {
            rustc.arg(format!("-Clink-arg={arg}"));
        }
        rustc.output().expect("rustc")
    };
    let flags = [format!("-Wl,--symbol-ordering-file={}", order.display()), "-Wl,--no-warn-symbol-ordering".into()];
    let out = link(&flags);
    assert!(out.status.success(), "a stale order file failed the link:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "the linker warned:\n{}", String::from_utf8_lossy(&out.stderr));
}
