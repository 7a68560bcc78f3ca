// Schedules (ListSchedules): cron, time zone, the next fire times; pause, resume, fire now.
import { describe, flows } from "../api";
import { badge, fill, h, notice, refill, time } from "../dom";
import type { ScheduleInfo } from "../gen/rpaflow/v1/flow_pb";
import type { Leave } from "../main";
import { navigate } from "../state";

export function schedulesPage(main: HTMLElement): Leave {
  const body = h("tbody", {});
  const message = h("div", { "aria-live": "polite" });
  fill(main, h("div", { class: "title-row" }, h("h1", {}, "Schedules")), message,
    h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Flow", "Trigger", "Cron", "State", "Next fires", "Last fired", ""]
        .map((t) => h("th", { scope: "col" }, t)))),
      body)));
  let stopped = false;

  const act = async (what: string, call: () => Promise<unknown>) => {
    try {
      await call();
      fill(message, notice(what));
      await load();
    } catch (err) {
      fill(message, notice(`${what} failed: ${describe(err)}`, "error"));
    }
  };
  const row = (s: ScheduleInfo) => {
    const ref = { flow: s.flow, trigger: s.trigger };
    return h("tr", { "data-schedule": `${s.flow}/${s.trigger}` },
      h("td", {}, h("a", { href: `/flows/${encodeURIComponent(s.flow)}` }, s.flow)),
      h("td", { class: "mono" }, s.trigger),
      h("td", { class: "mono nowrap" }, s.cron, h("span", { class: "muted" }, ` ${s.timezone}`)),
      h("td", { class: "status-col" }, badge(s.paused ? "paused" : "active")),
      h("td", {}, s.nextFireMs.length ? h("ul", { class: "plain" }, s.nextFireMs.slice(0, 3).map((t) => h("li", { class: "nowrap" }, time(t))))
        : h("span", { class: "muted" }, "none")),
      h("td", { class: "nowrap" }, time(s.lastFireMs)),
      h("td", { class: "actions" },
        s.paused
          ? h("button", { type: "button", onclick: () => act(`Resumed ${s.flow}/${s.trigger}.`, () => flows.resumeSchedule(ref)) }, "Resume")
          : h("button", { type: "button", onclick: () => act(`Paused ${s.flow}/${s.trigger}.`, () => flows.pauseSchedule(ref)) }, "Pause"),
        h("button", { type: "button", onclick: async () => {
          try {
            const r = await flows.triggerSchedule(ref);
            navigate(`/runs/${r.run!.runId}`);
          } catch (err) {
            fill(message, notice(`Not fired: ${describe(err)}`, "error"));
          }
        } }, "Fire now")));
  };
  async function load() {
    try {
      const r = await flows.listSchedules({ flow: "" });
      if (stopped) return;
      refill(body, "data-schedule", r.schedules.length ? r.schedules.map(row)
        : h("tr", {}, h("td", { colspan: 7, class: "muted empty" }, "No schedules: a flow has them as `triggers` with `schedule`.")));
    } catch (err) {
      if (!stopped) fill(message, notice(`Cannot list schedules: ${describe(err)}`, "error"));
    }
  }
  void load();
  return () => {
    stopped = true;
  };
}
