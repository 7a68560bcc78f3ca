// The API, as the console calls it: the orchestrator's own gRPC services over gRPC-Web on the
// same origin (no second API). Every call carries the session's token and namespace; a call
// answered UNAUTHENTICATED ends the session and shows the sign-in.
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AuthService } from "./gen/rpaflow/v1/auth_pb";
import { FlowService } from "./gen/rpaflow/v1/flow_pb";

const TOKEN_KEY = "rpaflow.token";
const NAMESPACE_KEY = "rpaflow.namespace";

/// Who the console calls as, kept in sessionStorage (gone when the tab closes).
export interface Session {
  token: string;
  namespace: string;
}

export function session(): Session | null {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token === null) return null;
  return { token, namespace: sessionStorage.getItem(NAMESPACE_KEY) ?? "" };
}

export function saveSession(s: Session): void {
  sessionStorage.setItem(TOKEN_KEY, s.token);
  sessionStorage.setItem(NAMESPACE_KEY, s.namespace);
}

export function endSession(): void {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(NAMESPACE_KEY);
}

/// Called when the API says the caller is not (or no longer) signed in.
let onUnauthenticated: () => void = () => {};
export function whenUnauthenticated(f: () => void): void {
  onUnauthenticated = f;
}

function credentials(s: () => Session | null): Interceptor {
  return (next) => async (req) => {
    const current = s();
    if (current?.token) req.header.set("authorization", `Bearer ${current.token}`);
    if (current?.namespace) req.header.set("rpaflow-namespace", current.namespace);
    try {
      return await next(req);
    } catch (err) {
      if (ConnectError.from(err).code === Code.Unauthenticated) onUnauthenticated();
      throw err;
    }
  };
}

function transport(s: () => Session | null) {
  return createGrpcWebTransport({
    baseUrl: window.location.origin,
    interceptors: [credentials(s)],
  });
}

const calls = transport(session);
export const flows = createClient(FlowService, calls);
export const auth = createClient(AuthService, calls);

/// An AuthService client for a session not saved yet (the sign-in tries it first).
export function authAs(s: Session | null) {
  return createClient(AuthService, transport(() => s));
}

/// A failure as people read it: the server's message, without the code prefix.
export function describe(err: unknown): string {
  const e = ConnectError.from(err);
  return e.rawMessage || e.message;
}

export function isCode(err: unknown, code: Code): boolean {
  return ConnectError.from(err).code === code;
}

export { Code };
