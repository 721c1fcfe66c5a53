//! Pod networks end to end through `podsnap serve` (root): each Pod in its own network
//! namespace with its own IP from the agent's subnet, its container ports answering at
//! `PodIP:port` from the host, nothing left once it is deleted, stale networks removed and
//! live ones kept across a crash of the agent, restored Pods on new IPs, and hostNetwork Pods
//! on the host's network.

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use hyper::Method;
use serde_json::Value;

/// A busybox web server answering with its Pod IP (read through the downward API when it
/// started).
const WEB_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: NAME, namespace: default, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: localhost/busybox
    command: ["/bin/sh", "-c", "echo \"ip=$POD_IP\" > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"]
    env: [{name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]
    ports: [{containerPort: 8080}]
"#;

fn web_pod(name: &str) -> String {
    WEB_POD.replace("NAME", name)
}

/// `GET /index.html` from `ip:port`; the body of a `200` answer.
async fn http_get(ip: &str, port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connect = tokio::net::TcpStream::connect((ip, port));
    let mut stream = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .ok()?
        .ok()?;
    stream
        .write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.lines()
        .next()?
        .contains(" 200 ")
        .then(|| body.trim().to_owned())
}

/// Waits until `ip:port` answers; the body.
async fn serves(ip: &str, port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(body) = http_get(ip, port).await {
            return body;
        }
        assert!(Instant::now() < deadline, "nothing answered on {ip}:{port}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The Pod's IP from its status, checked to be in the agent's subnet.
fn pod_ip(dir: &Path, pod: &Value) -> String {
    let ip = pod["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let parsed: Ipv4Addr = ip
        .parse()
        .unwrap_or_else(|_| panic!("no Pod IP: {}", pod["status"]));
    let subnet = test_pod_subnet(dir);
    let prefix = subnet.rsplit_once(".0/24").unwrap().0;
    assert!(
        ip.starts_with(&format!("{prefix}.")) && parsed.octets()[3] > 1,
        "{ip} is not a Pod address of {subnet}"
    );
    assert_eq!(pod["status"]["podIPs"][0]["ip"], ip.as_str());
    ip
}

fn network_dir(dir: &Path) -> PathBuf {
    dir.join("network")
}

fn sandbox_of(pod: &Value) -> String {
    podsnap_runtime::plan::sandbox_id(
        "default",
        pod["metadata"]["name"].as_str().unwrap(),
        pod["metadata"]["uid"].as_str().unwrap(),
    )
}

/// The Pod network leftovers of sandbox `id`: its namespace file, its record, its lease.
fn leftovers(dir: &Path, id: &str, ip: &str) -> Vec<PathBuf> {
    let net = network_dir(dir);
    [
        net.join("netns").join(id),
        net.join("pods").join(format!("{id}.json")),
        net.join("ipam/podsnap").join(ip),
    ]
    .into_iter()
    .filter(|p| p.exists())
    .collect()
}

async fn delete_pod(client: &Client, name: &str) {
    client
        .request(
            Method::DELETE,
            &format!("/objects/Pod/default/{name}"),
            None,
            "application/json",
        )
        .await
        .unwrap();
}

/// Waits until `check` holds, or fails with `what`.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_their_own_ips_serve_there_and_leave_nothing_behind() {
    let (dir, _cleanup, _agent, client, _engine) = busybox_agent().await;
    client
        .apply(&format!("{}---{}", web_pod("alpha"), web_pod("beta")))
        .await
        .unwrap();
    let alpha = wait_phase(&client, "alpha", "Running").await;
    let beta = wait_phase(&client, "beta", "Running").await;
    let (alpha_ip, beta_ip) = (pod_ip(dir.path(), &alpha), pod_ip(dir.path(), &beta));
    assert_ne!(alpha_ip, beta_ip, "two Pods got the same IP");

    // Each answers at its own IP, and knows it (downward API).
    assert_eq!(serves(&alpha_ip, 8080).await, format!("ip={alpha_ip}"));
    assert_eq!(serves(&beta_ip, 8080).await, format!("ip={beta_ip}"));
    // Connections one after another and at once all get through the relay.
    let mut many = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let ip = alpha_ip.clone();
        many.spawn(async move { http_get(&ip, 8080).await });
    }
    while let Some(answer) = many.join_next().await {
        assert_eq!(answer.unwrap(), Some(format!("ip={alpha_ip}")));
    }
    // A port nobody listens on is refused, not relayed.
    assert_eq!(http_get(&alpha_ip, 8081).await, None);

    let (alpha_id, beta_id) = (sandbox_of(&alpha), sandbox_of(&beta));
    assert_eq!(
        leftovers(dir.path(), &alpha_id, &alpha_ip).len(),
        3,
        "namespace, record and lease of a running Pod"
    );
    let record: Value = serde_json::from_slice(
        &std::fs::read(
            network_dir(dir.path())
                .join("pods")
                .join(format!("{alpha_id}.json")),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(record["ip"], alpha_ip.as_str());
    assert_eq!(record["mode"], "relay");

    delete_pod(&client, "alpha").await;
    eventually("alpha's network was not removed", || {
        leftovers(dir.path(), &alpha_id, &alpha_ip).is_empty()
    })
    .await;
    assert_eq!(http_get(&alpha_ip, 8080).await, None);
    // The other Pod is untouched.
    assert_eq!(serves(&beta_ip, 8080).await, format!("ip={beta_ip}"));
    assert_eq!(leftovers(dir.path(), &beta_id, &beta_ip).len(), 3);

    // A new Pod may get the released address again, and serves.
    client.apply(&web_pod("gamma")).await.unwrap();
    let gamma = wait_phase(&client, "gamma", "Running").await;
    let gamma_ip = pod_ip(dir.path(), &gamma);
    assert_ne!(gamma_ip, beta_ip);
    assert_eq!(serves(&gamma_ip, 8080).await, format!("ip={gamma_ip}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_removes_stale_networks_and_keeps_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = StateCleanup(dir.path().to_path_buf());
    busybox_image(dir.path());
    let (agent, client, _engine) = start_agent(dir.path()).await;
    client
        .apply(&format!("{}---{}", web_pod("keep"), web_pod("gone")))
        .await
        .unwrap();
    let keep = wait_phase(&client, "keep", "Running").await;
    let gone = wait_phase(&client, "gone", "Running").await;
    let (keep_ip, gone_ip) = (pod_ip(dir.path(), &keep), pod_ip(dir.path(), &gone));
    serves(&keep_ip, 8080).await;
    serves(&gone_ip, 8080).await;

    // The agent crashes; while it is down, Pod "gone" disappears from its store.
    drop(agent);
    let store = podsnap_agent::store::Store::open(&dir.path().join("agent.redb")).unwrap();
    store.delete("Pod", "default", "gone").unwrap();
    drop(store);
    // And a namespace and a lease of a Pod set up half-way before the crash are left over.
    let ghost = "default_ghost_0000_pod";
    let ghost_ns = network_dir(dir.path()).join("netns").join(ghost);
    podsnap_runtime::network::netns::create(&ghost_ns).unwrap();
    let prefix = test_pod_subnet(dir.path());
    let ghost_ip = prefix.replace(".0/24", ".250");
    let ghost_lease = network_dir(dir.path()).join("ipam/podsnap").join(&ghost_ip);
    std::fs::write(&ghost_lease, format!("{ghost}\r\neth0")).unwrap();

    let (_agent, client, _engine) = start_agent(dir.path()).await;
    let (keep_id, gone_id) = (sandbox_of(&keep), sandbox_of(&gone));
    eventually("the stale networks were not removed", || {
        leftovers(dir.path(), &gone_id, &gone_ip).is_empty()
            && !ghost_ns.exists()
            && !ghost_lease.exists()
    })
    .await;
    assert_eq!(http_get(&gone_ip, 8080).await, None);
    // The Pod that still runs keeps its namespace, address and port.
    assert_eq!(leftovers(dir.path(), &keep_id, &keep_ip).len(), 3);
    let adopted = pod(&client, "keep").await;
    assert_eq!(adopted["status"]["podIP"], keep_ip.as_str());
    assert_eq!(serves(&keep_ip, 8080).await, format!("ip={keep_ip}"));
    let reasons = event_reasons(&client, "keep").await;
    assert!(
        !reasons.iter().any(|r| r == "NetworkCheckFailed"),
        "CNI CHECK of the adopted Pod failed: {reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_a_networked_pod_restores_on_a_new_ip() {
    let (dir, _cleanup, _agent, client, _engine) = busybox_agent().await;
    let setup = snapshot_setup(
        dir.path(),
        "web",
        "type: manual, postCheckpoint: resume",
        &web_pod("origin"),
    );
    client.apply(&setup).await.unwrap();
    let origin = wait_phase(&client, "origin", "Running").await;
    let origin_ip = pod_ip(dir.path(), &origin);
    assert_eq!(serves(&origin_ip, 8080).await, format!("ip={origin_ip}"));

    let trigger = run_trigger(&client, "now", "origin").await;
    assert_eq!(
        trigger["status"]["conditions"][0]["reason"], "Complete",
        "{}",
        trigger["status"]
    );
    // Resumed in place: same IP, still serving through the relay.
    assert_eq!(serves(&origin_ip, 8080).await, format!("ip={origin_ip}"));

    client.apply(&web_pod("copy")).await.unwrap();
    let copy = wait_phase(&client, "copy", "Running").await;
    assert_ne!(
        condition_of(&copy, "PodRestored"),
        Value::Null,
        "not restored: {}",
        copy["status"]
    );
    let copy_ip = pod_ip(dir.path(), &copy);
    assert_ne!(copy_ip, origin_ip, "the restored Pod needs its own IP");
    // The restored server answers at its new IP with what it had in memory.
    assert_eq!(serves(&copy_ip, 8080).await, format!("ip={origin_ip}"));
    assert_eq!(serves(&origin_ip, 8080).await, format!("ip={origin_ip}"));

    // Deleting both leaves no network behind, the restored Pod's included.
    for (pod, ip) in [(&copy, &copy_ip), (&origin, &origin_ip)] {
        delete_pod(&client, pod["metadata"]["name"].as_str().unwrap()).await;
        let id = sandbox_of(pod);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !leftovers(dir.path(), &id, ip).is_empty() {
            assert!(
                Instant::now() < deadline,
                "the network of {id} stayed: {:?}\n{}",
                leftovers(dir.path(), &id, ip),
                std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pods_serve_on_the_host_and_refuse_snapshots() {
    let (dir, _cleanup, _agent, client, _engine) = busybox_agent().await;
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pod = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: onhost, namespace: default, labels: {{app: onhost}}}}
spec:
  hostNetwork: true
  containers:
  - name: web
    image: localhost/busybox
    command: ["/bin/sh", "-c", "echo ip=host > /tmp/index.html; exec httpd -f -p {port} -h /tmp"]
    ports: [{{containerPort: {port}, hostPort: {port}}}]
"#
    );
    let setup = snapshot_setup(dir.path(), "onhost", "type: manual", &pod);
    client.apply(&setup).await.unwrap();
    let running = wait_phase(&client, "onhost", "Running").await;
    assert_eq!(serves("127.0.0.1", port).await, "ip=host");
    assert!(
        !network_dir(dir.path())
            .join("pods")
            .join(format!("{}.json", sandbox_of(&running)))
            .exists(),
        "a hostNetwork Pod gets no network of its own"
    );
    let trigger = run_trigger(&client, "now", "onhost").await;
    let condition = &trigger["status"]["conditions"][0];
    assert_eq!(condition["reason"], "Failed", "{}", trigger["status"]);
    assert!(
        condition["message"]
            .as_str()
            .unwrap_or_default()
            .contains("hostNetwork"),
        "{}",
        trigger["status"]
    );
    // The Pod goes on serving.
    assert_eq!(serves("127.0.0.1", port).await, "ip=host");
}
