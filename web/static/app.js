// The teacher's page: draws the frames the server streams, shows the status, sends the key held.
// The server decides roles (teacher or observer) and validates everything it receives; the page
// only sends its full input state ({t: "input", a: ACTION_OR_NULL, p: PAUSED, ok: APPROVING}) when
// it changes, and again twice a second so that a dropped message is repaired.
"use strict";

const $ = (id) => document.getElementById(id);

// Frames and statuses arrive up to 60 times a second: touch the DOM only where something changed,
// since even an identical write makes the browser lay the page out again.
function setText(element, text) {
  text = String(text);
  if (element.textContent !== text) element.textContent = text;
}
function setClass(element, className) {
  if (element.className !== className) element.className = className;
}
const canvas = $("frame");
const ctx = canvas.getContext("2d");

const state = {
  ws: null,
  role: null,
  keyMap: [], // [{key, action, label}] for the trial's environment
  status: null,
  paused: false, // what this teacher wants; the server's status says what is
  keysDown: [], // control keys held, in press order: the last one pressed wins
  pointerAction: null, // an on-screen button held with mouse or touch
  approveKey: false, // the space bar held: explicit approval of the agent's action
  pointerApprove: false, // the on-screen Approve button held
  helpTimeout: null, // seconds a request for help waits for an answer (from the server's hello)
  lastSent: "",
  retry: 0,
  history: [],
  training: null, // the run's model as the registry shows it: iteration, loss trend, end of run
  gamepadKeys: [], // keys the gamepad holds, as if they were keyboard keys
  gamepadPause: false,
};

// A tab keeps its token across reloads (sessionStorage), so a reloaded teacher gets its seat back.
const token = sessionStorage.getItem("apprentice-token") || Math.random().toString(36).slice(2, 14);
sessionStorage.setItem("apprentice-token", token);

// --- connection -----------------------------------------------------------------------------------

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws?token=${token}`);
  ws.binaryType = "blob";
  state.ws = ws;
  setLink("connecting");
  ws.onopen = () => { state.retry = 0; state.lastSent = ""; state.status = null; setLink("connected"); };
  ws.onmessage = (event) => (typeof event.data === "string" ? onText(event.data) : onFrame(event.data));
  ws.onclose = () => {
    state.ws = null;
    const delay = Math.min(5000, 250 * 2 ** state.retry++);
    setLink("reconnecting");
    render();
    setTimeout(connect, delay);
  };
}

function send(message) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(message));
}

function onText(text) {
  const message = JSON.parse(text);
  switch (message.t) {
    case "hello":
      state.history = message.history || [];
      setKeyMap(message.key_map || []);
      state.helpTimeout = message.help_timeout;
      setRole(message.role);
      renderHistory();
      setTraining(message.training);
      break;
    case "role":
      setRole(message.role);
      break;
    case "trial":
      setKeyMap(message.key_map || []);
      break;
    case "ended":
      state.history.push(message.summary);
      renderHistory();
      drawTeachingChart();
      break;
    case "training":
      setTraining(message.training);
      break;
    case "status":
      if (message.frame) pendingStatus = message; // shown with its frame, in one paint
      else applyStatus(message);
      break;
  }
}

// --- frames: decode off the main path, draw only the newest, status and frame together -------------

let pendingStatus = null;
let nextFrame = null;
let drawing = false;
const frameTimes = [];

function onFrame(blob) {
  nextFrame = { blob, status: pendingStatus };
  pendingStatus = null;
  if (!drawing) drawFrames();
}

async function drawFrames() {
  drawing = true;
  while (nextFrame) {
    const { blob, status } = nextFrame;
    nextFrame = null;
    try {
      const bitmap = await createImageBitmap(blob); // JPEG, WebP or PNG: the browser sniffs which
      if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
        canvas.width = bitmap.width;
        canvas.height = bitmap.height;
        $("stage").style.aspectRatio = `${bitmap.width} / ${bitmap.height}`;
      }
      ctx.drawImage(bitmap, 0, 0);
      bitmap.close();
      frameTimes.push(performance.now());
    } catch (error) {
      console.warn("undecodable frame", error);
    }
    if (status) applyStatus(status);
  }
  drawing = false;
}

function displayedFps() {
  const now = performance.now();
  while (frameTimes.length && now - frameTimes[0] > 1000) frameTimes.shift();
  return frameTimes.length;
}
setInterval(() => setText($("fps"), displayedFps()), 250);

// --- status -----------------------------------------------------------------------------------------

function applyStatus(status) {
  // A frame's status is applied once the frame is decoded: a newer status may be shown already.
  if (state.status && status.seq <= state.status.seq) return;
  state.status = status;
  if (status.role && status.role !== state.role) setRole(status.role);
  render();
}

function render() {
  const s = state.status;
  const connected = state.ws && state.ws.readyState === WebSocket.OPEN;
  const running = s && s.phase === "running";
  setText($("trial"), running ? (s.trial ?? "?") : "–");
  setText($("step"), running ? s.step : "–");
  setText($("sps"), s ? s.steps_per_second.toFixed(0) : "0");
  setText($("target-sps"), s ? formatNumber(s.target_steps_per_second) : "–");
  setText($("asked-steps"), running && s.step ? `${s.asked_steps} (${Math.round(100 * s.ask_rate)}%)` : "–");
  setText($("unanswered"), running ? unansweredText(s) : "–");
  setText($("teacher-steps"), running && s.step ? `${s.teacher_steps} (${Math.round((100 * s.teacher_steps) / s.step)}%)` : "–");
  setText($("audience"), s ? s.observers : "–");
  setText($("return"), running ? formatNumber(s.return) : "–");
  setText($("agent-iteration"), running && s.model_iteration !== null ? `iteration ${s.model_iteration}` : "–");

  const who = $("last-actor");
  const last = running ? s.last_actor : null;
  setClass(who, `last-actor ${last || "none"}`);
  setText(who, last === "teacher" ? "Teacher" : last === "agent" ? "Agent" : "–");

  const orchestrator = s ? s.orchestrator : "–";
  setText($("orch-state"), orchestrator);
  setClass($("orch-dot"), `dot ${orchestrator === "connected" ? "ok" : orchestrator === "unreachable" ? "bad" : ""}`);

  const paused = !!(s && s.paused);
  const pause = $("pause");
  pause.classList.toggle("on", paused);
  setText(pause.firstChild, paused ? "Resume " : "Pause ");

  // The overlay says why the picture is not moving: no link, no teacher yet, no trial, or paused.
  let title = "", detail = "";
  if (!connected) { title = "Connection lost"; detail = "Reconnecting to the web server…"; }
  else if (s && s.phase === "waiting_for_teacher") {
    title = "Waiting for the teacher";
    detail = "The next trial starts as soon as a teacher is here: take the teacher's seat to teach it.";
  } else if ((!s || !running) && state.training && state.training.run_finished) {
    title = "Run finished";
    detail = runSummary();
  } else if (!s || !running) {
    title = "Waiting for the next trial…";
    const done = state.history[state.history.length - 1];
    detail = done ? `Trial ${done.trial ?? "?"} ended after ${done.steps} steps; you took over ${done.teacher_steps} times.` : "The page joins the next trial as soon as the run starts it.";
    if (s && s.orchestrator !== "connected") detail = "The Cogment orchestrator is not reachable yet.";
  } else if (paused) { title = "Paused"; detail = state.role === "teacher" ? "Press P (or Resume) to go on." : "The teacher paused the trial."; }
  $("stage").classList.toggle("dim", !!title);
  setText($("overlay-title"), title);
  setText($("overlay-detail"), detail);
  renderHelpRequest(running && !title ? s.request : "none");

  $("claim").hidden = !(connected && state.role === "observer" && s && !s.teacher_present);
  renderActing();
}

// The agent's request for help: the frame's amber border and a banner while it waits for an answer;
// a quieter note once it timed out (the agent plays on); nothing once answered or over.
function renderHelpRequest(request) {
  const stage = $("stage");
  stage.classList.toggle("asking", request === "asking");
  stage.classList.toggle("timed-out", request === "timed_out");
  $("help-request").hidden = request !== "asking" && request !== "timed_out";
  const teaching = state.role === "teacher";
  const timeout = state.helpTimeout !== null ? `${formatNumber(state.helpTimeout)} s` : "a while";
  setText($("help-request-title"), request === "timed_out" ? "No answer: the agent plays on" : "The agent asks for help");
  setText($("help-request-detail"), request === "timed_out" ? `It still asks, unanswered for ${timeout}: take over, or Space to approve.`
    : teaching ? `Take over with a key, or Space to approve its action (it plays on by itself after ${timeout}).` : "Waiting for the teacher's answer.");
  $("approve").classList.toggle("wanted", request === "asking");
}

// Asked steps left unanswered, and (in parentheses) how many requests timed out.
function unansweredText(s) {
  return `${s.asked_steps - s.answered_steps} (${s.timeouts})`;
}

function approving() {
  return currentAction() === null && (state.approveKey || state.pointerApprove);
}

function renderActing() {
  const action = currentAction();
  const acting = $("acting");
  const control = state.keyMap.find((c) => c.action === action);
  const teaching = state.role === "teacher";
  acting.classList.toggle("taking-over", teaching && (action !== null || approving()));
  setText(acting, !teaching ? "Read-only: watching the teacher"
    : action !== null ? `You take over: ${control ? control.label : action}`
    : approving() ? "You approve the agent's action (Space)" : "You approve the agent (no key held)");
  for (const button of $("action-buttons").children) {
    button.classList.toggle("active", teaching && Number(button.dataset.action) === action);
  }
  $("approve").classList.toggle("active", teaching && approving());
}

function renderHistory() {
  const body = $("history");
  body.replaceChildren();
  if (!state.history.length) {
    body.innerHTML = '<tr class="empty"><td colspan="8">None yet</td></tr>';
    return;
  }
  for (const trial of state.history.slice(-8).reverse()) {
    const row = document.createElement("tr");
    const tookOver = `${trial.teacher_steps} (${Math.round(100 * trial.intervention_rate)}%)`;
    const asked = `${trial.asked_steps} (${Math.round(100 * trial.ask_rate)}%)`;
    const success = trial.eval_success_rate !== null ? `${Math.round(100 * trial.eval_success_rate)}%` : "–";
    const cells = [trial.trial ?? "?", trial.steps, formatNumber(trial.return), tookOver, asked, unansweredText(trial), trial.teacher_seconds.toFixed(1), success];
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    body.append(row);
  }
}

function formatNumber(value) {
  if (value === null || value === undefined) return "–";
  return Number.isInteger(value) ? String(value) : value.toFixed(Math.abs(value) < 10 ? 2 : 1);
}

// --- teaching per trial: asked, took over, the teacher's seconds, the agent's success alone -------------

// One point per trial and per series: the finished trials, then the current one as it goes.
function teachingPoints() {
  const points = state.history.map((trial) => ({
    trial: trial.trial, asked: trial.ask_rate, tookOver: trial.intervention_rate, seconds: trial.teacher_seconds,
    success: trial.eval_success_rate, current: false,
  }));
  const s = state.status;
  const ended = s && state.history.some((trial) => trial.trial_id === s.trial_id); // its status may come after its summary
  if (s && s.phase === "running" && s.step && !ended) {
    const t = state.training && state.training.latest_evaluation;
    points.push({ trial: s.trial, asked: s.ask_rate, tookOver: s.teacher_steps / s.step, seconds: s.teacher_seconds,
      success: t ? t.success_rate : null, current: true });
  }
  return points.slice(-30);
}

// A canvas sized to its displayed size at the screen's pixel ratio, cleared, drawn in CSS pixels.
function clearedCanvas(canvas) {
  const scale = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width, height = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(width * scale)) { canvas.width = Math.round(width * scale); canvas.height = Math.round(height * scale); }
  const g = canvas.getContext("2d");
  g.setTransform(scale, 0, 0, scale, 0, 0);
  g.clearRect(0, 0, width, height);
  return { g, width, height };
}

let drawnChart = "";

function drawTeachingChart() {
  const points = teachingPoints();
  const key = JSON.stringify(points);
  if (key === drawnChart) return; // nothing new: no repaint
  drawnChart = key;
  const { g, width, height } = clearedCanvas($("teaching-chart"));
  g.font = "11px system-ui, sans-serif";
  const left = 34, right = width - 34, top = 8, bottom = height - 18;
  const maxSeconds = Math.max(10, ...points.map((p) => p.seconds));
  const x = (i) => (points.length < 2 ? (left + right) / 2 : left + ((right - left) * i) / (points.length - 1));
  const y = (share) => bottom - (bottom - top) * share;
  // Axes: shares on the left (0-100%), the teacher's seconds on the right.
  g.strokeStyle = "#e3e6eb";
  g.fillStyle = "#6b7280";
  for (const share of [0, 0.5, 1]) {
    g.beginPath(); g.moveTo(left, y(share)); g.lineTo(right, y(share)); g.stroke();
    g.textAlign = "right"; g.fillText(`${100 * share}%`, left - 4, y(share) + 4);
    g.textAlign = "left"; g.fillText(`${Math.round(maxSeconds * share)} s`, right + 4, y(share) + 4);
  }
  if (!points.length) {
    g.textAlign = "center";
    g.fillText("no trial yet", (left + right) / 2, (top + bottom) / 2);
    return;
  }
  g.textAlign = "center";
  points.forEach((p, i) => g.fillText(p.current ? `${p.trial ?? "?"}…` : String(p.trial ?? "?"), x(i), height - 4));
  // The teacher's seconds: bars behind the lines; the current trial's bar is lighter.
  const bar = Math.min(18, (right - left) / Math.max(points.length, 1) / 2);
  points.forEach((p, i) => {
    g.fillStyle = p.current ? "#6b728044" : "#6b728088";
    const barTop = bottom - (bottom - top) * (p.seconds / maxSeconds);
    g.fillRect(x(i) - bar / 2, barTop, bar, bottom - barTop);
  });
  const series = [["asked", "#f59e0b", [5, 3]], ["tookOver", "#ea580c", []], ["success", "#16a34a", []]];
  for (const [name, colour, dash] of series) {
    g.strokeStyle = colour;
    g.fillStyle = colour;
    g.lineWidth = 2;
    g.setLineDash(dash);
    g.beginPath();
    let drawing = false;
    points.forEach((p, i) => {
      if (p[name] === null) { drawing = false; return; } // no evaluation yet: a gap
      if (drawing) g.lineTo(x(i), y(p[name])); else g.moveTo(x(i), y(p[name]));
      drawing = true;
    });
    g.stroke();
    g.setLineDash([]);
    points.forEach((p, i) => {
      if (p[name] === null) return;
      g.beginPath();
      g.arc(x(i), y(p[name]), 3.5, 0, 2 * Math.PI);
      if (p.current) { g.fillStyle = "#fff"; g.fill(); g.stroke(); g.fillStyle = colour; } else g.fill();
    });
  }
}
setInterval(drawTeachingChart, 500); // the current trial's point, twice a second

// --- training: the run's model iteration, its loss trend, the end of the run ------------------------

function setTraining(training) {
  state.training = training || null;
  const t = state.training;
  setText($("latest-iteration"), t ? t.iteration : "–");
  setText($("loss"), t && t.loss !== null ? t.loss.toFixed(4) : "–");
  setText($("training-note"), !t ? "waiting for the first model" : t.run_finished ? "the run has finished" : t.training_steps ? `${t.training_steps} training steps` : "");
  drawLossTrend(t ? t.loss_trend : []);
  drawTeachingChart();
  const summary = $("run-summary");
  summary.hidden = !(t && t.run_finished);
  setText(summary, summary.hidden ? "" : runSummary());
  render();
}

// The run's own totals when its last iteration carries them; otherwise what this page saw.
function runSummary() {
  const t = state.training;
  const percent = (part, whole) => (whole ? Math.round((100 * part) / whole) : 0);
  const trials = (count) => `${count} trial${count === 1 ? "" : "s"}`;
  const parts = [];
  if (t.trials != null && t.samples != null && t.demonstrations != null) { // != null: absent too
    parts.push(`${trials(t.trials)}, ${t.samples} steps; the teacher took over ${t.demonstrations} (${percent(t.demonstrations, t.samples)}%).`);
  } else {
    const steps = state.history.reduce((sum, trial) => sum + trial.steps, 0);
    const teacherSteps = state.history.reduce((sum, trial) => sum + trial.teacher_steps, 0);
    parts.push(`${trials(state.history.length)} on this page, ${steps} steps; you took over ${teacherSteps} (${percent(teacherSteps, steps)}%).`);
  }
  if (t.eval_success_rate !== null) parts.push(`Playing alone, the agent succeeds in ${Math.round(100 * t.eval_success_rate)}% of the evaluation episodes.`);
  parts.push(`Final model: iteration ${t.iteration}${t.loss !== null ? `, loss ${t.loss.toFixed(4)}` : ""}.`);
  return parts.join(" ");
}

// A sparkline of the loss per iteration, scaled to its own range (the trend matters, not the unit).
function drawLossTrend(points) {
  const { g, width, height } = clearedCanvas($("loss-trend"));
  if (!points || points.length < 2) {
    g.fillStyle = "#6b7280";
    g.font = "12px system-ui, sans-serif";
    g.fillText(points && points.length ? "one iteration so far" : "no loss yet", 4, height / 2);
    return;
  }
  const losses = points.map((p) => p[1]);
  const low = Math.min(...losses), high = Math.max(...losses);
  const x = (i) => 2 + ((width - 4) * i) / (points.length - 1);
  const y = (loss) => height - 4 - ((height - 8) * (loss - low)) / (high - low || 1);
  g.strokeStyle = "#2563eb";
  g.lineWidth = 1.5;
  g.beginPath();
  points.forEach((p, i) => (i ? g.lineTo(x(i), y(p[1])) : g.moveTo(x(i), y(p[1]))));
  g.stroke();
}

function setLink(link) {
  setText($("ws-state"), link);
  setClass($("ws-dot"), `dot ${link === "connected" ? "ok" : link === "reconnecting" ? "bad" : ""}`);
}

function setRole(role) {
  const wasTeacher = state.role === "teacher";
  state.role = role;
  const badge = $("role");
  badge.dataset.role = role;
  badge.className = `role role-${role}`;
  badge.textContent = role === "teacher" ? "You are the teacher" : "Observer · read-only";
  badge.title = role === "teacher" ? "Your keys and buttons act in the trial" : "Another tab is the teacher; this one only watches";
  document.title = role === "teacher" ? "Apprentice · Teacher" : "Apprentice · Observer";
  $("observer-note").hidden = role !== "observer";
  for (const button of document.querySelectorAll(".controls button")) button.disabled = role !== "teacher";
  if (role === "teacher" && !wasTeacher) state.paused = !!(state.status && state.status.paused);
  state.lastSent = "";
  render();
}

function setKeyMap(keyMap) {
  state.keyMap = keyMap;
  const legend = $("legend");
  legend.replaceChildren();
  const buttons = $("action-buttons");
  buttons.replaceChildren();
  for (const control of keyMap) {
    const row = document.createElement("tr");
    row.innerHTML = `<td><kbd></kbd></td><td></td>`;
    row.querySelector("kbd").textContent = keyLabel(control.key);
    row.lastChild.textContent = control.label;
    legend.append(row);

    const button = document.createElement("button");
    button.dataset.action = control.action;
    button.innerHTML = `<span></span><kbd></kbd>`;
    button.firstChild.textContent = control.label;
    button.lastChild.textContent = keyLabel(control.key);
    button.disabled = state.role !== "teacher";
    bindPointer(button, control.action);
    buttons.append(button);
  }
  const fixedRows = document.createElement("tbody");
  fixedRows.innerHTML = "<tr><td><kbd>Space</kbd></td><td>Approve the agent's action</td></tr><tr><td><kbd>P</kbd></td><td>Pause / resume</td></tr>";
  legend.append(...fixedRows.children);
  renderActing();
  sendInput(); // the keys held may mean another action now
}

function keyLabel(key) {
  return { ArrowLeft: "←", ArrowRight: "→", ArrowUp: "↑", ArrowDown: "↓", " ": "Space" }[key] || key;
}

// --- input: keyboard, on-screen buttons, gamepad ----------------------------------------------------------------

function currentAction() {
  if (state.pointerAction !== null) return state.pointerAction;
  for (const keys of [state.keysDown, state.gamepadKeys]) {
    for (let i = keys.length - 1; i >= 0; i--) {
      const control = state.keyMap.find((c) => c.key === keys[i]);
      if (control) return control.action;
    }
  }
  return null;
}

function sendInput(force = false) {
  if (state.role !== "teacher") return;
  const message = JSON.stringify({ t: "input", a: currentAction(), p: state.paused, ok: state.approveKey || state.pointerApprove });
  if (message === state.lastSent && !force) return;
  state.lastSent = message;
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(message);
  renderActing();
}
setInterval(() => sendInput(true), 500);

function togglePause() {
  if (state.role !== "teacher") return;
  state.paused = !(state.status && state.status.paused);
  sendInput();
}

window.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.key === "p" || event.key === "P") {
    event.preventDefault();
    if (!event.repeat) togglePause();
    return;
  }
  if (event.key === " ") {
    event.preventDefault(); // it would scroll the page, or press the focused button
    state.approveKey = true;
    sendInput();
    return;
  }
  if (state.keyMap.some((c) => c.key === event.key)) event.preventDefault(); // arrows would scroll the page
  if (event.repeat || state.keysDown.includes(event.key)) return;
  // Every key held is kept, mapped or not: a key held when the next trial (maybe of another
  // environment) starts acts as soon as that trial's key map arrives.
  state.keysDown.push(event.key);
  sendInput();
});

window.addEventListener("keyup", (event) => {
  if (event.key === " ") {
    event.preventDefault(); // a focused button would be clicked on the space bar's release
    state.approveKey = false;
    sendInput();
    return;
  }
  const index = state.keysDown.indexOf(event.key);
  if (index < 0) return;
  state.keysDown.splice(index, 1);
  sendInput();
});

// A key released while the window is not focused never sends keyup: release everything.
function releaseAll() {
  state.keysDown = [];
  state.gamepadKeys = []; // polling stops in a hidden tab: a held gamepad must not keep acting
  state.pointerAction = null;
  state.approveKey = state.pointerApprove = false;
  sendInput();
}
window.addEventListener("blur", releaseAll);
document.addEventListener("visibilitychange", () => { if (document.hidden) releaseAll(); });

function bindPointer(button, action) {
  bindHold(button, (held) => {
    if (held) state.pointerAction = action;
    else if (state.pointerAction === action) state.pointerAction = null;
  });
}

// A button held with a mouse or a finger: hold(true) on press, hold(false) on release, then the input is sent.
function bindHold(button, hold) {
  button.addEventListener("pointerdown", (event) => {
    if (button.disabled) return;
    button.setPointerCapture(event.pointerId);
    hold(true);
    sendInput();
  });
  const release = () => {
    hold(false);
    sendInput(); // unchanged input is not sent again
  };
  button.addEventListener("pointerup", release);
  button.addEventListener("pointercancel", release);
  button.addEventListener("lostpointercapture", release);
  button.addEventListener("contextmenu", (event) => event.preventDefault()); // long touch
}

// --- input: gamepad (the browser's Gamepad API is polled; it has no events for buttons) ---------------

const GAMEPAD_BUTTON_KEYS = { 12: "ArrowUp", 13: "ArrowDown", 14: "ArrowLeft", 15: "ArrowRight", 0: "1", 1: "2", 2: "3", 3: "4" };
const GAMEPAD_START = 9;
const STICK_DEAD_ZONE = 0.5;

function gamepadKeys(pad) {
  const keys = [];
  for (const [button, key] of Object.entries(GAMEPAD_BUTTON_KEYS)) if (pad.buttons[button] && pad.buttons[button].pressed) keys.push(key);
  const [horizontal = 0, vertical = 0] = pad.axes;
  if (horizontal < -STICK_DEAD_ZONE) keys.push("ArrowLeft");
  if (horizontal > STICK_DEAD_ZONE) keys.push("ArrowRight");
  if (vertical < -STICK_DEAD_ZONE) keys.push("ArrowUp");
  if (vertical > STICK_DEAD_ZONE) keys.push("ArrowDown");
  return keys;
}

// Polled once an animation frame, only while a gamepad is connected (the browser announces a pad
// when one of its buttons is first pressed): without one, the page does no work between frames.
let polling = false;

function pollGamepads() {
  const pads = navigator.getGamepads ? [...navigator.getGamepads()].filter(Boolean) : [];
  setText($("gamepad-state"), pads.length ? `Connected: ${pads[0].id}.` : "No gamepad connected (press a button on it).");
  const keys = pads.length ? gamepadKeys(pads[0]) : [];
  const start = !!(pads.length && pads[0].buttons[GAMEPAD_START] && pads[0].buttons[GAMEPAD_START].pressed);
  if (start && !state.gamepadPause) togglePause(); // on press, not while held
  state.gamepadPause = start;
  if (keys.join() !== state.gamepadKeys.join()) {
    state.gamepadKeys = keys;
    sendInput();
  }
  polling = pads.length > 0;
  if (polling) requestAnimationFrame(pollGamepads);
}
window.addEventListener("gamepadconnected", () => { if (!polling) pollGamepads(); });
window.addEventListener("gamepaddisconnected", () => { if (!polling) pollGamepads(); });

bindHold($("approve"), (held) => { state.pointerApprove = held; }); // approves like the space bar
$("pause").addEventListener("click", togglePause);
$("claim").addEventListener("click", () => send({ t: "claim" }));

connect();
render();
