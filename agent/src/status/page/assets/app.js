// Live updates for the Driftless status page: every few seconds the page fetches itself and
// swaps in the new content, so it stays current without a reload. Nothing is sent but GETs of
// this page; a failed update marks the time stale and is retried.
(function () {
  "use strict";
  var updated = document.getElementById("updated");
  if (!updated || !window.fetch || !window.DOMParser) return;
  var every = (parseInt(updated.getAttribute("data-refresh"), 10) || 3) * 1000;

  // moves the children of `source` (from the fetched page) into `target`; copied to an array
  // first, since adopting a node takes it out of the live child list
  function adopt(target, source) {
    var nodes = Array.prototype.slice.call(source.childNodes).map(function (n) {
      return document.adoptNode(n);
    });
    target.replaceChildren.apply(target, nodes);
  }

  function refresh() {
    if (document.hidden) return setTimeout(refresh, every);
    fetch(location.href, { headers: { Accept: "text/html" }, cache: "no-store", credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (text) {
        var page = new DOMParser().parseFromString(text, "text/html");
        var content = page.getElementById("content");
        var stamp = page.getElementById("updated");
        if (!content || !stamp) throw new Error("not a status page");
        adopt(document.getElementById("content"), content);
        adopt(updated, stamp);
        updated.classList.remove("stale");
        updated.removeAttribute("title");
      })
      .catch(function (e) {
        updated.classList.add("stale");
        updated.title = "update failed (" + e.message + "); retrying";
      })
      .then(function () {
        setTimeout(refresh, every);
      });
  }
  setTimeout(refresh, every);
})();
