// Context Engine playground: the public REST API (/api/v1/) and the session WebSocket (/ws/sessions/<id>/).
// Plain JavaScript, no build step. Protocol: apps/realtime/__init__.py and docs/architecture.md.
"use strict";

(function () {
  const API = "/api/v1";
  const SUBPROTOCOL = "context-engine";
  const NO_RECONNECT = new Set([4401, 4403, 4404]); // unauthenticated, forbidden origin, not a participant
  const $ = (id) => document.getElementById(id);

  const state = {
    token: sessionStorage.getItem("ce-token") || "",
    username: sessionStorage.getItem("ce-username") || "",
    sessionId: null,
    lastSeq: 0, // the highest seq shown: every event up to it is on the page, in order
    socket: null,
    leaving: false,
    retries: 0,
    reconnectTimer: null,
    typingUntil: {},
    typingSentAt: 0,
    suggestions: new Map(),
  };

  // --- helpers ---------------------------------------------------------------------
  function show(el, visible) { el.hidden = !visible; }

  function setError(message) {
    $("error").textContent = message || "";
    show($("error"), Boolean(message));
  }

  function setBanner(message) {
    $("banner").textContent = message || "";
    show($("banner"), Boolean(message));
  }

  async function api(method, path, body) {
    const headers = { "Accept": "application/json" };
    if (state.token) headers["Authorization"] = "Token " + state.token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(API + path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = { message: text }; }
    if (!response.ok) {
      const err = (data && data.error) || data || {};
      const message = err.message || err.detail || ("HTTP " + response.status);
      const retry = response.headers.get("Retry-After");
      throw new Error(message + (retry ? " (retry in " + retry + " s)" : ""));
    }
    return data;
  }

  function newId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return String(Date.now()) + Math.random().toString(16).slice(2);
  }

  function eventText(event) {
    const data = event.data || {};
    if (typeof data.text === "string") return data.text;
    if (typeof data.action === "string") return "[" + data.action + "]";
    return JSON.stringify(data);
  }

  function suggestionText(s) {
    const c = s.content;
    if (c && typeof c === "object") {
      for (const key of ["text", "action", "summary", "answer"]) {
        if (typeof c[key] === "string") return c[key];
      }
      return JSON.stringify(c);
    }
    return String(c);
  }

  // --- screens ---------------------------------------------------------------------
  function render() {
    const signedIn = Boolean(state.token);
    show($("auth-panel"), !signedIn);
    show($("session-panel"), signedIn && !state.sessionId);
    show($("live-panel"), signedIn && Boolean(state.sessionId));
    $("whoami").textContent = signedIn ? "signed in" + (state.username ? " as " + state.username : "") : "";
  }

  function signIn(token, username) {
    state.token = token;
    state.username = username || "";
    sessionStorage.setItem("ce-token", token);
    sessionStorage.setItem("ce-username", state.username);
    setError("");
    render();
    loadSessions();
  }

  function signOut() {
    leave();
    state.token = "";
    state.username = "";
    sessionStorage.removeItem("ce-token");
    sessionStorage.removeItem("ce-username");
    render();
  }

  async function loadSessions() {
    try {
      const page = await api("GET", "/sessions/?page_size=20");
      const list = $("session-list");
      list.replaceChildren();
      for (const s of page.results || []) {
        const li = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.className = "link";
        button.textContent = s.title + " (" + s.state + ")";
        button.dataset.sessionId = s.id;
        button.addEventListener("click", () => join(s.id));
        li.append(button);
        list.append(li);
      }
    } catch (e) {
      setError("Could not list sessions: " + e.message);
    }
  }

  // --- the stream --------------------------------------------------------------------
  function appendEvent(event) {
    if (event.seq <= state.lastSeq) return; // already shown (a live copy of a replayed event)
    const li = document.createElement("li");
    li.dataset.seq = String(event.seq);
    const seq = document.createElement("span");
    seq.className = "seq";
    seq.textContent = "#" + event.seq;
    const user = document.createElement("span");
    user.className = "user";
    user.textContent = event.user || "system";
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = eventText(event);
    li.append(seq, user, text);
    $("stream").append(li);
    $("stream").scrollTop = $("stream").scrollHeight;
    state.lastSeq = event.seq;
  }

  function renderOnline(online) {
    const list = $("online");
    list.replaceChildren();
    for (const entry of online || []) {
      const li = document.createElement("li");
      li.textContent = entry.user + (entry.state && entry.state !== "active" ? " (" + entry.state + ")" : "");
      li.dataset.user = entry.user;
      list.append(li);
    }
  }

  function setAiState(aiState) {
    const badge = $("ai-state");
    badge.dataset.state = aiState || "";
    badge.textContent = aiState ? "AI " + aiState : "AI idle";
  }

  function renderTyping() {
    const now = Date.now();
    const names = Object.keys(state.typingUntil).filter((u) => state.typingUntil[u] > now);
    $("typing").textContent = names.length ? names.join(", ") + (names.length > 1 ? " are" : " is") + " typing…" : "";
  }

  function addSuggestion(s) {
    if (!s || !s.id || state.suggestions.has(s.id)) return;
    const li = document.createElement("li");
    li.dataset.suggestionId = s.id;
    const kind = document.createElement("span");
    kind.className = "muted";
    kind.textContent = s.kind + " · ";
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = suggestionText(s);
    const accept = document.createElement("button");
    accept.type = "button";
    accept.className = "small accept";
    accept.textContent = "Accept";
    const reject = document.createElement("button");
    reject.type = "button";
    reject.className = "small reject";
    reject.textContent = "Reject";
    const verdict = document.createElement("span");
    verdict.className = "verdict";
    const send = async (value) => {
      try {
        await api("POST", "/suggestions/" + s.id + "/feedback/", { verdict: value });
        verdict.textContent = value === "accept" ? "accepted" : "rejected";
        accept.disabled = true;
        reject.disabled = true;
      } catch (e) {
        setError("Feedback failed: " + e.message);
      }
    };
    accept.addEventListener("click", () => send("accept"));
    reject.addEventListener("click", () => send("reject"));
    li.append(kind, text, document.createElement("br"), accept, document.createTextNode(" "), reject, verdict);
    $("suggestions").prepend(li);
    state.suggestions.set(s.id, li);
  }

  // --- joining, the socket, reconnecting -----------------------------------------------
  async function join(sessionId) {
    leave();
    state.leaving = false;
    state.sessionId = sessionId;
    state.lastSeq = 0;
    state.suggestions.clear();
    $("stream").replaceChildren();
    $("suggestions").replaceChildren();
    setError("");
    render();
    try {
      await loadSnapshot();
      const page = await api("GET", "/sessions/" + sessionId + "/suggestions/?page_size=20");
      for (const s of (page.results || []).slice().reverse()) addSuggestion(s);
    } catch (e) {
      setError("Could not open the session: " + e.message);
      state.sessionId = null;
      render();
      return;
    }
    connect();
  }

  async function loadSnapshot() {
    const snapshot = await api("GET", "/sessions/" + state.sessionId + "/context/");
    $("session-title").textContent = snapshot.title + " (" + snapshot.state + ")";
    const events = (snapshot.recent_events || []).slice().sort((a, b) => a.seq - b.seq);
    if (events.length && events[0].seq > state.lastSeq + 1) {
      // The snapshot starts later than what is shown: older events are not kept on the page.
      $("stream").replaceChildren();
      state.lastSeq = events[0].seq - 1;
    }
    for (const event of events) appendEvent(event);
    if (snapshot.last_seq > state.lastSeq) state.lastSeq = snapshot.last_seq;
  }

  function connect() {
    clearTimeout(state.reconnectTimer);
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    // after_seq: the server replays what we missed before any live event, so each arrives once, in order.
    const resume = state.lastSeq > 0 ? "?after_seq=" + state.lastSeq : "";
    const url = scheme + "//" + location.host + "/ws/sessions/" + state.sessionId + "/" + resume;
    // The token goes in a subprotocol, never in the URL (URLs end up in logs).
    const socket = new WebSocket(url, [SUBPROTOCOL, "token." + state.token]);
    state.socket = socket;
    socket.addEventListener("message", (message) => onFrame(socket, message));
    socket.addEventListener("close", (event) => onClose(socket, event));
  }

  function onClose(socket, event) {
    if (socket !== state.socket) return;
    state.socket = null;
    $("connection").textContent = "offline";
    $("connection").classList.remove("online");
    if (state.leaving) return;
    if (NO_RECONNECT.has(event.code)) {
      setBanner("");
      setError("The server closed the connection (" + event.code + (event.reason ? ": " + event.reason : "") + ").");
      return;
    }
    const delay = Math.min(10, 2 ** state.retries) * (0.5 + Math.random() / 2);
    state.retries += 1;
    setBanner("Connection lost (" + event.code + "). Reconnecting in " + delay.toFixed(1) + " s… events sent meanwhile will be caught up.");
    state.reconnectTimer = setTimeout(connect, delay * 1000);
  }

  function send(frame) {
    if (state.socket && state.socket.readyState === WebSocket.OPEN) {
      state.socket.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  function onFrame(socket, message) {
    if (socket !== state.socket) return;
    let frame;
    try { frame = JSON.parse(message.data); } catch (e) { return; }
    switch (frame.type) {
      case "hello":
        state.retries = 0;
        setBanner("");
        $("connection").textContent = "live";
        $("connection").classList.add("online");
        $("session-title").textContent = frame.session.title + " (" + frame.session.state + ")";
        renderOnline(frame.online);
        setAiState(frame.ai_state);
        for (const user of frame.typing || []) state.typingUntil[user] = Date.now() + 5000;
        renderTyping();
        // Everything after hello.last_seq arrives live; what we missed up to it was asked for
        // by the URL's after_seq and follows this frame.
        break;
      case "event":
        appendEvent(frame);
        break;
      case "ack":
        break;
      case "presence":
        if (frame.online) renderOnline(frame.online);
        if (frame.event === "ai_state" || frame.ai_state !== undefined) setAiState(frame.ai_state);
        if (frame.event === "removed" && frame.user === state.username) setError("You were removed from this session.");
        break;
      case "typing":
        if (frame.active) state.typingUntil[frame.user] = Date.now() + (frame.ttl_ms || 5000);
        else delete state.typingUntil[frame.user];
        renderTyping();
        break;
      case "suggestion":
        addSuggestion(frame);
        break;
      case "resync_required":
        // Too far behind for resume: take the snapshot again; live delivery goes on after it.
        loadSnapshot().catch((e) => setError("Could not resync: " + e.message));
        break;
      case "error":
        setError((frame.message || frame.code) + (frame.retry_after_ms ? " (retry in " + Math.ceil(frame.retry_after_ms / 1000) + " s)" : ""));
        break;
      default:
        break;
    }
  }

  function leave() {
    state.leaving = true;
    clearTimeout(state.reconnectTimer);
    if (state.socket) state.socket.close(1000);
    state.socket = null;
    state.sessionId = null;
    setBanner("");
  }

  // --- wiring --------------------------------------------------------------------------
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const username = $("login-username").value.trim();
    try {
      const data = await api("POST", "/auth/token/", { username, password: $("login-password").value });
      $("login-password").value = "";
      signIn(data.token, username);
    } catch (e) {
      setError("Login failed: " + e.message);
    }
  });

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token-input").value.trim();
    if (token) signIn(token, "");
    $("token-input").value = "";
  });

  $("logout-button").addEventListener("click", signOut);

  $("create-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const session = await api("POST", "/sessions/", { title: $("create-title").value.trim() });
      $("create-title").value = "";
      join(session.id);
    } catch (e) {
      setError("Could not create the session: " + e.message);
    }
  });

  $("join-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("join-id").value.trim();
    if (id) join(id);
  });

  $("leave-button").addEventListener("click", () => {
    leave();
    render();
    loadSessions();
  });

  $("compose-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("compose-input").value.trim();
    if (!text) return;
    if (send({ type: "context_update", data: { text }, client_msg_id: newId().slice(0, 64) })) {
      $("compose-input").value = "";
      send({ type: "typing", active: false });
    } else {
      setError("Not connected: the text was not sent.");
    }
  });

  $("compose-input").addEventListener("input", () => {
    const now = Date.now();
    if (now - state.typingSentAt > 2000) {
      state.typingSentAt = now;
      send({ type: "typing", active: true });
    }
  });

  $("query-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const query = $("query-input").value.trim();
    if (!query || !state.sessionId) return;
    try {
      const request = await api("POST", "/sessions/" + state.sessionId + "/suggestions/", { query });
      $("query-input").value = "";
      $("query-status").textContent = "Asked: request " + request.status + "; suggestions arrive here.";
    } catch (e) {
      setError("Could not ask: " + e.message);
    }
  });

  setInterval(renderTyping, 1000);
  render();
  if (state.token) loadSessions();
})();
