// Flows (ListFlows, the latest version of each) and one flow (GetFlow): its versions, diagram,
// inputs, source, and a form to start a run (StartRun).
import { describe, flows } from "../api";
import { fill, h, notice, time } from "../dom";
import { drawFlow } from "../diagram";
import type { Leave } from "../main";
import { navigate } from "../state";

export function flowsPage(main: HTMLElement): Leave {
  const body = h("tbody", {});
  const message = h("div", { "aria-live": "polite" });
  fill(main, h("div", { class: "title-row" }, h("h1", {}, "Flows")), message,
    h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Flow", "Latest", "Steps", "Registered", "Description"]
        .map((t) => h("th", { scope: "col" }, t)))),
      body)));
  let stopped = false;
  flows.listFlows({}).then((r) => {
    if (stopped) return;
    const sorted = [...r.flows].sort((a, b) => a.name.localeCompare(b.name));
    fill(body, sorted.length ? sorted.map((f) => h("tr", { "data-flow": f.name },
      h("td", {}, h("a", { href: `/flows/${encodeURIComponent(f.name)}` }, f.name)),
      h("td", {}, `v${f.version}`),
      h("td", { class: "num" }, String(f.definition?.steps.length ?? 0)),
      h("td", { class: "nowrap" }, time(f.createdAtMs)),
      h("td", { class: "muted" }, f.definition?.description ?? "")))
      : h("tr", {}, h("td", { colspan: 5, class: "muted empty" }, "No flows. Register one with `rpaflow flow register FILE`.")));
  }, (err) => {
    if (!stopped) fill(message, notice(`Cannot list flows: ${describe(err)}`, "error"));
  });
  return () => {
    stopped = true;
  };
}

export function flowPage(main: HTMLElement, [name, version]: string[]): Leave {
  let stopped = false;
  fill(main, h("h1", {}, name), h("p", { class: "muted", "aria-busy": "true" }, "Loading…"));
  flows.getFlow({ name, version: Number(version || 0) }).then((f) => {
    if (stopped) return;
    const def = f.definition!;
    const versions = h("select", { id: "flow-version", "aria-label": "Version" },
      [...f.versions].reverse().map((v) => h("option", { value: v, selected: v === f.version }, `v${v}`)));
    versions.addEventListener("change", () => navigate(`/flows/${encodeURIComponent(name)}/${versions.value}`));
    const defaults: Record<string, unknown> = {};
    for (const i of def.inputs) {
      if (i.defaultJson !== undefined) {
        try {
          defaults[i.name] = JSON.parse(i.defaultJson);
        } catch {
          /* left out */
        }
      }
    }
    const inputs = h("textarea", { id: "run-inputs", name: "inputs", rows: 5, spellcheck: "false", class: "mono" },
      JSON.stringify(defaults, null, 2));
    const startMessage = h("div", { "aria-live": "polite" });
    const start = h("form", { class: "start", id: "start-run" },
      h("label", { for: "run-inputs" }, "Inputs (JSON; missing inputs take their defaults)"),
      inputs,
      h("button", { type: "submit", class: "primary" }, `Start a run of v${f.version}`),
      startMessage);
    start.addEventListener("submit", async (e) => {
      e.preventDefault();
      try {
        const r = await flows.startRun({ flow: name, version: f.version, inputsJson: inputs.value || "{}" });
        navigate(`/runs/${r.run!.runId}`);
      } catch (err) {
        fill(startMessage, notice(`Not started: ${describe(err)}`, "error"));
      }
    });
    fill(main,
      h("div", { class: "title-row" }, h("h1", {}, f.name), versions,
        h("a", { href: `/runs?flow=${encodeURIComponent(f.name)}`, class: "button" }, "Runs of this flow")),
      def.description ? h("p", {}, def.description) : null,
      h("p", { class: "muted" }, `Version ${f.version}, registered ${time(f.createdAtMs)}`),
      h("section", { "aria-labelledby": "diagram-title" }, h("h2", { id: "diagram-title" }, "Diagram"),
        h("div", { class: "diagram-box" }, drawFlow(def, false).element)),
      h("section", { "aria-labelledby": "inputs-title" }, h("h2", { id: "inputs-title" }, "Inputs"),
        def.inputs.length ? h("div", { class: "table-wrap" }, h("table", {},
          h("thead", {}, h("tr", {}, ["Name", "Type", "Required", "Default", "Description"].map((t) => h("th", { scope: "col" }, t)))),
          h("tbody", {}, def.inputs.map((i) => h("tr", {},
            h("td", { class: "mono" }, i.name), h("td", {}, i.type), h("td", {}, i.required ? "yes" : "no"),
            h("td", { class: "mono" }, i.defaultJson ?? "–"), h("td", { class: "muted" }, i.description))))))
          : h("p", { class: "muted" }, "None.")),
      h("section", { "aria-labelledby": "start-title" }, h("h2", { id: "start-title" }, "Start a run"), start),
      h("section", { "aria-labelledby": "source-title" }, h("h2", { id: "source-title" }, "Source"),
        h("pre", { class: "source", tabindex: 0 }, f.source)));
  }, (err) => {
    if (!stopped) fill(main, h("h1", {}, name), notice(describe(err), "error"));
  });
  return () => {
    stopped = true;
  };
}
