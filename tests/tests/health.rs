//! Readiness as Kubernetes and gRPC clients see it: `grpc.health.v1` on the gRPC port and
//! `/readyz` on the HTTP port say NOT_SERVING / 503 until a round is opened, then SERVING / 200;
//! `/healthz` answers 200 throughout. Also: a lease nobody heartbeats counts one expiry.

use std::time::Duration;

use capfilt_coordinator::{CoordinatorService, Round, Timing};
use capfilt_proto::v1;
use capfilt_tests::round::{round_spec, write_dataset};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn grpc_status(
    client: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
) -> ServingStatus {
    let r = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check");
    r.into_inner().status()
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (code, body)
}

#[tokio::test]
async fn not_ready_until_a_round_opens_on_grpc_and_http() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let service = CoordinatorService::new(Timing {
        poll_interval: Duration::from_millis(100),
        lease_timeout: Duration::from_secs(2),
        exclusion: Duration::from_secs(600),
    });
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let grpc_addr = grpc.local_addr().expect("addr");
    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let http_addr = http.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let server = tokio::spawn(capfilt_coordinator::run(
        service.clone(),
        grpc,
        wait(stop_rx.clone()),
    ));
    let http_server = tokio::spawn(capfilt_coordinator::http::serve(
        service.clone(),
        None,
        http,
        wait(stop_rx),
    ));

    let channel = loop {
        match tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
            .expect("endpoint")
            .connect()
            .await
        {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut client = HealthClient::new(channel.clone());
    // The reporter sets its first status within a tick.
    tokio::time::sleep(Duration::from_millis(400)).await;
    for name in ["", capfilt_coordinator::GRPC_SERVICE_NAME] {
        assert_eq!(
            grpc_status(&mut client, name).await,
            ServingStatus::NotServing,
            "{name:?}"
        );
    }
    assert_eq!(http_get(http_addr, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(
        http_get(http_addr, "/readyz").await,
        (503, "not ready: no round opened yet\n".into())
    );
    let (_, metrics) = http_get(http_addr, "/metrics").await;
    assert!(metrics.contains("capfilt_coordinator_ready 0"), "{metrics}");

    let data = write_dataset(&tmp.path().join("web"), 1, 20, 10);
    let spec = round_spec(
        &data.dir.display().to_string(),
        &tmp.path().join("out/round-0001").display().to_string(),
        10,
        Vec::new(),
    );
    service.install_round(Round::open(spec).await.expect("round"));

    assert_eq!(
        http_get(http_addr, "/readyz").await,
        (200, "ready\n".into())
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while grpc_status(&mut client, capfilt_coordinator::GRPC_SERVICE_NAME).await
        != ServingStatus::Serving
    {
        assert!(tokio::time::Instant::now() < deadline, "never SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(grpc_status(&mut client, "").await, ServingStatus::Serving);
    let (_, metrics) = http_get(http_addr, "/metrics").await;
    assert!(metrics.contains("capfilt_coordinator_ready 1"), "{metrics}");
    assert!(
        metrics.contains("capfilt_coordinator_shards{state=\"pending\"} 2"),
        "{metrics}"
    );
    // The health checks themselves are timed like every RPC.
    assert!(
        metrics.contains(
            "capfilt_coordinator_rpc_duration_seconds_count{method=\"health.Check\",code=\"ok\"}"
        ),
        "{metrics}"
    );
    let (code, page) = http_get(http_addr, "/").await;
    assert_eq!(code, 200);
    assert!(page.contains("<td id=shards-pending>2</td>"), "{page}");

    // A lease nobody heartbeats is taken back once: granted 1, expired 1 (live leases that the
    // sweeper ticks over are not expiries).
    let mut coord = capfilt_proto::v1::coordinator_client::CoordinatorClient::new(channel.clone());
    coord
        .register_worker(v1::RegisterWorkerRequest {
            protocol_version: capfilt_proto::PROTOCOL_VERSION,
            worker_id: "silent".into(),
            device: None,
            slots: 1,
            hostname: "localhost".into(),
            build_version: "test".into(),
        })
        .await
        .expect("register");
    let leased = coord
        .poll_work(v1::PollWorkRequest {
            protocol_version: capfilt_proto::PROTOCOL_VERSION,
            worker_id: "silent".into(),
            free_slots: 1,
            leases: Vec::new(),
            accepting: true,
        })
        .await
        .expect("poll")
        .into_inner();
    assert_eq!(leased.new_leases.len(), 1);
    let (_, metrics) = http_get(http_addr, "/metrics").await;
    assert!(
        metrics.contains("capfilt_coordinator_leases_granted_total 1\n"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("capfilt_coordinator_leases_expired_total"),
        "{metrics}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = http_get(http_addr, "/metrics").await;
        if metrics.contains("capfilt_coordinator_leases_expired_total 1\n") {
            break;
        }
        assert!(
            !metrics.contains("capfilt_coordinator_leases_expired_total"),
            "one lease expires once: {metrics}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "never expired: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let _ = stop_tx.send(true);
    server.await.expect("join").expect("grpc server");
    http_server.await.expect("join").expect("http server");
}
