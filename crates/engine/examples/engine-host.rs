//! A minimal UEP stand-in for this crate's tests: it runs one engine in a process of its
//! own, so a test can kill that process outright and check that the engine's pools and
//! workers die with it.
//!
//! Usage: `engine-host RUN_DIR POOL_PROGRAM` with one JSON line on stdin,
//! `{"engine": {...}, "tasks": ["<task buffer>", ...]}`. It submits the tasks, prints one
//! JSON line per event (`{"started": id}`, `{"finished": id, "code": ...}`), and runs until
//! stdin closes or it is killed.

use std::io::BufRead;

use gantry_engine::{EngineConfig, EngineEnv, EngineEvent, EngineTask, start_engine};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let (Some(run_dir), Some(pool_program)) = (args.next(), args.next()) else {
        return Err("usage: engine-host RUN_DIR POOL_PROGRAM".into());
    };
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let request: serde_json::Value = serde_json::from_str(&line)?;
    let config = EngineConfig::from_value(&request["engine"])?;
    let env = EngineEnv {
        run_dir: run_dir.into(),
        pool_program: pool_program.into(),
        expected_python: None,
        uep_id: uuid::Uuid::new_v4(),
    };
    let mut engine = start_engine(&config, env).await?;
    for buffer in request["tasks"].as_array().into_iter().flatten() {
        engine.submit(EngineTask {
            task_id: uuid::Uuid::new_v4(),
            task_buffer: buffer.as_str().unwrap_or_default().to_owned(),
            resource_specification: None,
            result_serializers: None,
        })?;
    }
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut rest = String::new();
        let _ = std::io::stdin().lock().read_line(&mut rest);
    });
    tokio::pin!(stdin_closed);
    loop {
        tokio::select! {
            _ = &mut stdin_closed => break,
            event = engine.next_event() => match event {
                Some(EngineEvent::Started { task_id, .. }) => {
                    println!("{}", serde_json::json!({"started": task_id}));
                }
                Some(EngineEvent::Finished(result)) => println!(
                    "{}",
                    serde_json::json!({"finished": result.task_id,
                                       "code": result.error.map(|e| e.code)})
                ),
                None => break,
            },
        }
    }
    engine.shutdown().await;
    Ok(())
}
