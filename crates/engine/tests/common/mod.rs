//! Shared test support: real engines on real processes, real task buffers from the SDK.

#![allow(clippy::unwrap_used, dead_code)] // a failed unwrap is a failed test

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gantry_engine::{
    EngineConfig, EngineEnv, EngineEvent, EngineHandle, EngineResult, EngineStatus, EngineTask,
    start_engine,
};
use serde_json::{Value, json};
use uuid::Uuid;

/// The longest any test waits for something before it fails (a hang guard, not a
/// timing assertion).
pub const PATIENCE: Duration = Duration::from_secs(90);

/// The `gantry-pool` example binary, built by cargo next to the test binaries.
///
/// `cargo nextest run -p gantry-engine` builds it with the tests, but a run narrowed
/// with `--test` does not, and would test an old pool: refuse that.
pub fn pool_program() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let program = profile_dir.join("examples/gantry-pool");
    let rebuild = "run `cargo nextest run -p gantry-engine` without `--test`, or \
                   `cargo build -p gantry-engine --examples` first";
    let built = std::fs::metadata(&program)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is missing; {rebuild}", program.display()));
    // Cargo's dep-info lists every source the binary was built from (the library's,
    // and the Python worker it embeds).
    let dep_info = std::fs::read_to_string(program.with_extension("d"))
        .unwrap_or_else(|_| panic!("{} has no dep-info; {rebuild}", program.display()));
    let first_line = dep_info.lines().next().unwrap_or_default();
    let (_, sources) = first_line.split_once(": ").unwrap();
    for source in sources.replace("\\ ", "\0").split_whitespace() {
        let source = source.replace('\0', " ");
        let changed = std::fs::metadata(&source).and_then(|m| m.modified());
        assert!(
            changed.is_ok_and(|changed| changed <= built),
            "{} is older than {source}; {rebuild}",
            program.display()
        );
    }
    program
}

pub fn venv_python() -> String {
    gantry_testkit::venv_python().to_string_lossy().into_owned()
}

/// What the venv's Python reports about itself, the way the SDK's `get_env_details`
/// does (`os`, `python_version`, `dill_version`, `globus_compute_sdk_version`).
pub fn venv_environment() -> Value {
    let out = std::process::Command::new(venv_python())
        .args([
            "-c",
            "import json, platform, dill, globus_compute_sdk as sdk; print(json.dumps({\
             'os': platform.platform(), 'python_version': platform.python_version(), \
             'dill_version': dill.__version__, 'globus_compute_sdk_version': sdk.__version__}))",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The venv Python's `major.minor`.
pub fn venv_python_minor() -> String {
    let out = std::process::Command::new(venv_python())
        .args([
            "-c",
            "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')",
        ])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn helper() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/tasks.py")
}

/// Task buffers for `cases` (`{"case", "args", "kwargs"}`), made by the SDK.
pub fn make_tasks(cases: &[Value]) -> Vec<String> {
    let input = serde_json::to_vec(cases).unwrap();
    let output = gantry_testkit::run_python(&helper(), &["make"], &input);
    serde_json::from_slice(&output.stdout).unwrap()
}

/// What the SDK's serializer reads from result `data` strings.
pub fn decode(data: &[&str]) -> Vec<Value> {
    let input = serde_json::to_vec(data).unwrap();
    let output = gantry_testkit::run_python(&helper(), &["decode"], &input);
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A fresh run directory, unique to the test, so its processes can be found by path.
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    pub fn new() -> RunDir {
        let path = std::env::temp_dir().join(format!("gantry-engine-test-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&path).unwrap();
        RunDir { path }
    }

    /// The unique text every process of this test's engine has on its command line.
    pub fn marker(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A running engine of this test.
pub struct TestEngine {
    pub handle: EngineHandle,
    pub dir: RunDir,
    /// Events seen while waiting for other things.
    pub seen: Vec<EngineEvent>,
}

pub async fn start(engine: Value) -> TestEngine {
    start_expecting(engine, None).await
}

pub async fn start_expecting(engine: Value, expected_python: Option<String>) -> TestEngine {
    let dir = RunDir::new();
    let config = EngineConfig::from_value(&engine).unwrap();
    let env = EngineEnv {
        run_dir: dir.path.clone(),
        pool_program: pool_program(),
        expected_python,
        uep_id: Uuid::new_v4(),
    };
    let handle = start_engine(&config, env).await.unwrap();
    TestEngine {
        handle,
        dir,
        seen: Vec::new(),
    }
}

impl TestEngine {
    /// Submits each buffer as a new task; returns their ids in order.
    pub fn submit_all(&self, buffers: &[String]) -> Vec<Uuid> {
        buffers
            .iter()
            .map(|buffer| self.submit_with(buffer, None))
            .collect()
    }

    pub fn submit_with(&self, buffer: &str, spec: Option<Value>) -> Uuid {
        self.submit_task(buffer, spec, None)
    }

    /// Submits a task whose result is to be serialized with `serializers`.
    pub fn submit_serialized(&self, buffer: &str, serializers: &[&str]) -> Uuid {
        let serializers = serializers.iter().map(|s| s.to_string()).collect();
        self.submit_task(buffer, None, Some(serializers))
    }

    fn submit_task(
        &self,
        buffer: &str,
        spec: Option<Value>,
        result_serializers: Option<Vec<String>>,
    ) -> Uuid {
        let task_id = Uuid::new_v4();
        self.handle
            .submit(EngineTask {
                task_id,
                task_buffer: buffer.to_owned(),
                resource_specification: spec,
                result_serializers,
            })
            .unwrap();
        task_id
    }

    /// Waits for the results of `ids`.
    pub async fn results(&mut self, ids: &[Uuid]) -> HashMap<Uuid, EngineResult> {
        // Results read earlier, while waiting for something else, count too.
        let mut results: HashMap<Uuid, EngineResult> = self
            .seen
            .iter()
            .filter_map(|e| match e {
                EngineEvent::Finished(r) if ids.contains(&r.task_id) => {
                    Some((r.task_id, r.clone()))
                }
                _ => None,
            })
            .collect();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while results.len() < ids.len() {
            let event = tokio::time::timeout_at(deadline, self.handle.next_event())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no result for {:?} within {PATIENCE:?}; status {:?}; logs:\n{}",
                        ids.iter()
                            .filter(|id| !results.contains_key(*id))
                            .collect::<Vec<_>>(),
                        self.handle.status(),
                        self.logs()
                    )
                })
                .expect("the engine stopped");
            if let EngineEvent::Finished(result) = &event
                && ids.contains(&result.task_id)
            {
                results.insert(result.task_id, result.clone());
            }
            self.seen.push(event);
        }
        results
    }

    pub async fn result(&mut self, id: Uuid) -> EngineResult {
        self.results(&[id]).await.remove(&id).unwrap()
    }

    /// Waits until the status satisfies `done`, reading events meanwhile; returns the
    /// statuses seen.
    pub async fn wait_status(
        &mut self,
        what: &str,
        done: impl Fn(&EngineStatus) -> bool,
    ) -> Vec<EngineStatus> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut seen = Vec::new();
        loop {
            let status = self.handle.status();
            let finished = done(&status);
            seen.push(status);
            if finished {
                return seen;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what} did not happen within {PATIENCE:?}; statuses seen: {seen:?}\nlogs:\n{}",
                self.logs()
            );
            if let Ok(Some(event)) =
                tokio::time::timeout(Duration::from_millis(50), self.handle.next_event()).await
            {
                self.seen.push(event);
            }
        }
    }

    /// Every block log of this engine, for failure messages.
    pub fn logs(&self) -> String {
        let dir = self.dir.path.join("engine/blocks");
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                out.push_str(&format!("--- {}\n{text}\n", entry.path().display()));
            }
        }
        out
    }

    pub async fn shutdown(self) -> RunDir {
        self.handle.shutdown().await;
        self.dir
    }
}

/// Pids and command lines of live processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(marker) && !is_zombie(&entry.path()) {
            found.push((pid, cmdline));
        }
    }
    found
}

fn is_zombie(proc_dir: &Path) -> bool {
    std::fs::read_to_string(proc_dir.join("stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s == "Z"))
        })
        .unwrap_or(true)
}

/// Waits until a file holds at least `lines` pids, and returns them.
pub async fn wait_for_pids(path: &Path, lines: usize) -> Vec<i32> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let pids: Vec<i32> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.len() >= lines {
            return pids;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never had {lines} pids",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends SIGKILL to one process.
pub fn kill_9(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

/// A task case for [`make_tasks`].
pub fn case(name: &str, args: Value) -> Value {
    json!({"case": name, "args": args})
}

/// The error code of a result, or "" for a success.
pub fn code(result: &EngineResult) -> &str {
    result.error.as_ref().map(|e| e.code.as_str()).unwrap_or("")
}
