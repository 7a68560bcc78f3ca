//! Running a step's actions in its browsing context, and the errors that name the failing one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use fantoccini::{Client, Locator};
use serde_json::{Map, Value as Json, json};

use super::action::{Action, Kind, Script};
use super::codes;
use super::driver::Session;
use crate::egress::EgressDenied;
use crate::{StepError, TaskContext};

/// How long the page may take to answer commands once an action's timeout has passed.
const GRACE: Duration = Duration::from_secs(2);
/// How long the screenshot of a failing page may take.
const ERROR_SCREENSHOT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a missing element is looked for again.
const POLL: Duration = Duration::from_millis(100);

/// Collects a `<table>` into rows keyed by its header cells; arguments[0] is the element.
const READ_TABLE_JS: &str = r#"
const table = arguments[0];
if (table.tagName !== 'TABLE') {
  return {error: 'the element is a <' + table.tagName.toLowerCase() + '>, not a <table>'};
}
const text = cell => (cell.innerText || cell.textContent || '').trim();
let rows = Array.from(table.rows);
let header = [];
if (table.tHead && table.tHead.rows.length > 0) {
  header = Array.from(table.tHead.rows[table.tHead.rows.length - 1].cells).map(text);
  rows = rows.filter(row => row.parentElement !== table.tHead);
} else if (rows.length > 0) {
  header = Array.from(rows[0].cells).map(text);
  rows = rows.slice(1);
}
const keys = [];
header.forEach((name, i) => {
  let key = name === '' ? 'column ' + (i + 1) : name;
  while (keys.includes(key)) { key = key + ' (' + (i + 1) + ')'; }
  keys.push(key);
});
return {rows: rows.map(row => {
  const record = {};
  Array.from(row.cells).forEach((cell, i) => {
    record[i < keys.length ? keys[i] : 'column ' + (i + 1)] = text(cell);
  });
  return record;
})};
"#;

/// Why an action failed, before it is named.
#[derive(Debug)]
enum Failure {
    Action(String),
    Timeout(String),
    /// The page tried to reach a destination the egress policy denies.
    Egress(EgressDenied),
}

/// Runs every action in order and returns the step's output.
pub(super) async fn run(
    session: &Session,
    script: &Script,
    ctx: &TaskContext,
) -> Result<Json, StepError> {
    let client = session.client();
    let dir = screenshots_dir(script);
    let mut values = Map::new();
    let mut screenshots = Map::new();
    for (index, action) in script.actions.iter().enumerate() {
        let outcome = tokio::time::timeout(
            action.timeout + GRACE,
            perform(client, action, &dir, ctx, &mut values, &mut screenshots),
        )
        .await
        .unwrap_or_else(|_| {
            Err(Failure::Timeout(format!(
                "did not finish within {}",
                humantime::format_duration(action.timeout)
            )))
        });
        // A denied request explains whatever else went wrong (a page that did not load).
        let outcome = match session.proxy().take_denial() {
            Some(denied) => Err(Failure::Egress(denied)),
            None => outcome,
        };
        if let Err(failure) = outcome {
            let shot = error_screenshot(client, &dir, ctx, index).await;
            return Err(named(index, action, failure, shot));
        }
    }
    let url = client
        .current_url()
        .await
        .map(|u| u.to_string())
        .map_err(|e| fail_after(&e, "reading the page's url"))?;
    let title = client
        .title()
        .await
        .map_err(|e| fail_after(&e, "reading the page's title"))?;
    if let Some(denied) = session.proxy().take_denial() {
        return Err(StepError::permanent(
            crate::codes::EGRESS_DENIED,
            format!("after the last action, {denied}"),
        ));
    }
    Ok(json!({
        "values": values,
        "screenshots": screenshots,
        "url": url,
        "title": title,
    }))
}

async fn perform(
    client: &Client,
    action: &Action,
    dir: &Path,
    ctx: &TaskContext,
    values: &mut Map<String, Json>,
    screenshots: &mut Map<String, Json>,
) -> Result<(), Failure> {
    let timeout = action.timeout;
    match &action.kind {
        Kind::Open { url } => client
            .goto(url)
            .await
            .map_err(|e| Failure::Action(format!("navigation failed: {}", describe(&e)))),
        Kind::WaitFor { selector } => match find(client, selector, timeout).await {
            Err(Failure::Action(m)) if m.starts_with("no element matches") => {
                Err(Failure::Timeout(m))
            }
            other => other.map(drop),
        },
        Kind::Fill { selector, value } => {
            let element = find(client, selector, timeout).await?;
            element.clear().await.map_err(|e| refused("clear", &e))?;
            element
                .send_keys(value)
                .await
                .map_err(|e| refused("type into", &e))
        }
        Kind::Select { selector, value } => {
            let element = find(client, selector, timeout).await?;
            element.select_by_value(value).await.map_err(|e| {
                if e.is_no_such_element() {
                    Failure::Action(format!("no <option> has the value `{value}`"))
                } else {
                    refused("select an option of", &e)
                }
            })
        }
        Kind::Click { selector } => {
            let element = find(client, selector, timeout).await?;
            element.click().await.map_err(|e| refused("click", &e))
        }
        Kind::ReadText { selector, name } => {
            let element = find(client, selector, timeout).await?;
            let text = element.text().await.map_err(|e| refused("read", &e))?;
            values.insert(name.clone(), Json::String(text));
            Ok(())
        }
        Kind::ReadAttribute {
            selector,
            attribute,
            name,
        } => {
            let element = find(client, selector, timeout).await?;
            let value = element
                .attr(attribute)
                .await
                .map_err(|e| refused("read", &e))?;
            values.insert(name.clone(), value.map_or(Json::Null, Json::String));
            Ok(())
        }
        Kind::ReadTable { selector, name } => {
            let element = find(client, selector, timeout).await?;
            let arg = serde_json::to_value(&element)
                .map_err(|e| Failure::Action(format!("could not pass the element: {e}")))?;
            let mut table = client
                .execute(READ_TABLE_JS, vec![arg])
                .await
                .map_err(|e| refused("read", &e))?;
            if let Some(error) = table.get("error").and_then(Json::as_str) {
                return Err(Failure::Action(error.to_owned()));
            }
            values.insert(name.clone(), table["rows"].take());
            Ok(())
        }
        Kind::Screenshot { name } => {
            let path = dir.join(file_name(ctx, name));
            save_screenshot(client, &path)
                .await
                .map_err(Failure::Action)?;
            screenshots.insert(name.clone(), Json::String(path.display().to_string()));
            Ok(())
        }
    }
}

/// The first element matching `selector`, looked for until `timeout` passes.
async fn find(client: &Client, selector: &str, timeout: Duration) -> Result<Element, Failure> {
    let found = client
        .wait()
        .at_most(timeout)
        .every(POLL)
        .for_element(Locator::Css(selector))
        .await;
    found.map_err(|e| match e {
        CmdError::WaitTimeout => Failure::Action(format!(
            "no element matches (waited {})",
            humantime::format_duration(timeout)
        )),
        e if e.is_invalid_selector() => Failure::Action("not a valid CSS selector".to_owned()),
        other => Failure::Action(format!(
            "could not look for the element: {}",
            describe(&other)
        )),
    })
}

/// A WebDriver error in a line: its code and the first line of its message.
fn describe(err: &CmdError) -> String {
    match err {
        CmdError::Standard(w) => {
            // Chromedriver's messages start with the code ("no such element: ...").
            let code = w.error.to_string();
            let message = w.message.lines().next().unwrap_or_default();
            if message.starts_with(&code) {
                message.to_owned()
            } else {
                format!("{code}: {message}")
            }
        }
        other => other.to_string(),
    }
}

fn refused(what: &str, err: &CmdError) -> Failure {
    Failure::Action(format!("could not {what} the element: {}", describe(err)))
}

fn fail_after(err: &CmdError, what: &str) -> StepError {
    StepError::permanent(
        codes::BROWSER_ACTION,
        format!("after the last action, {what} failed: {}", describe(err)),
    )
}

/// The step error for a failing action: "actions[3] click `#submit`: ...; screenshot: PATH".
fn named(
    index: usize,
    action: &Action,
    failure: Failure,
    shot: Result<PathBuf, String>,
) -> StepError {
    let (code, retryable, message) = match failure {
        Failure::Action(m) => (codes::BROWSER_ACTION, false, m),
        Failure::Timeout(m) => (codes::BROWSER_TIMEOUT, true, m),
        Failure::Egress(denied) => (crate::codes::EGRESS_DENIED, false, denied.to_string()),
    };
    let shot = match shot {
        Ok(path) => format!("screenshot: {}", path.display()),
        Err(why) => format!("no screenshot: {why}"),
    };
    StepError::new(
        code,
        format!("actions[{index}] {}: {message}; {shot}", action.kind),
        retryable,
    )
}

async fn error_screenshot(
    client: &Client,
    dir: &Path,
    ctx: &TaskContext,
    index: usize,
) -> Result<PathBuf, String> {
    let path = dir.join(file_name(ctx, &format!("error-actions{index}")));
    match tokio::time::timeout(ERROR_SCREENSHOT_TIMEOUT, save_screenshot(client, &path)).await {
        Ok(Ok(())) => Ok(path),
        Ok(Err(why)) => Err(why),
        Err(_) => Err("the page did not answer".to_owned()),
    }
}

async fn save_screenshot(client: &Client, path: &Path) -> Result<(), String> {
    let png = client
        .screenshot()
        .await
        .map_err(|e| format!("could not take a screenshot: {}", describe(&e)))?;
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| format!("could not create {}: {e}", dir.display()))?;
    }
    tokio::fs::write(path, png)
        .await
        .map_err(|e| format!("could not write {}: {e}", path.display()))
}

fn screenshots_dir(script: &Script) -> PathBuf {
    script
        .screenshots_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("rpaflow-screenshots"))
}

/// `RUN-STEP[-ITEM]-ATTEMPT-NAME.png`, with anything but ASCII letters, digits, `_` and `-`
/// replaced, so that a name cannot leave the directory.
fn file_name(ctx: &TaskContext, name: &str) -> String {
    let item = ctx.item.map(|i| format!("-{i}")).unwrap_or_default();
    let raw = format!(
        "{}-{}{item}-{}-{name}",
        ctx.run_id, ctx.step_id, ctx.attempt
    );
    let safe: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.png")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn screenshot_names_stay_in_their_directory() {
        let mut ctx = TaskContext::new("run/1", "../etc");
        ctx.item = Some(4);
        ctx.attempt = 2;
        assert_eq!(file_name(&ctx, "a b"), "run_1-___etc-4-2-a_b.png");
    }
}
