// The sign-in: an API token (`rpaflow token create`) and, optionally, the namespace to act in.
// The token is checked with WhoAmI before it is kept (in sessionStorage, for this tab only).
import { authAs, describe, saveSession } from "../api";
import { h } from "../dom";
import type { Leave } from "../main";

export function signInPage(root: HTMLElement, signedIn: () => Promise<void>): Leave {
  const token = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "off",
    required: true,
    spellcheck: "false",
    placeholder: "rpf_…",
  });
  const namespace = h("input", {
    id: "namespace",
    name: "namespace",
    type: "text",
    autocomplete: "off",
    spellcheck: "false",
    placeholder: "the token's own",
  });
  const error = h("p", { class: "notice error", role: "alert", hidden: true });
  const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h(
    "form",
    { class: "signin", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in to rpaflow"),
    h("p", { class: "muted" },
      "Use an API token of your namespace (", h("code", {}, "rpaflow token create"),
      "). It is kept in this tab only."),
    h("label", { for: "token" }, "API token"),
    token,
    h("label", { for: "namespace" }, "Namespace ", h("span", { class: "muted" }, "(optional)")),
    namespace,
    error,
    submit,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const s = { token: token.value.trim(), namespace: namespace.value.trim() };
    submit.disabled = true;
    error.hidden = true;
    try {
      await authAs(s).whoAmI({});
      saveSession(s);
      await signedIn();
    } catch (err) {
      error.textContent = `Not signed in: ${describe(err)}`;
      error.hidden = false;
      submit.disabled = false;
      token.focus();
    }
  });
  root.append(h("main", { class: "page narrow", id: "main" }, form));
  token.focus();
  return () => {};
}
