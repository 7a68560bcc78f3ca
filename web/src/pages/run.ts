// One run: its flow drawn with each step coloured by state, live from WatchRun; per step its
// attempts (from the events: inputs, outputs, errors, durations); the events timeline; cancel
// and retry. Events arrive on the stream; after each batch the run itself is read again
// (GetRun), so what is shown is always the server's state. Cells have fixed sizes, so updates
// move nothing.
import { describe, flows, isCode, Code } from "../api";
import { badge, duration, fill, h, jsonBlock, notice, time } from "../dom";
import { drawFlow, type Diagram, type StepState } from "../diagram";
import { StepStatus, type Run, type RunEvent, type Step } from "../gen/rpaflow/v1/flow_pb";
import type { Leave } from "../main";
import { runStatus } from "./runs";

/// One attempt of a step (of one item, for `for_each` steps), pieced together from events.
interface Attempt {
  item?: number;
  attempt: number;
  dispatchedMs: number;
  finishedMs: number;
  input?: unknown;
  output?: unknown;
  error?: { code?: string; message?: string };
  outcome: string;
}

function stepStatus(s: StepStatus): string {
  return (StepStatus[s] ?? "unspecified").toLowerCase();
}

export function runPage(main: HTMLElement, [runId]: string[]): Leave {
  const abort = new AbortController();
  let stopped = false;
  const header = h("div", { class: "run-head" });
  const actions = h("div", { class: "actions" });
  const message = h("div", { "aria-live": "polite" });
  const diagramBox = h("div", { class: "diagram-box", "aria-busy": "true" });
  const stepsBody = h("div", { class: "steps" });
  const timeline = h("ol", { class: "timeline", "aria-label": "Events" });
  const outputs = h("div", {});
  fill(main,
    h("div", { class: "title-row" }, h("h1", {}, "Run ", h("span", { class: "mono" }, runId)), actions),
    message, header,
    h("section", { "aria-labelledby": "diagram-title" },
      h("h2", { id: "diagram-title" }, "Diagram"), diagramBox),
    h("section", { "aria-labelledby": "steps-title" }, h("h2", { id: "steps-title" }, "Steps"), stepsBody),
    h("section", { "aria-labelledby": "outputs-title" }, h("h2", { id: "outputs-title" }, "Inputs and outputs"), outputs),
    h("section", { "aria-labelledby": "events-title" }, h("h2", { id: "events-title" }, "Events"), timeline));

  let diagram: Diagram | null = null;
  let definitionSteps: Step[] = [];
  const events: RunEvent[] = [];
  let run: Run | null = null;

  const cancel = h("button", { type: "button", class: "danger", id: "cancel-run" }, "Cancel run");
  const retry = h("button", { type: "button", id: "retry-run" }, "Retry from failed steps");
  cancel.addEventListener("click", async () => {
    if (!confirm("Cancel this run? Running steps are told to stop.")) return;
    cancel.disabled = true;
    try {
      show(await flows.cancelRun({ runId, reason: "cancelled from the console" }));
    } catch (err) {
      fill(message, notice(`Cannot cancel: ${describe(err)}`, "error"));
    }
  });
  retry.addEventListener("click", async () => {
    retry.disabled = true;
    try {
      show(await flows.retryRun({ runId }));
      void watch();
    } catch (err) {
      fill(message, notice(`Cannot retry: ${describe(err)}`, "error"));
    }
  });

  /// Each step's attempts by `item/attempt`, kept up to date as events arrive.
  const tries = new Map<string, Map<string, Attempt>>();

  function record(e: RunEvent): void {
    if (!e.stepId || !e.kind.startsWith("task_")) return;
    let detail: Record<string, unknown> = {};
    try {
      detail = JSON.parse(e.detailJson || "{}");
    } catch {
      /* shown as it is in the timeline */
    }
    const key = `${e.item ?? ""}/${e.attempt}`;
    const steps = tries.get(e.stepId) ?? new Map<string, Attempt>();
    tries.set(e.stepId, steps);
    const a = steps.get(key) ?? { item: e.item, attempt: e.attempt, dispatchedMs: 0, finishedMs: 0, outcome: "running" };
    steps.set(key, a);
    if (e.kind === "task_dispatched") {
      a.dispatchedMs = Number(e.atMs);
      a.input = detail.input;
    } else if (e.kind === "task_succeeded") {
      a.finishedMs = Number(e.atMs);
      a.output = detail.output;
      a.outcome = "succeeded";
    } else if (e.kind === "task_failed") {
      a.finishedMs = Number(e.atMs);
      a.error = detail.error as Attempt["error"];
      a.outcome = "failed";
    }
  }

  /// The run a `subflow` step started this one from, as its `run_started` event says.
  let parent: { run_id: string; step: string } | null = null;

  function show(r: Run): void {
    run = r;
    const status = runStatus(r.status);
    fill(header,
      h("dl", { class: "facts" },
        h("div", {}, h("dt", {}, "Status"), h("dd", { class: "status-col", id: "run-status" }, badge(status))),
        h("div", {}, h("dt", {}, "Flow"), h("dd", {},
          h("a", { href: `/flows/${encodeURIComponent(r.flow)}/${r.flowVersion}` }, r.flow), ` v${r.flowVersion}`)),
        h("div", {}, h("dt", {}, "Started"), h("dd", {}, time(r.createdAtMs))),
        h("div", {}, h("dt", {}, "Duration"), h("dd", { class: "nowrap" },
          duration(r.createdAtMs, status === "running" || status === "queued" ? 0 : r.updatedAtMs))),
        h("div", {}, h("dt", {}, parent ? "Started by" : "Trigger"), h("dd", {}, parent
          ? h("a", { href: `/runs/${parent.run_id}`, class: "mono", title: parent.run_id }, `${parent.run_id.slice(0, 13)} · ${parent.step}`)
          : r.trigger || "api")),
        h("div", {}, h("dt", {}, "Namespace"), h("dd", {}, r.namespace))),
      r.error ? notice(`${r.error.code}: ${r.error.message}`, "error") : null);
    cancel.disabled = false;
    retry.disabled = false;
    fill(actions,
      status === "running" || status === "queued" ? cancel : null,
      status === "failed" ? retry : null);
    const states = new Map<string, StepState>();
    for (const s of r.steps) {
      const st = stepStatus(s.status);
      const detail = s.itemsTotal ? `${s.itemsDone}/${s.itemsTotal}` : s.attempt > 1 ? `attempt ${s.attempt}` : undefined;
      states.set(s.stepId, { status: st, detail });
    }
    diagram?.update(states);
    renderSteps(r);
    fill(outputs,
      h("div", { class: "io" },
        h("div", {}, h("h3", {}, "Inputs"), jsonBlock(r.inputsJson)),
        h("div", {}, h("h3", {}, "Outputs"), jsonBlock(r.outputsJson))));
  }

  /// One element per step, made once and updated in place (focus and open details survive
  /// updates); a step's details are drawn only while open.
  const stepEls = new Map<string, { details: HTMLDetailsElement; summary: HTMLElement; body: HTMLElement }>();

  function stepEl(id: string) {
    let el = stepEls.get(id);
    if (!el) {
      const summary = h("summary", {});
      const body = h("div", { class: "step-body" });
      const details = h("details", { id: `step-${id}`, class: "step" }, summary, body);
      details.addEventListener("toggle", () => {
        if (details.open) renderBody(id);
      });
      el = { details, summary, body };
      stepEls.set(id, el);
      stepsBody.append(details);
    }
    return el;
  }

  function renderSteps(r: Run): void {
    const byId = new Map(r.steps.map((s) => [s.stepId, s]));
    const order = definitionSteps.length ? definitionSteps.map((s) => s.id) : r.steps.map((s) => s.stepId);
    for (const id of order) {
      const s = byId.get(id);
      const el = stepEl(id);
      fill(el.summary,
        h("span", { class: "step-id mono" }, id),
        h("span", { class: "status-col" }, badge(s ? stepStatus(s.status) : "pending")),
        h("span", { class: "nowrap muted num" }, s ? duration(s.startedAtMs, s.finishedAtMs) : "–"),
        h("span", { class: "muted num" }, s?.itemsTotal ? `${s.itemsDone}/${s.itemsTotal} items` : s && s.attempt ? `attempt ${s.attempt}` : ""));
      if (el.details.open) renderBody(id);
    }
  }

  function renderBody(id: string): void {
    const s = run?.steps.find((x) => x.stepId === id);
    const list = [...(tries.get(id)?.values() ?? [])];
    fill(stepEl(id).body,
      s?.error ? notice(`${s.error.code}: ${s.error.message}`, "error") : null,
      h("h4", {}, "Output"), jsonBlock(s?.outputJson ?? ""),
      h("h4", {}, `Attempts (${list.length})`),
      list.length ? h("div", { class: "table-wrap" }, h("table", { class: "attempts" },
        h("thead", {}, h("tr", {}, ["Item", "Attempt", "Outcome", "Dispatched", "Took", "Input", "Output or error"]
          .map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, list.map((a) => h("tr", {},
          h("td", {}, a.item === undefined ? "–" : String(a.item)),
          h("td", {}, String(a.attempt)),
          h("td", {}, badge(a.outcome)),
          h("td", { class: "nowrap" }, time(a.dispatchedMs)),
          h("td", { class: "nowrap" }, duration(a.dispatchedMs, a.finishedMs)),
          h("td", {}, jsonBlock(a.input === undefined ? "" : JSON.stringify(a.input))),
          h("td", {}, a.error ? h("span", { class: "error-text" }, `${a.error.code ?? ""}: ${a.error.message ?? ""}`)
            : jsonBlock(a.output === undefined ? "" : JSON.stringify(a.output)))))))) : h("p", { class: "muted" }, "None."));
  }

  function addEvent(e: RunEvent): void {
    events.push(e);
    record(e);
    if (e.kind === "run_started" || e.kind === "run_queued") {
      try {
        parent = JSON.parse(e.detailJson).parent ?? null;
      } catch {
        /* no parent shown */
      }
    }
    timeline.append(h("li", { "data-kind": e.kind },
      h("span", { class: "seq muted num" }, `#${e.seq}`),
      h("time", { class: "nowrap muted" }, time(e.atMs)),
      h("span", { class: "kind" }, e.kind.replace(/_/g, " ")),
      e.stepId ? h("span", { class: "mono" }, e.stepId + (e.item !== undefined ? `[${e.item}]` : "")) : null,
      e.attempt ? h("span", { class: "muted" }, `attempt ${e.attempt}`) : null,
      e.message ? h("span", { class: "event-message" }, e.message) : null));
  }

  let refresh = 0;
  const reread = () => {
    clearTimeout(refresh);
    refresh = window.setTimeout(async () => {
      try {
        const r = await flows.getRun({ runId });
        if (!stopped) show(r);
      } catch (err) {
        if (!stopped) fill(message, notice(`Cannot read the run: ${describe(err)}`, "error"));
      }
    }, 100);
  };

  /// Follows the run's events until it finishes. A stream that breaks (the orchestrator
  /// restarting, a dropped connection) is opened again after the last event seen, waiting a
  /// little longer each time (up to 10 s); a refusal (not found, not allowed) ends it.
  let watching = false;
  async function watch(): Promise<void> {
    if (watching) return;
    watching = true;
    let wait = 500;
    try {
      while (!stopped) {
        try {
          const fromSeq = BigInt(events.length + 1);
          for await (const e of flows.watchRun({ runId, fromSeq }, { signal: abort.signal })) {
            if (wait > 500) fill(message);
            wait = 500;
            if (e.seq <= BigInt(events.length)) continue;
            addEvent(e);
            reread();
          }
          // The stream ends when the run does; one that ended early is opened again.
          const r = await flows.getRun({ runId });
          if (stopped) return;
          show(r);
          const status = runStatus(r.status);
          if (status !== "running" && status !== "queued") return;
        } catch (err) {
          if (stopped || abort.signal.aborted) return;
          if ([Code.NotFound, Code.PermissionDenied, Code.Unauthenticated].some((c) => isCode(err, c))) {
            fill(message, notice(`The live view stopped: ${describe(err)}`, "error"));
            return;
          }
          fill(message, notice(`Reconnecting to the orchestrator (${describe(err)})…`));
        }
        await new Promise((done) => setTimeout(done, wait));
        wait = Math.min(wait * 2, 10_000);
      }
    } finally {
      watching = false;
    }
  }

  void (async () => {
    try {
      const r = await flows.getRun({ runId });
      const flow = await flows.getFlow({ name: r.flow, version: r.flowVersion });
      if (stopped) return;
      if (flow.definition) {
        definitionSteps = flow.definition.steps;
        diagram = drawFlow(flow.definition, true);
        fill(diagramBox, diagram.element);
      }
      diagramBox.removeAttribute("aria-busy");
      show(r);
      void watch();
    } catch (err) {
      if (stopped) return;
      fill(main, h("h1", {}, "Run not found"),
        notice(isCode(err, Code.NotFound) ? `There is no run ${runId} in this namespace.` : describe(err),
          isCode(err, Code.NotFound) ? "info" : "error"),
        h("p", {}, h("a", { href: "/runs" }, "Back to the runs")));
    }
  })();
  // A step of the diagram (a link to `#step-ID`) opens that step's details.
  const onHash = () => {
    if (!location.hash.startsWith("#step-")) return;
    const id = decodeURIComponent(location.hash.slice("#step-".length));
    const details = document.getElementById(`step-${id}`) as HTMLDetailsElement | null;
    if (details) {
      details.open = true;
      details.querySelector("summary")?.focus();
    }
  };
  window.addEventListener("hashchange", onHash);
  return () => {
    window.removeEventListener("hashchange", onHash);
    stopped = true;
    abort.abort();
    clearTimeout(refresh);
  };
}
