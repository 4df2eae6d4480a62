// Embeds the creditgate customer page where this script tag stands:
//   <script src="https://credits.example.com/customer/embed.js"
//           data-session="cgs_v1...." data-theme-accent="#0f766e"></script>
// It inserts an iframe of /customer/ on the script's own origin with the session and
// every data-theme-* attribute as a theme_* CSS variable override, and resizes the frame
// to the page's height.
(function () {
  var script = document.currentScript;
  if (!script) return;
  var origin = new URL(script.src).origin;
  var params = new URLSearchParams();
  params.set("session", script.getAttribute("data-session") || "");
  var days = script.getAttribute("data-days");
  if (days) params.set("days", days);
  for (var i = 0; i < script.attributes.length; i++) {
    var a = script.attributes[i];
    if (a.name.indexOf("data-theme-") === 0) {
      params.set("theme_" + a.name.slice("data-theme-".length), a.value);
    }
  }
  var frame = document.createElement("iframe");
  frame.src = origin + "/customer/?" + params.toString();
  frame.title = "Credits";
  frame.style.width = "100%";
  frame.style.border = "0";
  frame.style.minHeight = "600px";
  frame.setAttribute("referrerpolicy", "no-referrer");
  script.parentNode.insertBefore(frame, script.nextSibling);
  window.addEventListener("message", function (e) {
    if (e.origin !== origin || e.source !== frame.contentWindow) return;
    if (e.data && e.data.creditgate === "height") {
      frame.style.height = e.data.height + "px";
    }
  });
})();
