// aflow dashboard: keeps a page live and sends actions. No framework, no build step.
// A run's page follows the run's server-sent events and, at most every REFRESH_MS,
// reloads its live part (rendered by the server); the runs list reloads every LIST_MS.
(function () {
  "use strict";
  var REFRESH_MS = 300, BIG_REFRESH_MS = 2000, LIST_MS = 2000;

  // A run id as one segment of a path, as the server writes it (aflow.web._app.segment):
  // quoted, with a "~" before it if it starts with one or is all dots.
  function segment(text) {
    var quoted = encodeURIComponent(text).replace(/[!'()*]/g, function (c) {
      return "%" + c.charCodeAt(0).toString(16).toUpperCase();
    });
    return (text.charAt(0) === "~" || /^\.*$/.test(text)) ? "~" + quoted : quoted;
  }

  function flash(text, good) {
    var el = document.getElementById("flash");
    if (!el) return;
    el.textContent = text;
    el.className = good ? "good" : "bad";
  }

  function replaceLive(live, url) {
    return fetch(url, { headers: { Accept: "text/html" } }).then(function (answer) {
      if (!answer.ok) throw new Error(answer.status + " " + answer.statusText);
      return answer.text();
    }).then(function (html) {
      live.innerHTML = html;
      live.dispatchEvent(new CustomEvent("aflow:refreshed", { bubbles: true }));
    });
  }

  function followRun(live) {
    var url = live.getAttribute("data-refresh");
    var every = live.getAttribute("data-big") === "true" ? BIG_REFRESH_MS : REFRESH_MS;
    var timer = null, last = 0, source = null, ended = false, busy = false, again = false;
    // One reload at a time, the next at least `every` ms after the last one ended: a
    // slow answer never overlaps the next, nor lands after it (a stale page).
    function refresh() {
      timer = null;
      busy = true;
      replaceLive(live, url).catch(function (err) {
        flash("refresh failed: " + err.message, false);
      }).finally(function () {
        busy = false;
        last = Date.now();
        if (again) { again = false; soon(); }
      });
    }
    function soon() {
      if (busy) { again = true; return; }
      if (timer !== null) return;
      timer = setTimeout(refresh, Math.max(0, every - (Date.now() - last)));
    }
    if (live.getAttribute("data-finished") === "true" || !window.EventSource) return;
    source = new EventSource(live.getAttribute("data-events"));
    source.onmessage = soon;
    ["run_started", "run_succeeded", "run_failed", "run_cancelled", "run_reverted",
     "run_suspended", "run_released", "run_waiting", "task_started", "task_succeeded",
     "task_failed", "task_retried", "task_cancelled", "task_skipped", "revert_started",
     "revert_succeeded", "revert_failed", "revert_retried"].forEach(function (name) {
      source.addEventListener(name, soon);
    });
    source.addEventListener("end", function () {
      ended = true;
      source.close();
      if (timer !== null) { clearTimeout(timer); timer = null; }
      if (busy) again = true; else refresh();
    });
    source.onerror = function () {
      if (ended) return;
      // the stream ended or the server went away: EventSource reconnects by itself
      soon();
    };
  }

  function followList(live) {
    var url = live.getAttribute("data-live-list");
    setInterval(function () {
      if (document.hidden) return;
      replaceLive(live, url).catch(function () {});
    }, LIST_MS);
  }

  function act(button) {
    var question = button.getAttribute("data-confirm");
    if (question && !window.confirm(question)) return;
    var body = null;
    var step = button.getAttribute("data-step");
    if (step !== null) body = JSON.stringify({ step: step });
    button.disabled = true;
    fetch(button.getAttribute("data-url"), {
      method: "POST",
      headers: { "X-Aflow-Action": "1", "Content-Type": "application/json", Accept: "application/json" },
      body: body,
    }).then(function (answer) {
      return answer.json().catch(function () { return {}; }).then(function (data) {
        if (!answer.ok) throw new Error(data.detail || answer.status + " " + answer.statusText);
        return data;
      });
    }).then(function (data) {
      var action = button.getAttribute("data-action");
      var base = document.body.getAttribute("data-base") || "";
      if ((action === "retry" || action === "fork") && data.id) {
        window.location.href = base + "/runs/" + segment(data.id);
        return;
      }
      if (action === "cancel-many") {
        flash("cancelled " + data.cancelled.length + " run(s)", true);
      } else {
        flash(action + ": run " + (data.id || "") + " is " + (data.status || "done"), true);
      }
      var live = document.getElementById("live");
      var url = live && (live.getAttribute("data-refresh") || live.getAttribute("data-live-list"));
      if (url) replaceLive(live, url);
    }).catch(function (err) {
      flash(err.message, false);
    }).finally(function () {
      button.disabled = false;
    });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-action]");
    if (button) {
      event.preventDefault();
      act(button);
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    var live = document.getElementById("live");
    if (!live) return;
    if (live.hasAttribute("data-events")) followRun(live);
    else if (live.hasAttribute("data-live-list")) followList(live);
  });
})();
