//! A plugin for tests and benchmarks: one library, configured per load.
//!
//! Configuration (all keys optional):
//! ```json
//! {"app": "alpha", "version": "2", "priority": 0, "services": ["math"],
//!  "providers": [{"label": "a", "service": "math", "priority": 5, "add": 1,
//!                 "behaviour": "ok|fail|panic|hang|abort|overflow", "decides": true, "truth": true,
//!                 "kind": "number|text"}]}
//! ```
//! A `number` provider's `value` returns `x + add`; a `text` provider's returns a string (to
//! test signature mismatches and wrong-shaped pipe outputs).
//!
//! Data: `"data": [{"service": "cfg", "key": "k", "file": "a.json" | "static": <json> |
//! "callback": true, "interval_ms": 50}]`, `"subscriptions": [["cfg", "k"]]`,
//! `"notify_panics": true`. Every load also defines and provides the `probe` service:
//! `notifications()` returns what `notify` received, `set_callback(value)` and
//! `set_callback_behaviour("ok|fail|panic|hang")` drive the callback sources.
//!
//! Builds: the bytes `EPIMARK:00000000` in the library are its build mark. Tests patch them to
//! make distinct builds of one library (different content, version `0.1.0+<mark>`). `hit()`
//! counts calls; the count is handed over to the next build on upgrade.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use epi::{DataProvider, Decision, Notification, Plugin, PluginContext, Provider};
use serde::Deserialize;
use serde_json::Value;

/// The build mark, patched in the library file by tests (see the crate docs).
static BUILD_MARK: [u8; 16] = *b"EPIMARK:00000000";

/// This build's mark (read through `black_box` so the compiler cannot fold the constant).
fn build_mark() -> String {
    let bytes: &[u8; 16] = std::hint::black_box(&BUILD_MARK);
    String::from_utf8_lossy(&bytes[8..]).into_owned()
}

/// What `motto` returns, borrowed from the library's read-only data.
pub const MOTTO: &str = "static text from the plugin's own memory";

/// Format of the state this plugin hands over on upgrade.
const STATE_FORMAT: u32 = 1;

/// What a configured provider does when called.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    /// Answers normally.
    #[default]
    Ok,
    /// Returns an error.
    Fail,
    /// Panics.
    Panic,
    /// Blocks for 3 seconds, then answers normally.
    Hang,
    /// Aborts the process (as a plugin's failed assertion in C code would).
    Abort,
    /// Recurses until its thread's stack overflows.
    Overflow,
}

/// Recurses without end, each frame holding a page (the `Overflow` behaviour).
#[allow(unconditional_recursion)]
fn recurse_without_end(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth as u8; 4096]);
    recurse_without_end(depth + 1).wrapping_add(frame[0] as u64)
}

/// The shape of a provider's `value` function.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `value(i64) -> i64`.
    #[default]
    Number,
    /// `value(i64) -> String`.
    Text,
}

/// One provider's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    label: String,
    #[serde(default = "default_service")]
    service: String,
    #[serde(default)]
    priority: Option<i32>,
    #[serde(default)]
    add: i64,
    #[serde(default)]
    behaviour: Behaviour,
    #[serde(default)]
    decides: bool,
    #[serde(default)]
    truth: bool,
    #[serde(default)]
    kind: Kind,
}

fn default_service() -> String {
    "math".into()
}

/// One data source's configuration: exactly one of `file`, `static`, `callback`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    service: String,
    key: String,
    #[serde(default)]
    file: Option<String>,
    #[serde(default, rename = "static")]
    static_value: Option<Value>,
    #[serde(default)]
    callback: bool,
    #[serde(default)]
    interval_ms: Option<u64>,
}

/// One process's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    name: String,
    #[serde(default)]
    inputs: Vec<String>,
    #[serde(default)]
    output: Value,
    /// Makes `run` return this error (JSON of `epi::ProcessError`) after its first tick.
    #[serde(default)]
    fail_with: Option<epi::ProcessError>,
    /// `[service, function, args]`: `run` applies it through the host (from the process's
    /// thread and from a thread it starts) and reports both results as `called`.
    #[serde(default)]
    call: Option<(String, String, Value)>,
    /// A file `run` creates when it starts: a mark other processes can see.
    #[serde(default)]
    touch: Option<std::path::PathBuf>,
}

/// The plugin's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    processes: Vec<ProcessConfig>,
    #[serde(default)]
    data: Vec<DataConfig>,
    #[serde(default)]
    subscriptions: Vec<(String, String)>,
    #[serde(default)]
    notify_panics: bool,
    #[serde(default = "default_app")]
    app: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    priority: i32,
    #[serde(default = "default_services")]
    services: Vec<String>,
    #[serde(default)]
    providers: Vec<ProviderConfig>,
}

fn default_app() -> String {
    "testplug".into()
}

fn default_services() -> Vec<String> {
    vec!["math".into()]
}

/// What the callback data sources return, changed through the `probe` service.
#[derive(Default)]
pub struct CallbackState {
    value: Value,
    behaviour: Behaviour,
}

/// The plugin object.
pub struct TestPlug {
    config: Config,
    /// Arrivals at `rendezvous`, shared by all providers of this plugin.
    arrivals: Arc<AtomicU32>,
    /// Notifications received, newest last.
    received: Arc<Mutex<Vec<Notification>>>,
    callback: Arc<Mutex<CallbackState>>,
    /// Calls to `probe.hit`, across upgrades.
    hits: Arc<AtomicU64>,
    /// Providers added at run time: their configuration and registration, by id.
    added: Added,
}

/// Providers a plugin added at run time, by registration id.
type Added = Arc<Mutex<std::collections::BTreeMap<u64, (Value, epi::host::Registration)>>>;

/// The provider a configuration describes.
fn configured(config: &ProviderConfig, arrivals: &Arc<AtomicU32>) -> Provider {
    let provider = match config.kind {
        Kind::Number => Provider::new(
            config.service.clone(),
            Scripted::new(config, arrivals.clone()),
        ),
        Kind::Text => Provider::new(config.service.clone(), Texty::new(config)),
    };
    let provider = provider.label(config.label.clone());
    match config.priority {
        Some(priority) => provider.priority(priority),
        None => provider,
    }
}

/// Adds the provider `config` (JSON of a `ProviderConfig`) describes through the host.
fn add_configured(config: Value, added: &Added) -> Result<u64, String> {
    let parsed: ProviderConfig =
        serde_json::from_value(config.clone()).map_err(|err| err.to_string())?;
    let registration = epi::host::add_provider(configured(&parsed, &Arc::default()))
        .map_err(|err| err.to_string())?;
    let id = registration.id();
    added.lock().unwrap().insert(id, (config, registration));
    Ok(id)
}

impl TestPlug {
    /// Builds the plugin from the host's configuration; panics on a bad one (tests rely on the
    /// loader reporting a panicking `init`).
    pub fn from_context(context: &PluginContext) -> Self {
        if build_mark() == "99999999" {
            panic!("build 99999999 refuses to start");
        }
        let value = if context.config.is_null() {
            serde_json::json!({})
        } else {
            context.config.clone()
        };
        let config: Config = serde_json::from_value(value).expect("invalid testplug configuration");
        TestPlug {
            config,
            arrivals: Arc::default(),
            received: Arc::default(),
            callback: Arc::default(),
            hits: Arc::default(),
            added: Arc::default(),
        }
    }
}

impl Plugin for TestPlug {
    fn app(&self) -> String {
        self.config.app.clone()
    }

    fn version(&self) -> Option<String> {
        Some(
            self.config
                .version
                .clone()
                .unwrap_or_else(|| format!("0.1.0+{}", build_mark())),
        )
    }

    fn export_state(&self) -> Option<epi::PluginState> {
        Some(epi::PluginState {
            format: STATE_FORMAT,
            data: serde_json::json!({
                "hits": self.hits.load(Ordering::SeqCst),
                "added": self.added.lock().unwrap().values().map(|(config, _)| config.clone()).collect::<Vec<_>>(),
            }),
        })
    }

    fn import_state(&self, state: epi::PluginState) {
        if state.format == STATE_FORMAT {
            let hits = state.data["hits"].as_u64().unwrap_or(0);
            self.hits.fetch_add(hits, Ordering::SeqCst);
            // Re-add what the previous version had added (published with this version).
            for config in state.data["added"].as_array().cloned().unwrap_or_default() {
                if let Err(err) = add_configured(config, &self.added) {
                    epi::log::error(&format!("cannot re-add a provider: {err}"));
                }
            }
        }
    }

    fn priority(&self) -> i32 {
        self.config.priority
    }

    fn services(&self) -> Vec<String> {
        let mut services = self.config.services.clone();
        services.push("probe".into());
        services
    }

    fn data_providers(&self) -> Vec<DataProvider> {
        self.config
            .data
            .iter()
            .map(|data| {
                let provider = if let Some(path) = &data.file {
                    DataProvider::file(data.service.clone(), data.key.clone(), path.clone())
                } else if let Some(value) = &data.static_value {
                    DataProvider::value(data.service.clone(), data.key.clone(), value)
                } else if data.callback {
                    let state = self.callback.clone();
                    DataProvider::callback(data.service.clone(), data.key.clone(), move || {
                        // Release the lock before panicking, so the state is not poisoned.
                        let (behaviour, value) = {
                            let state = state.lock().unwrap();
                            (state.behaviour, state.value.clone())
                        };
                        match behaviour {
                            Behaviour::Ok => Ok(value),
                            Behaviour::Hang => {
                                std::thread::sleep(Duration::from_secs(3));
                                Ok(value)
                            }
                            Behaviour::Abort => std::process::abort(),
                            Behaviour::Overflow => Ok(recurse_without_end(0).into()),
                            Behaviour::Fail => Err("the callback refused".to_string()),
                            Behaviour::Panic => panic!("the callback panicked on purpose"),
                        }
                    })
                } else {
                    panic!("data source without file, static or callback")
                };
                match data.interval_ms {
                    Some(ms) => provider.interval(Duration::from_millis(ms)),
                    None => provider,
                }
            })
            .collect()
    }

    fn processes(&self) -> Vec<epi::Process> {
        self.config
            .processes
            .iter()
            .map(|config| {
                let output = config.output.clone();
                let fail_with = config.fail_with.clone();
                let call = config.call.clone();
                let touch = config.touch.clone();
                let inputs_seen = Arc::new(Mutex::new(Value::Null));
                let seen = inputs_seen.clone();
                epi::Process::new(config.name.clone())
                    .inputs(config.inputs.clone())
                    .output(move |inputs| {
                        *seen.lock().unwrap() = serde_json::to_value(inputs).unwrap();
                        Ok(output.clone())
                    })
                    .run(move |ctx| {
                        if let Some(path) = &touch {
                            let _ = std::fs::write(path, b"ran");
                        }
                        let called = call.as_ref().map(|(service, function, args)| {
                            let apply = || {
                                epi::host::apply_json(service, function, args, epi::Opts::new())
                                    .map_err(|err| err.to_string())
                            };
                            let here = apply();
                            let from_thread = std::thread::scope(|scope| {
                                scope.spawn(apply).join().unwrap_or(Err("panicked".into()))
                            });
                            serde_json::json!([here, from_thread])
                        });
                        let mut ticks = 0u64;
                        loop {
                            ticks += 1;
                            ctx.set_report(&serde_json::json!({
                                "ticks": ticks,
                                "mark": build_mark(),
                                "inputs": inputs_seen.lock().unwrap().clone(),
                                "called": called,
                            }));
                            if let Some(err) = &fail_with {
                                return Err(err.clone());
                            }
                            if ctx.wait_stop(Duration::from_millis(5)) {
                                return Ok(());
                            }
                        }
                    })
            })
            .collect()
    }

    fn data_subscriptions(&self) -> Vec<(String, String)> {
        self.config.subscriptions.clone()
    }

    fn notify(&self, notification: &Notification) {
        if self.config.notify_panics {
            panic!("notify panicked on purpose");
        }
        self.received.lock().unwrap().push(notification.clone());
    }

    fn providers(&self) -> Vec<Provider> {
        let probe = Probe {
            received: self.received.clone(),
            callback: self.callback.clone(),
            hits: self.hits.clone(),
            inc: std::sync::OnceLock::new(),
            added: self.added.clone(),
        };
        std::iter::once(Provider::new("probe", probe))
            .chain(
                self.config
                    .providers
                    .iter()
                    .map(|config| self.configured(config)),
            )
            .collect()
    }
}

impl TestPlug {
    fn configured(&self, config: &ProviderConfig) -> Provider {
        configured(config, &self.arrivals)
    }
}

/// Lets tests see and drive the plugin's data side.
pub struct Probe {
    received: Arc<Mutex<Vec<Notification>>>,
    callback: Arc<Mutex<CallbackState>>,
    hits: Arc<AtomicU64>,
    /// `math.inc` through the host, resolved once (for `inner_loop`).
    inc: std::sync::OnceLock<epi::host::Function<u64, u64>>,
    added: Added,
}

/// A provider error from a host error.
fn relayed(err: epi::Error) -> String {
    format!("through the host: {err}")
}

#[epi::provider]
impl Probe {
    /// Adds the provider `config` describes (as in the plugin's `providers`); its id.
    pub fn add_provider(&self, config: Value) -> Result<u64, String> {
        add_configured(config, &self.added)
    }

    /// Withdraws an added provider; whether it was added.
    pub fn remove_provider(&self, id: &u64) -> bool {
        self.added.lock().unwrap().remove(id).is_some()
    }

    /// Labels of the added providers, in registration order.
    pub fn added(&self) -> Vec<String> {
        self.added
            .lock()
            .unwrap()
            .values()
            .map(|(config, _)| config["label"].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    /// Adds a provider of `math` made of a closure over JSON: `value(x)` is `x + 1000`,
    /// `echo(v)` is `v`. Its id.
    pub fn add_json_provider(&self, label: String) -> Result<u64, String> {
        let provider = Provider::json(
            "math",
            label.clone(),
            ["value", "echo"],
            |function, args| match function {
                "value" => args
                    .as_i64()
                    .map(|x| Value::from(x + 1000))
                    .ok_or_else(|| format!("value takes a number, not {args}")),
                _ => Ok(args),
            },
        );
        let registration = epi::host::add_provider(provider).map_err(|err| err.to_string())?;
        let id = registration.id();
        self.added
            .lock()
            .unwrap()
            .insert(id, (serde_json::json!({"label": label}), registration));
        Ok(id)
    }

    /// Adds and removes the provider `{"label": "churn-<k>", "add": k}` of `service` for k in
    /// 1..=n; the number of cycles.
    pub fn churn(&self, n: u64, service: String) -> Result<u64, String> {
        for k in 1..=n {
            let config =
                serde_json::json!({"label": format!("churn-{k}"), "add": k, "service": service});
            let provider = configured(
                &serde_json::from_value(config).map_err(|err| err.to_string())?,
                &Arc::default(),
            );
            let registration = epi::host::add_provider(provider).map_err(|err| err.to_string())?;
            registration.remove();
        }
        Ok(n)
    }

    /// An agent stage for tests: sleeps `args.ms` milliseconds, then appends
    /// `[action, started_ms, ended_ms]` to the guest's `trace`; fails when `args.fail` is set.
    pub fn stage_sleep(&self, input: &Value) -> Result<Decision<Value>, String> {
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0)
        };
        let started = now();
        let args = &input["args"];
        std::thread::sleep(Duration::from_millis(args["ms"].as_u64().unwrap_or(0)));
        if let Some(message) = args["fail"].as_str() {
            return Err(message.to_owned());
        }
        let mut guest = input["guest"].clone();
        if guest.is_object() {
            let entry = serde_json::json!([input["action"], started, now()]);
            match guest.get_mut("trace").and_then(Value::as_array_mut) {
                Some(trace) => trace.push(entry),
                None => guest["trace"] = serde_json::json!([entry]),
            }
        }
        Ok(Decision::Decided(serde_json::json!({"guest": guest})))
    }

    /// `math.value(x)` of every provider, called through the host.
    pub fn relay(&self, x: &i64) -> Result<Vec<i64>, String> {
        epi::host::function::<i64, i64>("math", "value")
            .apply(x)
            .map_err(relayed)
    }

    /// `math.value(x)` with options, through the host: each result or its error text.
    pub fn relay_with(&self, x: i64, opts: epi::Opts) -> Result<Vec<Result<i64, String>>, String> {
        let results = epi::host::function::<i64, i64>("math", "value")
            .apply_with(&x, opts.for_apply().map_err(relayed)?)
            .map_err(relayed)?;
        Ok(results
            .into_iter()
            .map(|result| result.map_err(|err| err.to_string()))
            .collect())
    }

    /// `math.value` as a pipe from `x`, through the host.
    pub fn relay_pipe(&self, x: i64, opts: epi::Opts) -> Result<i64, String> {
        epi::host::function::<i64, i64>("math", "value")
            .pipe(x, opts.for_pipe().map_err(relayed)?)
            .map_err(relayed)
    }

    /// `math.decide(x)`, through the host.
    pub fn relay_decide(&self, x: i64, opts: epi::Opts) -> Result<Decision<String>, String> {
        epi::host::function::<i64, Decision<String>>("math", "decide")
            .decide(&x, opts.for_decide().map_err(relayed)?)
            .map_err(relayed)
    }

    /// `math.check(x)` as `any` and `all`, through the host.
    pub fn relay_any_all(&self, x: i64, opts: epi::Opts) -> Result<(bool, bool), String> {
        let check = epi::host::function::<i64, bool>("math", "check");
        let opts = opts.for_apply().map_err(relayed)?;
        Ok((
            check.any(&x, opts).map_err(relayed)?,
            check.all(&x, opts).map_err(relayed)?,
        ))
    }

    /// Whether `service.function` has providers, through the host.
    pub fn relay_configured(&self, service: &str, function: &str) -> bool {
        epi::host::is_configured(service, function)
    }

    /// A call by name with JSON, through the host: `apply` (or `decide` when `decide`).
    pub fn relay_json(
        &self,
        service: String,
        function: String,
        args: Value,
        opts: epi::Opts,
        decide: bool,
    ) -> Result<Value, String> {
        if decide {
            let decision =
                epi::host::decide_json(&service, &function, &args, opts).map_err(relayed)?;
            serde_json::to_value(decision).map_err(|err| err.to_string())
        } else {
            epi::host::apply_json(&service, &function, &args, opts).map_err(relayed)
        }
    }

    /// Data queries through the host: the keys of `service` and every source's value of `key`.
    pub fn relay_data(
        &self,
        service: &str,
        key: &str,
    ) -> Result<(Vec<String>, Vec<Value>), String> {
        let data = epi::host::data(service);
        Ok((
            data.keys().map_err(relayed)?,
            data.get(key).map_err(relayed)?,
        ))
    }

    /// `n` nested calls: `probe.ping(n - 1)` through the host, down to 0; returns the number
    /// of calls that answered. Re-entrant (the same provider is called back) and, past the
    /// host's depth limit, a clear error.
    pub fn ping(&self, n: &u64) -> Result<u64, String> {
        if *n == 0 {
            return Ok(1);
        }
        let answers = epi::host::function::<u64, u64>("probe", "ping")
            .apply(&(n - 1))
            .map_err(relayed)?;
        Ok(1 + answers.iter().sum::<u64>())
    }

    /// `math.sleep(ms)` through the host, returning every provider's label.
    pub fn relay_sleep(&self, ms: &u64) -> Result<Vec<String>, String> {
        epi::host::function::<u64, String>("math", "sleep")
            .apply(ms)
            .map_err(relayed)
    }

    /// `math.inc(0)` through the host `n` times with a handle resolved once; the sum.
    pub fn inner_loop(&self, n: &u64) -> Result<u64, String> {
        let inc = self
            .inc
            .get_or_init(|| epi::host::function::<u64, u64>("math", "inc"));
        let mut sum = 0;
        for _ in 0..*n {
            for value in inc.apply(&0).map_err(relayed)? {
                sum += value;
            }
        }
        Ok(sum)
    }

    /// Counts a call; returns the count so far (including previous builds').
    pub fn hit(&self) -> u64 {
        self.hits.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Text borrowed from this library's static memory (zero-copy on the native path).
    pub fn motto(&self) -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed(MOTTO)
    }

    /// This build's mark.
    pub fn mark(&self) -> String {
        build_mark()
    }

    /// Every notification received so far.
    pub fn notifications(&self) -> Vec<Notification> {
        self.received.lock().unwrap().clone()
    }

    /// Sets what callback sources return.
    pub fn set_callback(&self, value: &Value) {
        self.callback.lock().unwrap().value = value.clone();
    }

    /// Sets whether callback sources answer, fail or panic.
    pub fn set_callback_behaviour(&self, behaviour: &str) -> Result<(), String> {
        let behaviour = serde_json::from_value(Value::String(behaviour.to_owned()))
            .map_err(|err| err.to_string())?;
        self.callback.lock().unwrap().behaviour = behaviour;
        Ok(())
    }
}

/// A provider doing what its configuration says.
pub struct Scripted {
    config: ProviderConfig,
    calls: AtomicU64,
    arrivals: Arc<AtomicU32>,
}

impl Scripted {
    fn new(config: &ProviderConfig, arrivals: Arc<AtomicU32>) -> Self {
        Scripted {
            config: config.clone(),
            calls: AtomicU64::new(0),
            arrivals,
        }
    }

    fn act(&self) -> Result<(), String> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match self.config.behaviour {
            Behaviour::Ok => Ok(()),
            Behaviour::Hang => {
                std::thread::sleep(Duration::from_secs(3));
                Ok(())
            }
            Behaviour::Abort => std::process::abort(),
            Behaviour::Overflow => {
                recurse_without_end(0);
                Ok(())
            }
            Behaviour::Fail => Err(format!("{} refused", self.config.label)),
            Behaviour::Panic => panic!("{} panicked on purpose", self.config.label),
        }
    }
}

#[epi::provider]
impl Scripted {
    /// `name` back when `n` is odd, else an empty string: a `(String, u64)` argument and a
    /// `String` result with a trivial body, for the benchmarks of the stable call path.
    pub fn tag(&self, name: &str, n: u64) -> String {
        if n % 2 == 1 {
            name.to_owned()
        } else {
            String::new()
        }
    }

    /// `x + add`.
    pub fn value(&self, x: &i64) -> Result<i64, String> {
        self.act()?;
        Ok(x + self.config.add)
    }

    /// Decides its label when configured to decide.
    pub fn decide(&self, _x: &i64) -> Result<Decision<String>, String> {
        self.act()?;
        Ok(if self.config.decides {
            Decision::Decided(self.config.label.clone())
        } else {
            Decision::NoDecision
        })
    }

    /// Its configured truth, for `any` and `all`.
    pub fn check(&self, _x: &i64) -> Result<bool, String> {
        self.act()?;
        Ok(self.config.truth)
    }

    /// Its label.
    pub fn label(&self) -> String {
        self.config.label.clone()
    }

    /// The build mark of the library this provider runs in.
    pub fn mark(&self) -> String {
        build_mark()
    }

    /// Busy for `us` microseconds (work on a core, not a sleep); returns how many rounds it
    /// spun. For the benchmarks of concurrent calls.
    pub fn spin(&self, us: &u64) -> u64 {
        let until = Instant::now() + Duration::from_micros(*us);
        let mut rounds = 0u64;
        while Instant::now() < until {
            rounds = rounds.wrapping_add(1);
            std::hint::spin_loop();
        }
        rounds
    }

    /// Sleeps `ms` milliseconds and returns its label.
    pub fn sleep(&self, ms: &u64) -> String {
        std::thread::sleep(Duration::from_millis(*ms));
        self.config.label.clone()
    }

    /// How many scripted calls it received.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Waits until `group` callers (this one included) are inside `rendezvous` at once, or
    /// `timeout_ms` passed; true when the group met. Proves calls ran in parallel.
    pub fn rendezvous(&self, group: u32, timeout_ms: u64) -> bool {
        let arrival = self.arrivals.fetch_add(1, Ordering::SeqCst) + 1;
        let target = arrival.div_ceil(group) * group;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        while self.arrivals.load(Ordering::SeqCst) < target {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Benchmark body: `x + add` (the same body the native baseline runs).
    pub fn inc(&self, x: &u64) -> u64 {
        x.wrapping_add(self.config.add as u64)
    }

    /// Benchmark body: never decides.
    pub fn pass(&self, _x: &u64) -> Decision<u64> {
        Decision::NoDecision
    }

    /// Benchmark body: decides `x + add` when configured to decide.
    pub fn choose(&self, x: &u64) -> Decision<u64> {
        if self.config.decides {
            Decision::Decided(x.wrapping_add(self.config.add as u64))
        } else {
            Decision::NoDecision
        }
    }

    /// Two arguments: `a * b + add`.
    pub fn scale(&self, a: i64, b: &i64) -> i64 {
        a * b + self.config.add
    }
}

/// A provider whose `value` returns text instead of a number.
pub struct Texty {
    label: String,
}

impl Texty {
    fn new(config: &ProviderConfig) -> Self {
        Texty {
            label: config.label.clone(),
        }
    }
}

#[epi::provider]
impl Texty {
    /// Its label and the input, as text.
    pub fn value(&self, x: &i64) -> String {
        format!("{}:{x}", self.label)
    }

    /// Its label.
    pub fn label(&self) -> String {
        self.label.clone()
    }
}

epi::export_plugin!(TestPlug, TestPlug::from_context);
