// Bastion console: the copy button next to a secret shown once. Loaded only on the pages that show one, as
// a static file (the Content-Security-Policy allows script from this origin only, nothing inline). Without
// it, the secret is still selectable text.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source) {
      return;
    }
    button.hidden = false;
    button.addEventListener("click", function () {
      var text = source.textContent;
      var done = function () {
        button.textContent = "Copied";
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, function () {
          button.textContent = "Select and copy";
        });
        return;
      }
      var range = document.createRange();
      range.selectNodeContents(source);
      var selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      try {
        if (document.execCommand("copy")) {
          done();
        }
      } catch (e) {
        button.textContent = "Select and copy";
      }
    });
  });
});
