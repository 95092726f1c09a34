//! Test servers and peers as child processes.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A child process, killed and reaped when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// Wait up to `limit` for the process to exit; its exit status.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> std::process::ExitStatus {
        let mut status = None;
        crate::wait_until(limit, || {
            status = self.0.try_wait().ok().flatten();
            status.is_some()
        });
        status.unwrap_or_else(|| panic!("the process did not exit within {limit:?}"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawn `command` with stdout piped and read its first line; `None` (the
/// child reaped) when the line does not start with `prefix`, as when its
/// port was still taken. With the rest of the line, trimmed.
pub fn try_announced(mut command: Command, prefix: &str) -> Option<(Proc, String)> {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let child = Proc(child);
    let rest = line.trim().strip_prefix(prefix)?.trim().to_string();
    Some((child, rest))
}

/// [`try_announced`] that must succeed: a server printing `listening on
/// ADDR` (`prefix` "listening on ") or its port as its first line.
pub fn announced(command: Command, prefix: &str) -> (Proc, String) {
    let program = command.get_program().to_string_lossy().into_owned();
    try_announced(command, prefix).unwrap_or_else(|| panic!("{program} did not print `{prefix}...` first"))
}

/// A crate's example binary (`cargo test -p CRATE` builds them beside the
/// test binaries, in `target/<profile>/examples`).
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // Tests run from target/<profile>/deps.
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("the target directory");
    let bin = profile_dir.join("examples").join(name);
    assert!(
        bin.exists(),
        "{} is missing: `cargo test --workspace` (or `cargo build --workspace --examples`) builds it",
        bin.display()
    );
    bin
}

/// An example server that announces `listening on ADDR`; with that address.
pub fn example_server(name: &str, args: &[&str]) -> (Proc, String) {
    let mut command = Command::new(example_binary(name));
    command.args(args);
    announced(command, "listening on ")
}
