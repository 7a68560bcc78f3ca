// A few helpers to build the DOM without a framework, and to show times and JSON.

type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, string | number | boolean | EventListener | null | undefined>;

/// `h("a", { href: "/runs", class: "x" }, "Runs")`: an element; `on*` attributes are listeners,
/// `false`/`null`/`undefined` attributes are left out, children may be strings or nodes.
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el: Element, children: (Child | Child[])[]): void {
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(typeof c === "number" ? String(c) : c);
  }
}

/// Replaces what `el` holds.
export function fill(el: Element, ...children: (Child | Child[])[]): void {
  el.replaceChildren();
  append(el, children);
}

export function time(ms: bigint | number): string {
  const n = Number(ms);
  if (!n) return "–";
  const d = new Date(n);
  const pad = (x: number) => String(x).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function duration(fromMs: bigint | number, toMs: bigint | number): string {
  const from = Number(fromMs);
  if (!from) return "–";
  const to = Number(toMs) || Date.now();
  const ms = Math.max(0, to - from);
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 3_600_000) return `${Math.floor(ms / 60_000)} min ${Math.floor((ms % 60_000) / 1000)} s`;
  return `${Math.floor(ms / 3_600_000)} h ${Math.floor((ms % 3_600_000) / 60_000)} min`;
}

/// JSON text, indented; what is not JSON as it is.
export function pretty(json: string): string {
  if (!json) return "";
  try {
    return JSON.stringify(JSON.parse(json), null, 2);
  } catch {
    return json;
  }
}

/// A `<pre>` of JSON, or a dash.
export function jsonBlock(json: string): HTMLElement {
  const text = pretty(json);
  return text ? h("pre", { class: "json" }, text) : h("span", { class: "muted" }, "–");
}

/// A status word as a badge, `kind` picks the colour (`succeeded`, `failed`, ...).
export function badge(kind: string, text = kind.replace(/_/g, " ")): HTMLElement {
  return h("span", { class: `badge st-${kind}`, "data-status": kind }, text);
}

/// A message shown in place of a page or a part of it.
export function notice(text: string, kind: "error" | "info" = "info"): HTMLElement {
  return h("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

/// Replaces what `el` holds, keeping the keyboard focus: an element focused inside `el` that
/// has a counterpart in the new content (the same `key` attribute on its row, the same place in
/// it) is focused again, so a refresh never throws a keyboard user back to the page's start.
export function refill(el: Element, key: string, ...children: (Child | Child[])[]): void {
  const focused = document.activeElement;
  const row = focused && el.contains(focused) ? focused.closest(`[${key}]`) : null;
  const id = row?.getAttribute(key);
  const index = row ? [...row.querySelectorAll("a, button, select, input, textarea, summary")].indexOf(focused!) : -1;
  fill(el, ...children);
  if (id == null || index < 0) return;
  const again = [...el.querySelectorAll(`[${key}]`)].find((r) => r.getAttribute(key) === id);
  const target = again?.querySelectorAll("a, button, select, input, textarea, summary")[index];
  if (target instanceof HTMLElement) target.focus({ preventScroll: true });
}
