// bridge console: the events page's live tail. The only script; every page works without it.
(function () {
  "use strict";
  var button = document.getElementById("tail");
  var rows = document.getElementById("event-rows");
  var status = document.getElementById("tail-status");
  if (!button || !rows || !status) {
    return;
  }
  var timer = null;

  function stop(message) {
    if (timer !== null) {
      clearInterval(timer);
      timer = null;
    }
    button.setAttribute("aria-pressed", "false");
    status.textContent = message;
  }

  function poll() {
    var url = button.getAttribute("data-src") + "&after=" + encodeURIComponent(rows.getAttribute("data-after"));
    fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (response.status === 401) {
          stop("Live tail stopped: your session ended; sign in again.");
          return null;
        }
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.text();
      })
      .then(function (html) {
        if (html === null) {
          return;
        }
        var template = document.createElement("template");
        template.innerHTML = html;
        var fresh = template.content.querySelectorAll("tr[data-id]");
        if (fresh.length === 0) {
          return;
        }
        var empty = rows.querySelector("tr.empty");
        if (empty) {
          empty.remove();
        }
        rows.setAttribute("data-after", fresh[0].getAttribute("data-id"));
        rows.insertBefore(template.content, rows.firstChild);
        status.textContent = fresh.length + (fresh.length === 1 ? " new event" : " new events");
      })
      .catch(function () {
        status.textContent = "Live tail: the bridge did not answer; trying again.";
      });
  }

  button.addEventListener("click", function () {
    if (timer !== null) {
      stop("Live tail off.");
      return;
    }
    button.setAttribute("aria-pressed", "true");
    status.textContent = "Live tail on: new events appear at the top.";
    timer = setInterval(poll, 2000);
    poll();
  });
})();
