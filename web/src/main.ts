// The rpaflow web console: a single page that routes by path. Signed out, it shows only the
// sign-in; signed in (or with the orchestrator's authentication off) it shows the pages below.
//
// Layout:
// - api.ts: the gRPC-Web clients and the session (token, namespace).
// - dom.ts: DOM and formatting helpers. diagram.ts: a flow as an SVG DAG.
// - pages/: one module per page; each renders into the main element and returns a function
//   that stops its timers and streams when the page is left.
import "./style.css";
import { auth, authAs, endSession, isCode, Code, saveSession, session, whenUnauthenticated } from "./api";
import { fill, h } from "./dom";
import type { TokenInfo } from "./gen/rpaflow/v1/auth_pb";
import { approvalsPage } from "./pages/approvals";
import { flowPage, flowsPage } from "./pages/flows";
import { runPage } from "./pages/run";
import { runsPage } from "./pages/runs";
import { schedulesPage } from "./pages/schedules";
import { secretsPage } from "./pages/secrets";
import { signInPage } from "./pages/signin";
import { caller, navigate } from "./state";

export type Leave = () => void;
export type Page = (main: HTMLElement, params: string[], query: URLSearchParams) => Leave;

const routes: [RegExp, Page, string][] = [
  [/^\/(?:runs)?$/, runsPage, "/runs"],
  [/^\/runs\/([^/]+)$/, runPage, "/runs"],
  [/^\/approvals$/, approvalsPage, "/approvals"],
  [/^\/flows$/, flowsPage, "/flows"],
  [/^\/flows\/([^/]+)(?:\/(\d+))?$/, flowPage, "/flows"],
  [/^\/schedules$/, schedulesPage, "/schedules"],
  [/^\/secrets$/, secretsPage, "/secrets"],
];

const NAV: [string, string][] = [
  ["/runs", "Runs"],
  ["/approvals", "Approvals"],
  ["/flows", "Flows"],
  ["/schedules", "Schedules"],
  ["/secrets", "Secrets"],
];

/// Who the console acts as, once known: the token's name, namespace and role.
let me: TokenInfo | null = null;
/// Whether the orchestrator checks tokens (false for `rpaflow dev`).
let authOff = false;
let leave: Leave = () => {};
const app = document.getElementById("app")!;

/// Links inside the console change the page without reloading it.
document.addEventListener("click", (e) => {
  const a = (e.target as Element).closest?.("a");
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey) return;
  const href = a.getAttribute("href");
  if (!href || !href.startsWith("/") || a.target) return;
  e.preventDefault();
  navigate(href);
});
// A change of the hash alone (a step of the run page's diagram) stays on the page.
let shown = "";
window.addEventListener("popstate", () => {
  if (location.pathname + location.search !== shown) void render();
});

// A call refused for want of a valid token (one expired or revoked meanwhile): sign in again.
// Not while finding out who the console is (identify handles that answer itself).
whenUnauthenticated(() => {
  if (authOff || !me) return;
  endSession();
  me = null;
  void render();
});

/// Finds out who the console is: the saved session's token, or (with no session) whether the
/// orchestrator lets anonymous callers in, which it does only with authentication off.
async function identify(): Promise<TokenInfo | null> {
  const s = session();
  try {
    const who = await authAs(s).whoAmI({});
    authOff = who.name === "anonymous";
    return who;
  } catch (err) {
    if (!isCode(err, Code.Unauthenticated)) throw err;
    if (s) endSession();
    return null;
  }
}

async function render(): Promise<void> {
  shown = location.pathname + location.search;
  leave();
  leave = () => {};
  if (!me) {
    try {
      me = await identify();
      caller.me = me;
    } catch (err) {
      fill(app, h("main", { class: "page" }, h("p", { class: "notice error", role: "alert" },
        `The orchestrator did not answer: ${String(err)}`)));
      return;
    }
  }
  if (!me) {
    fill(app);
    leave = signInPage(app, async () => {
      me = null;
      await render();
    });
    return;
  }
  const path = location.pathname;
  const match = routes
    .map(([re, page, section]) => ({ m: re.exec(path), page, section }))
    .find((r) => r.m);
  const main = h("main", { class: "page", id: "main", tabindex: -1 });
  fill(app, shell(match?.section ?? ""), main);
  if (!match) {
    fill(main, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "/runs" }, "Back to the runs")));
    return;
  }
  const params = match.m!.slice(1).map((p) => (p === undefined ? "" : decodeURIComponent(p)));
  leave = match.page(main, params, new URLSearchParams(location.search));
}

function shell(section: string): HTMLElement {
  const who = me!;
  const signOut = () => {
    endSession();
    me = null;
    history.pushState(null, "", "/");
    void render();
  };
  return h(
    "header",
    { class: "top" },
    h("a", { class: "skip", href: "#main" }, "Skip to content"),
    h("a", { class: "brand", href: "/runs" }, "rpaflow"),
    h(
      "nav",
      { "aria-label": "Console" },
      h("ul", {}, NAV.map(([href, label]) =>
        h("li", {}, h("a", { href, "aria-current": href === section ? "page" : null }, label)))),
    ),
    h(
      "div",
      { class: "who" },
      authOff ? namespaceSwitch(who.namespace)
        : h("span", { class: "ns", title: "namespace", "data-namespace": who.namespace }, who.namespace),
      h("span", { class: "muted" }, ` ${who.name} · ${who.role}`),
      authOff
        ? h("span", { class: "muted" }, " · authentication off")
        : h("button", { type: "button", class: "link", onclick: signOut }, "Sign out"),
    ),
  );
}

/// With authentication off every caller is an admin of `default` and may act in any namespace
/// (the `rpaflow-namespace` header): a choice of them, kept like a session.
function namespaceSwitch(current: string): HTMLElement {
  const select = h("select", { class: "ns", "aria-label": "Namespace", "data-namespace": current },
    h("option", { value: current, selected: true }, current));
  void auth.listNamespaces({}).then((r) => {
    for (const ns of r.namespaces) {
      if (ns.name !== current) select.append(h("option", { value: ns.name }, ns.name));
    }
  }, () => {});
  select.addEventListener("change", () => {
    saveSession({ token: "", namespace: select.value });
    me = null;
    history.pushState(null, "", "/runs");
    void render();
  });
  return select;
}

void render();
