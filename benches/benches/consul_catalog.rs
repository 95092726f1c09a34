//! adapter-consul against a 1,000-service, 10,000-instance catalog served
//! by the fake agent in a child process (this binary, run with
//! `--server`): the time to the initial sync, and the requests the adapter
//! makes when nothing changes, which must be set by the number of
//! services and the blocking `wait`, not by a poll loop.
//!
//! `cargo bench -p benches --bench consul_catalog [-- --idle-secs 30]`
//! (a scenario run, not criterion).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use adapter_consul::api::{AgentOptions, ConsulClient};
use adapter_consul::{ConsulRegistry, RegistryOptions};
use mesh_core::ServiceRegistry;

const SERVICES: usize = 1000;
const INSTANCES: usize = 10;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn server_requests(addr: &str) -> u64 {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    let _ = write!(stream, "GET /fake/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("{}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["requests"].as_object().map(|m| m.values().filter_map(|n| n.as_u64()).sum()).unwrap_or(0)
}

fn main() {
    if std::env::args().any(|a| a == "--server") {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            println!("listening on {}", listener.local_addr().expect("addr"));
            let options = adapter_consul::fake::FakeOptions {
                datacenter: "dc1".into(),
                seed_services: SERVICES,
                seed_instances: INSTANCES,
                ..Default::default()
            };
            adapter_consul::fake::serve(listener, options).await.expect("serve");
        });
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench` asks every bench binary for its benchmarks.
    }
    let idle = Duration::from_secs(arg("--idle-secs", 30));
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .arg("--server")
        .stdout(Stdio::piped())
        .spawn()
        .expect("server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("address");
    let _server = Server(child);
    let addr = line.trim().strip_prefix("listening on ").expect("address").to_string();

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    runtime.block_on(async {
        println!("consul_catalog: {SERVICES} services, {} instances, the agent in a child process", SERVICES * INSTANCES);
        for wait in [Duration::from_secs(10), Duration::from_secs(300)] {
            let mut agent = AgentOptions::new(addr.clone());
            agent.wait = wait;
            let started = Instant::now();
            let registry = ConsulRegistry::start(ConsulClient::new(&agent).expect("client"), RegistryOptions::default());
            registry.ready().await;
            let sync = started.elapsed();
            let snapshot = registry.snapshot();
            let endpoints: usize = snapshot.values().map(|s| s.endpoints.len()).sum();
            assert_eq!((snapshot.len(), endpoints), (SERVICES, SERVICES * INSTANCES));
            let requests_at_sync = registry.status().requests_total;
            // Let the queries that answered the sync settle into blocking.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (client_before, server_before) = (registry.status().requests_total, server_requests(&addr));
            tokio::time::sleep(idle).await;
            let (client_after, server_after) = (registry.status().requests_total, server_requests(&addr));
            let per_minute = (client_after - client_before) as f64 * 60.0 / idle.as_secs_f64();
            let bound = (SERVICES + 1) as f64 * 60.0 / wait.as_secs_f64();
            println!(
                "wait {:>4} s: initial sync {:>6.0} ms ({requests_at_sync} requests); idle for {} s: {} requests ({} seen by the agent) = {per_minute:.0}/min; (services + 1) x 60 / wait = {bound:.0}/min",
                wait.as_secs(),
                sync.as_secs_f64() * 1000.0,
                idle.as_secs(),
                client_after - client_before,
                server_after - server_before,
            );
        }
    });
}
