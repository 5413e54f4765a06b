// relaybox web: the only script. Live status polling, reading a chosen
// PEM file into its text box, and confirming forms that cut calls. The
// server renders all HTML.
(function () {
  var live = document.getElementById("live");
  if (live) {
    var poll = function () {
      fetch("/api/status", { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { if (r.status === 401) { location.href = "/login"; } return r.json(); })
        .then(function (j) { if (j && j.html) { live.innerHTML = j.html; } })
        .catch(function () {});
    };
    setInterval(poll, 2000);
  }
  document.querySelectorAll("input[type=file][data-into]").forEach(function (input) {
    input.addEventListener("change", function () {
      var target = document.getElementById(input.getAttribute("data-into"));
      var file = input.files[0];
      if (!target || !file) { return; }
      file.text().then(function (t) { target.value = t; });
    });
  });
  // Forms that cut calls (Reboot) ask first.
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (e) {
      if (!window.confirm(form.getAttribute("data-confirm"))) { e.preventDefault(); }
    });
  });
})();
