//! [`Browser`]: a headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromedriver`, installed by `scripts/setup-browser.sh`; `RPAFLOW_CHROMIUM` and
//! `RPAFLOW_CHROMEDRIVER` name others), for the web console's scenarios. Every wait has a
//! timeout and fails with a screenshot saved and the page's text in the message.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value as Json, json};
use tempfile::TempDir;
use tokio::process::{Child, Command};

/// How long a wait for something on a page may take.
const WAIT: Duration = Duration::from_secs(20);
const DRIVER_START: Duration = Duration::from_secs(15);

/// One Chromium (one window at first) with its own empty profile, and its chromedriver.
pub struct Browser {
    client: Client,
    _driver: Child,
    _profile: TempDir,
    shots: PathBuf,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("shots", &self.shots)
            .finish()
    }
}

fn binary(env: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.is_file(),
        "{} not found (scripts/setup-browser.sh installs it; {env} names another)",
        path.display()
    );
    path
}

/// A test that fails leaves its session open: chromedriver and the Chromium it started go
/// together, by process group, so no browser outlives its test.
impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(group) = self._driver.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{group}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a `width`x`height` window; screenshots
    /// go to `target/console-screenshots/`.
    pub async fn start(width: u32, height: u32) -> Self {
        Self::start_with(width, height, &[]).await
    }

    /// [`Browser::start`] with more Chromium flags (`--ignore-certificate-errors` for a test
    /// server's self-signed certificate).
    pub async fn start_with(width: u32, height: u32, flags: &[&str]) -> Self {
        let chromium = binary("RPAFLOW_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = binary("RPAFLOW_CHROMEDRIVER", "/usr/bin/chromedriver");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg("--silent")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, which the Chromium it starts joins: see `Drop`.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let started = tokio::time::Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < DRIVER_START,
                "chromedriver did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::Builder::new()
            .prefix("rpaflow-console-")
            .tempdir()
            .expect("a temporary profile directory");
        let mut args = vec![
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
        ];
        let window = format!("--window-size={width},{height}");
        let data = format!("--user-data-dir={}", profile.path().display());
        args.extend([window.as_str(), data.as_str()]);
        args.extend(flags);
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({"binary": chromium, "args": args}),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("chromium did not start a session: {e}"));
        let shots = crate::workspace_root().join("target/console-screenshots");
        std::fs::create_dir_all(&shots).expect("target/ is writable");
        Self {
            client,
            _driver: driver,
            _profile: profile,
            shots,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    /// The path of the page shown, `/runs/ID`.
    pub async fn path(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("the page's address")
            .path()
            .to_owned()
    }

    /// Saves a screenshot as `target/console-screenshots/NAME.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("target/console-screenshots is writable");
        path
    }

    /// Waits until `css` matches an element and returns it.
    pub async fn find(&self, css: &str) -> Element {
        match self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => self.fail(&format!("no `{css}` on the page: {e}")).await,
        }
    }

    /// Every element `css` matches now.
    pub async fn all(&self, css: &str) -> Vec<Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_default()
    }

    /// The text of the whole page as a person reads it.
    pub async fn page_text(&self) -> String {
        match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits until the page's text contains `text`.
    pub async fn wait_text(&self, text: &str) {
        self.until(&format!("the page to show `{text}`"), async || {
            self.page_text().await.contains(text)
        })
        .await;
    }

    /// Runs `script` (with `arguments`) in the page and returns its value.
    pub async fn eval(&self, script: &str) -> Json {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}: {script}"))
    }

    /// Polls `check` every 100 ms until it is true; fails after the wait with `what`.
    pub async fn until(&self, what: &str, mut check: impl AsyncFnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !check().await {
            if tokio::time::Instant::now() > deadline {
                self.fail(&format!("waited in vain for {what}")).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Types `text` into the field `css` (emptied first).
    pub async fn type_into(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.expect("a field that can be emptied");
        field
            .send_keys(text)
            .await
            .expect("a field that takes keys");
    }

    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click `{css}`: {e}"));
    }

    /// Panics with `message`, the page's address and text; saves `failure.png`.
    pub async fn fail(&self, message: &str) -> ! {
        let shot = self.screenshot("failure").await;
        let url = self
            .client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default();
        let text = self.page_text().await;
        panic!(
            "{message}\npage {url} (screenshot {}):\n{}",
            shot.display(),
            crate::tail(&text, 60)
        );
    }

    /// Ends the session (Chromium exits).
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.client.clone().close()).await;
    }
}
