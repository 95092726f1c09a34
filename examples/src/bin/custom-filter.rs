//! A custom gateway in under 50 lines: the gateway on files, plus a filter
//! that answers 401 without the right API key and stamps the rest.
//!
//! `custom-filter --config examples/config/helloworld` then
//! `curl -H 'x-api-key: demo' localhost:8080/hello`.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use mesh_core::filter::{Filter, FilterContext, FilterError, RequestAction, RequestHead};
use mesh_proxy::{default_gateway_identity, ConfigSource, ProxyBuilder};

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
    let config: Vec<String> = std::env::args().skip_while(|a| a != "--config").skip(1).collect();
    let files = Arc::new(adapter_static::StaticSource::load(adapter_static::StaticOptions::new(config)));
    let _watch = files.watch_files()?;
    let proxy = ProxyBuilder::new(ConfigSource::mesh(files.clone(), files, default_gateway_identity()))
        .filter(Arc::new(ApiKey(std::env::var("API_KEY").unwrap_or_else(|_| "demo".into()))))
        .start()
        .await?;
    tokio::signal::ctrl_c().await?;
    proxy.drain().await;
    Ok(())
}
