//! The wire protocol over real gRPC between a client and an in-process coordinator.

use capfilt_proto::{PROTOCOL_VERSION, v1};
use capfilt_tests::TestCoordinator;
use tonic::Code;

fn register(id: &str, version: u32, slots: u32) -> v1::RegisterWorkerRequest {
    v1::RegisterWorkerRequest {
        protocol_version: version,
        worker_id: id.into(),
        device: Some(v1::Device {
            kind: v1::DeviceKind::Cpu.into(),
            index: 0,
            description: "test".into(),
        }),
        slots,
        hostname: "localhost".into(),
        build_version: "test".into(),
    }
}

fn poll(id: &str, version: u32, leases: Vec<v1::LeaseProgress>) -> v1::PollWorkRequest {
    v1::PollWorkRequest {
        protocol_version: version,
        worker_id: id.into(),
        free_slots: 1,
        leases,
        accepting: true,
    }
}

#[tokio::test]
async fn every_rpc_refuses_another_protocol_version_with_failed_precondition() -> anyhow::Result<()>
{
    let coord = TestCoordinator::start().await?;
    let mut client = coord.client().await?;
    let wrong = PROTOCOL_VERSION + 1;

    let e = client
        .register_worker(register("w1", wrong, 1))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains(&format!("v{wrong}")),
        "{}",
        e.message()
    );

    let e = client
        .poll_work(poll("w1", wrong, vec![]))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = client
        .complete_shard(v1::CompleteShardRequest {
            protocol_version: wrong,
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = client
        .fail_shard(v1::FailShardRequest {
            protocol_version: wrong,
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = client
        .get_status(v1::GetStatusRequest {
            protocol_version: 0,
            include_shards: false,
        })
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::FailedPrecondition);

    // Nothing was registered by the refused calls.
    let status = client
        .get_status(v1::GetStatusRequest {
            protocol_version: PROTOCOL_VERSION,
            include_shards: false,
        })
        .await?
        .into_inner();
    assert!(status.workers.is_empty());
    coord.stop().await?;
    Ok(())
}

#[tokio::test]
async fn registered_workers_heartbeat_and_show_in_status() -> anyhow::Result<()> {
    let coord = TestCoordinator::start().await?;
    let mut client = coord.client().await?;

    let reply = client
        .register_worker(register("w1", PROTOCOL_VERSION, 2))
        .await?
        .into_inner();
    assert_eq!(reply.protocol_version, PROTOCOL_VERSION);
    assert_eq!(reply.poll_interval_ms, 100);
    assert_eq!(reply.lease_timeout_ms, 2_000);
    client
        .register_worker(register("w2", PROTOCOL_VERSION, 1))
        .await?;

    let reply = client
        .poll_work(poll("w1", PROTOCOL_VERSION, vec![]))
        .await?
        .into_inner();
    assert!(
        reply.new_leases.is_empty(),
        "no round is planned, so no leases"
    );
    assert!(reply.cancellations.is_empty());

    let status = client
        .get_status(v1::GetStatusRequest {
            protocol_version: PROTOCOL_VERSION,
            include_shards: true,
        })
        .await?
        .into_inner();
    let ids: Vec<&str> = status
        .workers
        .iter()
        .map(|w| w.worker_id.as_str())
        .collect();
    assert_eq!(ids, ["w1", "w2"]);
    assert_eq!(status.workers[0].slots, 2);
    assert_eq!(status.round, 0);
    assert_eq!(
        status.coordinator_instance,
        reply_instance(&mut client).await?
    );
    coord.stop().await?;
    Ok(())
}

async fn reply_instance(
    client: &mut capfilt_proto::v1::coordinator_client::CoordinatorClient<
        tonic::transport::Channel,
    >,
) -> anyhow::Result<String> {
    Ok(client
        .register_worker(register("w3", PROTOCOL_VERSION, 1))
        .await?
        .into_inner()
        .coordinator_instance)
}

#[tokio::test]
async fn unknown_workers_and_leases_are_refused_with_their_names() -> anyhow::Result<()> {
    let coord = TestCoordinator::start().await?;
    let mut client = coord.client().await?;

    let e = client
        .poll_work(poll("ghost", PROTOCOL_VERSION, vec![]))
        .await
        .expect_err("unregistered");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("ghost") && e.message().contains("register"),
        "{}",
        e.message()
    );

    let e = client
        .register_worker(register("", PROTOCOL_VERSION, 1))
        .await
        .expect_err("empty id");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = client
        .register_worker(register("w0", PROTOCOL_VERSION, 0))
        .await
        .expect_err("no slots");
    assert_eq!(e.code(), Code::InvalidArgument);

    client
        .register_worker(register("w1", PROTOCOL_VERSION, 1))
        .await?;
    // A lease this coordinator never granted is cancelled on the next heartbeat...
    let lease = v1::LeaseProgress {
        shard_id: "s-000".into(),
        attempt: 1,
        rows_done: 5,
        rows_total: 10,
        round: 1,
        started: true,
    };
    let reply = client
        .poll_work(poll("w1", PROTOCOL_VERSION, vec![lease]))
        .await?
        .into_inner();
    assert_eq!(reply.cancellations.len(), 1);
    assert_eq!(reply.cancellations[0].shard_id, "s-000");
    assert_eq!(
        reply.cancellations[0].reason(),
        v1::CancelReason::UnknownLease
    );
    // With no run, the worker is told to wait rather than that the run is finished.
    assert_eq!(reply.run_state(), v1::RunState::Waiting);
    // ...and cannot be completed or failed.
    let e = client
        .complete_shard(v1::CompleteShardRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: "w1".into(),
            commit: Some(v1::CommitRecord {
                shard_id: "s-000".into(),
                attempt: 1,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("not leased");
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("s-000"), "{}", e.message());
    let e = client
        .fail_shard(v1::FailShardRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: "w1".into(),
            shard_id: "s-000".into(),
            attempt: 1,
            ..Default::default()
        })
        .await
        .expect_err("not leased");
    assert_eq!(e.code(), Code::NotFound);
    coord.stop().await?;
    Ok(())
}

#[tokio::test]
async fn shutdown_stops_the_server() -> anyhow::Result<()> {
    let coord = TestCoordinator::start().await?;
    let url = coord.url();
    coord.stop().await?;
    let connected = capfilt_proto::v1::coordinator_client::CoordinatorClient::connect(url).await;
    assert!(connected.is_err(), "the port no longer accepts connections");
    Ok(())
}
