// VR3 AI dashboard: progressive enhancements only. Every page works without this file.
"use strict";

(function () {
  document.documentElement.classList.add("js");
  function $all(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }

  // Local time for <time data-local> (the server renders UTC).
  function localTimes(root) {
    $all("time[data-local]", root).forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (!isNaN(d)) { el.textContent = d.toLocaleString(); el.title = el.getAttribute("datetime"); }
    });
  }

  // Confirmation for destructive actions (forms or submit buttons with data-confirm).
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    var btn = ev.submitter;
    var msg = (btn && btn.getAttribute("data-confirm")) || form.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) { ev.preventDefault(); return; }
    var busy = form.getAttribute("data-busy");
    if (busy) {
      $all("button[type=submit]", form).forEach(function (b) { b.disabled = true; b.textContent = busy; });
    }
  });

  // Copy buttons for the Asterisk snippets.
  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest ? ev.target.closest("[data-copy]") : null;
    if (!btn) return;
    var target = document.getElementById(btn.getAttribute("data-copy"));
    if (!target) return;
    var text = target.textContent;
    function done(ok) {
      var old = btn.getAttribute("data-label") || btn.textContent;
      btn.setAttribute("data-label", old);
      btn.textContent = ok ? "Copied" : "Select and copy";
      setTimeout(function () { btn.textContent = old; }, 1600);
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () { done(true); }, function () { done(fallback(target)); });
    } else {
      done(fallback(target));
    }
  });
  function fallback(el) {
    var range = document.createRange();
    range.selectNodeContents(el);
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    try { return document.execCommand("copy"); } catch (e) { return false; }
  }

  // Live ARI state: the configuration page and each row of the list.
  function renderState(root, data) {
    var ari = data.ari || {};
    var label = root.querySelector("[data-role=state-label]");
    if (label) { label.textContent = ari.label; label.className = "badge tone-" + ari.tone; }
    var err = root.querySelector("[data-role=state-error]");
    if (err) { err.textContent = ari.last_error || ""; err.classList.toggle("hidden", !ari.last_error); }
    var since = root.querySelector("[data-role=state-since]");
    if (since && ari.since) {
      since.innerHTML = "";
      var t = document.createElement("time");
      t.setAttribute("datetime", ari.since); t.setAttribute("data-local", "");
      since.appendChild(t); localTimes(since);
    }
    var calls = root.querySelector("[data-role=active-calls]");
    if (calls) calls.textContent = String(data.active_calls || 0);
    var list = root.querySelector("[data-role=events]");
    if (list && data.recent_events) {
      list.innerHTML = "";
      if (!data.recent_events.length) {
        var li0 = document.createElement("li"); li0.className = "muted"; li0.textContent = "None since the connection started.";
        list.appendChild(li0);
      }
      data.recent_events.forEach(function (e) {
        var li = document.createElement("li");
        li.className = "event level-" + e.level;
        var lvl = document.createElement("span"); lvl.className = "event-level"; lvl.textContent = e.level;
        li.appendChild(lvl);
        li.appendChild(document.createTextNode(" " + e.message + " "));
        var when = document.createElement("time"); when.setAttribute("datetime", e.at); when.setAttribute("data-local", "");
        when.className = "muted small"; li.appendChild(when);
        list.appendChild(li);
      });
      localTimes(list);
    }
  }
  function pollStatus(el) {
    var url = el.getAttribute("data-status-url");
    function tick() {
      if (document.hidden) { setTimeout(tick, 3000); return; }
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
        .then(function (data) { renderState(el, data); })
        .catch(function () { /* keep the last known state */ })
        .then(function () { setTimeout(tick, 3000); });
    }
    setTimeout(tick, 3000);
  }

  // A run that is still going: reload when something changed, stop once it is final.
  function pollRun(el) {
    var url = el.getAttribute("data-run-status-url");
    var last = [el.getAttribute("data-run-status"), el.getAttribute("data-run-lines"), el.getAttribute("data-run-events")].join("|");
    function tick() {
      fetch(url, { credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (d) {
          var now = [d.status, d.transcript_lines, d.events].join("|");
          if (now !== last) { window.location.reload(); return; }
          setTimeout(tick, 1500);
        })
        .catch(function () { setTimeout(tick, 3000); });
    }
    setTimeout(tick, 1500);
  }

  // Workflow editor: tabs and "another row".
  function tabs() {
    var bar = document.querySelector("[data-tabs]");
    if (!bar) return;
    function show(name) {
      $all("[data-tab]", bar).forEach(function (b) { b.setAttribute("aria-selected", String(b.getAttribute("data-tab") === name)); });
      $all("[data-panel]").forEach(function (p) {
        if (p.getAttribute("data-panel") === name) p.removeAttribute("data-hidden"); else p.setAttribute("data-hidden", "");
      });
    }
    bar.addEventListener("click", function (ev) {
      var b = ev.target.closest("[data-tab]");
      if (b) show(b.getAttribute("data-tab"));
    });
  }
  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest ? ev.target.closest("[data-add-row]") : null;
    if (!btn) return;
    var kind = btn.getAttribute("data-add-row");
    var container = document.querySelector("[data-rows=" + kind + "]");
    var template = container && container.querySelector("[data-template=" + kind + "]");
    if (!template) return;
    var max = -1;
    $all("[name^=" + kind + "-]", container).forEach(function (inp) {
      var m = inp.name.match(/^[a-z]+-(\d+)-/);
      if (m) max = Math.max(max, parseInt(m[1], 10));
    });
    var clone = template.cloneNode(true);
    $all("[name]", clone).forEach(function (inp) {
      inp.name = inp.name.replace(/^([a-z]+)-\d+-/, "$1-" + (max + 1) + "-");
      if (inp.tagName === "SELECT") return;
      if (inp.type !== "hidden") inp.value = "";
    });
    container.appendChild(clone);
    var first = clone.querySelector("input:not([type=hidden])");
    if (first) first.focus();
  });

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    $all("[data-status-url]").forEach(pollStatus);
    $all("[data-run-status-url]").forEach(pollRun);
    tabs();
  });
})();
