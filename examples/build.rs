//! Links the gateway and the sidecar with the functions the gateway runs at
//! startup and under load side by side (`gateway.order`, written by
//! `benches/load/orderfile.py`).
//!
//! The kernel maps a binary's code in 64 KiB chunks around each page
//! touched, so the 1,600 functions the gateway runs, spread over its 16 MB
//! of code, kept 7-8 MB of it resident at idle; packed, they take under
//! 3 MB. The sidecar runs mostly the same functions: with the same order it
//! idles at 9.6-9.7 MB instead of 12.3 (its own bin-crate functions carry
//! other hashes and keep the default layout).
//!
//! Only lld (Rust's default linker on x86_64 Linux since 1.90) and mold take
//! `--symbol-ordering-file`, so the flag is first tried on an empty program
//! with the same rustc, target, linker and flags; with any other linker the
//! binaries keep the default layout.
//!
//! Their relative relocations are packed too (`-z pack-relative-relocs`,
//! DT_RELR: 0.5 MB of `.rela.dyn` down to 6 KB, 0.3-0.4 MB less resident),
//! where the linker then marks the binary as needing glibc 2.36's
//! `GLIBC_ABI_DT_RELR`: an older loader refuses it with a clear error
//! instead of running it with its pointers unrelocated.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const ORDER_FILE: &str = "gateway.order";
const BINS: [&str; 2] = ["gateway", "sidecar"];

fn main() {
    println!("cargo:rerun-if-changed={ORDER_FILE}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let (Some(manifest_dir), Some(out_dir)) = (env::var_os("CARGO_MANIFEST_DIR"), env::var_os("OUT_DIR")) else {
        return;
    };
    let out_dir = Path::new(&out_dir);
    // Linked from a copy in OUT_DIR, not from the source tree: clones at
    // other paths that share a target directory share this script's output
    // too, and a path into one clone fails every link once it is gone.
    let order_file = out_dir.join(ORDER_FILE);
    let copied = std::fs::copy(Path::new(&manifest_dir).join(ORDER_FILE), &order_file).is_ok();
    // Names a build lacks (another toolchain, a changed dependency) are no
    // error: those functions keep the default layout.
    let order =
        [format!("-Wl,--symbol-ordering-file={}", order_file.display()), "-Wl,--no-warn-symbol-ordering".into()];
    if copied && probe_link(&order, out_dir).is_some() {
        link_args(&order);
    }
    let relr = ["-Wl,-z,pack-relative-relocs".to_string()];
    let marked = probe_link(&relr, out_dir)
        .and_then(|binary| std::fs::read(binary).ok())
        .is_some_and(|bytes| bytes.windows(17).any(|w| w == b"GLIBC_ABI_DT_RELR"));
    if marked {
        link_args(&relr);
    }
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
