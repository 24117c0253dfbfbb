// The web UI's live parts, on top of pages that read fine without JavaScript:
// [data-refresh] regions reload from their URL every few seconds (checked boxes kept),
// pre[data-follow] streams a running attempt's log, and the schedule form previews the
// next runs of the cron as it is typed.
(function () {
  "use strict";

  function refresh(region) {
    var every = parseInt(region.dataset.interval || "2000", 10);
    function tick() {
      if (!document.body.contains(region) || region.dataset.refresh === "") return;
      fetch(region.dataset.refresh, { credentials: "same-origin", headers: { "X-Fragment": "1" } })
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (html) {
          if (html === null) return;
          var checked = Array.prototype.map.call(
            region.querySelectorAll("input[type=checkbox]:checked"), function (box) { return box.value; });
          region.innerHTML = html;
          checked.forEach(function (value) {
            var box = region.querySelector('input[type=checkbox][value="' + value + '"]');
            if (box) box.checked = true;
          });
          var stop = region.querySelector("[data-final]");
          if (stop) { region.dataset.refresh = ""; startFollows(); return; }
          startFollows();
        })
        .catch(function () {})
        .then(function () { if (region.dataset.refresh) setTimeout(tick, every); });
    }
    setTimeout(tick, every);
  }

  function follow(pre) {
    if (pre.dataset.following) return;
    pre.dataset.following = "1";
    var decoder = new TextDecoder();
    fetch(pre.dataset.follow, { credentials: "same-origin" }).then(function (response) {
      if (!response.ok || !response.body) return;
      pre.textContent = "";
      var reader = response.body.getReader();
      function read() {
        return reader.read().then(function (part) {
          if (part.done) { pre.dataset.ended = "1"; return; }
          pre.textContent += decoder.decode(part.value, { stream: true });
          pre.scrollTop = pre.scrollHeight;
          return read();
        });
      }
      return read();
    }).catch(function () { delete pre.dataset.following; });
  }

  function startFollows() {
    // A log waiting for its attempt to start begins to follow once the live region says so.
    var started = document.querySelector("[data-attempt-started]");
    document.querySelectorAll("pre[data-follow]").forEach(function (pre) {
      if (pre.dataset.waitForAttempt && !started) return;
      follow(pre);
    });
  }

  function preview(form) {
    var cron = form.querySelector("[name=cron]"), zone = form.querySelector("[name=timezone]");
    var target = document.getElementById("cron-preview");
    if (!cron || !target) return;
    var timer = null;
    function update() {
      var query = "?cron=" + encodeURIComponent(cron.value) + "&timezone=" + encodeURIComponent(zone.value);
      fetch(target.dataset.url + query, { credentials: "same-origin" })
        .then(function (response) { return response.text(); })
        .then(function (html) { target.innerHTML = html; });
    }
    [cron, zone].forEach(function (input) {
      input.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(update, 250); });
    });
  }

  function selectAll(box) {
    box.addEventListener("change", function () {
      document.querySelectorAll("input[name=job]").forEach(function (other) { other.checked = box.checked; });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(refresh);
    startFollows();
    document.querySelectorAll("form[data-cron-form]").forEach(preview);
    document.querySelectorAll("input[data-select-all]").forEach(selectAll);
  });
})();
