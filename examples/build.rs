//! Links the gateway and the sidecar with the functions the gateway runs at
//! startup and under load side by side (`gateway.order`, written by
//! `benches/load/orderfile.py`).
//!
//! The kernel maps a binary's code in 64 KiB chunks around each page
//! touched, so the 1,600 functions the gateway runs, spread over its 16 MB
//! of code, kept 7-8 MB of it resident at idle; packed, they take under
//! 3 MB. The sidecar runs mostly the same functions: with the same order it
//! idles at 9.7 MB instead of 11.6 (its own bin-crate functions carry other
//! hashes and keep the default layout).
//!
//! Only lld (Rust's default linker on x86_64 Linux since 1.90) and mold take
//! `--symbol-ordering-file`, so the flag is first tried on an empty program
//! with the same rustc, target, linker and flags; with any other linker the
//! binaries keep the default layout.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const ORDER_FILE: &str = "gateway.order";

fn main() {
    println!("cargo:rerun-if-changed={ORDER_FILE}");
    println!("cargo:rerun-if-changed=build.rs");
    let (Some(manifest_dir), Some(out_dir)) = (env::var_os("CARGO_MANIFEST_DIR"), env::var_os("OUT_DIR")) else {
        return;
    };
    let order_file = Path::new(&manifest_dir).join(ORDER_FILE);
    let order_arg = format!("-Wl,--symbol-ordering-file={}", order_file.display());
    if order_file.exists() && linker_takes(&order_arg, Path::new(&out_dir)) {
        for bin in ["gateway", "sidecar"] {
            println!("cargo:rustc-link-arg-bin={bin}={order_arg}");
            // Names a build lacks (another toolchain, a changed dependency)
            // are no error: those functions keep the default layout.
            println!("cargo:rustc-link-arg-bin={bin}=-Wl,--no-warn-symbol-ordering");
        }
    }
}

/// Whether an empty program links with `link_arg` the way this build links.
fn linker_takes(link_arg: &str, out_dir: &Path) -> bool {
    let source = out_dir.join("order_probe.rs");
    if std::fs::write(&source, "fn main() {}\n").is_err() {
        return false;
    }
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut probe = Command::new(rustc);
    probe.arg(&source).arg("-o").arg(out_dir.join("order_probe"));
    if let Some(target) = env::var_os("TARGET") {
        probe.arg("--target").arg(target);
    }
    if let Some(linker) = env::var_os("RUSTC_LINKER") {
        probe.arg(format!("-Clinker={}", PathBuf::from(linker).display()));
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    probe.args(flags.split('\x1f').filter(|flag| !flag.is_empty()));
    probe.arg(format!("-Clink-arg={link_arg}")).arg("-Clink-arg=-Wl,--no-warn-symbol-ordering");
    probe.stdout(Stdio::null()).stderr(Stdio::null());
    probe.status().is_ok_and(|status| status.success())
}
