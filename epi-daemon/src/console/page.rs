//! The console's page: a static shell (styles and a small script inline, nothing fetched
//! from elsewhere) that swaps in the server-rendered panels every second and sends the
//! reload buttons' requests, both through the guarded admin routes.

use maud::{html, Markup, PreEscaped, DOCTYPE};

/// How often the page fetches the panels, in milliseconds.
pub const REFRESH_MS: u32 = 1000;

const STYLE: &str = r#"
:root { --line: #d9dee5; --muted: #5f6b7a; --bad: #c53030; --accent: #2b6cb0; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1a202c; background: #f7f9fb; }
header { position: sticky; top: 0; z-index: 1; display: flex; gap: 1rem; align-items: center; padding: .6rem 1.2rem; background: #1a2233; color: #fff; }
header h1 { font-size: 1.1rem; margin: 0; }
header .state { color: #b8c2d0; font-size: .85rem; }
header .spacer { flex: 1; }
header #action { font-size: .85rem; color: #fbd38d; }
main { padding: .5rem 1.2rem 2rem; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: .4rem 1rem 1rem; margin: 1rem 0; overflow-x: auto; }
h2 { font-size: 1rem; margin: .6rem 0; }
h3 { font-size: .9rem; margin: .8rem 0 .4rem; color: var(--muted); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .25rem .6rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: .75rem; text-transform: uppercase; letter-spacing: .03em; color: var(--muted); }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.mono, td.version { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; font-size: .85rem; }
tr.failed td { background: #fff5f5; }
.error { color: var(--bad); }
.note { color: var(--muted); font-size: .85rem; }
.tag { font-size: .7rem; padding: 0 .35rem; border-radius: 4px; background: #ebf4ff; color: var(--accent); }
.tag.static { background: #edf2f7; color: var(--muted); }
ol.providers { margin: 0; padding-left: 1.2rem; }
td.report { max-width: 28rem; overflow-wrap: anywhere; }
button { font: inherit; font-size: .8rem; padding: .2rem .7rem; border-radius: 5px; border: 1px solid var(--accent); background: #fff; color: var(--accent); cursor: pointer; }
button:hover { background: #ebf4ff; }
header button { border-color: #90cdf4; background: #2b6cb0; color: #fff; }
#token-form { display: none; gap: .4rem; }
#token-form input { font: inherit; font-size: .8rem; padding: .15rem .4rem; }
.graph-box { overflow-x: auto; padding: .3rem 0 .6rem; }
"#;

const SCRIPT: &str = r#"
(function () {
  "use strict";
  var fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {
    sessionStorage.setItem("epi-admin-token", fragment.get("token"));
    history.replaceState(null, "", location.pathname);
  }
  var panels = document.getElementById("panels");
  var state = document.getElementById("state");
  var action = document.getElementById("action");
  var tokenForm = document.getElementById("token-form");
  function headers(extra) {
    var all = Object.assign({}, extra || {});
    var token = sessionStorage.getItem("epi-admin-token");
    if (token) { all["Authorization"] = "Bearer " + token; }
    return all;
  }
  var busy = false;
  function refresh() {
    if (busy) { return; }
    busy = true;
    fetch("/_epi/ui/panels", { headers: headers(), cache: "no-store" }).then(function (response) {
      if (response.status === 401) {
        state.textContent = "this daemon needs its admin token";
        tokenForm.style.display = "flex";
        return;
      }
      if (!response.ok) { state.textContent = "the daemon answered " + response.status; return; }
      return response.text().then(function (html) {
        panels.innerHTML = html;
        state.textContent = "live \u00b7 updated " + new Date().toLocaleTimeString();
        document.body.setAttribute("data-refreshed", String(Date.now()));
      });
    }).catch(function () {
      state.textContent = "the daemon is unreachable";
    }).then(function () { busy = false; });
  }
  function summary(body) {
    var counts = {};
    (body.files || []).forEach(function (file) {
      var what = file.error ? "failed" : (file.result && file.result.outcome) || "unknown";
      counts[what] = (counts[what] || 0) + 1;
    });
    return Object.keys(counts).sort().map(function (what) { return counts[what] + " " + what; }).join(", ");
  }
  function reload(plugin) {
    var url = "/_epi/reload" + (plugin ? "?plugin=" + encodeURIComponent(plugin) : "");
    action.textContent = "reloading " + (plugin || "all plugins") + "\u2026";
    fetch(url, { method: "POST", headers: headers({ "Content-Type": "application/json" }), body: "{}" })
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          if (!response.ok) {
            action.textContent = "reload refused (" + response.status + "): " + (body.error || "");
          } else {
            action.textContent = "reloaded " + (plugin || "all") + ": " + (summary(body) || "no files");
          }
        });
      })
      .catch(function () { action.textContent = "reload failed: the daemon is unreachable"; })
      .then(refresh);
  }
  document.addEventListener("click", function (event) {
    var button = event.target.closest("button");
    if (!button) { return; }
    if (button.id === "reload-all") { reload(null); }
    else if (button.getAttribute("data-plugin")) { reload(button.getAttribute("data-plugin")); }
  });
  tokenForm.addEventListener("submit", function (event) {
    event.preventDefault();
    sessionStorage.setItem("epi-admin-token", tokenForm.elements.token.value);
    tokenForm.style.display = "none";
    refresh();
  });
  refresh();
  setInterval(refresh, REFRESH_MS);
})();
"#;

/// The page.
pub fn render() -> Markup {
    let script = SCRIPT.replace("REFRESH_MS", &REFRESH_MS.to_string());
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "epi console" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { "epi console" }
                    span #state .state { "loading\u{2026}" }
                    span.spacer {}
                    span #action {}
                    form #token-form {
                        input name="token" type="password" placeholder="admin token" autocomplete="off";
                        button type="submit" { "Use" }
                    }
                    button #reload-all type="button" { "Reload all" }
                }
                main #panels {
                    noscript { p { "The console refreshes with JavaScript; the JSON admin routes under /_epi/ work without it." } }
                }
                script { (PreEscaped(script)) }
            }
        }
    }
}
