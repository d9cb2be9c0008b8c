//! The agent component through the real `epi` binary and real HTTP: guests, action pipelines
//! (stages served by the qemu-img backend and by the test plugin), the per-guest job queue in
//! SQLite, restarts and upgrades.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::{start, Daemon};

/// A plugin directory with the agent, its qemu backend and the test plugin; a state directory.
struct Setup {
    dir: tempfile::TempDir,
    state: tempfile::TempDir,
    config: PathBuf,
}

fn setup(agent: &str) -> Setup {
    let dir = epi_testkit::plugin_dir();
    for (krate, file) in [
        ("epi-plugin-agent", "libepi_plugin_agent.so"),
        ("epi-plugin-agent-qemu", "libepi_plugin_agent_qemu.so"),
        ("epi-plugin-testplug", "libepi_plugin_testplug.so"),
    ] {
        epi_testkit::install(dir.path(), krate, file);
    }
    let state = tempfile::tempdir().unwrap();
    let config = dir.path().join("epi.toml");
    std::fs::write(
        &config,
        format!(
            "[plugins]\ndirs = [\".\"]\n\
             [plugins.config.\"libepi_plugin_agent.so\"]\ndb = \"{db}\"\n{agent}\n\
             [plugins.config.\"libepi_plugin_agent_qemu.so\"]\ndir = \"{storage}\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n",
            db = state.path().join("agent.sqlite").display(),
            storage = state.path().join("storage").display(),
        ),
    )
    .unwrap();
    Setup { dir, state, config }
}

/// Status, job id header and body of a request.
fn call(method: &str, url: &str, body: Option<Value>) -> (u16, Option<String>, Value) {
    common::call_with(method, url, body, "x-guest-job-id")
}

impl Daemon {
    /// Queues an Async action: the job id.
    fn queue(&self, method: &str, path: &str, body: Option<Value>) -> String {
        let (status, job, answer) = call(method, &self.url(path), body);
        assert_eq!(status, 202, "{method} {path}: {answer}");
        job.expect("X-Guest-Job-ID")
    }

    /// Waits until the job ends; returns it.
    fn wait_job(&self, guest: &str, job: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, _, job_doc) = call(
                "GET",
                &self.url(&format!("/guests/{guest}/jobs/{job}")),
                None,
            );
            if status == 200
                && ["Complete", "Error"].contains(&job_doc["status"].as_str().unwrap_or(""))
            {
                return job_doc;
            }
            assert!(
                Instant::now() < deadline,
                "job {job} never ended: {job_doc}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn complete(&self, guest: &str, job: &str) {
        let job_doc = self.wait_job(guest, job);
        assert_eq!(job_doc["status"], "Complete", "{job_doc}");
    }

    fn guest(&self, id: &str) -> Value {
        let (status, _, guest) = call("GET", &self.url(&format!("/guests/{id}")), None);
        assert_eq!(status, 200, "{guest}");
        guest
    }

    /// Creates a guest; waits for its create job.
    fn create(&self, body: Value) -> String {
        let (status, job, guest) = call("POST", &self.url("/guests"), Some(body));
        assert_eq!(status, 202, "{guest}");
        let id = guest["id"].as_str().unwrap().to_owned();
        self.complete(&id, &job.unwrap());
        id
    }
}

fn require(program: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        found,
        "{program} is needed: apt-get install qemu-utils (cargo xtask test does)"
    );
}

const QEMU_ACTIONS: &str = r#"
[plugins.config."libepi_plugin_agent.so".actions]
create = { stages = [{ service = "qemu", method = "create_disks" }] }
start = { stages = [{ service = "qemu", method = "power" }] }
delete = { stages = [{ service = "qemu", method = "delete_disks" }] }
snapshot_create = { stages = [{ service = "qemu", method = "snapshot_create" }] }
snapshots_list = { stages = [{ service = "qemu", method = "snapshot_list" }] }
snapshot_get = { stages = [{ service = "qemu", method = "snapshot_get" }] }
snapshot_rollback = { stages = [{ service = "qemu", method = "snapshot_rollback" }] }
snapshot_download = { stages = [{ service = "qemu", method = "snapshot_download" }] }
metrics_disk = { stages = [{ service = "qemu", method = "metrics" }] }
suspend = { stages = [{ service = "qemu", method = "power" }, { service = "probe", method = "stage_sleep", args = { fail = "the second stage broke" } }] }
image_fetch = { stages = [{ service = "qemu", method = "image_fetch" }] }
images_list = { stages = [{ service = "qemu", method = "image_list" }] }
image_get = { stages = [{ service = "qemu", method = "image_get" }] }
image_delete = { stages = [{ service = "qemu", method = "image_delete" }] }
"#;

fn raw_image(path: &Path, snapshot: Option<&str>, out: &Path) -> Vec<u8> {
    let mut command = Command::new("qemu-img");
    command.args(["convert", "-U", "-f", "qcow2", "-O", "raw"]);
    if let Some(name) = snapshot {
        command.args(["-l", &format!("snapshot.name={name}")]);
    }
    let status = command.arg(path).arg(out).status().unwrap();
    assert!(status.success());
    std::fs::read(out).unwrap()
}

fn qemu_io_write(disk: &Path, pattern: u8) {
    let status = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", &format!("write -P {pattern} 0 64k")])
        .arg(disk)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "qemu-io write");
}

#[test]
fn a_guest_lives_through_create_start_snapshot_download_rollback_and_delete() {
    require("qemu-img");
    require("qemu-io");
    let setup = setup(QEMU_ACTIONS);
    let daemon = start(&setup.config);
    let id = "5f0c7a52-8c1a-4d39-9a4e-3b8f6f1f2c11";
    assert_eq!(
        daemon.create(json!({"id": id, "disks": [{"size_mb": 1}]})),
        id
    );
    let guest = daemon.guest(id);
    assert_eq!(guest["state"], "stopped");
    let disk = PathBuf::from(guest["disks"][0]["path"].as_str().unwrap());
    assert!(disk.starts_with(setup.state.path()), "{}", disk.display());
    let job = daemon.queue("POST", &format!("/guests/{id}/start"), None);
    daemon.complete(id, &job);
    assert_eq!(daemon.guest(id)["state"], "running");

    qemu_io_write(&disk, 0x11);
    let job = daemon.queue(
        "POST",
        &format!("/guests/{id}/snapshots"),
        Some(json!({"name": "s1"})),
    );
    daemon.complete(id, &job);
    let (status, _, list) = call("GET", &daemon.url(&format!("/guests/{id}/snapshots")), None);
    assert_eq!(
        (status, list[0]["name"].clone()),
        (200, json!("s1")),
        "{list}"
    );
    let (status, _, one) = call(
        "GET",
        &daemon.url(&format!("/guests/{id}/disks/disk0/snapshots/s1")),
        None,
    );
    assert_eq!(
        (status, one[0]["disk"].clone()),
        (200, json!("disk0")),
        "{one}"
    );
    qemu_io_write(&disk, 0x22);

    // Download: the bytes of `qemu-img convert` of the snapshot, streamed.
    let response = ureq::get(&daemon.url(&format!("/guests/{id}/snapshots/s1/download")))
        .call()
        .unwrap();
    assert_eq!(
        response.header("content-type"),
        Some("application/octet-stream")
    );
    let mut downloaded = Vec::new();
    std::io::Read::read_to_end(&mut response.into_reader(), &mut downloaded).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let expected = raw_image(&disk, Some("s1"), &scratch.path().join("s1.raw"));
    assert_eq!(downloaded.len(), 1 << 20);
    assert!(
        downloaded == expected,
        "the download differs from qemu-img convert of s1"
    );
    assert_eq!(downloaded[0], 0x11);
    assert_ne!(
        raw_image(&disk, None, &scratch.path().join("now.raw"))[0],
        0x11
    );

    let job = daemon.queue("POST", &format!("/guests/{id}/snapshots/s1/rollback"), None);
    daemon.complete(id, &job);
    assert!(raw_image(&disk, None, &scratch.path().join("after.raw")) == expected);
    let (status, _, metrics) = call(
        "GET",
        &daemon.url(&format!("/guests/{id}/metrics/disk")),
        None,
    );
    assert_eq!(
        (status, metrics[0]["virtual_size"].clone()),
        (200, json!(1 << 20)),
        "{metrics}"
    );

    // A failing stage stops the pipeline; the job names it; the first stage's change stays.
    let job = daemon.queue("POST", &format!("/guests/{id}/suspend"), None);
    let failed = daemon.wait_job(id, &job);
    assert_eq!(failed["status"], "Error");
    assert_eq!(failed["stage"], "probe.stage_sleep");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("the second stage broke"),
        "{failed}"
    );
    assert_eq!(daemon.guest(id)["state"], "suspended");

    let job = daemon.queue("DELETE", &format!("/guests/{id}"), None);
    daemon.complete(id, &job);
    let (status, _, _) = call("GET", &daemon.url(&format!("/guests/{id}")), None);
    assert_eq!(status, 404);
    assert!(!disk.exists());
}

const SLEEPY: &str = r#"
[plugins.config."libepi_plugin_agent.so".actions]
create = { stages = [{ service = "probe", method = "stage_sleep" }] }
reboot = { stages = [{ service = "probe", method = "stage_sleep", args = { ms = 150 } }] }
start = { stages = [{ service = "probe", method = "stage_sleep", args = { ms = 600 } }] }
"#;

/// The `[action, started, ended]` intervals of a guest's trace.
fn trace(guest: &Value) -> Vec<(u64, u64)> {
    guest["trace"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry[0] != "create")
        .map(|entry| (entry[1].as_u64().unwrap(), entry[2].as_u64().unwrap()))
        .collect()
}

#[test]
fn one_guest_runs_its_jobs_in_order_one_at_a_time_while_guests_overlap() {
    let setup = setup(&format!("workers = 4\n{SLEEPY}"));
    let daemon = start(&setup.config);
    let a = daemon.create(json!({}));
    let b = daemon.create(json!({}));
    let jobs_a: Vec<String> = (0..3)
        .map(|_| daemon.queue("POST", &format!("/guests/{a}/reboot"), None))
        .collect();
    let job_b = daemon.queue("POST", &format!("/guests/{b}/reboot"), None);
    for job in &jobs_a {
        daemon.complete(&a, job);
    }
    daemon.complete(&b, &job_b);
    let a_trace = trace(&daemon.guest(&a));
    assert_eq!(a_trace.len(), 3);
    for pair in a_trace.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "guest a's jobs overlapped: {a_trace:?}"
        );
    }
    let b_trace = trace(&daemon.guest(&b));
    let (b_start, b_end) = b_trace[0];
    assert!(
        a_trace
            .iter()
            .any(|&(start, end)| start < b_end && b_start < end),
        "guest b's job ran alone: a {a_trace:?}, b {b_trace:?}"
    );
    // Jobs are listed per guest, newest first; /jobs lists all of them.
    let (_, _, listed) = call("GET", &daemon.url(&format!("/guests/{a}/jobs")), None);
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(&ids[..3], &[&jobs_a[2][..], &jobs_a[1][..], &jobs_a[0][..]]);
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .all(|j| j["guest_id"] == a.as_str()));
    let (_, _, all) = call("GET", &daemon.url("/jobs?limit=2"), None);
    assert_eq!(all.as_array().unwrap().len(), 2);
    assert_eq!(all[0]["id"], job_b.as_str());
}

#[test]
fn a_killed_daemon_loses_no_job_and_marks_the_running_one_interrupted() {
    let setup = setup(SLEEPY);
    let first = start(&setup.config);
    let guest = first.create(json!({}));
    let jobs: Vec<String> = (0..3)
        .map(|_| first.queue("POST", &format!("/guests/{guest}/start"), None))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while first.wait_running(&guest, &jobs[0]) {
        assert!(Instant::now() < deadline);
    }
    let mut first = first;
    let _ = first.child.kill();
    let _ = first.child.wait();
    let second = start(&setup.config);
    let interrupted = second.wait_job(&guest, &jobs[0]);
    assert_eq!(interrupted["status"], "Error");
    assert!(
        interrupted["message"]
            .as_str()
            .unwrap()
            .contains("interrupted"),
        "{interrupted}"
    );
    second.complete(&guest, &jobs[1]);
    second.complete(&guest, &jobs[2]);
}

impl Daemon {
    /// True while the job has not started yet.
    fn wait_running(&self, guest: &str, job: &str) -> bool {
        std::thread::sleep(Duration::from_millis(10));
        let (_, _, job) = call(
            "GET",
            &self.url(&format!("/guests/{guest}/jobs/{job}")),
            None,
        );
        job["status"] != "Running"
    }
}

#[test]
fn the_job_log_keeps_the_newest_thousand_jobs_of_a_guest() {
    let setup = setup("");
    let daemon = start(&setup.config);
    let guest = daemon.create(json!({}));
    let mut last = String::new();
    for _ in 0..1005 {
        last = daemon.queue("POST", &format!("/guests/{guest}/restart"), None);
    }
    daemon.complete(&guest, &last);
    let (_, _, jobs) = call(
        "GET",
        &daemon.url(&format!("/guests/{guest}/jobs?limit=5000")),
        None,
    );
    let jobs = jobs.as_array().unwrap();
    assert_eq!(jobs.len(), 1000);
    assert_eq!(jobs[0]["id"], last.as_str());
    assert!(jobs.iter().all(|j| j["action"] == "restart"));
}

#[test]
fn bad_requests_get_the_right_status_and_a_message() {
    let setup = setup("");
    let daemon = start(&setup.config);
    let guest = daemon.create(json!({"metadata": {"owner": "ada"}}));
    let cases = [
        (
            "POST",
            "/guests".to_owned(),
            Some(json!({"id": "not-a-uuid"})),
            400,
        ),
        (
            "POST",
            "/guests".to_owned(),
            Some(json!({"id": guest})),
            409,
        ),
        ("POST", "/guests".to_owned(), Some(json!([1])), 400),
        (
            "GET",
            "/guests/1b4e28ba-2fa1-11d2-883f-0016d3cca427".to_owned(),
            None,
            404,
        ),
        ("GET", format!("/guests/{guest}/jobs/nope"), None, 404),
        ("PUT", format!("/guests/{guest}"), None, 405),
        ("GET", format!("/guests/{guest}/fly"), None, 404),
        ("GET", format!("/guests/{guest}/reboot"), None, 405),
        ("GET", "/jobs?limit=zero".to_owned(), None, 400),
        (
            "POST",
            format!("/guests/{guest}/snapshots"),
            Some(json!({"name": "../x"})),
            400,
        ),
    ];
    for (method, path, body, expected) in cases {
        let (status, _, answer) = call(method, &daemon.url(&path), body);
        assert_eq!(status, expected, "{method} {path}: {answer}");
        assert_eq!(answer["code"], expected, "{answer}");
        assert!(
            answer["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
    }
    // A body that is not JSON.
    let response = ureq::post(&daemon.url("/metadata")).send_string("{oops");
    assert!(
        matches!(response, Err(ureq::Error::Status(405, _))),
        "POST /metadata is not a route"
    );
    let response = ureq::request("PATCH", &daemon.url("/metadata")).send_string("{oops");
    assert!(matches!(response, Err(ureq::Error::Status(400, _))));
    // Metadata: PATCH merges, null deletes.
    let (_, _, meta) = call(
        "PATCH",
        &daemon.url("/metadata"),
        Some(json!({"rack": 4, "zone": "a"})),
    );
    assert_eq!(meta, json!({"rack": 4, "zone": "a"}));
    let (_, _, meta) = call(
        "PATCH",
        &daemon.url("/metadata"),
        Some(json!({"rack": null})),
    );
    assert_eq!(meta, json!({"zone": "a"}));
    let (_, _, meta) = call(
        "PATCH",
        &daemon.url(&format!("/guests/{guest}/metadata")),
        Some(json!({"owner": null, "tier": 2})),
    );
    assert_eq!(meta, json!({"tier": 2}));
}

#[test]
fn an_upgrade_of_the_agent_with_jobs_queued_runs_them_all_in_order() {
    let setup = setup(SLEEPY);
    let daemon = start(&setup.config);
    let guest = daemon.create(json!({}));
    let jobs: Vec<String> = (0..5)
        .map(|_| daemon.queue("POST", &format!("/guests/{guest}/reboot"), None))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.wait_running(&guest, &jobs[0]) {
        assert!(Instant::now() < deadline, "the first job never started");
    }
    // Another build of the agent, renamed into place: the daemon's watcher upgrades it.
    let build = |daemon: &Daemon| {
        let (_, _, plugins) = call("GET", &daemon.url("/_epi/plugins"), None);
        plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["app"] == "agent")
            .map(|p| p["content_hash"].clone())
    };
    let old = build(&daemon);
    let library = setup.dir.path().join("libepi_plugin_agent.so");
    let mut bytes = std::fs::read(&library).unwrap();
    bytes.extend_from_slice(&[7; 16]);
    let staged = setup.dir.path().join("agent.staged");
    std::fs::write(&staged, &bytes).unwrap();
    std::fs::rename(&staged, &library).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while build(&daemon) == old {
        assert!(Instant::now() < deadline, "the agent was not upgraded");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The queue was not through when the new version took over.
    let (_, _, last) = call(
        "GET",
        &daemon.url(&format!("/guests/{guest}/jobs/{}", jobs[4])),
        None,
    );
    assert_ne!(last["status"], "Complete", "{last}");
    for job in &jobs {
        daemon.complete(&guest, job);
    }
    let trace = trace(&daemon.guest(&guest));
    assert_eq!(trace.len(), 5);
    for pair in trace.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "jobs overlapped across the upgrade: {trace:?}"
        );
    }
    let (_, _, plugins) = call("GET", &daemon.url("/_epi/plugins"), None);
    assert!(plugins.to_string().contains("agent"), "{plugins}");
}

#[test]
fn a_stage_naming_an_unknown_service_is_reported_and_fails_its_job() {
    let setup = setup(
        r#"[plugins.config."libepi_plugin_agent.so".actions]
reboot = { stages = [{ service = "nowhere", method = "go" }] }"#,
    );
    let daemon = start(&setup.config);
    let guest = daemon.create(json!({}));
    let job = daemon.queue("POST", &format!("/guests/{guest}/reboot"), None);
    let failed = daemon.wait_job(&guest, &job);
    assert_eq!(
        (failed["status"].clone(), failed["stage"].clone()),
        (json!("Error"), json!("nowhere.go"))
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, _, report) = call("GET", &daemon.url("/_epi/processes"), None);
        if report
            .to_string()
            .contains("no loaded plugin provides nowhere.go")
        {
            break;
        }
        assert!(Instant::now() < deadline, "not reported: {report}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn images_are_fetched_listed_described_and_deleted_under_a_prefix() {
    require("qemu-img");
    let setup = setup(&format!("prefix = \"/agent\"\n{QEMU_ACTIONS}"));
    let daemon = start(&setup.config);
    let source = setup.state.path().join("base.qcow2");
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&source)
        .arg("2M")
        .status()
        .unwrap();
    assert!(status.success());
    let (status, _, _) = call("GET", &daemon.url("/images"), None);
    assert_eq!(status, 404, "routes live under the prefix");
    let job = daemon.queue(
        "POST",
        "/agent/images",
        Some(json!({"id": "base", "source": source})),
    );
    wait_any(&daemon, &format!("/agent/jobs/{job}"));
    let (status, _, list) = call("GET", &daemon.url("/agent/images"), None);
    assert_eq!(
        (status, list[0]["id"].clone()),
        (200, json!("base")),
        "{list}"
    );
    let (status, _, info) = call("GET", &daemon.url("/agent/images/base"), None);
    assert_eq!(
        (status, info["virtual-size"].clone()),
        (200, json!(2 << 20)),
        "{info}"
    );
    let job = daemon.queue("DELETE", "/agent/images/base", None);
    wait_any(&daemon, &format!("/agent/jobs/{job}"));
    let (_, _, list) = call("GET", &daemon.url("/agent/images"), None);
    assert_eq!(list, json!([]));
}

/// Waits until the job at `path` (`/jobs/{id}`) completes.
fn wait_any(daemon: &Daemon, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, _, job) = call("GET", &daemon.url(path), None);
        if job["status"] == "Complete" {
            return;
        }
        assert_ne!(job["status"], "Error", "{job}");
        assert!(Instant::now() < deadline, "{path} never completed: {job}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
