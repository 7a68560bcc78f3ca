//! The budget of user code: every way a template or an expression can spend time or memory
//! fails with an error that names the limit, quickly and without allocating much.

use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

fn ctx() -> Context {
    Context::new(&json!({
        "inputs": {"text": "abcdefghij".repeat(10_000), "name": "Ada", "n": 3},
        "steps": {},
    }))
}

fn limits() -> Limits {
    Limits::defaults("orchestrator")
}

/// Runs `f`, asserts it failed within a second naming `setting`, and returns the message.
fn fails_fast<T: std::fmt::Debug>(f: impl FnOnce() -> Result<T>, setting: &str) -> String {
    let start = Instant::now();
    let result = f();
    let elapsed = start.elapsed();
    let err = result.expect_err("the budget should stop it");
    assert!(
        err.message.contains(setting),
        "`{}` does not name {setting}",
        err.message
    );
    // Generous for debug builds on a busy machine; release builds take a few milliseconds.
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    err.message
}

fn eval_fails(expr: &str, setting: &str) -> String {
    fails_fast(|| Meter::new(limits()).eval(expr, &ctx()), setting)
}

fn render_fails(template: &str, setting: &str) -> String {
    fails_fast(
        || Meter::new(limits()).render(&json!(template), &ctx()),
        setting,
    )
}

const FUEL: &str = "orchestrator.expr_fuel";
const OUTPUT: &str = "orchestrator.expr_max_output_bytes";

#[test]
fn loops_run_out_of_fuel() {
    let msg = render_fails(
        "{% for a in range(3000) %}{% for b in range(3000) %}.{% endfor %}{% endfor %}",
        FUEL,
    );
    assert!(msg.contains("more than 50000 fuel"), "{msg}");
    render_fails(
        "{% for a in range(40000) %}{% if a is even %}{{ a }}{% endif %}{% endfor %}",
        FUEL,
    );
}

#[test]
fn recursion_is_bounded() {
    let template = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
    let err = Meter::new(limits())
        .render(&json!(template), &ctx())
        .unwrap_err();
    assert!(
        err.message.contains("recursion") || err.message.contains(FUEL),
        "{}",
        err.message
    );
}

#[test]
fn string_repetition_is_refused_before_allocating() {
    eval_fails("'xyz' * 3000000000 == ''", FUEL);
    eval_fails("(inputs.text * 500) | length > 0", FUEL);
}

#[test]
fn concatenation_that_doubles_runs_out() {
    render_fails(
        "{% set ns = namespace(s=inputs.name) %}{% for _ in range(40) %}\
         {% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
        FUEL,
    );
    render_fails(
        "{% set ns = namespace(l=[0, 1]) %}{% for _ in range(40) %}\
         {% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l | length }}",
        FUEL,
    );
    eval_fails("[inputs.text] * 10000000", OUTPUT);
}

#[test]
fn filters_that_grow_strings_run_out() {
    eval_fails(
        "inputs.text | replace('a', inputs.text) | replace('b', inputs.text) | length",
        FUEL,
    );
    eval_fails(
        "inputs.text | replace('a', '\\n') | indent(200000) | length",
        FUEL,
    );
    eval_fails("'%900000000s' | format('x') | length", FUEL);
    eval_fails("range(90000) | join(inputs.text) | length", FUEL);
    eval_fails("(range(90000) | list | tojson) | length", FUEL);
}

#[test]
fn collections_run_out() {
    // `range` refuses more than 100,000 items itself, with its own message.
    let msg = Meter::new(limits())
        .eval("range(50000000) | list | length", &ctx())
        .unwrap_err()
        .message;
    assert!(msg.contains("range has too many elements"), "{msg}");
    eval_fails("range(99999) | list | length", FUEL);
    eval_fails(
        "range(10000) | map('string') | list | sort | reverse | list | length",
        FUEL,
    );
    eval_fails("([1] * 3000000000) | list | length", "too large");
    eval_fails("range(60000) | list | reverse | list | length", FUEL);
    eval_fails(
        "dict(a=1) | dictsort | list | length > 0 and (range(90000) | sort | first) == 0",
        FUEL,
    );
}

#[test]
fn results_larger_than_the_limit_fail() {
    // Few instructions, but every item is the whole 100 KB input text.
    let msg = eval_fails("[inputs.text] * 20", OUTPUT);
    assert!(msg.contains("1048576 bytes"), "{msg}");
    // A lazy repetition costs nothing until it is converted.
    eval_fails("[inputs.name] * 1000000", OUTPUT);
}

#[test]
fn results_nested_too_deeply_fail() {
    let err = Meter::new(limits())
        .render(
            &json!(
                "{% set ns = namespace(v=[]) %}{% for _ in range(500) %}\
                 {% set ns.v = [ns.v] %}{% endfor %}{{ ns.v | length }}"
            ),
            &ctx(),
        )
        .map(|_| ());
    assert_eq!(err, Ok(()));
    let err = Meter::new(limits())
        .eval(
            &format!(
                "{}1{}",
                "[".repeat(MAX_RESULT_DEPTH + 2),
                "]".repeat(MAX_RESULT_DEPTH + 2)
            ),
            &ctx(),
        )
        .unwrap_err();
    assert!(err.message.contains("nested deeper"), "{}", err.message);
}

#[test]
fn templates_of_one_value_share_the_budget() {
    let one = "{% for i in range(2000) %}{{ i }}{% endfor %}";
    let value = json!({"a": one});
    Meter::new(limits()).render(&value, &ctx()).unwrap();
    let many: serde_json::Map<String, Json> =
        (0..100).map(|i| (format!("t{i}"), json!(one))).collect();
    let msg = fails_fast(
        || {
            let mut path = "with".to_owned();
            Meter::new(limits()).render_at(&Json::Object(many), &ctx(), &mut path)
        },
        FUEL,
    );
    assert!(msg.starts_with("template in `with.t"), "{msg}");
}

#[test]
fn a_total_budget_spans_evaluations() {
    let mut meter = Meter::with_totals(
        Limits::defaults("worker"),
        (10_000, "worker.transform_fuel"),
        (1024 * 1024, "the step's output limit"),
    );
    let c = ctx();
    let mut failed = None;
    for i in 0..1000 {
        if let Err(e) = meter.eval("range(50) | map('string') | join(',')", &c) {
            failed = Some((i, e));
            break;
        }
    }
    let (i, err) = failed.expect("the total should run out");
    assert!(i > 5, "ran out after {i} evaluations");
    assert!(
        err.message.contains("worker.transform_fuel"),
        "{}",
        err.message
    );
    assert!(meter.fuel_used() >= 10_000);
}

#[test]
fn ordinary_expressions_fit_easily() {
    let mut meter = Meter::new(limits());
    let out = meter
        .render(
            &json!({
                "greeting": "Hello, {{ inputs.name | upper }}!",
                "items": "{{ range(100) | list }}",
                "csv": "{% for i in range(200) %}{{ i }},{% endfor %}",
            }),
            &ctx(),
        )
        .unwrap();
    assert_eq!(out["greeting"], json!("Hello, ADA!"));
    assert!(meter.fuel_used() < 5_000, "{}", meter.fuel_used());
}

#[test]
fn large_strings_are_charged_by_their_bytes() {
    let big = Context::new(&json!({
        "inputs": {"a": "0123456789".repeat(100_000), "b": "0123456789".repeat(100_000)},
    }));
    for template in [
        "{% for i in range(100000) %}{{ inputs.a == inputs.b }}{% endfor %}",
        "{% for i in range(100000) %}{{ inputs.a < inputs.b }}{% endfor %}",
        "{% for i in range(100000) %}{{ inputs.a[-1] }}{% endfor %}",
    ] {
        fails_fast(|| Meter::new(limits()).render(&json!(template), &big), FUEL);
    }
}

/// Found by the `expr` fuzzer: MiniJinja 3.1.0's `format` stepped one byte into a multi-byte
/// character of a `%(key)` and panicked (fixed in the vendored copy; any other engine panic is
/// contained and reported as an error).
#[test]
fn a_format_key_with_a_multibyte_character_is_an_error_not_a_panic() {
    let err = Meter::new(limits())
        .eval(
            "'%((((s{ru{% macro\u{41a}}{% ' | format(inputs.name, inputs.n)",
            &ctx(),
        )
        .unwrap_err();
    assert!(err.message.contains("format"), "{}", err.message);
}

#[test]
fn cheap_evaluations_fit_an_allowance_and_give_the_same_results() {
    let ctx = ctx();
    let mut meter = Meter::new(limits());
    let ((rendered, condition), exceeded) = with_allowance(10_000, || {
        (
            meter.render(
                &json!({"hi": "Hello, {{ inputs.name }}!", "n": "{{ inputs.n + 1 }}"}),
                &ctx,
            ),
            eval_bool("inputs.n > 2", &ctx),
        )
    });
    assert!(!exceeded);
    assert_eq!(rendered.unwrap(), json!({"hi": "Hello, Ada!", "n": 4}));
    assert!(condition.unwrap());
}

#[test]
fn an_evaluation_over_the_allowance_says_so_and_one_within_its_fuel_does_not_fail_for_it() {
    let ctx = ctx();
    // Too much for one evaluation under an allowance, but well within the configured fuel.
    let template = "{% for a in range(100) %}{% for b in range(100) %}{% endfor %}{% endfor %}ok";
    let (result, exceeded) = with_allowance(1_000_000, || render(&json!(template), &ctx));
    assert!(exceeded);
    assert!(result.is_err());
    let mut generous = limits();
    generous.fuel = 1_000_000;
    assert_eq!(
        Meter::new(generous).render(&json!(template), &ctx).unwrap(),
        json!("ok")
    );
    // Outside an allowance nothing is left over from it.
    assert_eq!(
        render(&json!("{% for a in range(2000) %}{% endfor %}ok"), &ctx).unwrap(),
        json!("ok")
    );
}

#[test]
fn many_cheap_evaluations_spend_the_allowance() {
    let ctx = ctx();
    let (results, exceeded) = with_allowance(100, || {
        (0..1_000)
            .map(|_| eval("inputs.n * 2", &ctx))
            .collect::<Vec<_>>()
    });
    assert!(exceeded);
    assert!(results.iter().any(Result::is_err));
}

#[test]
fn a_failure_the_limits_would_give_too_is_not_an_exceeded_allowance() {
    let ctx = ctx();
    let (result, exceeded) = with_allowance(10_000, || eval("1 // 0", &ctx));
    assert!(result.is_err());
    assert!(!exceeded);
}
