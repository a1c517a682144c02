// Ferry dashboard: the little that needs a script. Pages work without it, except following
// logs live.
(function () {
  "use strict";

  // Actions that change something ask first.
  document.addEventListener("submit", function (ev) {
    var msg = ev.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) ev.preventDefault();
  });

  function ready(fn) {
    if (document.readyState !== "loading") fn(); else document.addEventListener("DOMContentLoaded", fn);
  }

  ready(function () {
    var box = document.getElementById("log-lines");
    if (!box) return;
    var filter = document.getElementById("log-filter");
    var follow = document.getElementById("log-follow");
    var status = document.getElementById("log-status");
    var download = document.getElementById("log-download");

    function matches(el) {
      var q = filter.value.toLowerCase();
      return !q || el.textContent.toLowerCase().indexOf(q) !== -1;
    }
    function applyFilter() {
      var lines = box.querySelectorAll(".line");
      for (var i = 0; i < lines.length; i++) lines[i].classList.toggle("hidden", !matches(lines[i]));
      var base = download.getAttribute("data-base");
      download.href = filter.value ? base + "?q=" + encodeURIComponent(filter.value) : base;
    }
    function scroll() { if (follow.checked) box.scrollTop = box.scrollHeight; }
    filter.addEventListener("input", applyFilter);
    applyFilter();
    scroll();

    if (!window.EventSource) { status.textContent = "live updates need a newer browser"; return; }
    var src = new EventSource(box.getAttribute("data-stream"));
    src.addEventListener("open", function () { status.textContent = "following"; });
    src.addEventListener("log", function (ev) {
      var batch = JSON.parse(ev.data);
      for (var i = 0; i < batch.length; i++) {
        var span = document.createElement("span");
        span.className = "line fd" + batch[i].fd;
        span.setAttribute("data-id", batch[i].id);
        span.textContent = batch[i].text;
        if (!matches(span)) span.classList.add("hidden");
        box.appendChild(span);
      }
      scroll();
    });
    src.addEventListener("done", function (ev) {
      status.textContent = "app " + ev.data + "; no more logs";
      var st = document.getElementById("log-state");
      if (st) { st.textContent = ev.data; st.className = "state " + ev.data; }
      src.close();
    });
    src.addEventListener("failed", function (ev) { status.textContent = "stopped: " + ev.data; src.close(); });
    src.addEventListener("error", function () { if (src.readyState !== 2) status.textContent = "reconnecting…"; });
  });
})();
