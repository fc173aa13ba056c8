//! `simulate --metrics-addr`: the engine's Prometheus text served over HTTP
//! while the sale runs. The core only renders (`Exporter::render`); serving
//! is the host's job, done here with axum on a one-thread tokio runtime of
//! its own, so the simulation's threads are untouched.
//!
//! Invariant: the listener is bound before `serve` returns (a scraper given
//! the printed address never races the bind), and dropping the server stops
//! the runtime and closes the port.

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use duewheel::prometheus::{self, Exporter};
use std::io;
use std::net::SocketAddr;

/// Serves `GET /metrics` until dropped.
pub(crate) struct MetricsServer {
    local_addr: SocketAddr,
    // Dropping the runtime cancels the server task and closes the socket.
    _runtime: tokio::runtime::Runtime,
}

impl MetricsServer {
    /// Binds `addr` and serves `exporter` on it.
    pub(crate) fn serve(exporter: Exporter, addr: SocketAddr) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("duewheel-metrics")
            .enable_io()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind(addr))?;
        let local_addr = listener.local_addr()?;
        let app = Router::new().route(
            "/metrics",
            get(move || {
                let exporter = exporter.clone();
                async move {
                    (
                        [(CONTENT_TYPE, prometheus::CONTENT_TYPE)],
                        exporter.render(),
                    )
                }
            }),
        );
        runtime.spawn(async move {
            // A failed accept loop ends the endpoint, never the sale.
            let _ = axum::serve(listener, app.into_make_service()).await;
        });
        Ok(Self {
            local_addr,
            _runtime: runtime,
        })
    }

    /// The address it listens on (useful after binding port 0).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}
