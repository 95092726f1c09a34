//! Network namespaces for the sidecar tests (root only): commands, and
//! Python run inside a namespace.

use std::process::Command;

/// Runs a command that must succeed; panics with its stderr.
pub fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Python in the namespace `ns`: its stdout, trimmed, or its last error
/// line.
pub fn python(ns: &str, code: &str) -> Result<String, String> {
    let out =
        Command::new("ip").args(["netns", "exec", ns, "python3", "-c", code]).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("").to_string())
    }
}
