// Technician login: JSON POST (the server refuses form posts), then go to the status page.
"use strict";
(function () {
  const form = document.getElementById("login-form");
  const err = document.getElementById("login-error");
  const button = document.getElementById("login-button");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.textContent = "";
    button.disabled = true;
    try {
      const r = await fetch("/login", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          user: document.getElementById("user").value,
          password: document.getElementById("password").value,
        }),
      });
      if (r.ok) {
        window.location.assign("/");
        return;
      }
      let body = {};
      try { body = await r.json(); } catch (_e) { /* not JSON */ }
      let msg = body.error || ("login failed (" + r.status + ")");
      if (body.retry_after) msg += " - wait " + Math.ceil(body.retry_after) + " s";
      err.textContent = msg;
    } catch (e) {
      err.textContent = "network error: " + e;
    } finally {
      button.disabled = false;
    }
  });
})();
