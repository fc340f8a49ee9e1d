//! The Spate server as a library: `serve::Server::build` composes the control
//! plane, the data-plane and admin routers and the listeners in one place;
//! `serve::run` runs it with the flags of `spate serve` ([`ServeArgs`]). The
//! `spate` binary's CLI (client commands, output, bench) talks to a running
//! server over HTTP only and uses this crate just to start one.

mod admin;
mod admin_auth;
mod authz;
mod bindings;
mod cluster;
pub mod config;
mod control;
mod data_auth;
pub mod error;
mod file_store;
mod ingress;
mod kube;
mod listener;
mod live;
mod objects;
mod oidc;
mod otel;
mod proxy;
mod retry;
mod sealed;
pub mod serve;
mod status;
mod store;
mod tls;
mod webhooks;

pub use config::ServeArgs;
pub use error::ServeError;
