// The notifications page: log in as a user, see that user's notifications arrive.
// rtserve.js (served by rtserve at /rtserve.js) does the protocol; getToken gives it a fresh
// token for every (re)connect.
"use strict";

const $ = (id) => document.getElementById(id);
const DEV_API_KEY = "dev-only-api-key-change-me-0123456789"; // rtserve.yaml's default channels.api_key
let rt = null;
let user = null;

async function getToken() {
  // DEV ONLY: /token gives a token to whoever asks. With your login, the page would get its
  // token from your session instead (and the server would mint it for the logged-in user).
  const response = await fetch(`/token?user=${encodeURIComponent(user)}`);
  if (!response.ok) throw new Error(`/token answered ${response.status}`);
  return (await response.json()).token;
}

function onState(state, detail) {
  $("status").dataset.state = state === "connected" ? "on" : state === "closed" ? "off" : "wait";
  if (state === "connected") $("status").textContent = `logged in as ${user}`;
  else if (state === "disconnected") $("status").textContent = "reconnecting…";
  else if (state === "closed") $("status").textContent = detail.error ? detail.error.message : "offline";
  else $("status").textContent = state;
}

function login(event) {
  event.preventDefault();
  logout();
  user = $("user").value.trim();
  localStorage.setItem("user", user);
  // The shell takes RTSERVE_API_KEY when it is set, else the development key the server uses.
  $("curl").textContent =
    `curl ${location.origin}/notify/${user} ` +
    `-H "Authorization: Bearer \${RTSERVE_API_KEY:-${DEV_API_KEY}}" ` +
    `-d '{"title": "Hello ${user}", "body": "from curl"}'`;
  showLoggedIn(true);
  const channel = `user:${user}`;
  rt = new Rtserve({ getToken });
  rt.on("state", onState);
  rt.subscribe(channel, {
    onPublication: (pub) => show(pub, true),
    async onSubscribed(result) {
      if (result.recovered) return; // what was missed came as onPub
      try {
        const history = await rt.history(channel); // the kept ones (rtserve.yaml: history)
        for (const pub of history.publications) show(pub, false);
      } catch (error) {
        console.warn("history:", error.message);
      }
    },
    onUnrecovered: () => $("list").replaceChildren(),
    onError: (error) => ($("status").textContent = error.message),
  });
  rt.connect();
}

function logout() {
  if (rt !== null) rt.close();
  rt = null;
  $("list").replaceChildren();
  showLoggedIn(false);
  localStorage.removeItem("user");
}

// Logged out: the login form and a word on what to do. Logged in: "Log out", the curl hint,
// and the desktop notifications button while the browser has not been asked yet.
function showLoggedIn(on) {
  $("login").hidden = $("welcome").hidden = on;
  $("logout").hidden = $("hint").hidden = !on;
  $("desktop").hidden = !(on && window.Notification?.permission === "default");
}

function show(pub, live) {
  const list = $("list");
  if (list.querySelector(`[data-offset="${pub.offset}"]`)) return; // shown already
  const n = pub.data && typeof pub.data === "object" ? pub.data : { title: String(pub.data) };
  const item = document.createElement("li");
  item.dataset.offset = pub.offset;
  const title = document.createElement(safeUrl(n.url) ? "a" : "b");
  title.textContent = n.title || "(no title)";
  if (safeUrl(n.url)) title.href = n.url;
  const time = document.createElement("time");
  time.textContent = n.time ? new Date(n.time * 1000).toLocaleString() : "";
  const body = document.createElement("p");
  body.textContent = n.body || "";
  item.append(title, time, body);
  // Newest first, whatever order they come in (history may come after live ones).
  let before = list.firstElementChild;
  while (before && Number(before.dataset.offset) > pub.offset) before = before.nextElementSibling;
  list.insertBefore(item, before);
  if (live && document.hidden && window.Notification?.permission === "granted") {
    new Notification(n.title || "Notification", { body: n.body || "" });
  }
}

function safeUrl(url) {
  try {
    return ["http:", "https:"].includes(new URL(url, location.href).protocol) && Boolean(url);
  } catch {
    return false;
  }
}

$("login").addEventListener("submit", login);
$("logout").addEventListener("click", () => {
  logout();
  onState("closed", {});
});
$("desktop").addEventListener("click", async () => {
  await Notification.requestPermission();
  $("desktop").hidden = true;
});
const saved = localStorage.getItem("user");
if (saved) {
  $("user").value = saved;
  $("login").requestSubmit();
}
