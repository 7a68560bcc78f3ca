// The approvals inbox (ListApprovals): what waits for a person, with the step's message (the
// data the flow put there for the approver) and the run's inputs, who may answer and until
// when; approve or reject with a comment (SignalRun; the server records the caller's token name
// as who answered).
import { describe, flows } from "../api";
import { fill, h, jsonBlock, notice, time } from "../dom";
import type { Approval } from "../gen/rpaflow/v1/flow_pb";
import type { Leave } from "../main";
import { caller } from "../state";

const REFRESH_MS = 3000;

export function approvalsPage(main: HTMLElement): Leave {
  const list = h("div", { class: "cards" });
  const message = h("div", { "aria-live": "polite" });
  fill(main, h("div", { class: "title-row" }, h("h1", {}, "Approvals")), message, list);
  // Cards being answered (or typed in) are kept, so a refresh never eats a comment.
  const cards = new Map<string, HTMLElement>();
  let timer = 0;
  let stopped = false;

  const card = (a: Approval): HTMLElement => {
    const key = `${a.runId}/${a.stepId}`;
    const id = key.replace(/[^a-zA-Z0-9-]/g, "-");
    const comment = h("textarea", { id: `comment-${id}`, name: "comment", rows: 2 });
    const status = h("p", { class: "muted", "aria-live": "polite" });
    const answer = async (approve: boolean) => {
      for (const b of buttons) b.disabled = true;
      try {
        await flows.signalRun({
          runId: a.runId,
          stepId: a.stepId,
          approve,
          comment: comment.value,
          by: caller.me?.name ?? "",
        });
        status.textContent = approve ? "Approved." : "Rejected.";
        cards.delete(key);
        setTimeout(() => el.remove(), 800);
      } catch (err) {
        status.textContent = "";
        status.append(notice(`Not answered: ${describe(err)}`, "error"));
        for (const b of buttons) b.disabled = false;
      }
    };
    const buttons = [
      h("button", { type: "button", class: "primary", onclick: () => answer(true), "data-action": "approve" }, "Approve"),
      h("button", { type: "button", class: "danger", onclick: () => answer(false), "data-action": "reject" }, "Reject"),
    ];
    // The run's inputs (for a subflow, the item it handles), for a closer look.
    const inputs = h("details", { class: "run-inputs" }, h("summary", {}, "The run's inputs"));
    flows.getRun({ runId: a.runId }).then((r) => inputs.append(jsonBlock(r.inputsJson)), () => inputs.remove());
    const who = [...a.approverRoles.map((r) => `role ${r}`), ...a.approverNames];
    const el = h("article", { class: "card approval", "data-run": a.runId, "data-step": a.stepId, "aria-labelledby": `title-${id}` },
      h("h2", { id: `title-${id}` }, a.flow, h("span", { class: "muted" }, ` v${a.flowVersion} · ${a.stepId}`)),
      h("p", { class: "approval-message" }, a.message || "(no message)"),
      h("dl", { class: "facts" },
        h("div", {}, h("dt", {}, "Run"), h("dd", {}, h("a", { href: `/runs/${a.runId}`, class: "mono" }, a.runId.slice(0, 13)))),
        h("div", {}, h("dt", {}, "Waiting since"), h("dd", {}, time(a.requestedAtMs))),
        h("div", {}, h("dt", {}, "Deadline"), h("dd", {}, a.deadlineMs ? time(a.deadlineMs) : "none")),
        h("div", {}, h("dt", {}, "Who may answer"), h("dd", {}, who.length ? who.join(", ") : "any approver"))),
      inputs,
      h("label", { for: `comment-${id}` }, "Comment"),
      comment,
      h("div", { class: "actions" }, buttons),
      status);
    return el;
  };

  const load = async () => {
    try {
      const r = await flows.listApprovals({});
      if (stopped) return;
      fill(message);
      const waiting = new Set(r.approvals.map((a) => `${a.runId}/${a.stepId}`));
      for (const [key, el] of cards) {
        if (!waiting.has(key)) {
          el.remove();
          cards.delete(key);
        }
      }
      for (const a of r.approvals) {
        const key = `${a.runId}/${a.stepId}`;
        if (!cards.has(key)) {
          const el = card(a);
          cards.set(key, el);
          list.append(el);
        }
      }
      if (!r.approvals.length) fill(message, notice("Nothing waits for an answer."));
    } catch (err) {
      if (!stopped) fill(message, notice(`Cannot list approvals: ${describe(err)}`, "error"));
    }
    if (!stopped) timer = window.setTimeout(load, REFRESH_MS);
  };
  void load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
