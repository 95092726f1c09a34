//! Peers the tests run that are installed outside cargo: each check names
//! what is missing and the command that installs it (`.ci/run` runs them
//! all).

use std::process::{Command, Stdio};

/// `python3` with `module` importable; panics with `install` otherwise.
pub fn require_python_module(module: &str, install: &str) {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "this test needs the Python module `{module}`: install it with `{install}` (or run .ci/run)");
}

/// `command` on the PATH; panics with `install` otherwise.
pub fn require_command(command: &str, install: &str) {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(command).is_file()))
        .unwrap_or(false);
    assert!(found, "this test needs `{command}` on the PATH: install it with `{install}` (or run .ci/run)");
}
