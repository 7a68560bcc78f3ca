//! The budget of one evaluation: what user code (an expression or a template) may spend.
//!
//! MiniJinja's fuel (the `fuel` feature, 3.1 and later) is the mechanism: every instruction costs
//! one fuel and every 64 bytes of data that the template creates or processes (strings and lists
//! made by `~`, `+`, `*`, slicing, filters and functions, rendered text, items a filter visits)
//! cost one more; allocations of a known size (`"x" * n`) are refused before they happen. So one
//! number bounds both the time and the memory of an evaluation. The result is then converted to
//! JSON under a byte limit and a depth limit (see `convert`), because values taken from the
//! context are shared, not copied, and a small list can repeat a large input many times.
//!
//! The orchestrator's limits are process-wide (set once at start-up with [`set_limits`]): they
//! are evaluated inside the pure run state machine, and threading a setting through every call
//! there would touch every caller for no gain. The worker passes its own [`Limits`] explicitly.

use std::collections::HashMap;
use std::sync::{OnceLock, PoisonError, RwLock};

use minijinja::{Environment, UndefinedBehavior};

/// What one evaluation may spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Fuel of one evaluation: one per instruction plus one per 64 bytes of data made.
    pub fuel: u64,
    /// The largest result of one evaluation, as JSON bytes.
    pub max_output_bytes: usize,
    /// The config section the limits come from (`orchestrator` or `worker`), named in errors.
    pub section: &'static str,
}

/// The default fuel of one evaluation: about 50,000 instructions or 3 MiB of data.
pub const DEFAULT_FUEL: u64 = 50_000;
/// The default result limit: 1 MiB of JSON, the default payload limit.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// Nesting: calls (macros, recursive loops) inside one evaluation.
pub const RECURSION_LIMIT: usize = 64;
/// Nesting: how deep lists and mappings in a result may be.
pub const MAX_RESULT_DEPTH: usize = 64;

impl Limits {
    /// The defaults, naming the given config section in errors.
    pub const fn defaults(section: &'static str) -> Self {
        Self {
            fuel: DEFAULT_FUEL,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            section,
        }
    }

    /// The message when the fuel ran out.
    pub(super) fn out_of_fuel(&self) -> String {
        format!(
            "used more than {} fuel, the budget of one evaluation (instructions plus 64-byte \
             units of data) ({}.expr_fuel)",
            self.fuel, self.section
        )
    }

    /// The message when the result is too large.
    pub(super) fn output_too_large(&self) -> String {
        format!(
            "result is larger than {} bytes of JSON ({}.expr_max_output_bytes)",
            self.max_output_bytes, self.section
        )
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::defaults("orchestrator")
    }
}

static PROCESS_LIMITS: OnceLock<Limits> = OnceLock::new();

/// Sets the limits of [`eval`](super::eval), [`eval_bool`](super::eval_bool) and
/// [`render`](super::render) for this process; the first call wins. Call it at start-up, before
/// any evaluation; without it the defaults apply.
pub fn set_limits(limits: Limits) {
    let _ = PROCESS_LIMITS.set(limits);
}

/// The process-wide limits.
pub fn limits() -> Limits {
    *PROCESS_LIMITS.get_or_init(Limits::default)
}

/// The environment without fuel: compiling and checking only, never evaluation.
pub(super) fn compile_env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| new_env(None))
}

/// The environment that evaluates with the given fuel. Environments are few (one per
/// configured fuel) and live for the whole process.
pub(super) fn env_with_fuel(fuel: u64) -> &'static Environment<'static> {
    static ENVS: OnceLock<RwLock<HashMap<u64, &'static Environment<'static>>>> = OnceLock::new();
    let envs = ENVS.get_or_init(Default::default);
    if let Some(env) = envs
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&fuel)
    {
        return env;
    }
    let mut envs = envs.write().unwrap_or_else(PoisonError::into_inner);
    envs.entry(fuel)
        .or_insert_with(|| Box::leak(Box::new(new_env(Some(fuel)))))
}

fn new_env(fuel: Option<u64>) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    env.set_recursion_limit(RECURSION_LIMIT);
    env.set_fuel(fuel);
    if fuel.is_some() {
        env.add_filter(super::METER_FILTER, super::record_fuel_used);
    }
    // Text is rendered as written: a YAML block that ends in a newline keeps it.
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env
}
