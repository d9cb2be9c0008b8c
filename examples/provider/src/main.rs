//! An example provider process. Run it beside an `epi serve` that loads the provider plugin:
//!
//! ```text
//! epi-example-provider --name example --socket-dir /run/user/1000/epi/providers
//! epi decide provider greet --args '{"lang": "en", "name": "Ada"}'
//! ```
//!
//! Tasks (each a function of the `provider` service unless the plugin maps it elsewhere):
//! - `echo`: returns its arguments;
//! - `whoami`: returns this provider's name;
//! - `greet`: a `decide` task: decides a greeting when `args.lang` is one of `--lang`;
//! - `fail`: fails with `args.message`;
//! - `sleep`: sleeps `args.ms` milliseconds (logged at debug level as it starts), then returns
//!   them;
//! - `lines`: a byte stream of `args.count` numbered lines.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use epi_provider::server::{Config, Reply, Server, TaskConfig};
use serde_json::{json, Value};

/// Command line.
#[derive(Parser)]
#[command(about = "An example epi provider process")]
struct Args {
    /// A JSON configuration file (`service_name`, `socket_dir`, `default_priority`, `tasks`);
    /// the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The provider's name (the NAME of PRIORITY-NAME.sock).
    #[arg(long)]
    name: Option<String>,
    /// The socket directory (default: $XDG_RUNTIME_DIR/epi/providers).
    #[arg(long)]
    socket_dir: Option<PathBuf>,
    /// The priority of every task (default 50).
    #[arg(long)]
    priority: Option<i32>,
    /// A task's own priority, as TASK=N (repeatable).
    #[arg(long = "task-priority", value_parser = task_priority)]
    task_priorities: Vec<(String, i32)>,
    /// Languages `greet` decides for (repeatable; default: en).
    #[arg(long = "lang")]
    languages: Vec<String>,
    /// Serve only these tasks (repeatable; default: all).
    #[arg(long = "task")]
    tasks: Vec<String>,
    /// Make every task fail with this message (to try error handling).
    #[arg(long)]
    fail_with: Option<String>,
}

fn task_priority(text: &str) -> Result<(String, i32), String> {
    let (task, number) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not TASK=N"))?;
    let number = number
        .parse()
        .map_err(|_| format!("{number:?} is not a priority"))?;
    Ok((task.to_owned(), number))
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    if let Err(err) = run(Args::parse()) {
        eprintln!("epi-example-provider: {err}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path).map_err(|err| err.to_string())?,
        None => Config::new(args.name.clone().unwrap_or_else(|| "example".into())),
    };
    if let Some(name) = args.name {
        config.service_name = name;
    }
    if args.socket_dir.is_some() {
        config.socket_dir = args.socket_dir;
    }
    if let Some(priority) = args.priority {
        config.default_priority = priority;
    }
    for (task, priority) in args.task_priorities {
        config
            .tasks
            .entry(task)
            .or_insert_with(TaskConfig::default)
            .priority = Some(priority);
    }
    let name = config.service_name.clone();
    let languages = if args.languages.is_empty() {
        vec!["en".to_owned()]
    } else {
        args.languages
    };
    let mut server = Server::new(config).map_err(|err| err.to_string())?;
    let wanted = |task: &str| args.tasks.is_empty() || args.tasks.iter().any(|t| t == task);
    let fail_with = args.fail_with.clone();
    let register =
        |server: &mut Server, task: &str, handler: Box<epi_provider::server::Handler>| {
            if wanted(task) {
                let fail_with = fail_with.clone();
                server
                    .register_task(task, move |request| match &fail_with {
                        Some(message) => Err(message.clone()),
                        None => handler(request),
                    })
                    .map_err(|err| err.to_string())
            } else {
                Ok(())
            }
        };
    register(
        &mut server,
        "echo",
        Box::new(|request| Ok(Reply::value(&request.args))),
    )?;
    let whoami = name.clone();
    register(
        &mut server,
        "whoami",
        Box::new(move |_| Ok(Reply::value(&whoami))),
    )?;
    let greeter = name.clone();
    register(
        &mut server,
        "greet",
        Box::new(move |request| {
            let lang = request.args["lang"].as_str().unwrap_or_default();
            let who = request.args["name"].as_str().unwrap_or("you");
            Ok(Reply::value(if languages.iter().any(|l| l == lang) {
                json!({"decided": format!("{greeter} greets {who} in {lang}")})
            } else {
                json!("no_decision")
            }))
        }),
    )?;
    register(
        &mut server,
        "fail",
        Box::new(|request| {
            Err(request.args["message"]
                .as_str()
                .unwrap_or("failed as asked")
                .to_owned())
        }),
    )?;
    register(
        &mut server,
        "sleep",
        Box::new(|request| {
            let ms = request.args["ms"].as_u64().unwrap_or(0);
            // Logged after the acknowledgement: whoever reads it knows the call is in flight.
            tracing::debug!("request {}: sleeping {ms} ms", request.id);
            std::thread::sleep(Duration::from_millis(ms));
            Ok(Reply::value(json!({"slept_ms": ms})))
        }),
    )?;
    register(
        &mut server,
        "lines",
        Box::new(|request| {
            let count = request.args["count"].as_u64().unwrap_or(3);
            let text: String = (1..=count).map(|n| format!("line {n}\n")).collect();
            Ok(
                Reply::stream(std::io::Cursor::new(text.into_bytes()).chain(std::io::empty()))
                    .with_result(Value::from(count)),
            )
        }),
    )?;
    let running = server.start().map_err(|err| err.to_string())?;
    let paths: Vec<String> = running
        .socket_paths()
        .iter()
        .map(|path| path.display().to_string())
        .collect();
    // One line, once every socket exists: a supervisor can wait for it.
    println!("serving {}", paths.join(" "));
    running.stop_on_signal();
    Ok(())
}
