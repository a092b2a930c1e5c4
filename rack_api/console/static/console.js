// The build page's live log, read over the API's log websocket (the one `convox builds logs` uses).
// Log text only ever becomes text nodes (never HTML); ANSI SGR colours become classes, other escape
// sequences and control characters are dropped. Follows the end of the log until the reader scrolls up.
(function () {
  "use strict";
  var log = document.getElementById("log");
  if (!log) return;
  var follow = document.getElementById("follow");
  var jump = document.getElementById("first-error");
  var state = document.getElementById("log-state");
  var meta = document.getElementById("meta");
  var ERROR_LINE = /^\s*(error|fatal)\b|\berror:/i;
  var ESCAPES = /\x1b\[([0-9;:?<=>]*)[ -\/]*([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]?/g;
  var CONTROLS = /[\x00-\x08\x0b-\x1f\x7f]/g;
  var LEVELS = [0, 95, 135, 175, 215, 255];
  var lineStart = plain();  // the style in force where the unfinished line began
  var partial = "";         // the unfinished line's raw text
  var current = null;       // its element
  var firstError = null;
  var attempts = 0;
  var ended = false;
  var userScroll = false;

  function plain() { return {fg: null, bg: null, bold: false, dim: false, italic: false, underline: false}; }
  function copy(s) { return {fg: s.fg, bg: s.bg, bold: s.bold, dim: s.dim, italic: s.italic, underline: s.underline}; }

  function colour(n) {
    if (n < 16) return {cls: n};
    if (n < 232) { var i = n - 16; return {rgb: [LEVELS[Math.floor(i / 36)], LEVELS[Math.floor(i / 6) % 6], LEVELS[i % 6]]}; }
    var g = 8 + 10 * (n - 232); return {rgb: [g, g, g]};
  }

  function applySgr(s, params) {
    var p = params === "" ? [0] : params.split(/[;:]/).map(function (x) { return x === "" ? 0 : parseInt(x, 10); });
    for (var i = 0; i < p.length; i++) {
      var n = p[i];
      if (n === 0) { var r = plain(); for (var k in r) s[k] = r[k]; }
      else if (n === 1) s.bold = true;
      else if (n === 2) s.dim = true;
      else if (n === 3) s.italic = true;
      else if (n === 4) s.underline = true;
      else if (n === 22) { s.bold = false; s.dim = false; }
      else if (n === 23) s.italic = false;
      else if (n === 24) s.underline = false;
      else if (n >= 30 && n <= 37) s.fg = {cls: n - 30};
      else if (n === 39) s.fg = null;
      else if (n >= 40 && n <= 47) s.bg = {cls: n - 40};
      else if (n === 49) s.bg = null;
      else if (n >= 90 && n <= 97) s.fg = {cls: n - 90 + 8};
      else if (n >= 100 && n <= 107) s.bg = {cls: n - 100 + 8};
      else if (n === 38 || n === 48) {
        var c = null;
        if (p[i + 1] === 5 && i + 2 < p.length) { c = colour(p[i + 2] & 255); i += 2; }
        else if (p[i + 1] === 2 && i + 4 < p.length) { c = {rgb: [p[i + 2] & 255, p[i + 3] & 255, p[i + 4] & 255]}; i += 4; }
        if (n === 38) s.fg = c; else s.bg = c;
      }
    }
  }

  function run(parent, text, s) {
    text = text.replace(CONTROLS, "");
    if (!text) return;
    if (!s.fg && !s.bg && !s.bold && !s.dim && !s.italic && !s.underline) {
      parent.appendChild(document.createTextNode(text));
      return;
    }
    var span = document.createElement("span");
    var classes = [];
    if (s.bold) classes.push("ansi-bold");
    if (s.dim) classes.push("ansi-dim");
    if (s.italic) classes.push("ansi-italic");
    if (s.underline) classes.push("ansi-underline");
    if (s.fg && s.fg.cls !== undefined) classes.push("ansi-fg-" + s.fg.cls);
    if (s.bg && s.bg.cls !== undefined) classes.push("ansi-bg-" + s.bg.cls);
    if (s.fg && s.fg.rgb) span.style.color = "rgb(" + s.fg.rgb.join(",") + ")";
    if (s.bg && s.bg.rgb) span.style.backgroundColor = "rgb(" + s.bg.rgb.join(",") + ")";
    span.className = classes.join(" ");
    span.textContent = text;
    parent.appendChild(span);
  }

  // Render one line's raw text into el, starting from style s (changed in place); a line still being
  // written may end in part of an escape sequence, which waits for the rest.
  function render(el, raw, s, finished) {
    while (el.firstChild) el.removeChild(el.firstChild);
    raw = raw.replace(/\r+$/, "");
    if (!finished) { var esc = raw.lastIndexOf("\x1b"); if (esc >= 0 && !/[@-~]/.test(raw.slice(esc + 2))) raw = raw.slice(0, esc); }
    var shownFrom = raw.lastIndexOf("\r") + 1;  // a carriage return rewrites the line, as on a terminal
    var last = 0, m;
    ESCAPES.lastIndex = 0;
    while ((m = ESCAPES.exec(raw)) !== null) {
      if (m.index >= shownFrom) run(el, raw.slice(Math.max(last, shownFrom), m.index), s);
      if (m[2] === "m") applySgr(s, m[1]);
      last = ESCAPES.lastIndex;
      if (m[0] === "") ESCAPES.lastIndex++;
    }
    run(el, raw.slice(Math.max(last, shownFrom)), s);
  }

  function append(text) {
    var parts = (partial + text).split("\n");
    partial = parts.pop();
    for (var i = 0; i < parts.length; i++) {
      if (!current) current = newLine();
      var s = copy(lineStart);
      render(current, parts[i], s, true);
      current.appendChild(document.createTextNode("\n"));
      if (!firstError && ERROR_LINE.test(current.textContent)) {
        firstError = current;
        current.classList.add("error-line");
        jump.disabled = false;
      } else if (ERROR_LINE.test(current.textContent)) current.classList.add("error-line");
      lineStart = s;
      current = null;
    }
    if (partial) { if (!current) current = newLine(); render(current, partial, copy(lineStart), false); }
    if (follow.checked) log.scrollTop = log.scrollHeight;
  }

  function newLine() { var el = document.createElement("span"); el.className = "line"; log.appendChild(el); return el; }

  function reset() {
    while (log.firstChild) log.removeChild(log.firstChild);
    lineStart = plain(); partial = ""; current = null; firstError = null; jump.disabled = true;
  }

  function refreshMeta() {
    if (!meta) return;
    fetch(meta.getAttribute("data-src"), {credentials: "same-origin"}).then(function (r) {
      return r.ok ? r.text() : null;
    }).then(function (html) { if (html !== null) meta.innerHTML = html; });  // server-rendered, escaped
  }

  function connect() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var ws = new WebSocket(scheme + location.host + log.getAttribute("data-ws"));
    ws.binaryType = "arraybuffer";
    ws.onopen = function () { attempts = 0; state.textContent = "live"; };
    ws.onmessage = function (event) {
      if (typeof event.data === "string") { append(event.data); return; }
      ended = true;  // an empty binary frame: the log is complete
      if (partial) append("\n");
      state.textContent = "log complete";
      log.setAttribute("data-complete", "true");
      ws.close();
      refreshMeta();
    };
    ws.onclose = function () {
      if (ended) return;
      if (attempts >= 5) { state.textContent = "disconnected: reload the page to try again"; return; }
      attempts++;
      state.textContent = "reconnecting…";
      setTimeout(function () { reset(); connect(); }, 500 * attempts);
    };
  }

  ["wheel", "touchmove", "keydown", "mousedown"].forEach(function (name) {
    log.addEventListener(name, function () { userScroll = true; }, {passive: true});
  });
  log.addEventListener("scroll", function () {
    if (!userScroll) return;
    userScroll = false;
    follow.checked = log.scrollHeight - log.scrollTop - log.clientHeight < 8;
  });
  follow.addEventListener("change", function () { if (follow.checked) log.scrollTop = log.scrollHeight; });
  jump.addEventListener("click", function () {
    if (!firstError) return;
    follow.checked = false;
    firstError.classList.add("target");
    log.scrollTop = firstError.offsetTop - log.clientHeight / 3;
    log.focus();
  });
  connect();
})();
