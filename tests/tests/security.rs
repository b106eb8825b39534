//! The gRPC port with TLS, mutual TLS and a bearer token, as `k8s/make-grpc-secrets.sh` sets
//! it up: a plaintext client cannot connect, a worker without a client certificate or without
//! the token is refused with a clear status, one with both registers; and a worker cannot
//! claim more slots than it registered.

use std::path::Path;
use std::time::Duration;

use capfilt_coordinator::{CoordinatorService, Round, Timing};
use capfilt_proto::security::{ClientSecurity, ClientTls, ServerSecurity, ServerTls, Token};
use capfilt_proto::v1::coordinator_client::CoordinatorClient;
use capfilt_proto::{PROTOCOL_VERSION, v1};
use capfilt_tests::round::{repo, round_spec, write_dataset};
use tokio::sync::oneshot;

fn make_certs(dir: &Path) {
    let ok = std::process::Command::new("bash")
        .arg(repo().join("k8s/make-grpc-secrets.sh"))
        .arg("--out")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("bash");
    assert!(
        ok.success(),
        "make-grpc-secrets.sh failed (is openssl installed?)"
    );
}

fn register(id: &str, slots: u32) -> v1::RegisterWorkerRequest {
    v1::RegisterWorkerRequest {
        protocol_version: PROTOCOL_VERSION,
        worker_id: id.into(),
        slots,
        ..Default::default()
    }
}

async fn serve(service: CoordinatorService) -> (String, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(capfilt_coordinator::run(service, listener, async {
        let _ = rx.await;
    }));
    (format!("127.0.0.1:{port}"), tx)
}

async fn client(
    url: &str,
    security: &ClientSecurity,
) -> Result<
    CoordinatorClient<
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            capfilt_proto::security::ClientAuth,
        >,
    >,
    String,
> {
    let channel = security
        .endpoint(url)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(CoordinatorClient::with_interceptor(
        channel,
        security.interceptor(),
    ))
}

#[tokio::test]
async fn only_workers_with_a_client_certificate_and_the_token_get_in() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    make_certs(d);
    let token = Token::from_file(&d.join("token")).expect("token");
    let server = ServerSecurity {
        tls: Some(ServerTls {
            cert: d.join("coordinator.crt"),
            key: d.join("coordinator.key"),
            client_ca: Some(d.join("ca.crt")),
        }),
        token: Some(token.clone()),
        insecure: false,
    };
    let (addr, _stop) =
        serve(CoordinatorService::new(Timing::default()).with_security(server)).await;
    let full = ClientSecurity {
        tls: Some(ClientTls {
            ca: Some(d.join("ca.crt")),
            cert: Some(d.join("worker.crt")),
            key: Some(d.join("worker.key")),
            domain: Some("localhost".into()),
        }),
        token: Some(token),
    };
    let https = format!("https://{addr}");

    // Plaintext: no connection at all.
    let plain = client(&format!("http://{addr}"), &ClientSecurity::default()).await;
    match plain {
        Err(_) => {}
        Ok(mut c) => assert!(c.register_worker(register("plain", 1)).await.is_err()),
    }
    // TLS without a client certificate: the handshake is refused.
    let no_cert = ClientSecurity {
        tls: Some(ClientTls {
            cert: None,
            key: None,
            ..full.tls.clone().expect("tls")
        }),
        ..full.clone()
    };
    match client(&https, &no_cert).await {
        Err(_) => {}
        Ok(mut c) => assert!(c.register_worker(register("no-cert", 1)).await.is_err()),
    }
    // Certificate but no token, or a wrong one: UNAUTHENTICATED, saying what to set.
    let no_token = ClientSecurity {
        token: None,
        ..full.clone()
    };
    let mut c = client(&https, &no_token).await.expect("tls connects");
    let e = c
        .register_worker(register("no-token", 1))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(e.message().contains("[auth] token_file"), "{}", e.message());
    std::fs::write(d.join("wrong"), "not-the-token").expect("write");
    let wrong = ClientSecurity {
        token: Some(Token::from_file(&d.join("wrong")).expect("token")),
        ..full.clone()
    };
    let mut c = client(&https, &wrong).await.expect("tls connects");
    let e = c
        .register_worker(register("wrong", 1))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    // Everything in place: registered.
    let mut c = client(&https, &full).await.expect("connects");
    c.register_worker(register("good", 1))
        .await
        .expect("registered");
}

#[tokio::test]
async fn a_coordinator_refuses_plaintext_off_loopback() {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let service = CoordinatorService::new(Timing::default());
    let err = capfilt_coordinator::run(service, listener, async {})
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("without TLS"), "{err}");
}

#[tokio::test]
async fn a_worker_gets_no_more_leases_than_its_slots_plus_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = write_dataset(&tmp.path().join("web"), 1, 40, 10);
    let spec = round_spec(
        &data.dir.display().to_string(),
        &tmp.path().join("out/round-0001").display().to_string(),
        10,
        Vec::new(),
    );
    let round = Round::open(spec).await.expect("round");
    let (addr, _stop) = serve(CoordinatorService::with_round(Timing::default(), round)).await;
    let mut c = client(&format!("http://{addr}"), &ClientSecurity::default())
        .await
        .expect("connects");
    c.register_worker(register("greedy", 1))
        .await
        .expect("registered");
    let r = c
        .poll_work(v1::PollWorkRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: "greedy".into(),
            free_slots: 4,
            leases: Vec::new(),
            accepting: true,
        })
        .await
        .expect("poll")
        .into_inner();
    assert_eq!(
        r.new_leases.len(),
        2,
        "1 slot + 1 read-ahead, not the 4 it claimed"
    );
}
