//! A custom gateway in under 60 lines: the gateway on files, plus a filter
//! that answers 401 without the right API key and stamps the rest.
//!
//! `custom-filter --config examples/config/helloworld` then
//! `curl -H 'x-api-key: demo' localhost:8080/hello`.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use clap::Parser;
use mesh_core::filter::{Filter, FilterContext, FilterError, RequestAction, RequestHead};
use mesh_proxy::{default_gateway_identity, ConfigSource, ProxyBuilder};

#[derive(Parser)]
#[command(about = "An Istio-config gateway that requires an API key in x-api-key", version)]
struct Args {
    /// Istio YAML files or directories (reloaded on change).
    #[arg(long, required = true, num_args = 1..)]
    config: Vec<PathBuf>,
    /// The key clients must send in `x-api-key`.
    #[arg(long, env = "API_KEY", default_value = "demo")]
    api_key: String,
}

struct ApiKey(String);

#[async_trait]
impl Filter for ApiKey {
    fn name(&self) -> &str {
        "api-key"
    }

    async fn on_request(&self, req: &mut RequestHead, _ctx: &mut FilterContext) -> Result<RequestAction, FilterError> {
        if req.headers.get("x-api-key").is_some_and(|k| k.as_bytes() == self.0.as_bytes()) {
            req.headers.insert("x-authenticated", http::HeaderValue::from_static("api-key"));
            return Ok(RequestAction::Continue);
        }
        let deny = http::Response::builder().status(401).body(Bytes::from_static(b"x-api-key required\n"));
        Ok(RequestAction::Respond(deny.map_err(|e| FilterError::new("api-key", e.to_string()))?))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let files = Arc::new(adapter_static::StaticSource::load(adapter_static::StaticOptions::new(args.config)));
    let _watch = files.watch_files()?;
    let proxy = ProxyBuilder::new(ConfigSource::mesh(files.clone(), files, default_gateway_identity()))
        .filter(Arc::new(ApiKey(args.api_key)))
        .start()
        .await?;
    proxy.serve_until_shutdown().await?;
    Ok(())
}
