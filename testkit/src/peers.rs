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

/// The recording upstream (`testkit/peers/recording_upstream.py`): it
/// answers each request with a JSON description of what reached it, and
/// with `log` set also appends one JSON line per request there. Returns it
/// with its port.
pub fn recording_upstream(log: Option<&std::path::Path>) -> (crate::Proc, u16) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/recording_upstream.py");
    let mut command = Command::new("python3");
    command.arg(script).stderr(Stdio::null());
    if let Some(log) = log {
        command.arg("--log").arg(log);
    }
    let (child, line) = crate::process::announced(command, "");
    let port = line.parse().unwrap_or_else(|_| panic!("the recording upstream printed {line:?}, not its port"));
    (child, port)
}

/// The names of the canned answers the recording upstream gives at
/// `/__raw/NAME`: each a way an upstream can frame, or misframe, a
/// response.
pub fn recording_upstream_answers() -> Vec<String> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/recording_upstream.py");
    let text = std::fs::read_to_string(&script).unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    text.lines()
        .filter_map(|l| l.trim().strip_prefix('"')?.split_once("\": b\"").map(|(name, _)| name.to_string()))
        .collect()
}

/// The values of header `name` the recording upstream saw, from its JSON
/// answer `body`.
pub fn recorded_header(body: &str, name: &str) -> Vec<String> {
    let seen: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let headers = seen["headers"].as_array().unwrap_or_else(|| panic!("no headers in {body}"));
    headers.iter().filter(|h| h[0] == name).filter_map(|h| h[1].as_str().map(String::from)).collect()
}
