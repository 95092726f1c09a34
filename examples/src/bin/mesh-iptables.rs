//! `mesh-iptables [--apply]`: the nat rules that send a pod's traffic
//! through its sidecar, after Istio's `istio-iptables`. Prints them (one
//! `iptables` command a line) or, with `--apply`, runs them in the current
//! network namespace.
//!
//! Inbound TCP (PREROUTING) goes to the inbound port (15006); outbound TCP
//! (OUTPUT) to the outbound port (15001), except traffic of the proxy's own
//! UID/GID (so it does not loop), to loopback, and the excluded ports.

use std::process::{Command, ExitCode};

use clap::Parser;

#[derive(Parser)]
#[command(about = "Print or apply the iptables rules that capture a pod's traffic", version)]
struct Args {
    /// Run the rules instead of printing them.
    #[arg(long)]
    apply: bool,
    #[arg(long, default_value_t = 1337)]
    proxy_uid: u32,
    #[arg(long, default_value_t = 1337)]
    proxy_gid: u32,
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// Inbound ports left alone (the proxy's own, ssh).
    #[arg(long, value_delimiter = ',', default_value = "15090,15021,15020,15000,22")]
    exclude_inbound_ports: Vec<u16>,
    /// Outbound destinations (CIDRs) left alone.
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_ips: Vec<String>,
}

/// Istio's source address for inbound passthrough connections.
const INBOUND_PASSTHROUGH_SOURCE: &str = "127.0.0.6";

fn rules(a: &Args) -> Vec<String> {
    let mut r: Vec<String> = ["ISTIO_INBOUND", "ISTIO_REDIRECT", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT"]
        .iter()
        .map(|c| format!("-t nat -N {c}"))
        .collect();
    for port in &a.exclude_inbound_ports {
        r.push(format!("-t nat -A ISTIO_INBOUND -p tcp --dport {port} -j RETURN"));
    }
    r.push("-t nat -A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT".into());
    r.push(format!("-t nat -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}", a.inbound_port));
    r.push(format!("-t nat -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {}", a.outbound_port));
    r.push("-t nat -A PREROUTING -p tcp -j ISTIO_INBOUND".into());
    r.push("-t nat -A OUTPUT -p tcp -j ISTIO_OUTPUT".into());
    // The proxy's inbound passthrough reaches the app from 127.0.0.6: on,
    // not captured again (it would loop back into the proxy).
    r.push(format!("-t nat -A ISTIO_OUTPUT -s {INBOUND_PASSTHROUGH_SOURCE}/32 -o lo -j RETURN"));
    // The proxy talking to its own app over the pod IP: that is inbound.
    r.push(format!(
        "-t nat -A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp -m owner --uid-owner {} -j ISTIO_IN_REDIRECT",
        a.proxy_uid
    ));
    r.push(format!("-t nat -A ISTIO_OUTPUT -o lo -m owner ! --uid-owner {} -j RETURN", a.proxy_uid));
    r.push(format!("-t nat -A ISTIO_OUTPUT -m owner --uid-owner {} -j RETURN", a.proxy_uid));
    r.push(format!("-t nat -A ISTIO_OUTPUT -m owner --gid-owner {} -j RETURN", a.proxy_gid));
    r.push("-t nat -A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN".into());
    for cidr in &a.exclude_outbound_ips {
        r.push(format!("-t nat -A ISTIO_OUTPUT -d {cidr} -j RETURN"));
    }
    r.push("-t nat -A ISTIO_OUTPUT -j ISTIO_REDIRECT".into());
    r
}

fn main() -> ExitCode {
    let args = Args::parse();
    for rule in rules(&args) {
        if !args.apply {
            println!("iptables {rule}");
            continue;
        }
        match Command::new("iptables").args(rule.split_whitespace()).status() {
            Ok(s) if s.success() => {}
            Ok(s) => {
                eprintln!("iptables {rule}: exit {s}");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("iptables {rule}: {e} (is iptables installed?)");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
