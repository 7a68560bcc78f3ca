//! `browser`: drives a real headless Chromium through a list of actions, as a clerk would.
//!
//! The executor talks WebDriver (with [`fantoccini`]) to one `chromedriver` per worker, which it
//! starts on first use on a free loopback port and shares between steps, those of namespaces with
//! an egress policy of their own included ([`BrowserExecutor::with_egress`]). Each step gets a fresh
//! browsing context: a new session, that is a new Chromium with an empty profile directory of its
//! own, closed when the step ends, fails, times out or is cancelled. [`BrowserExecutor::shutdown`]
//! (or dropping the executor) kills `chromedriver` and every Chromium it started. Debian's
//! `chromium` and `chromium-driver` are installed by `scripts/setup-browser.sh`.
//!
//! # Input
//! | field | meaning |
//! |---|---|
//! | `actions` | required; a list of actions, run in order (below) |
//! | `default_timeout` | how long each action may take unless it says (`"10s"` by default) |
//! | `screenshots_dir` | where screenshots are saved; `$TMPDIR/rpaflow-screenshots` by default |
//!
//! Each action is a mapping with one action key, and optionally `timeout` (`"2s"`, or
//! milliseconds). Selectors are CSS selectors.
//!
//! | action | what it does |
//! |---|---|
//! | `open: URL` | navigates and waits for the page to load |
//! | `wait_for: SELECTOR` or `{selector, timeout}` | waits until an element matches |
//! | `fill: {selector, value}` | clears a text field and types `value` (a string, number or boolean) |
//! | `select: {selector, value}` | picks the `<option>` of a `<select>` whose value is `value` |
//! | `click: SELECTOR` | clicks an element |
//! | `read_text: {selector, as}` | its rendered text into `values.<as>` |
//! | `read_attribute: {selector, attribute, as}` | an attribute into `values.<as>` (`null` when absent) |
//! | `read_table: {selector, as}` | a `<table>` into `values.<as>`: one mapping per body row, keyed by the header cells (the `<thead>`'s last row, else the first row); an empty header is `column N` |
//! | `screenshot: {as}` | a PNG of the viewport saved as a file; its path goes in `screenshots.<as>` |
//!
//! Actions that work on an element wait for it to appear, up to their timeout.
//!
//! # Output
//! `{values, screenshots, url, title}`: what the `read_*` actions read, by name; the path of each
//! screenshot by name (never the image itself); and the page's URL and title after the last action.
//!
//! # Egress
//! Every request of the page goes through a proxy of the worker's own (one per browsing context)
//! that checks its destination against the egress policy of the step's namespace
//! (`worker.egress` or `worker.egress_namespaces.<namespace>`, see [`crate::egress`]): navigations, each redirect hop, subresources, `fetch`/XHR, form posts,
//! WebSockets, over HTTP and HTTPS (`CONNECT`), loopback included. The proxy resolves names
//! itself and connects to the checked address. WebRTC may not send UDP outside it; QUIC and DNS
//! prefetching are off. A denied request is answered `403` by the proxy, and the step fails with
//! `egress_denied` at the end of the action during which the page made it (or, for a request the
//! page made in the background after its action ended, at the end of the next action or of the
//! step). Schemes that do not reach the network (`about:`, `data:`, `file:`) are not checked.
//!
//! # Errors
//! Messages name the failing action by index, with its selector:
//! ``actions[3] click `#submit`: no element matches (waited 10s); screenshot: /tmp/….png``. A
//! screenshot of the page at that moment is saved beside the others and its path ends the message.
//! - `browser_timeout` (retryable): `wait_for` found no match within its timeout, or an action
//!   (such as a page load) took longer than its timeout.
//! - `browser_action`: an action failed: no element matches its selector (after waiting its
//!   timeout), no `<option>` has the value, the element is not a `<table>`, the click was refused,
//!   the page did not load (connection refused).
//! - `browser_unavailable` (retryable): `chromedriver` or `chromium` is missing or did not start;
//!   the message says which and where it was looked for. Also after [`BrowserExecutor::shutdown`].
//! - `egress_denied`: the page tried to reach a destination the egress policy denies;
//!   the message names the first one, like ``actions[0] open `http://10.0.0.5/`: egress to
//!   10.0.0.5:80 is denied by the worker's egress policy (worker.egress)``.
//! - `cancelled`: the run was cancelled; the browsing context is closed first.
//! - `invalid_input`: a bad field, named in the message (`actions[2].fill: \`value\` is required`).

mod action;
mod driver;
mod run;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value as Json;
use tokio::sync::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;

use self::action::Script;
use self::driver::{Driver, Session};
use crate::egress::Egress;
use crate::{Executor, StepError, TaskContext};

/// The error codes of the `browser` executor.
pub mod codes {
    /// An action failed (no element matches, no such option, navigation failed).
    pub const BROWSER_ACTION: &str = "browser_action";
    /// An element did not appear, or an action did not finish, within its timeout (retryable).
    pub const BROWSER_TIMEOUT: &str = "browser_timeout";
    /// `chromedriver` or `chromium` is missing or did not start (retryable).
    pub const BROWSER_UNAVAILABLE: &str = "browser_unavailable";
}

/// How long [`BrowserExecutor::shutdown`] waits for steps in flight to close their contexts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Where the browser's programs are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserConfig {
    /// The Chromium binary (`RPAFLOW_CHROMIUM`, by default `/usr/bin/chromium`).
    pub chromium: PathBuf,
    /// The ChromeDriver binary (`RPAFLOW_CHROMEDRIVER`, by default `/usr/bin/chromedriver`).
    pub chromedriver: PathBuf,
    /// Run Chromium without a window (true by default; false needs a display).
    pub headless: bool,
}

impl Default for BrowserConfig {
    fn default() -> Self {
        let path = |env: &str, default: &str| {
            std::env::var_os(env)
                .filter(|v| !v.is_empty())
                .map_or_else(|| PathBuf::from(default), PathBuf::from)
        };
        Self {
            chromium: path("RPAFLOW_CHROMIUM", "/usr/bin/chromium"),
            chromedriver: path("RPAFLOW_CHROMEDRIVER", "/usr/bin/chromedriver"),
            headless: true,
        }
    }
}

/// The `browser` executor: one `chromedriver` (started on first use) shared by every step, and
/// the egress policy its pages are held to.
#[derive(Debug)]
pub struct BrowserExecutor {
    egress: Egress,
    browser: Arc<SharedDriver>,
}

/// The `chromedriver` of a worker, shared by its `browser` executors whatever their egress
/// policy: a policy applies per browsing context, through the context's own proxy. Dropping the
/// last executor kills it (`Driver`'s own drop kills its process group).
#[derive(Debug)]
struct SharedDriver {
    config: BrowserConfig,
    driver: Mutex<Option<Driver>>,
    /// Cancelled by [`BrowserExecutor::shutdown`]: steps in flight stop, new ones are refused.
    closing: CancellationToken,
    /// Each step holds a read guard while it has a session; shutdown takes the write guard.
    in_flight: Arc<RwLock<()>>,
}

impl BrowserExecutor {
    /// An executor that starts nothing until its first step, whose pages reach only what
    /// `egress` allows.
    pub fn new(config: BrowserConfig, egress: Egress) -> Self {
        Self {
            egress,
            browser: Arc::new(SharedDriver {
                config,
                driver: Mutex::new(None),
                closing: CancellationToken::new(),
                in_flight: Arc::new(RwLock::new(())),
            }),
        }
    }

    /// An executor whose pages reach only what `egress` allows, on this one's `chromedriver`
    /// (one process for both, started on first use by either, stopped by either's
    /// [`shutdown`](Self::shutdown)): what a namespace with an egress policy of its own gets.
    pub fn with_egress(&self, egress: Egress) -> Self {
        Self {
            egress,
            browser: Arc::clone(&self.browser),
        }
    }

    /// Stops for good, for every executor that shares this one's `chromedriver`: steps in flight
    /// close their browsing contexts and fail with `browser_unavailable` (within 10 s), then
    /// `chromedriver` and every Chromium it started are killed. Later steps fail with
    /// `browser_unavailable`. Calling it again does nothing.
    pub async fn shutdown(&self) {
        let browser = &self.browser;
        browser.closing.cancel();
        if tokio::time::timeout(SHUTDOWN_GRACE, browser.in_flight.write())
            .await
            .is_err()
        {
            tracing::warn!("browser steps still running at shutdown; killing the browser");
        }
        let driver = browser.driver.lock().await.take();
        if let Some(driver) = driver {
            driver.stop().await;
            tracing::debug!("chromedriver stopped");
        }
    }

    /// A new browsing context, starting (or restarting) `chromedriver` when needed.
    async fn open_session(&self) -> Result<Session, StepError> {
        let browser = &self.browser;
        let mut driver = browser.driver.lock().await;
        // Checked under the lock: `shutdown` cancels, then takes the driver under it.
        if browser.closing.is_cancelled() {
            return Err(shut_down());
        }
        if let Some(running) = driver.as_mut()
            && !running.is_running()
        {
            tracing::warn!("chromedriver exited; starting it again");
            *driver = None;
        }
        if driver.is_none() {
            *driver = Some(Driver::start(&browser.config).await?);
        }
        let url = match driver.as_ref() {
            Some(running) => running.url.clone(),
            None => return Err(shut_down()),
        };
        drop(driver);
        // Sessions start in parallel, each in a task of its own: if the step stops waiting
        // (cancelled, timed out), the session still comes up and closes itself when dropped,
        // rather than being left to the driver.
        tokio::spawn(driver::new_session(
            url,
            browser.config.clone(),
            self.egress.clone(),
        ))
        .await
        .map_err(|e| StepError::internal(format!("starting a browser session failed: {e}")))?
    }

    #[cfg(test)]
    async fn driver_pid(&self) -> Option<u32> {
        self.browser
            .driver
            .lock()
            .await
            .as_ref()
            .and_then(Driver::pid)
    }
}

#[async_trait]
impl Executor for BrowserExecutor {
    fn kind(&self) -> &'static str {
        "browser"
    }

    fn receives_secrets(&self) -> bool {
        true
    }

    async fn shutdown(&self) {
        BrowserExecutor::shutdown(self).await;
    }

    async fn execute(&self, ctx: &TaskContext, input: Json) -> Result<Json, StepError> {
        let script = Script::parse(&input)?;
        let closing = &self.browser.closing;
        let _in_flight = tokio::select! {
            guard = self.browser.in_flight.clone().read_owned() => guard,
            () = closing.cancelled() => return Err(shut_down()),
        };
        let session = tokio::select! {
            session = self.open_session() => session?,
            () = ctx.cancel.cancelled() => return Err(StepError::cancelled()),
            () = closing.cancelled() => return Err(shut_down()),
        };
        let result = tokio::select! {
            result = run::run(&session, &script, ctx) => result,
            () = ctx.cancel.cancelled() => Err(StepError::cancelled()),
            () = closing.cancelled() => Err(shut_down()),
        };
        session.close().await;
        result
    }
}

/// A `browser_unavailable` error.
fn unavailable(message: impl Into<String>) -> StepError {
    StepError::retryable(codes::BROWSER_UNAVAILABLE, message)
}

fn shut_down() -> StepError {
    unavailable("the browser executor is shut down")
}
