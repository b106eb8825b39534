//! The coordinator's HTTP port (`--metrics-listen`): `/metrics`, `/healthz`, `/readyz` (from
//! `capfilt-telemetry`), the status page at `/`, and the round reports written under the output
//! (`/rounds/NNNN/report/...`), read from the store so an operator needs no store credentials.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use capfilt_schemas::store::Location;
use object_store::ObjectStoreExt as _;
use tokio::net::TcpListener;

use crate::CoordinatorService;
use crate::health::Readiness;
use crate::metrics::StateCollector;

#[derive(Clone)]
struct Page {
    service: CoordinatorService,
    /// The run's output root, when reports can be served.
    output: Option<Location>,
}

/// All routes of the coordinator's HTTP port. `output` is the run's output root (the reports
/// under it are served); `None` for a bare coordinator.
pub fn router(
    service: CoordinatorService,
    output: Option<Location>,
) -> Result<Router, capfilt_telemetry::TelemetryError> {
    let handle = capfilt_telemetry::install_recorder()?;
    crate::metrics::describe();
    let base = capfilt_telemetry::router(
        handle,
        Arc::new(Readiness(service.health().clone())),
        Some(Arc::new(StateCollector(service.clone()))),
    );
    let page = Page { service, output };
    Ok(base.merge(
        Router::new()
            .route("/", get(status_page))
            .route("/rounds/{round}/report/{*file}", get(report_file))
            .with_state(page),
    ))
}

/// Serves [`router`] on `listener` until `shutdown` resolves.
pub async fn serve(
    service: CoordinatorService,
    output: Option<Location>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), capfilt_telemetry::TelemetryError> {
    capfilt_telemetry::serve(listener, router(service, output)?, shutdown).await
}

async fn status_page(State(page): State<Page>) -> Response {
    let status = page.service.status(true);
    let ready = page.service.health().ready();
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(crate::status_page::render(
            &status,
            &ready,
            page.output.is_some(),
        )),
    )
        .into_response()
}

fn content_type(file: &str) -> &'static str {
    match file.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "json" => "application/json",
        "css" => "text/css",
        _ => "application/octet-stream",
    }
}

async fn report_file(
    State(page): State<Page>,
    Path((round, file)): Path<(String, String)>,
) -> Response {
    let Some(out) = &page.output else {
        return (
            StatusCode::NOT_FOUND,
            "this coordinator runs no bootstrap run\n",
        )
            .into_response();
    };
    let round_ok = round.len() == 4 && round.bytes().all(|b| b.is_ascii_digit());
    let file_ok = !file.is_empty()
        && file
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && !seg.contains('\\'));
    if !round_ok || !file_ok {
        return (StatusCode::BAD_REQUEST, "bad report path\n").into_response();
    }
    let loc = out.child(&format!("round-{round}/report/{file}"));
    match loc.store.get(&loc.path).await {
        Ok(got) => match got.bytes().await {
            Ok(bytes) => ([(header::CONTENT_TYPE, content_type(&file))], bytes).into_response(),
            Err(e) => (StatusCode::BAD_GATEWAY, format!("{}: {e}\n", loc.display)).into_response(),
        },
        Err(object_store::Error::NotFound { .. }) => (
            StatusCode::NOT_FOUND,
            format!("{} does not exist\n", loc.display),
        )
            .into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, format!("{}: {e}\n", loc.display)).into_response(),
    }
}
