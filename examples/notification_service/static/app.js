// The notification page: log in, then follow user:<id> with rtserve.js (served at /rtserve.js).
// getToken asks the server for a channel token for the logged-in user (the session cookie
// says who that is) before every connect and reconnect. A read marker, kept by the server,
// is shared by all the user's devices: "Mark all read" here clears the phone's badge too.
"use strict";

const $ = (id) => document.getElementById(id);
let rt = null;
let me = null; // {user, name, channel, read}
let sub = null;
let loaded = false; // the kept notifications were fetched once (history)

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json"; // the server takes JSON only
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = response.status === 204 ? null : await response.json();
  if (!response.ok) {
    const error = new Error((data && data.error && data.error.detail) || response.statusText);
    error.status = response.status;
    throw error;
  }
  return data;
}

async function getToken() {
  try {
    return (await api("POST", "/api/token")).token;
  } catch (error) {
    if (error.status === 401) setTimeout(() => stop("session ended: log in again"));
    throw error; // rtserve.js retries later (unless stop() closed it)
  }
}

function start(user) {
  me = user;
  loaded = false;
  $("login").hidden = true;
  $("inbox").hidden = $("logout").hidden = $("read").hidden = false;
  $("send").textContent =
    `python examples/notification_service/send.py ${me.user} "Hello ${me.name}" ` +
    `--body "from send.py" --url ${location.origin}`;
  rt = new Rtserve({ getToken });
  rt.on("state", (state, info) => {
    $("status").dataset.state = state === "connected" ? "on" : state === "closed" ? "off" : "wait";
    $("status").textContent =
      state === "connected" ? `${me.name}, live (${info.transport})`
      : state === "disconnected" ? "offline, reconnecting…"
      : state === "closed" ? "disconnected" : state;
  });
  sub = rt.subscribe(me.channel, {
    onPublication: (pub) => apply(pub),
    async onSubscribed() {
      if (loaded) return; // after a reconnect the missed ones came as publications
      loaded = true;
      try {
        const kept = await rt.history(me.channel);
        for (const pub of kept.publications) apply(pub);
      } catch (error) {
        console.warn("history:", error.message);
      }
    },
    onUnrecovered() {
      // Lost (the server restarted, or this page was away longer than the history): reload.
      $("list").replaceChildren();
      loaded = false;
    },
    onError: (error) => ($("status").textContent = error.message),
  });
  rt.connect();
}

function stop(message) {
  if (rt !== null) rt.close();
  rt = sub = me = null;
  $("list").replaceChildren();
  $("inbox").hidden = $("logout").hidden = $("read").hidden = $("badge").hidden = true;
  $("login").hidden = false;
  $("status").dataset.state = "off";
  $("status").textContent = "logged out";
  $("error").textContent = message || "";
}

function epoch() {
  return sub && sub.position ? sub.position.epoch : null;
}

function isUnread(offset) {
  const read = me.read;
  return !read || read.epoch !== epoch() || offset > read.offset;
}

function apply(pub) {
  const data = pub.data && typeof pub.data === "object" ? pub.data : { title: String(pub.data) };
  if (data.kind === "read") {
    me.read = { offset: data.offset, epoch: data.epoch };
    return refresh();
  }
  const list = $("list");
  if (list.querySelector(`[data-offset="${pub.offset}"]`)) return; // shown already
  const item = document.createElement("li");
  item.dataset.offset = pub.offset;
  // The data comes from other services: text only, links only to http(s).
  const title = document.createElement(safeUrl(data.url) ? "a" : "b");
  title.textContent = data.title || "(no title)";
  if (safeUrl(data.url)) title.href = data.url;
  const time = document.createElement("time");
  time.textContent = data.time ? new Date(data.time * 1000).toLocaleString() : "";
  const source = document.createElement("span");
  source.className = "source";
  source.textContent = data.source || "";
  const body = document.createElement("p");
  body.textContent = data.body || "";
  item.append(title, time, source, body);
  let before = list.firstElementChild; // newest first, whatever order they come in
  while (before && Number(before.dataset.offset) > pub.offset) before = before.nextElementSibling;
  list.insertBefore(item, before);
  refresh();
}

function refresh() {
  let unread = 0;
  for (const item of $("list").children) {
    const flag = isUnread(Number(item.dataset.offset));
    item.classList.toggle("unread", flag);
    unread += flag ? 1 : 0;
  }
  $("badge").textContent = String(unread);
  $("badge").hidden = unread === 0;
  document.title = unread ? `(${unread}) Notifications` : "Notifications";
}

function safeUrl(url) {
  try {
    return Boolean(url) && ["http:", "https:"].includes(new URL(url, location.href).protocol);
  } catch {
    return false;
  }
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("error").textContent = "";
  try {
    await api("POST", "/api/login", { user: $("user").value.trim(), password: $("password").value });
    $("password").value = "";
    start(await api("GET", "/api/me"));
  } catch (error) {
    $("error").textContent = error.status === 401 ? "Wrong user or password." : error.message;
  }
});

$("logout").addEventListener("click", async () => {
  try {
    await api("POST", "/api/logout");
  } finally {
    stop();
  }
});

$("read").addEventListener("click", async () => {
  const position = sub && sub.position;
  if (!position) return;
  try {
    me.read = (await api("POST", "/api/read", position)).read;
    refresh();
  } catch (error) {
    $("status").textContent = `mark read: ${error.message}`;
  }
});

// Already logged in (the session cookie)? Then straight to the inbox.
api("GET", "/api/me").then(start, () => stop());
