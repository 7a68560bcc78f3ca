use std::time::Duration;

use super::*;
use serde_json::json;

const GOOD: &str = r#"
name: greet
description: Says hello
inputs:
  who: { type: string, default: world }
  times: { type: integer, default: 2 }
defaults:
  timeout: 10s
steps:
  - id: hello
    uses: log
    with:
      message: "Hello, {{ inputs.who }}!"
  - id: each
    uses: echo
    needs: hello
    for_each: { items: "range(inputs.times)", concurrency: 2 }
    with: { n: "{{ item }}" }
    retry: { max_attempts: 3, backoff: fixed, delay: 100ms }
    on_failure: { compensate: undo }
  - id: undo
    uses: log
    with: { message: "undo {{ steps.each.output }}" }
outputs:
  said: "{{ steps.hello.output }}"
"#;

#[test]
fn parses_a_good_flow() {
    let flow = parse("greet.yaml", GOOD).unwrap();
    assert_eq!(flow.name, "greet");
    assert_eq!(flow.steps.len(), 3);
    let each = flow.step("each").unwrap();
    assert_eq!(each.needs, vec!["hello"]);
    assert_eq!(each.for_each.as_ref().unwrap().concurrency, 2);
    assert_eq!(each.retry.max_attempts, 3);
    assert_eq!(each.retry.delay, Duration::from_millis(100));
    assert_eq!(each.timeout, Duration::from_secs(10));
    assert_eq!(each.on_failure, OnFailure::Compensate("undo".into()));
    assert!(flow.step("undo").unwrap().compensation);
    assert_eq!(flow.inputs[1].default, Some(json!(2)));
}

#[test]
fn reports_every_problem_with_its_position() {
    let src = "name: broken
steps:
  - id: a
    uses: teleport
    colour: blue
  - id: b
    uses: sleep
    needs: [a, zzz]
    timeout: soon
    if: \"steps.a.output ==\"
";
    let err = parse("broken.yaml", src).unwrap_err();
    let text = err.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(
        lines[0].starts_with("broken.yaml:4:11: unknown step kind `teleport`"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("broken.yaml:5:5: unknown field `colour` in step `a`"),
        "{text}"
    );
    assert!(
        lines[2].starts_with("broken.yaml:8:12: step `b` needs unknown step `zzz`"),
        "{text}"
    );
    assert!(
        lines[3].starts_with("broken.yaml:9:14: bad duration `soon`"),
        "{text}"
    );
    assert!(
        lines[4].starts_with("broken.yaml:10:9: bad expression in `if`"),
        "{text}"
    );
}

#[test]
fn finds_cycles() {
    let src = "name: c
steps:
  - { id: a, uses: log, needs: c }
  - { id: b, uses: log, needs: a }
  - { id: c, uses: log, needs: b }
";
    let err = parse("c.yaml", src).unwrap_err().to_string();
    assert!(
        err.contains("`needs` form a cycle: a -> c -> b -> a"),
        "{err}"
    );
    assert!(err.starts_with("c.yaml:3:"), "{err}");
}

#[test]
fn expressions_may_only_read_what_the_step_needs() {
    let src = "name: r
steps:
  - { id: a, uses: log }
  - { id: b, uses: log, with: { m: '{{ steps.a.output }} {{ steps.c.output }}' } }
  - { id: c, uses: log, needs: a, with: { m: '{{ item }}' } }
";
    let err = parse("r.yaml", src).unwrap_err().to_string();
    assert!(
        err.contains("reads `steps.a`, which is not among its `needs`"),
        "{err}"
    );
    assert!(
        err.contains("reads `steps.c`, which is not among its `needs`"),
        "{err}"
    );
    assert!(err.contains("reads unknown name `item`"), "{err}");
}

#[test]
fn secrets_are_read_only_in_with() {
    let src = "name: s
steps:
  - { id: a, uses: http, with: { headers: { Authorization: 'Bearer {{ secrets.API_TOKEN }}' } } }
  - { id: b, uses: log, needs: a, if: 'secrets.API_TOKEN', with: { m: x } }
outputs: { leak: '{{ secrets.API_TOKEN }}' }
";
    let err = parse("s.yaml", src).unwrap_err().to_string();
    assert_eq!(err.lines().count(), 2, "{err}");
    assert!(
        err.contains("s.yaml:4:") && err.contains("`if` reads `secrets`"),
        "{err}"
    );
    assert!(
        err.contains("s.yaml:5:") && err.contains("template reads `secrets`"),
        "{err}"
    );
    let ok = parse(
        "s.yaml",
        "name: s\nsteps:\n  - { id: a, uses: http, with: { t: '{{ secrets.API_TOKEN }}' } }\n",
    )
    .unwrap();
    assert_eq!(ok.secrets, BTreeSet::from(["API_TOKEN".to_owned()]));
}

#[test]
fn yaml_syntax_errors_have_positions() {
    let err = parse("x.yaml", "name: x\nsteps: [\n").unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert!(err.0[0].message.starts_with("invalid YAML"), "{err}");
    let err = parse("x.yaml", "name: x\nname: y\nsteps: []\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("x.yaml:2:1: duplicate key `name`"), "{err}");
}

#[test]
fn json_flows_parse_too() {
    let flow = parse(
        "j.json",
        r#"{"name": "j", "steps": [{"id": "a", "uses": "echo", "with": {"n": 1, "s": "1"}}]}"#,
    )
    .unwrap();
    assert_eq!(flow.steps[0].with, json!({"n": 1, "s": "1"}));
}

#[test]
fn suggests_near_misses() {
    let err = parse(
        "t.yaml",
        "name: t\nsteps:\n  - { id: a, uses: log, neds: [] }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("did you mean `needs`?"), "{err}");
}

#[test]
fn inputs_are_resolved_with_defaults_and_types() {
    let flow = parse("greet.yaml", GOOD).unwrap();
    let given = json!({"who": "Ada"});
    let resolved = flow.resolve_inputs(given.as_object().unwrap()).unwrap();
    assert_eq!(resolved, json!({"who": "Ada", "times": 2}));
    let bad = json!({"times": "two", "extra": 1});
    let err = flow.resolve_inputs(bad.as_object().unwrap()).unwrap_err();
    assert!(
        err.contains("unknown input `extra`") && err.contains("input `times` must be an integer"),
        "{err}"
    );
}

const TRIGGERS: &str = r#"
name: t
inputs:
  region: { type: string, default: us }
triggers:
  - id: nightly
    schedule: { cron: "0 30 2 * * *", timezone: Europe/Berlin, start: "2026-01-01T00:00:00Z", end: "2027-01-01T00:00:00Z", jitter: 30s, missed: catch_up, max_catch_up: 5, inputs: { region: eu } }
  - id: hourly
    schedule: { cron: "0 * * * *" }
  - id: inbound
    webhook: { signature_secret: HOOK_KEY, token_secret: HOOK_TOKEN, input: "{{ body.customer }}" }
  - id: orders
    kafka: { topic: orders, input: "{{ message }}" }
concurrency: { max_runs: 5, policy: cancel_oldest }
steps:
  - { id: a, uses: log }
"#;

#[test]
fn parses_triggers_and_concurrency() {
    let flow = parse("t.yaml", TRIGGERS).unwrap();
    assert_eq!(flow.triggers.len(), 4);
    let TriggerKind::Schedule(nightly) = &flow.triggers[0].kind else {
        panic!("not a schedule: {:?}", flow.triggers[0]);
    };
    assert_eq!(nightly.cron, "0 30 2 * * *");
    assert_eq!(nightly.timezone, "Europe/Berlin");
    assert_eq!(nightly.start_ms, Some(1_767_225_600_000));
    assert_eq!(nightly.end_ms, Some(1_798_761_600_000));
    assert_eq!(nightly.jitter, Duration::from_secs(30));
    assert_eq!(nightly.missed, MissedPolicy::CatchUp { max: 5 });
    assert_eq!(nightly.inputs.get("region"), Some(&json!("eu")));
    let TriggerKind::Schedule(hourly) = &flow.triggers[1].kind else {
        panic!("not a schedule");
    };
    assert_eq!(
        (hourly.timezone.as_str(), hourly.missed, hourly.jitter),
        ("UTC", MissedPolicy::RunOnce, Duration::ZERO)
    );
    assert_eq!(
        flow.triggers[2].kind,
        TriggerKind::Webhook(WebhookTrigger {
            signature_secret: Some("HOOK_KEY".into()),
            token_secret: Some("HOOK_TOKEN".into()),
            input: Some("{{ body.customer }}".into()),
        })
    );
    assert_eq!(flow.triggers[3].source(), "kafka:orders");
    assert_eq!(
        flow.concurrency,
        Some(Concurrency {
            max_runs: 5,
            policy: ConcurrencyPolicy::CancelOldest,
            max_queued: None,
        })
    );
    // Stored flows from before triggers existed still load.
    let mut old = serde_json::to_value(&flow).unwrap();
    old.as_object_mut().unwrap().remove("triggers");
    old.as_object_mut().unwrap().remove("concurrency");
    let loaded: Flow = serde_json::from_value(old).unwrap();
    assert!(loaded.triggers.is_empty() && loaded.concurrency.is_none());
    // And the new fields round-trip.
    let text = serde_json::to_string(&flow).unwrap();
    assert_eq!(serde_json::from_str::<Flow>(&text).unwrap(), flow);
}

#[test]
fn reports_bad_triggers_with_positions() {
    let src = "name: t
triggers:
  - id: a
    schedule: { cron: '0 0 25 * * * *', timezone: Europe/Berlinn, start: yesterday, jiter: 5s }
  - id: a
    webhook: { input: '{{ body }}' }
  - id: k
    kafka: { input: '{{ message }}' }
  - id: s
    schedule: { cron: '0 2 * *', missed: sometimes }
concurrency: { max_runs: 0, policy: cancel_newest }
steps:
  - { id: a, uses: log }
";
    let err = parse("t.yaml", src).unwrap_err().to_string();
    let expect = [
        "t.yaml:4:23: bad cron expression `0 0 25 * * * *`",
        "t.yaml:4:51: unknown time zone `Europe/Berlinn` in trigger `a`; did you mean `Europe/Berlin`?",
        "t.yaml:4:74: bad `start` of trigger `a`",
        "t.yaml:4:85: unknown field `jiter` in `schedule` of trigger `a`; did you mean `jitter`?",
        "t.yaml:5:9: duplicate trigger id `a`",
        "t.yaml:6:14: `webhook` of a trigger needs `signature_secret`",
        "t.yaml:8:12: `kafka` of trigger `k` needs `topic`",
        "t.yaml:10:23: bad cron expression `0 2 * *` in trigger `s`",
        "t.yaml:10:42: unknown `missed` policy `sometimes`",
        "t.yaml:11:26: `concurrency.max_runs` must be a whole number of at least 1, got `0`",
        "t.yaml:11:37: unknown concurrency policy `cancel_newest`",
    ];
    for e in expect {
        assert!(
            err.lines().any(|l| l.starts_with(e)),
            "missing `{e}` in:\n{err}"
        );
    }
    assert_eq!(err.lines().count(), expect.len(), "{err}");
}

#[test]
fn schedule_inputs_must_be_declared() {
    let src = "name: t
triggers:
  - { id: n, schedule: { cron: '0 * * * *', end: '2026-01-01T00:00:00Z', start: '2026-02-01T00:00:00+01:00', inputs: { regoin: eu } } }
steps:
  - { id: a, uses: log }
";
    let err = parse("t.yaml", src).unwrap_err().to_string();
    assert!(
        err.contains("`end` of trigger `n` must be after its `start`"),
        "{err}"
    );
    assert!(
        err.contains("trigger `n` sets unknown input `regoin`"),
        "{err}"
    );
    let err = parse(
        "t.yaml",
        "name: t\ntriggers:\n  - { id: x, schedule: { cron: '* * * * *' }, kafka: { topic: t } }\n  - { id: y }\nsteps: [{ id: a, uses: log }]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("trigger `x` has schedule and kafka"), "{err}");
    assert!(
        err.contains("trigger `y` needs one of `schedule`, `webhook` or `kafka`"),
        "{err}"
    );
}

#[test]
fn concurrency_defaults_to_queue() {
    let flow = parse(
        "c.yaml",
        "name: c\nconcurrency: { max_runs: 2, max_queued: 10 }\nsteps: [{ id: a, uses: log }]\n",
    )
    .unwrap();
    let concurrency = flow.concurrency.unwrap();
    assert_eq!(concurrency.policy, ConcurrencyPolicy::Queue);
    assert_eq!(
        (concurrency.max_runs, concurrency.max_queued),
        (2, Some(10))
    );
    let err = parse(
        "c.yaml",
        "name: c\nconcurrency: { max_runs: 2, policy: skip, max_queued: 3 }\nsteps: [{ id: a, uses: log }]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("c.yaml:2:55: `concurrency.max_queued` applies to `policy: queue` only"),
        "{err}"
    );
}

/// A flow of `n` `echo` steps, each needing the one before; the first needs the last when
/// `cycle` is set. Each step reads the previous one's output.
fn chain(n: usize, cycle: bool) -> String {
    let mut y = String::from("name: chain\nsteps:\n");
    for i in 0..n {
        let need = match i {
            0 if cycle => format!(", needs: s{}", n - 1),
            0 => String::new(),
            _ => format!(", needs: s{}", i - 1),
        };
        let with = if i > 0 {
            format!(", with: {{ x: '{{{{ steps.s{}.output }}}}' }}", i - 1)
        } else {
            String::new()
        };
        y.push_str(&format!("  - {{ id: s{i}, uses: echo{need}{with} }}\n"));
    }
    y
}

#[test]
fn a_flow_over_the_step_limit_is_refused_where_its_steps_are() {
    let err = parse("big.yaml", &chain(1_001, false)).unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    let d = &err.0[0];
    assert_eq!((d.line, d.column), (3, 3), "{d}");
    assert!(
        d.message
            .contains("1001 steps, over the limit of 1000 (`max_flow_steps`)"),
        "{d}"
    );
}

#[test]
fn long_chains_and_cycles_are_checked_without_deep_recursion() {
    let limits = FlowLimits {
        max_steps: 40_000,
        ..FlowLimits::default()
    };
    // On a test thread (2 MiB of stack), where recursion over 20,000 steps would overflow.
    let flow = parse_with("long.yaml", &chain(20_000, false), &limits).unwrap();
    assert_eq!(flow.steps.len(), 20_000);
    let err = parse_with("cycle.yaml", &chain(20_000, true), &limits).unwrap_err();
    assert!(
        err.to_string()
            .contains("`needs` form a cycle: s0 -> s19999 -> s19998")
    );
}

#[test]
fn deep_nesting_is_refused_before_the_yaml_is_loaded() {
    // Block sequences nest two characters a level; the loader would recurse 200,000 deep.
    let deep = format!(
        "name: deep\nsteps:\n  - id: a\n    uses: echo\n    with:\n      x:\n        {}1\n",
        "- ".repeat(200_000)
    );
    let err = parse("deep.yaml", &deep).unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    assert!(
        err.0[0]
            .message
            .contains("nest deeper than the limit of 64 levels"),
        "{err}"
    );
    assert_eq!(err.0[0].line, 7);
    // Flow style too (the scanner alone stops at 255 levels).
    let deep = format!("name: deep\nsteps: []\nx: {}\n", "[".repeat(100));
    let err = parse("deep.yaml", &deep).unwrap_err();
    assert!(err.0[0].message.contains("nest deeper"), "{err}");
}

#[test]
fn approvers_are_checked_where_they_are_written() {
    let src = "name: a
steps:
  - id: ok
    uses: approval
    with:
      message: go?
      approvers: { roles: [boss] }
";
    let err = parse("a.yaml", src).unwrap_err().to_string();
    assert!(
        err.contains("a.yaml:6:")
            && err.contains(
                "approval step `ok`: `approvers.roles` names `boss`, which is not a role"
            ),
        "{err}"
    );
    let good = "name: a\nsteps:\n  - { id: ok, uses: approval, with: { approvers: { names: [carol] } } }\n";
    assert!(parse("a.yaml", good).is_ok());
}
