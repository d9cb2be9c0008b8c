//! The operator's console in a real browser: headless Chromium (Debian's `chromium`) driven
//! through its WebDriver server (`chromium-driver`) against a daemon this test starts. The
//! page shows the plugins, follows an upgrade within 2 s without being reloaded, and its
//! reload buttons work through the guarded admin route. A screenshot lands in
//! `target/console.png`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

mod common;

use common::start;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The WebDriver server, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts chromedriver on a free loopback port and waits until it answers.
fn start_driver() -> Driver {
    for program in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(program).exists(),
            "{program} is missing: the console's browser test needs Debian's `chromium` and \
             `chromium-driver` packages (`apt-get install chromium chromium-driver`; \
             `cargo xtask test` installs them)"
        );
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    let driver = Driver { child, url };
    let deadline = Instant::now() + Duration::from_secs(20);
    while ureq::get(&format!("{}/status", driver.url)).call().is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not answer");
        std::thread::sleep(Duration::from_millis(50));
    }
    driver
}

/// A headless Chromium session. Chromium refuses to run as root with its sandbox on (CI runs
/// as root), hence `--no-sandbox`.
async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1300", "--hide-scrollbars"]
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// The plugin directory (hello, greeter-fr, the test plugin with a process) and its
/// configuration; the directory is watched.
fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = epi_testkit::plugin_dir();
    for (krate, file) in [
        ("epi-plugin-hello", "libepi_plugin_hello.so"),
        ("epi-plugin-greeter-fr", "libepi_plugin_greeter_fr.so"),
        ("epi-plugin-testplug", "libepi_plugin_testplug.so"),
    ] {
        epi_testkit::install(dir.path(), krate, file);
    }
    let config = dir.path().join("epi.toml");
    std::fs::write(
        &config,
        "[plugins]\ndirs = [\".\"]\norder = [\"hello\", \"greeter-fr\"]\n\
         [plugins.config.\"libepi_plugin_testplug.so\"]\napp = \"testplug\"\n\
         providers = [{ label = \"slow\" }]\n\
         processes = [{ name = \"ticker\" }, { name = \"worker\", inputs = [\"ticker\"] }]\n\
         [http]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    (dir, config)
}

/// The text of the first element `css` finds, once one exists.
async fn text(client: &Client, css: &str) -> String {
    // The page re-renders its panels live: an element found may be replaced before its text
    // is read (a stale reference); find it again then.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let element = client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("{css}: {err}"));
        match element.text().await {
            Ok(text) => return text,
            Err(err) if std::time::Instant::now() < deadline => {
                eprintln!("{css}: {err}; finding it again");
            }
            Err(err) => panic!("{css}: {err}"),
        }
    }
}

/// Waits until the text at `css` satisfies `done`; returns it and how long that took.
async fn until(
    client: &Client,
    css: &str,
    within: Duration,
    done: impl Fn(&str) -> bool,
) -> (String, Duration) {
    let started = Instant::now();
    loop {
        // The panels are replaced every second: an element found may be gone at once.
        if let Ok(element) = client.find(Locator::Css(css)).await {
            if let Ok(value) = element.text().await {
                if done(&value) {
                    return (value, started.elapsed());
                }
            }
        }
        if started.elapsed() > within {
            let value = text(client, css).await;
            panic!("{css} still shows {value:?} after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_plugins_follows_an_upgrade_and_reloads() {
    let driver = start_driver();
    let (dir, config) = setup();
    let daemon = start(&config);
    for _ in 0..50 {
        ureq::get(&daemon.url("/hello/Ada")).call().unwrap();
    }
    let client = browser(&driver).await;
    let result = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(exercise(
        &client,
        &daemon.url("/_epi/ui"),
        dir.path(),
    )))
    .await;
    // The browser goes whatever happened (chromedriver is killed when `driver` drops).
    let _ = client.close().await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(message)) => panic!("{message}"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The test proper; the caller closes the browser session whatever happens.
async fn exercise(client: &Client, page: &str, dir: &Path) -> Result<(), String> {
    client.goto(page).await.map_err(|err| err.to_string())?;
    assert_eq!(text(client, "header h1").await, "epi console");

    // The plugins table.
    let version = r#"#plugins tr[data-app="testplug"] td.version"#;
    assert_eq!(text(client, version).await, "0.1.0+00000000");
    assert_eq!(
        text(client, r#"#plugins tr[data-app="hello"] td.version"#).await,
        "1.0.0"
    );
    assert_eq!(
        text(client, r#"#plugins tr[data-app="greeter-fr"] td.app"#).await,
        "greeter-fr"
    );
    let rows = client
        .find_all(Locator::Css("#plugins tbody tr"))
        .await
        .map_err(|err| err.to_string())?;
    assert_eq!(rows.len(), 3);
    // The other panels are there too: calls counted, the processes' graph drawn.
    text(client, "#calls tbody tr").await;
    text(client, r#"svg.graph g[data-process="testplug/worker"]"#).await;

    // A new build renamed into place: the page shows it without being reloaded.
    let path = dir.join("libepi_plugin_testplug.so");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(16)
        .position(|w| w == b"EPIMARK:00000000")
        .unwrap();
    bytes[at + 8..at + 16].copy_from_slice(b"00000005");
    epi_testkit::write_file(dir, ".next.tmp", &bytes);
    std::fs::rename(dir.join(".next.tmp"), &path).unwrap();
    let (_, took) = until(client, version, Duration::from_secs(2), |value| {
        value == "0.1.0+00000005"
    })
    .await;
    eprintln!("the console showed the new version {took:?} after the rename");
    text(client, "#history tbody tr").await;

    // The reload buttons, through the guarded admin route.
    client
        .find(Locator::Css("#reload-all"))
        .await
        .map_err(|err| err.to_string())?
        .click()
        .await
        .map_err(|err| err.to_string())?;
    let (action, _) = until(client, "#action", Duration::from_secs(10), |value| {
        value.starts_with("reloaded all:")
    })
    .await;
    assert!(action.contains("unchanged"), "{action}");
    until(
        client,
        r#"#plugins tr[data-app="hello"] button.reload"#,
        Duration::from_secs(5),
        |_| true,
    )
    .await;
    client
        .find(Locator::Css(
            r#"#plugins tr[data-app="hello"] button.reload"#,
        ))
        .await
        .map_err(|err| err.to_string())?
        .click()
        .await
        .map_err(|err| err.to_string())?;
    let (action, _) = until(client, "#action", Duration::from_secs(10), |value| {
        value.starts_with("reloaded hello:")
    })
    .await;
    assert_eq!(action, "reloaded hello: 1 unchanged");

    // Let one more refresh land (the page stamps each on its body), then keep a picture.
    let refreshed = || async {
        client
            .execute(
                "return document.body.getAttribute('data-refreshed');",
                vec![],
            )
            .await
            .map_err(|err| err.to_string())
    };
    let before = refreshed().await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while refreshed().await? == before {
        if Instant::now() > deadline {
            return Err(format!("no refresh in 5 s after {before}"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let png = client.screenshot().await.map_err(|err| err.to_string())?;
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let target = epi_testkit::profile_dir()
        .parent()
        .expect("the target directory")
        .join("console.png");
    std::fs::write(&target, png).unwrap();
    eprintln!("screenshot: {}", target.display());
    Ok(())
}
