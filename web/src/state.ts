// What every page may need: moving to another page, and who the console acts as.
import type { TokenInfo } from "./gen/rpaflow/v1/auth_pb";

/// Shows `path` without reloading (main.ts renders on popstate).
export function navigate(path: string): void {
  history.pushState(null, "", path);
  window.dispatchEvent(new PopStateEvent("popstate"));
}

/// The caller's token name, namespace and role, once the console knows them.
export const caller: { me: TokenInfo | null } = { me: null };
