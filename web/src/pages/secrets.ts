// Secrets (ListSecrets, SetSecret, DeleteSecret): names and update times only; a value is sent
// once and never shown again. The API allows this to admins of the namespace.
import { describe, flows } from "../api";
import { fill, h, notice, refill, time } from "../dom";
import type { Leave } from "../main";

export function secretsPage(main: HTMLElement): Leave {
  const body = h("tbody", {});
  const message = h("div", { "aria-live": "polite" });
  const name = h("input", { id: "secret-name", name: "name", required: true, pattern: "[A-Za-z_][A-Za-z0-9_]*",
    autocomplete: "off", spellcheck: "false", class: "mono" });
  const value = h("input", { id: "secret-value", name: "value", type: "password", required: true, autocomplete: "new-password" });
  const form = h("form", { class: "inline-form", id: "set-secret" },
    h("div", {}, h("label", { for: "secret-name" }, "Name"), name),
    h("div", {}, h("label", { for: "secret-value" }, "Value"), value),
    h("button", { type: "submit", class: "primary" }, "Set secret"));
  fill(main, h("div", { class: "title-row" }, h("h1", {}, "Secrets")),
    h("p", { class: "muted" }, "Flows read them as ", h("code", {}, "{{ secrets.NAME }}"), ". Values are never shown."),
    message,
    h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Name", "Updated", ""].map((t) => h("th", { scope: "col" }, t)))),
      body)),
    h("h2", {}, "Set a secret"), form);
  let stopped = false;

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await flows.setSecret({ name: name.value.trim(), value: value.value });
      fill(message, notice(`Secret ${name.value.trim()} set.`));
      name.value = "";
      value.value = "";
      await load();
    } catch (err) {
      fill(message, notice(`Not set: ${describe(err)}`, "error"));
    }
  });
  async function load() {
    try {
      const r = await flows.listSecrets({});
      if (stopped) return;
      refill(body, "data-secret", r.secrets.length ? r.secrets.map((s) => h("tr", { "data-secret": s.name },
        h("td", { class: "mono" }, s.name),
        h("td", { class: "nowrap" }, time(s.updatedAtMs)),
        h("td", {}, h("button", { type: "button", class: "danger", "aria-label": `Delete ${s.name}`, onclick: async () => {
          if (!confirm(`Delete the secret ${s.name}? Flows that read it will fail.`)) return;
          try {
            await flows.deleteSecret({ name: s.name });
            fill(message, notice(`Secret ${s.name} deleted.`));
            await load();
          } catch (err) {
            fill(message, notice(`Not deleted: ${describe(err)}`, "error"));
          }
        } }, "Delete"))))
        : h("tr", {}, h("td", { colspan: 3, class: "muted empty" }, "No secrets.")));
    } catch (err) {
      if (!stopped) fill(message, notice(`Cannot list secrets: ${describe(err)}`, "error"));
    }
  }
  void load();
  return () => {
    stopped = true;
  };
}
