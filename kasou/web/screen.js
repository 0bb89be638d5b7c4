// A VM's screen with noVNC (vendored in vendor/novnc), over the daemon's WebSocket proxy.
import RFB from "./vendor/novnc/core/rfb.js";
import { api, wsUrl } from "./api.js";

// Connect `target` (a div) to VM `name`'s screen with a console token, minted now unless
// given; calls onStatus(text) as the connection moves. Returns the RFB object.
export async function openScreen(target, name, onStatus, token) {
  if (!token) token = (await api("POST", `/vms/${encodeURIComponent(name)}/console-token`)).token;
  const path = `/api/v1/vms/${encodeURIComponent(name)}/vnc?token=${encodeURIComponent(token)}`;
  const rfb = new RFB(target, wsUrl(path), { wsProtocols: ["binary"] });
  rfb.scaleViewport = true;
  rfb.focusOnClick = true;
  onStatus("connecting");
  rfb.addEventListener("connect", () => { onStatus("connected"); rfb.focus(); });
  rfb.addEventListener("disconnect", (e) =>
    onStatus(e.detail.clean ? "disconnected" : "refused or lost"));
  window.kasouScreen = rfb;   // for tests and the benchmark: the live connection
  return rfb;
}
