//! The built-in executors, one per file, and the input helper they share.
//!
//! | kind | what it does |
//! |---|---|
//! | [`browser`] | drives a real headless Chromium through chromedriver: open, fill, click, read, screenshot |
//! | [`http`] | calls an API, with the task's idempotency key |
//! | [`transform`] | reshapes and cleans JSON records |
//! | [`sleep`] | waits, honouring cancellation |
//! | [`log`] | writes a message to the worker's log |
//! | [`echo`] | returns its input (computes values, benchmarks) |
//! | [`llm`] | generates text on an inference node (registered when one is configured) |
//! | [`sql`] | queries and writes PostgreSQL, one transaction per step |
//! | [`notify`] | sends a signed webhook or an e-mail over SMTP |

pub mod browser;
pub mod echo;
pub mod http;
pub mod input;
pub mod llm;
pub mod log;
pub mod notify;
pub mod sleep;
pub mod sql;
pub mod transform;

pub use browser::{BrowserConfig, BrowserExecutor};
pub use echo::EchoExecutor;
pub use http::{HttpConfig, HttpExecutor};
pub use input::Input;
pub use llm::LlmExecutor;
pub use log::LogExecutor;
pub use notify::{NotifyExecutor, SmtpConfig};
pub use sleep::SleepExecutor;
pub use sql::SqlExecutor;
pub use transform::{DEFAULT_TRANSFORM_FUEL, TransformExecutor};
