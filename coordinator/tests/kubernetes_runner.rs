//! The Kubernetes trainer runner against an API-server stand-in that speaks the real Kubernetes
//! JSON (kube's documented way to test clients: `tower_test::mock` behind `kube::Client::new`):
//! create a Job and watch it to success, watch one to failure, adopt the Job a previous
//! coordinator created, stream the Pod's log lines, delete the Job when the stage is cancelled.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use capfilt_coordinator::bootstrap::kubernetes::{KubernetesTrainer, parse_template};
use capfilt_coordinator::bootstrap::trainer::{TrainerError, TrainerJob, TrainerRunner};
use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock;

const NS: &str = "capfilt";

const TEMPLATE: &str = r#"
apiVersion: batch/v1
kind: Job
metadata:
  name: capfilt-trainer
  labels:
    app.kubernetes.io/part-of: capfilt
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: trainer
          image: capfilt-trainer:dev
          command: ["python"]
"#;

#[derive(Clone, Copy, PartialEq)]
enum Finish {
    Succeed,
    Fail,
    Never,
}

#[derive(Default)]
struct Seen {
    requests: Vec<(String, String, Value)>,
}

impl Seen {
    fn count(&self, method: &str, path_part: &str) -> usize {
        self.requests
            .iter()
            .filter(|(m, p, _)| m == method && p.contains(path_part))
            .count()
    }
}

fn status_404() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "jobs.batch not found", "reason": "NotFound", "code": 404})
}

fn respond(code: u16, body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("response")
}

fn with_status(mut job: Value, finish: Finish) -> Value {
    job["metadata"]["resourceVersion"] = json!("7");
    job["status"] = match finish {
        Finish::Succeed => {
            json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
        }
        Finish::Fail => json!({"failed": 2, "conditions": [{"type": "Failed", "status": "True",
            "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}),
        Finish::Never => json!({"active": 1}),
    };
    job
}

/// Starts the stand-in; `existing` is a Job already in the namespace.
fn api_server(
    existing: Option<Value>,
    finish: Finish,
    log: &'static str,
) -> (kube::Client, Arc<Mutex<Seen>>) {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        let mut job = existing;
        let mut log_served = false;
        let mut held_watches = Vec::new();
        let mut parked = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.expect("body");
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let path = parts.uri.to_string();
            let method = parts.method.to_string();
            seen2.lock().expect("lock").requests.push((
                method.clone(),
                path.clone(),
                value.clone(),
            ));
            let jobs = format!("/apis/batch/v1/namespaces/{NS}/jobs");
            let response = if method == "POST" && path.starts_with(&jobs) {
                let mut created = value;
                created["metadata"]["resourceVersion"] = json!("1");
                created["metadata"]["uid"] = json!("u-1");
                job = Some(created.clone());
                Some(respond(201, serde_json::to_vec(&created).expect("json")))
            } else if method == "GET" && path.starts_with(&jobs) && path.contains("watch=true") {
                let j = job.clone().expect("watched a Job that exists");
                let events = [
                    json!({"type": "MODIFIED", "object": with_status(j.clone(), Finish::Never)}),
                    json!({"type": "MODIFIED", "object": with_status(j.clone(), finish)}),
                ];
                job = Some(with_status(j, finish));
                let body: Vec<u8> = events
                    .iter()
                    .flat_map(|e| {
                        let mut l = serde_json::to_vec(e).expect("json");
                        l.push(b'\n');
                        l
                    })
                    .collect();
                if finish == Finish::Never {
                    parked.push(send);
                    continue;
                }
                // Hold the outcome until the Pod's log was followed, as on a real cluster.
                held_watches.push((send, body));
                if log_served {
                    for (s, b) in held_watches.drain(..) {
                        s.send_response(respond(200, b));
                    }
                }
                continue;
            } else if method == "GET" && path.starts_with(&format!("{jobs}/")) {
                match &job {
                    Some(j) => Some(respond(200, serde_json::to_vec(j).expect("json"))),
                    None => Some(respond(
                        404,
                        serde_json::to_vec(&status_404()).expect("json"),
                    )),
                }
            } else if method == "DELETE" && path.starts_with(&format!("{jobs}/")) {
                let j = job.take().unwrap_or_else(status_404);
                Some(respond(200, serde_json::to_vec(&j).expect("json")))
            } else if method == "GET" && path.contains("/podtemplates/capfilt-trainer") {
                Some(respond(200, serde_json::to_vec(&json!({
                    "apiVersion": "v1", "kind": "PodTemplate",
                    "metadata": {"name": "capfilt-trainer", "namespace": NS, "labels": {"app.kubernetes.io/part-of": "capfilt"}},
                    "template": {"spec": {"restartPolicy": "Never", "containers": [
                        {"name": "trainer", "image": "registry.example/capfilt-trainer:1.0", "command": ["python"]}]}}
                })).expect("json")))
            } else if method == "GET" && path.contains("/pods/trainer-pod-1/log") {
                log_served = true;
                for (s, b) in held_watches.drain(..) {
                    s.send_response(respond(200, b));
                }
                Some(
                    Response::builder()
                        .status(200)
                        .body(Body::from(log.as_bytes().to_vec()))
                        .expect("response"),
                )
            } else if method == "GET" && path.contains(&format!("/api/v1/namespaces/{NS}/pods")) {
                let items = if log.is_empty() {
                    json!([])
                } else {
                    json!([{"metadata": {"name": "trainer-pod-1", "namespace": NS},
                            "status": {"phase": "Running"}}])
                };
                Some(respond(
                    200,
                    serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "PodList",
                    "metadata": {"resourceVersion": "3"}, "items": items}))
                    .expect("json"),
                ))
            } else {
                Some(respond(
                    404,
                    serde_json::to_vec(&status_404()).expect("json"),
                ))
            };
            if let Some(r) = response {
                send.send_response(r);
            }
        }
        drop(parked);
    });
    (kube::Client::new(service, NS), seen)
}

fn runner(client: kube::Client) -> KubernetesTrainer {
    let template = parse_template("template.yaml", TEMPLATE).expect("template");
    KubernetesTrainer::new(client, NS, template, "1a2b3c4d5e6f7a8b")
        .with_poll(Duration::from_millis(20))
        .with_ttl_after_finished(3600)
}

fn job() -> TrainerJob {
    TrainerJob::stage(1, "train", "s3://bucket/run/round-0001/trainer/train.json")
}

#[tokio::test]
async fn creates_the_job_from_the_template_and_watches_it_to_success() {
    let (client, seen) = api_server(
        None,
        Finish::Succeed,
        "[stage] training captioner\n[stage] captioner: uploaded bundle\n",
    );
    let r = runner(client);
    tokio::time::timeout(Duration::from_secs(20), r.run(&job()))
        .await
        .expect("finishes")
        .expect("succeeds");
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.count("POST", "/jobs"), 1, "{:?}", seen.requests);
    assert_eq!(
        seen.count("DELETE", "/jobs"),
        0,
        "a finished Job is left to its TTL"
    );
    let (_, _, created) = seen
        .requests
        .iter()
        .find(|(m, _, _)| m == "POST")
        .expect("create");
    assert_eq!(created["metadata"]["name"], "capfilt-r0001-train-1a2b3c4d");
    assert_eq!(created["metadata"]["namespace"], NS);
    let labels = &created["metadata"]["labels"];
    assert_eq!(labels["capfilt.io/run"], "1a2b3c4d5e6f7a8b");
    assert_eq!(labels["capfilt.io/round"], "1");
    assert_eq!(labels["capfilt.io/task"], "train");
    assert_eq!(
        labels["app.kubernetes.io/part-of"], "capfilt",
        "template labels kept"
    );
    assert_eq!(created["spec"]["ttlSecondsAfterFinished"], 3600);
    assert_eq!(
        created["spec"]["template"]["metadata"]["labels"]["capfilt.io/round"],
        "1"
    );
    let c = &created["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["command"], json!(["python"]));
    assert_eq!(
        c["args"],
        json!([
            "-m",
            "capfilt_trainer",
            "stage",
            "--spec",
            "s3://bucket/run/round-0001/trainer/train.json"
        ])
    );
    assert!(
        seen.count("GET", "/pods/trainer-pod-1/log") >= 1,
        "the Pod's log was followed"
    );
}

#[tokio::test]
async fn a_failed_job_is_reported_with_its_condition_and_last_log_lines() {
    let (client, _seen) = api_server(
        None,
        Finish::Fail,
        "[stage] training captioner\nerror: no rows in s3://bucket/seed\n",
    );
    let r = runner(client);
    let err = tokio::time::timeout(Duration::from_secs(20), r.run(&job()))
        .await
        .expect("finishes")
        .expect_err("fails");
    let msg = err.to_string();
    assert!(matches!(err, TrainerError::Failed { .. }), "{msg}");
    assert!(msg.contains("BackoffLimitExceeded"), "{msg}");
    assert!(msg.contains("error: no rows in s3://bucket/seed"), "{msg}");
}

#[tokio::test]
async fn a_restarted_coordinator_adopts_the_job_instead_of_creating_a_second() {
    let r0 = runner(api_server(None, Finish::Never, "").0);
    let mut existing = serde_json::to_value(r0.job_object(&job())).expect("json");
    existing["metadata"]["resourceVersion"] = json!("5");
    existing["status"] = json!({"active": 1});
    let (client, seen) = api_server(Some(existing), Finish::Succeed, "[stage] training filter\n");
    let r = runner(client);
    tokio::time::timeout(Duration::from_secs(20), r.run(&job()))
        .await
        .expect("finishes")
        .expect("succeeds");
    let seen = seen.lock().expect("lock");
    assert_eq!(
        seen.count("POST", "/jobs"),
        0,
        "adopted: {:?}",
        seen.requests
    );
    assert!(seen.count("GET", "watch=true") >= 1);
}

#[tokio::test]
async fn a_cancelled_stage_deletes_its_job() {
    let (client, seen) = api_server(None, Finish::Never, "");
    let r = runner(client);
    let j = job();
    let running = tokio::time::timeout(Duration::from_millis(500), r.run(&j)).await;
    assert!(running.is_err(), "still running when cancelled");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if seen
            .lock()
            .expect("lock")
            .count("DELETE", "/jobs/capfilt-r0001-train-1a2b3c4d")
            == 1
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the Job was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = seen.lock().expect("lock");
    let (_, _, body) = seen
        .requests
        .iter()
        .find(|(m, _, _)| m == "DELETE")
        .expect("delete");
    assert_eq!(body["propagationPolicy"], "Background");
}

#[tokio::test]
async fn jobs_wrap_the_pod_template_deployed_with_the_manifests() {
    let (client, seen) = api_server(None, Finish::Succeed, "[stage] training captioner\n");
    let r = KubernetesTrainer::with_pod_template(client, NS, "capfilt-trainer", "1a2b3c4d5e6f7a8b")
        .await
        .expect("pod template read")
        .with_poll(Duration::from_millis(20));
    tokio::time::timeout(Duration::from_secs(20), r.run(&job()))
        .await
        .expect("finishes")
        .expect("succeeds");
    let seen = seen.lock().expect("lock");
    let (_, _, created) = seen
        .requests
        .iter()
        .find(|(m, _, _)| m == "POST")
        .expect("create");
    let c = &created["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "registry.example/capfilt-trainer:1.0");
    assert_eq!(
        created["spec"]["template"]["spec"]["restartPolicy"],
        "Never"
    );
    assert_eq!(created["spec"]["backoffLimit"], 1);
}

#[test]
fn a_template_without_a_container_is_refused() {
    let err = parse_template(
        "t.yaml",
        "apiVersion: batch/v1\nkind: Job\nspec:\n  template:\n    spec:\n      containers: []\n",
    )
    .expect_err("no container");
    assert!(err.to_string().contains("containers"), "{err}");
}
