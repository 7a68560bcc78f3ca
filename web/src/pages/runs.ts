// Runs, newest first (ListRuns): filtered by flow and status, paged by the server's page
// tokens, refreshed every few seconds while the first page is shown.
import { describe, flows } from "../api";
import { badge, duration, fill, h, notice, refill, time } from "../dom";
import { RunStatus, type Run } from "../gen/rpaflow/v1/flow_pb";
import type { Leave } from "../main";
import { navigate } from "../state";

const PAGE_SIZE = 20;
const REFRESH_MS = 3000;
const STATUSES = ["running", "queued", "succeeded", "failed", "cancelled"];

export function runStatus(s: RunStatus): string {
  return (RunStatus[s] ?? "unspecified").toLowerCase();
}

export function runsPage(main: HTMLElement, _: string[], query: URLSearchParams): Leave {
  const flow = query.get("flow") ?? "";
  const status = query.get("status") ?? "";
  const page = query.get("page") ?? "";
  // The tokens of the pages before this one, to go back.
  const back = (query.get("back") ?? "").split(",").filter(Boolean);

  const flowSelect = h("select", { id: "filter-flow", name: "flow" },
    h("option", { value: "" }, "All flows"));
  const statusSelect = h("select", { id: "filter-status", name: "status" },
    h("option", { value: "" }, "Any status"),
    STATUSES.map((s) => h("option", { value: s, selected: s === status }, s)));
  const apply = () => {
    const q = new URLSearchParams();
    if (flowSelect.value) q.set("flow", flowSelect.value);
    if (statusSelect.value) q.set("status", statusSelect.value);
    navigate(`/runs${q.size ? `?${q}` : ""}`);
  };
  flowSelect.addEventListener("change", apply);
  statusSelect.addEventListener("change", apply);
  void flows.listFlows({}).then((r) => {
    const names = r.flows.map((f) => f.name).sort();
    if (flow && !names.includes(flow)) names.unshift(flow);
    flowSelect.append(...names.map((n) => h("option", { value: n, selected: n === flow }, n)));
  }, () => {});

  const body = h("tbody", {});
  const table = h("table", { class: "runs" },
    h("caption", { class: "visually-hidden" }, "Runs, newest first"),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Run"),
      h("th", { scope: "col" }, "Flow"),
      h("th", { scope: "col", class: "status-col" }, "Status"),
      h("th", { scope: "col" }, "Started"),
      h("th", { scope: "col" }, "Duration"),
      h("th", { scope: "col" }, "Trigger"))),
    body);
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  const message = h("div", { "aria-live": "polite" });
  fill(main,
    h("div", { class: "title-row" }, h("h1", {}, "Runs")),
    h("form", { class: "filters", onsubmit: (e: Event) => e.preventDefault() },
      h("label", { for: "filter-flow" }, "Flow"), flowSelect,
      h("label", { for: "filter-status" }, "Status"), statusSelect),
    message,
    h("div", { class: "table-wrap" }, table),
    pager);

  let timer = 0;
  let stopped = false;
  const load = async () => {
    try {
      const r = await flows.listRuns({ flow, status, pageSize: PAGE_SIZE, pageToken: page });
      if (stopped) return;
      fill(message);
      refill(body, "data-run", r.runs.length ? r.runs.map(row)
        : h("tr", {}, h("td", { colspan: 6, class: "muted empty" }, "No runs.")));
      const q = (token: string, backs: string[]) => {
        const p = new URLSearchParams();
        if (flow) p.set("flow", flow);
        if (status) p.set("status", status);
        if (token) p.set("page", token);
        if (backs.length) p.set("back", backs.join(","));
        return `/runs${p.size ? `?${p}` : ""}`;
      };
      fill(pager,
        page ? h("a", { href: q(back.at(-1) === "-" ? "" : (back.at(-1) ?? ""), back.slice(0, -1)), rel: "prev" }, "← Newer") : null,
        r.nextPageToken ? h("a", { href: q(r.nextPageToken, [...back, page || "-"]), rel: "next" }, "Older →") : null);
    } catch (err) {
      if (!stopped) fill(message, notice(`Cannot list runs: ${describe(err)}`, "error"));
    }
    if (!stopped && !page) timer = window.setTimeout(load, REFRESH_MS);
  };
  void load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function row(run: Run): HTMLElement {
  const status = runStatus(run.status);
  const finished = status !== "running" && status !== "queued";
  return h("tr", { "data-run": run.runId },
    h("td", {}, h("a", { href: `/runs/${run.runId}`, class: "mono" }, run.runId.slice(0, 13))),
    h("td", {}, h("a", { href: `/flows/${encodeURIComponent(run.flow)}/${run.flowVersion}` }, run.flow),
      h("span", { class: "muted" }, ` v${run.flowVersion}`)),
    h("td", { class: "status-col" }, badge(status)),
    h("td", { class: "nowrap" }, time(run.createdAtMs)),
    h("td", { class: "nowrap" }, duration(run.createdAtMs, finished ? run.updatedAtMs : 0)),
    h("td", { class: "muted" }, run.trigger || "api"));
}
