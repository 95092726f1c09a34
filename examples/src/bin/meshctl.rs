//! `meshctl`: check Istio config files before they reach a proxy.
//!
//! ```text
//! meshctl validate PATH...   schema and field validation of every resource
//! meshctl analyze PATH...    validation plus cross-resource checks
//! meshctl ca root --dir DIR  make (or show) the mesh's CA in DIR
//! meshctl ca issue --dir DIR --identity SPIFFE-ID --out DIR
//!                            a workload certificate for local use
//! ```
//!
//! Paths are files or directories of YAML/JSON (Istio resources, and
//! Kubernetes Services, EndpointSlices, Pods and Deployments for the
//! registry). Problems are printed grouped by file, one line each with its
//! line number; the exit code is 1 when there is an error.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use adapter_static::{Problem, Severity, StaticOptions, StaticSource};
use clap::{Parser, Subcommand, ValueEnum};
use mesh_core::analyze;
use mesh_core::mesh::MeshSnapshot;

#[derive(Parser)]
#[command(name = "meshctl", about = "Check Istio config for the mesh", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Colour the output: auto (when printing to a terminal and NO_COLOR is unset), always or never.
    #[arg(long, value_enum, default_value = "auto", global = true)]
    color: Color,
    /// Report fields the mesh does not know as warnings, not errors.
    #[arg(long, global = true)]
    allow_unknown_fields: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Validate every resource: schema, fields, values.
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Validate, then check resources against each other and the registry.
    Analyze {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// The mesh's certificate authority, for local use.
    #[command(subcommand)]
    Ca(CaCommand),
}

#[derive(Subcommand)]
enum CaCommand {
    /// Make a self-signed root in DIR (Istio's cacerts layout), or show
    /// the CA already there.
    Root {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
    /// Issue a workload certificate from the CA in DIR into OUT, as the
    /// files a proxy's --cert-dir reads: cert-chain.pem, key.pem,
    /// root-cert.pem.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>
        #[arg(long)]
        identity: String,
        #[arg(long)]
        out: PathBuf,
        /// Lifetime in seconds (default: 24 h).
        #[arg(long, default_value_t = 24 * 3600)]
        ttl: u64,
    },
}

fn ca(command: CaCommand) -> Result<String, String> {
    use mesh_xds::ca::authority::{self, CertificateAuthority, Lifetimes};
    match command {
        CaCommand::Root { dir, trust_domain } => {
            let ca = CertificateAuthority::load_or_create(&dir, &trust_domain, Lifetimes::default())
                .map_err(|e| e.to_string())?;
            let s = ca.signer();
            Ok(format!(
                "CA in {}: {} (serial {}), valid until {} (unix); workloads trust {}\n",
                dir.display(),
                s.subject,
                s.serial,
                s.not_after_unix(),
                dir.join(authority::ROOT_CERT).display()
            ))
        }
        CaCommand::Issue { dir, identity, out, ttl } => {
            let ca = CertificateAuthority::load(&dir, Lifetimes::default()).map_err(|e| e.to_string())?;
            let id = identity.parse().map_err(|e: mesh_core::identity::InvalidSpiffeId| e.to_string())?;
            let issued = ca.issue_workload(&id, std::time::Duration::from_secs(ttl)).map_err(|e| e.to_string())?;
            std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            let write = |name: &str, text: &str, mode| {
                authority::write_file(&out.join(name), text, mode).map_err(|e| e.to_string())
            };
            write("cert-chain.pem", &issued.chain_pem, 0o644)?;
            write("key.pem", &issued.key_pem, 0o600)?;
            write("root-cert.pem", &issued.roots_pem, 0o644)?;
            Ok(format!("{id} (serial {}) in {}\n", issued.leaf.serial, out.display()))
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

/// One line of the report.
struct Line {
    line: Option<usize>,
    severity: Severity,
    resource: Option<String>,
    field: Option<String>,
    message: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let colored = match cli.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let (paths, analyze) = match cli.command {
        Command::Validate { paths } => (paths, false),
        Command::Analyze { paths } => (paths, true),
        Command::Ca(command) => {
            return match ca(command) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("meshctl: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    let mut options = StaticOptions::new(paths);
    options.loader.allow_unknown_fields = cli.allow_unknown_fields;
    let source = StaticSource::load(options);
    let status = source.status();
    let mut by_file: BTreeMap<Option<PathBuf>, Vec<Line>> = BTreeMap::new();
    for p in status.problems {
        by_file.entry(p.file().map(Path::to_path_buf)).or_default().push(problem_line(p));
    }
    if analyze {
        let mesh = MeshSnapshot::read(&source, &source);
        let workloads: Vec<analyze::WorkloadLabels> =
            source.workloads().iter().map(|w| (w.namespace.clone(), w.labels.clone())).collect();
        let origins = source.origins();
        for f in analyze::analyze(&mesh, &workloads) {
            let origin = origins.get(&f.resource);
            by_file.entry(origin.map(|o| o.file.clone())).or_default().push(Line {
                line: origin.map(|o| o.line),
                severity: match f.severity {
                    analyze::Severity::Error => Severity::Error,
                    analyze::Severity::Warning => Severity::Warning,
                },
                resource: Some(f.resource.to_string()),
                field: Some(f.field),
                message: f.message,
            });
        }
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    let paint = |code: &str, text: &str| if colored { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() };
    let (mut errors, mut warnings) = (0, 0);
    for (file, mut lines) in by_file {
        lines.sort_by_key(|l| (l.line, l.severity));
        let name = file.as_deref().map_or_else(|| "(no file)".to_string(), display_path);
        let _ = writeln!(out, "{}", paint("1", &name));
        for l in lines {
            let severity = match l.severity {
                Severity::Error => {
                    errors += 1;
                    paint("31", "error")
                }
                Severity::Warning => {
                    warnings += 1;
                    paint("33", "warning")
                }
            };
            let at = l.line.map_or_else(|| name.clone(), |n| format!("{name}:{n}"));
            let mut text = format!("  {at}: {severity}");
            if let Some(r) = &l.resource {
                text.push_str(&format!(" {}", paint("36", r)));
            }
            if let Some(f) = &l.field {
                text.push_str(&format!(" {}", paint("2", f)));
            }
            text.push_str(&format!(": {}", l.message));
            let _ = writeln!(out, "{text}");
        }
        let _ = writeln!(out);
    }
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let summary = format!(
        "{}, {} in {} ({}, {})",
        plural(errors, "error"),
        plural(warnings, "warning"),
        plural(status.files, "file"),
        plural(status.resources, "resource"),
        plural(status.services, "service")
    );
    let _ = writeln!(out, "{}", if errors > 0 { paint("31;1", &summary) } else { paint("32;1", &summary) });
    if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn problem_line(p: Problem) -> Line {
    Line {
        line: p.location.as_ref().map(|l| l.line),
        severity: p.severity,
        resource: p.resource,
        field: p.field,
        message: p.message,
    }
}

/// A path relative to the working directory when it is below it.
fn display_path(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}
