// relaybox web: the only script. Live status polling, reading a chosen
// PEM file into its text box (a backup as base64), and confirming forms
// that cut calls. The server renders all HTML.
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
  // A binary file (a backup) goes into a hidden field as base64.
  document.querySelectorAll("input[type=file][data-into-base64]").forEach(function (input) {
    input.addEventListener("change", function () {
      var target = document.getElementById(input.getAttribute("data-into-base64"));
      var file = input.files[0];
      if (!target || !file) { return; }
      file.arrayBuffer().then(function (buf) {
        var bytes = new Uint8Array(buf), text = "";
        for (var i = 0; i < bytes.length; i += 0x8000) {
          text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
        }
        target.value = btoa(text);
      });
    });
  });
  // Forms that cut calls (Reboot, Factory reset) ask first.
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (e) {
      if (!window.confirm(form.getAttribute("data-confirm"))) { e.preventDefault(); }
    });
  });
})();
