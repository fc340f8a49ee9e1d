//! OpenTelemetry export (`--otlp-endpoint`): spans go to an OTLP/HTTP
//! collector (JSON encoding) in batches from a background thread. Without the
//! flag no provider is installed and `spate_delivery::trace` creates nothing.

use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;

/// Installs the exporter; the returned provider flushes on [`shutdown`].
pub fn install(endpoint: &str) -> Result<SdkTracerProvider, crate::error::ServeError> {
    use crate::error::ServeError;
    let base = endpoint.trim_end_matches('/');
    let url = if base.ends_with("/v1/traces") { base.to_string() } else { format!("{base}/v1/traces") };
    reqwest::Url::parse(&url)
        .map_err(|e| ServeError::Invalid(format!("--otlp-endpoint: '{endpoint}' is not a URL: {e}")))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(url.clone())
        .build()
        .map_err(|e| ServeError::Invalid(format!("building the OTLP exporter for {url}: {e}")))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("spate").build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    spate_delivery::trace::enable();
    tracing::info!(endpoint = %url, "exporting traces (OTLP/HTTP, JSON)");
    Ok(provider)
}

/// Sends what is buffered (off the async runtime: the exporter blocks).
pub async fn shutdown(provider: SdkTracerProvider) {
    let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
}
