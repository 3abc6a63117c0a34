// Live pages: /events streams the registry's version (server-sent events); when it differs from the
// version this page was rendered at, the page is fetched again and each [data-live] part that changed
// is replaced. A part holding the field someone is typing in is left alone until the next change.
// The fetch says it refreshes: it must not take the message an action left for the page the browser
// is about to load (the action's own change of the registry wakes this script just before).
// Without this script every page still works: it is only fresher.
(function () {
  "use strict";
  var body = document.body;
  var indicator = document.getElementById("live");
  var fetching = false, again = false;

  function typingIn(element) {
    var active = document.activeElement;
    return active && element.contains(active) && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName);
  }

  function refresh() {
    if (fetching) { again = true; return; }
    fetching = true;
    fetch(location.href, {credentials: "same-origin", cache: "no-store", headers: {"X-Live-Refresh": "1"}})
      .then(function (answer) { return answer.ok ? answer.text() : Promise.reject(answer.status); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (part) {
          var replacement = fresh.getElementById(part.id);
          if (replacement && replacement.innerHTML !== part.innerHTML && !typingIn(part)) {
            part.innerHTML = replacement.innerHTML;
          }
        });
        body.dataset.version = fresh.body.dataset.version;
        body.dataset.refreshed = String(Number(body.dataset.refreshed || 0) + 1);
      })
      .catch(function () { /* the next event tries again */ })
      .then(function () {
        fetching = false;
        if (again) { again = false; refresh(); }
      });
  }

  if (!window.EventSource) return;
  var source = new EventSource("/events");
  source.onopen = function () { indicator.className = "live on"; indicator.title = "updates as the registry changes"; };
  source.onerror = function () { indicator.className = "live off"; indicator.title = "reconnecting"; };
  source.onmessage = function (event) {
    if (event.data !== body.dataset.version) refresh();
  };
})();
