// The REST API as the dashboard uses it: a bearer token from sessionStorage, JSON in and out.
// No logic here beyond what the CLI does: every decision is the daemon's.

export const auth = {
  get token() { return sessionStorage.getItem("kasou.token"); },
  get project() { return sessionStorage.getItem("kasou.project") || ""; },
  set(token, project) {
    sessionStorage.setItem("kasou.token", token);
    sessionStorage.setItem("kasou.project", project || "");
  },
  clear() { sessionStorage.removeItem("kasou.token"); sessionStorage.removeItem("kasou.project"); },
};

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? body.message : `HTTP ${status}`);
    this.status = status;
  }
}

export async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${auth.token}` };
  if (auth.project) headers["X-Kasou-Project"] = auth.project;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(`/api/v1${path}`, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

export function wsUrl(path) {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${location.host}${path}`;
}
