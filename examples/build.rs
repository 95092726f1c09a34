//! Links the gateway and the sidecar, in the benchmarked profile
//! (`bench-release`, and `profiling` which inherits it), with the functions
//! the gateway runs at startup and under load side by side (`gateway.order`,
//! written by `benches/load/orderfile.py`). Everyday builds (`dev`,
//! `release`) link as rustc does.
//!
//! The kernel maps a binary's code in 64 KiB chunks around each page
//! touched, so the 1,600 functions the gateway runs, spread over its 16 MB
//! of code, kept 7-8 MB of it resident at idle; packed, they take under
//! 3 MB. The sidecar runs mostly the same functions.
//!
//! Only lld (Rust's default linker on x86_64 Linux since 1.90) and mold take
//! `--symbol-ordering-file`, so the flag is first tried on an empty program
//! with the same rustc, target, linker and flags; with any other linker the
//! binaries keep the default layout. Names the build lacks (a stale order
//! file) are no error either: those functions keep the default layout.
//!
//! Packed relative relocations (`-z pack-relative-relocs`, DT_RELR: 0.3-0.4
//! MB less resident) make the binaries need glibc 2.36, so they are opt-in:
//! `MESH_PACK_RELATIVE_RELOCS=1`, which the load benchmark sets. Without it
//! the binaries run on glibc 2.31 and later (`examples/tests/glibc_floor.rs`).

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const ORDER_FILE: &str = "gateway.order";
const BINS: [&str; 2] = ["gateway", "sidecar"];
/// The profiles whose figures benches/README.md reports.
const BENCHMARKED_PROFILES: [&str; 2] = ["bench-release", "profiling"];
const PACK_RELOCS: &str = "MESH_PACK_RELATIVE_RELOCS";

fn main() {
    println!("cargo:rerun-if-changed={ORDER_FILE}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    println!("cargo:rerun-if-env-changed={PACK_RELOCS}");
    let (Some(manifest_dir), Some(out_dir)) = (env::var_os("CARGO_MANIFEST_DIR"), env::var_os("OUT_DIR")) else {
        return;
    };
    let out_dir = Path::new(&out_dir);
    if !profile_of(out_dir).is_some_and(|p| BENCHMARKED_PROFILES.contains(&p)) {
        return;
    }
    // Linked from a copy in OUT_DIR, not from the source tree: clones at
    // other paths that share a target directory share this script's output
    // too, and a path into one clone fails every link once it is gone.
    let order_file = out_dir.join(ORDER_FILE);
    let copied = std::fs::copy(Path::new(&manifest_dir).join(ORDER_FILE), &order_file).is_ok();
    let order =
        [format!("-Wl,--symbol-ordering-file={}", order_file.display()), "-Wl,--no-warn-symbol-ordering".into()];
    if copied && probe_link(&order, out_dir).is_some() {
        link_args(&order);
    }
    if env::var(PACK_RELOCS).is_ok_and(|v| v == "1") {
        let relr = ["-Wl,-z,pack-relative-relocs".to_string()];
        // Only where the linker marks the binary as needing glibc's
        // GLIBC_ABI_DT_RELR: an older loader then refuses it with a clear
        // error instead of running it with its pointers unrelocated.
        let marked = probe_link(&relr, out_dir)
            .and_then(|binary| std::fs::read(binary).ok())
            .is_some_and(|bytes| bytes.windows(17).any(|w| w == b"GLIBC_ABI_DT_RELR"));
        if marked {
            link_args(&relr);
        }
    }
}

/// The profile's directory name (`debug`, `release`, `bench-release`):
/// cargo builds this script's output in `<target>/[<triple>/]<profile>/build/<pkg>-<hash>/out`.
fn profile_of(out_dir: &Path) -> Option<&str> {
    out_dir.ancestors().nth(3)?.file_name()?.to_str()
}

fn link_args(args: &[String]) {
    for bin in BINS {
        for arg in args {
            println!("cargo:rustc-link-arg-bin={bin}={arg}");
        }
    }
}

/// An empty program linked with `link_args` the way this build links (the
/// same rustc, target, linker and flags), if it links.
fn probe_link(link_args: &[String], out_dir: &Path) -> Option<PathBuf> {
    let source = out_dir.join("link_probe.rs");
    let binary = out_dir.join("link_probe");
    std::fs::write(&source, "fn main() {}\n").ok()?;
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut probe = Command::new(rustc);
    probe.arg(&source).arg("-o").arg(&binary);
    if let Some(target) = env::var_os("TARGET") {
        probe.arg("--target").arg(target);
    }
    if let Some(linker) = env::var_os("RUSTC_LINKER") {
        probe.arg(format!("-Clinker={}", PathBuf::from(linker).display()));
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    probe.args(flags.split('\x1f').filter(|flag| !flag.is_empty()));
    probe.args(link_args.iter().map(|arg| format!("-Clink-arg={arg}")));
    probe.stdout(Stdio::null()).stderr(Stdio::null());
    probe.status().ok()?.success().then_some(binary)
}
