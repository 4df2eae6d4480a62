// The customer page's only script: inside an iframe placed by embed.js, it tells the
// embedding page its height so the frame fits without a scroll bar. The numbers never
// depend on it.
(function () {
  if (window.parent === window) return;
  var last = 0;
  function report() {
    var h = document.documentElement.scrollHeight;
    if (h !== last) {
      last = h;
      window.parent.postMessage({ creditgate: "height", height: h }, "*");
    }
  }
  window.addEventListener("load", report);
  window.addEventListener("resize", report);
  document.addEventListener("toggle", report, true);
  setInterval(report, 500);
})();
