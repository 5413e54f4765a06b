// relaybox web: the only script. Live status polling, reading a chosen
// PEM file into its text box (a backup as base64), confirming forms that
// cut calls, and the Update page's bundle upload with its progress. The
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
  // Update: the bundle goes up as it is (CSRF token in a header), then the
  // install's steps are polled until it is done.
  var form = document.getElementById("update-form");
  if (form) {
    var bar = document.getElementById("upload-progress");
    var state = document.getElementById("upload-state");
    var liveUpdate = document.getElementById("update-live");
    var pollInstall = function () {
      fetch("/api/update", { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { return r.json(); })
        .then(function (j) {
          if (j.html) { liveUpdate.innerHTML = j.html; }
          if (j.job && j.job.running) { setTimeout(pollInstall, 1000); } else { state.textContent = ""; }
        })
        .catch(function () { setTimeout(pollInstall, 2000); });
    };
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var file = document.getElementById("bundle").files[0];
      if (!file) { state.textContent = "Choose a bundle file first."; return; }
      var xhr = new XMLHttpRequest();
      var force = document.getElementById("force").checked ? "?force=1" : "";
      xhr.open("POST", "/update/upload" + force);
      xhr.setRequestHeader(form.getAttribute("data-header"), form.getAttribute("data-csrf"));
      xhr.setRequestHeader("content-type", "application/octet-stream");
      bar.hidden = false;
      xhr.upload.onprogress = function (p) {
        if (p.lengthComputable) { bar.value = 100 * p.loaded / p.total; }
        state.textContent = "Uploading… " + Math.round(p.loaded / 1048576) + " MiB";
      };
      xhr.onload = function () {
        bar.hidden = true;
        if (xhr.status === 202) { state.textContent = "Checking and installing…"; pollInstall(); return; }
        var why = xhr.responseText;
        try { why = JSON.parse(xhr.responseText).error; } catch (err) {}
        state.textContent = "Refused (" + xhr.status + "): " + why;
      };
      xhr.onerror = function () { bar.hidden = true; state.textContent = "The upload failed."; };
      xhr.send(file);
    });
  }
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
