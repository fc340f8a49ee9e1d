//! The forwarding-proxy baseline of `spate bench`: a minimal HTTP/1 proxy
//! (hyper, pooled client, one hop, nothing stored) in front of the same sink,
//! driven with the same load, so that the broker's cost is compared with the
//! least any intermediary must do, in the same run.

use std::convert::Infallible;

use anyhow::Context;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

pub struct Proxy {
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the proxy on a free local port, forwarding every request to `target` (`http://host:port`).
pub async fn start(target: &str) -> anyhow::Result<Proxy> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the proxy")?;
    let url = format!("http://{}", listener.local_addr()?);
    let authority: hyper::http::uri::Authority =
        target.trim_start_matches("http://").trim_end_matches('/').parse().context("the sink's address")?;
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build_http();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let (client, authority) = (client.clone(), authority.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    forward(client.clone(), authority.clone(), req)
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(Proxy { url, task })
}

async fn forward(
    client: Client<HttpConnector, Incoming>,
    authority: hyper::http::uri::Authority,
    mut req: Request<Incoming>,
) -> Result<Response<http_body_util::Either<Incoming, String>>, Infallible> {
    let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let uri = hyper::Uri::builder().scheme("http").authority(authority).path_and_query(path).build();
    let Ok(uri) = uri else { return Ok(bad_gateway("bad URI".into())) };
    *req.uri_mut() = uri;
    match client.request(req).await {
        Ok(r) => Ok(r.map(http_body_util::Either::Left)),
        Err(e) => Ok(bad_gateway(e.to_string())),
    }
}

fn bad_gateway(why: String) -> Response<http_body_util::Either<Incoming, String>> {
    let mut r = Response::new(http_body_util::Either::Right(why));
    *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
    r
}
