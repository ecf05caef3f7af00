// rtserve.js: the browser client of rtserve channels. One file, no dependencies, no build
// step (plain ES2020). Every rtserve app with channels serves it at /rtserve.js; to bundle
// it, copy this file (it sets `window.Rtserve`, and `module.exports` where there is one).
//
//   const rt = new Rtserve({ token: "..." });          // every option is optional
//   rt.on("state", (state, info) => console.log(state, info.transport));
//   const sub = rt.subscribe("chat:lobby", { onPublication: (pub) => show(pub.data) });
//   rt.connect();
//   const { offset, epoch } = await rt.publish("chat:lobby", { text: "hi" });
//
// new Rtserve(options):
//   url         base URL of the server (default: this page's origin)
//   prefix      where the channel endpoints are (default "/rt")
//   token       a connection token; getToken: async () => token, called before every
//               (re)connect (fetch a fresh one there)
//   data        for the app's on_connect: sent with the WebSocket `connect`, and as the
//               `data` query parameter (JSON) of every SSE, poll, history, presence and
//               publish request
//   transports  the order to try them in (default ["websocket", "sse", "poll"])
//   fallbackAfter  failures before connecting that move on to the next transport (default 2)
//   backoffMin, backoffMax  reconnect delays in ms (default 250 and 10000), with jitter
// rt.connect()       starts (again); rt.close() stops for good (state "closed").
// rt.subscribe(channel, handlers) -> subscription; handlers (all optional):
//   onPublication(pub)  pub = { channel, offset, data, info?, tags? }, each offset once, in
//   order (with a filter, only the matches: offsets then jump over the others)
//   onSubscribed(result), onUnrecovered(result), onJoin(info), onLeave(info),
//   onPresence(push), onPresenceDiff(diff) (WebSocket: instead of onJoin, onLeave and
//   onPresence, each change as {joins, leaves}, each {users: {user: {client: info}},
//   anonymous: {client: info}}), onError(error); and since: { offset, epoch } to start from, token: a
//   subscription token (WebSocket only), getToken: async (channel) => a fresh subscription
//   token, called before the current one expires (`sub_refresh`, WebSocket only); filter: a
//   tag filter, e.g. { eq: ["region", "eu"] } or { in: ["symbol", ["A", "B"]] } (docs/protocol.md,
//   every transport): the server sends only the publications whose tags it matches.
//   delta: "fossil" asks for delta publications (a channel with `delta: fossil` then sends
//   each as a fossil delta from the one before; WebSocket and SSE): onPublication gets the
//   same data, and a delta that does not apply (its checksum, or not following the offset
//   held) makes the subscription again from its position.
//   subscription.position is { offset, epoch } (null before the first answer);
//   subscription.unsubscribe() ends it.
// Rtserve.applyDelta(source, delta) -> the text a fossil delta makes of `source` (strings of
//   ASCII); throws an Error when it does not apply.
// rt.publish(channel, data, { idempotency_key, tags }) -> Promise of { offset, epoch }
//   (tags: a small map of strings that subscribers' filters match)
// rt.history(channel, { limit, since, reverse }) -> Promise of { publications, offset, epoch }
//   (reverse: newest first, below `since`: pages backwards)
// rt.presence(channel, { group }) -> Promise of { clients } (group: "user": of
//   { users: { user: { client: info } }, anonymous }); rt.presenceStats(channel) -> Promise of
//   { clients, users } (counts)
// rt.rpc(method, data) -> Promise of what the app's @app.rpc(method) handler returned
//   (WebSocket only)
// rt.on("state", fn): fn(state, info), state "connecting", "connected", "disconnected"
//   (will retry) or "closed" (gave up, or close()); info.transport is the transport's name,
//   info.session connect's result (WebSocket: client, user, expires, version, data from the
//   app's on_connect, limits), info.error the refusal when closed.
// Commands made while not connected wait for the connection. A refusal rejects with an Error
// carrying the server's `code` and `temporary` (true: the same command may succeed
// later); code 0: the connection dropped (repeat a publish with an
// idempotency_key to be safe). A subscribe refused with a temporary error (or 115) is tried
// again with a growing pause.
//
// On a WebSocket (protocol 2) the `connect` carries every subscription, so a page of many
// channels (re)connects in one round trip; and commands made in one tick (a loop of
// subscribe() or publish()) go out together, as one message.
//
// Transports: the WebSocket at {prefix}/ws first. If it cannot connect (`fallbackAfter`
// failures in a row), Server-Sent Events ({prefix}/sse, one EventSource for all channels,
// reopened with since= for every channel when the set changes) with POST
// {prefix}/client/publish, GET {prefix}/history and GET {prefix}/presence; if SSE fails
// too, long polling
// ({prefix}/poll, channels need history). Every subscription keeps its last { offset, epoch }
// across reconnects and transport switches and resumes from there: offsets already seen are
// dropped, and when the server cannot give what was missed (`recovered: false`)
// onUnrecovered says so (reload your state). Close codes 4000, 4001, 4003 and 4005 end the
// client (retrying cannot help); so does 4002 (token expired) without getToken.
"use strict";

(function (global) {
  const FINAL = new Set([4000, 4001, 4003, 4005]);
  const PING_EVERY = 20000; // ms; without the server's heartbeat (a server of version 1),
  // a ping unanswered by the next one drops the WebSocket
  const POLL_TIMEOUT = 25; // s, asked of the server per long poll
  const BROKER_FAILED = 115; // a refusal that may pass: retried, never the end
  const PROTOCOL = 2; // the version of docs/protocol.md this client speaks

  function rtError(error) {
    const fields = { code: error.code };
    if (error.channel !== undefined) fields.channel = error.channel;
    if (error.temporary !== undefined) fields.temporary = error.temporary;
    return Object.assign(new Error(error.message), fields);
  }
  // A refusal of an HTTP stream that is not about one channel, as the WebSocket would close:
  // 101 refused (4001), 109 token expired (4002), 106 too many connections (4003); failures
  // that may pass (0 network, 100 on_connect failed, 108 shutting down, 115 broker) retry.
  function refusalCloseCode(code) {
    if ([0, 100, 108, 115].includes(code)) return 1006;
    return { 109: 4002, 106: 4003 }[code] || 4001;
  }
  // A numeric option: its default when not given, a RangeError when not a number > 0.
  function positive(options, name, fallback) {
    const value = options[name];
    if (value === undefined || value === null) return fallback;
    if (typeof value !== "number" || !(value > 0)) {
      throw new RangeError(`rtserve.js: ${name} must be a number above 0, not ${value}`);
    }
    return value;
  }

  const positionId = (sub) => `${sub.channel}:${sub.offset}:${sub.epoch}`;
  // The query parameters of a subscription over SSE and polling: channel, since?, filter?.
  function streamPairs(sub) {
    const pairs = [["channel", sub.channel]];
    if (sub.epoch !== null) pairs.push(["since", positionId(sub)]);
    if (sub.handlers.filter) {
      pairs.push(["filter", `${sub.channel}:${JSON.stringify(sub.handlers.filter)}`]);
    }
    return pairs;
  }

  // Fossil deltas (docs/protocol.md#delta-publications), over ASCII strings: one character is
  // one byte. Integers are base 64, most significant digit first.
  const DIGIT_VALUES = new Map(
    [..."0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~"].map((c, i) => [c, i]),
  );
  const MAX_DELTA_OUTPUT = 64 * 1024 * 1024; // characters a delta may make
  // The sum, modulo 2^32, of the text as big-endian 32-bit words (the last padded with 0).
  function fossilChecksum(text) {
    let sum = 0;
    let i = 0;
    for (; i + 4 <= text.length; i += 4) {
      const word =
        (text.charCodeAt(i) << 24) |
        (text.charCodeAt(i + 1) << 16) |
        (text.charCodeAt(i + 2) << 8) |
        text.charCodeAt(i + 3);
      sum = (sum + word) >>> 0;
    }
    let last = 0;
    for (let shift = 24; i < text.length; i++, shift -= 8) last |= text.charCodeAt(i) << shift;
    return (sum + last) >>> 0;
  }
  function applyDelta(source, delta) {
    let at = 0;
    const fail = (what) => {
      throw new Error(`rtserve.js: bad delta: ${what} (at ${at})`);
    };
    const integer = () => {
      const start = at;
      let value = 0;
      while (at < delta.length && at - start < 9 && DIGIT_VALUES.has(delta[at])) {
        value = value * 64 + DIGIT_VALUES.get(delta[at++]);
      }
      if (at === start || at - start > 8) fail("integer expected");
      return value;
    };
    const size = integer();
    if (delta[at++] !== "\n") fail("no newline after the size");
    if (size > MAX_DELTA_OUTPUT) fail(`${size} characters`);
    const parts = [];
    let total = 0;
    for (;;) {
      const count = integer();
      const op = delta[at++];
      if (op === "@") {
        const offset = integer();
        if (delta[at++] !== ",") fail("copy not ended by ','");
        if (offset + count > source.length) fail("copy outside the source");
        if (total + count > size) fail("more than the size");
        parts.push(source.substring(offset, offset + count));
        total += count;
      } else if (op === ":") {
        if (total + count > size) fail("more than the size");
        if (at + count > delta.length) fail("insert past the end");
        parts.push(delta.substring(at, at + count));
        at += count;
        total += count;
      } else if (op === ";") {
        if (at !== delta.length) fail("bytes after the checksum");
        if (total !== size) fail("not the size in the header");
        const out = parts.join("");
        if (fossilChecksum(out) !== count) fail("checksum mismatch");
        return out;
      } else {
        fail(op === undefined ? "no checksum" : `unknown command ${JSON.stringify(op)}`);
      }
    }
  }
  // ms until a token expiring at `expires` (unix s) is replaced: a quarter of its life
  // early, at most 30 s.
  function refreshDelay(expires) {
    const left = expires * 1000 - Date.now();
    return Math.max(0, left - Math.min(30000, left / 4));
  }

  class Subscription {
    constructor(rt, channel, handlers) {
      this.rt = rt;
      this.channel = channel;
      this.handlers = handlers;
      this.token = handlers.token;
      this.offset = handlers.since ? handlers.since.offset : 0;
      this.epoch = handlers.since ? handlers.since.epoch : null;
      this.retries = 0; // subscribes refused in a row by a broker failure
      this.text = null; // a delta subscription's last text, and its offset
      this.textOffset = 0;
    }
    get position() {
      return this.epoch === null ? null : { offset: this.offset, epoch: this.epoch };
    }
    unsubscribe() {
      return this.rt._unsubscribe(this);
    }
    _call(name, ...args) {
      const fn = this.handlers[name];
      if (!fn) return;
      try {
        fn.apply(this.handlers, args);
      } catch (error) {
        console.error(`rtserve.js: ${name} failed`, error);
      }
    }
    // One publication: applied once, in order (offsets at or below the last are seen already;
    // a jump ahead is a gap the server made for a slow client: applied anyway).
    _pub(pub) {
      let data = pub.data;
      if (pub.delta !== undefined) {
        try {
          data = this._fromText(pub);
        } catch (error) {
          if (this.text !== null) console.warn(error.message, "; subscribing again");
          this.text = null;
          return this.rt._resubscribe(this);
        }
      }
      if (pub.offset <= this.offset) return;
      this.offset = pub.offset;
      const out = { channel: this.channel, offset: pub.offset, data };
      if (pub.info) out.info = pub.info;
      if (pub.tags) out.tags = pub.tags;
      this._call("onPublication", out);
    }
    // The data of a delta subscription's push: its JSON text, or the delta applied to the
    // text of the offset before (an Error when it is not held or the checksum fails).
    _fromText(pub) {
      let text = pub.data;
      if (pub.delta) {
        if (this.text === null || this.textOffset !== pub.offset - 1) {
          const held = this.textOffset;
          throw new Error(`rtserve.js: a delta for offset ${pub.offset} does not follow ${held}`);
        }
        text = applyDelta(this.text, pub.data);
      }
      const data = JSON.parse(text);
      this.text = text;
      this.textOffset = pub.offset;
      return data;
    }
    // A subscribe answer ({channel, offset, epoch, recovered?, publications?}).
    _subscribed(result, asked) {
      this.retries = 0;
      this.text = null;
      this.resubscribing = false;
      if (!asked) {
        // A start from now resumes nothing: no `recovered` (a poll's answer has one anyway).
        const { recovered, publications, ...fresh } = result;
        result = fresh;
      }
      if (asked && result.recovered) {
        this.epoch = result.epoch;
        // WebSocket: the missed publications are in the answer; SSE: they follow it.
        for (const pub of result.publications || []) this._pub(pub);
        // Past what a filter skipped too (the answer holds every match up to its offset).
        if (result.publications && result.offset > this.offset) this.offset = result.offset;
      } else {
        this.epoch = result.epoch;
        this.offset = result.offset;
        if (asked) this._call("onUnrecovered", result);
      }
      this._call("onSubscribed", result);
    }
  }

  // --- transports: each calls rt._connected(info), rt._dropped(code, reason) -------------

  class WebSocketTransport {
    constructor(rt) {
      this.rt = rt;
      this.name = "websocket";
      this.pending = new Map();
      this.nextId = 1;
      this.maxBatch = 1; // commands in one message (protocol 2's limits.max_batch)
      this.outbox = []; // commands of this tick, for one message
    }
    open() {
      const rt = this.rt;
      const ws = (this.ws = new WebSocket(rt.base.replace(/^http/, "ws") + rt.prefix + "/ws"));
      ws.onmessage = (event) => this._message(event.data);
      ws.onclose = (event) => this._closed(event.code, event.reason);
      ws.onopen = () => {
        const message = { op: "connect", protocol: PROTOCOL };
        if (rt.token) message.token = rt.token;
        if (rt.data !== undefined) message.data = rt.data;
        // Every subscription is made in the connect (one round trip), each from its position.
        const asked = new Map();
        const subs = [...rt.subs.values()];
        if (subs.length) {
          message.subscriptions = subs.map((sub) => {
            asked.set(sub, sub.epoch !== null);
            return this._subscription(sub);
          });
        }
        this.send(message).then(
          (session) => this._ready(session, asked),
          (error) => {
            // Refused: the server closes the connection (4001, 4002, 4003) and that decides.
            // Code 100 (on_connect failed) leaves it open: drop it and retry.
            rt.refusal = error;
            if (error.code === 100) this._closed(1011, error.message);
          },
        );
      };
    }
    _ready(reply, asked) {
      if (this.ws === null) return;
      const { subscriptions, ...session } = reply;
      // Protocol 2: commands made in one tick go out as one message (a JSON array).
      this.maxBatch = session.version >= 2 ? session.limits?.max_batch || 1 : 1;
      this.rt._connected({ session });
      this._refreshBefore(session.expires);
      for (const sub of this.rt.subs.values()) {
        const answer = subscriptions && asked.has(sub) ? subscriptions[sub.channel] : undefined;
        if (answer === undefined) this.subscribe(sub); // made since (or a server of version 1)
        else if (answer.error) this._subscribeRefused(sub, rtError(answer.error));
        else this._subscribeAnswered(sub, answer, asked.get(sub));
      }
      for (const [sub] of asked) {
        // unsubscribed while the connect was on its way: the server made it all the same
        if (!this.rt.subs.has(sub.channel) && !subscriptions?.[sub.channel]?.error) {
          this.unsubscribe(sub);
        }
      }
      if (session.ping > 0) {
        // The server's heartbeat (protocol 2): a connection silent for 1.5 of its interval
        // and a second is dead: closed, and made again.
        const limit = session.ping * 1500 + 1000;
        this.heard = Date.now();
        this.pinger = setInterval(() => {
          if (Date.now() - this.heard > limit) this._closed(1006, "no heartbeat");
        }, session.ping * 500);
        return;
      }
      let unanswered = false;
      this.pinger = setInterval(() => {
        if (unanswered) return this._closed(1006, "no answer to ping");
        unanswered = true;
        this.send({ op: "ping" }).then(() => (unanswered = false), () => {});
      }, PING_EVERY);
    }
    // With getToken, a connection token is replaced before it expires (`refresh`), so the
    // connection is not closed with 4002: a quarter of its life before, at most 30 s.
    _refreshBefore(expires) {
      clearTimeout(this.refresher);
      const rt = this.rt;
      if (!expires || !rt.getToken) return;
      this.refresher = setTimeout(async () => {
        if (this.ws === null) return;
        try {
          const token = await rt.getToken();
          if (this.ws === null) return;
          const result = await this.send({ op: "refresh", token });
          rt.token = token;
          this._refreshBefore(result.expires);
        } catch (error) {
          // Refused, or getToken failed: at expiry the server closes (4002) and the client
          // reconnects with a new token from getToken.
        }
      }, refreshDelay(expires));
    }
    // A subscription's own getToken replaces its subscription token the same way
    // (`sub_refresh`), so the server does not end it (109) when the token expires.
    _subRefreshBefore(sub, expires) {
      clearTimeout(sub.refresher);
      const getToken = sub.handlers.getToken;
      if (!expires || !getToken) return;
      const live = () => this.ws !== null && this.rt.subs.get(sub.channel) === sub;
      sub.refresher = setTimeout(async () => {
        if (!live()) return;
        try {
          const token = await getToken.call(sub.handlers, sub.channel);
          if (!live()) return;
          const result = await this.send({ op: "sub_refresh", channel: sub.channel, token });
          sub.token = token;
          this._subRefreshBefore(sub, result.expires);
        } catch (error) {
          // Refused, or getToken failed: at expiry the server ends the subscription (onError).
        }
      }, refreshDelay(expires));
    }
    subscribe(sub) {
      const asked = sub.epoch !== null;
      this.send({ op: "subscribe", ...this._subscription(sub) }).then(
        (result) => this._subscribeAnswered(sub, result, asked),
        (error) => this._subscribeRefused(sub, error),
      );
    }
    // What a subscribe asks: {channel, since?, token?, presence_diff?, filter?}.
    _subscription(sub) {
      const fields = { channel: sub.channel };
      if (sub.handlers.filter) fields.filter = sub.handlers.filter;
      if (sub.epoch !== null) fields.since = { offset: sub.offset, epoch: sub.epoch };
      if (sub.token) fields.token = sub.token;
      if (sub.handlers.onPresenceDiff) fields.presence_diff = true;
      if (sub.handlers.delta) fields.delta = sub.handlers.delta;
      return fields;
    }
    _subscribeAnswered(sub, result, asked) {
      if (this.rt.subs.get(sub.channel) !== sub) return;
      sub._subscribed(result, asked);
      this._subRefreshBefore(sub, result.expires);
    }
    _subscribeRefused(sub, error) {
      if (error.code === 0 || error.code === 105) return; // dropped: made again later
      if (error.temporary || error.code === BROKER_FAILED) return this._subscribeLater(sub);
      this.rt._ended(sub, error);
    }
    // The server's broker failed this subscribe: ask again after a pause that grows.
    _subscribeLater(sub) {
      const rt = this.rt;
      sub.retries += 1;
      const delay = Math.min(rt.backoffMax, rt.backoffMin * 2 ** sub.retries);
      setTimeout(() => {
        if (this.ws !== null && rt.subs.get(sub.channel) === sub) this.subscribe(sub);
      }, delay * (0.5 + Math.random() / 2));
    }
    unsubscribe(sub) {
      this.send({ op: "unsubscribe", channel: sub.channel }).catch(() => {});
    }
    // A delta did not apply: make the subscription again from its position (recovering).
    resubscribe(sub) {
      this.unsubscribe(sub);
      this.subscribe(sub);
    }
    call(op, fields) {
      return this.send({ op, ...fields });
    }
    send(message) {
      const id = this.nextId++;
      return new Promise((resolve, reject) => {
        this.pending.set(id, { resolve, reject });
        const command = { id, ...message };
        if (this.maxBatch <= 1) return this.ws.send(JSON.stringify(command));
        this.outbox.push(command);
        if (this.outbox.length === 1) queueMicrotask(() => this._flush());
      });
    }
    // The commands of this tick: one message, a JSON array when there are several.
    _flush() {
      const outbox = this.outbox;
      this.outbox = [];
      if (this.ws === null) return;
      for (let i = 0; i < outbox.length; i += this.maxBatch) {
        const part = outbox.slice(i, i + this.maxBatch);
        try {
          this.ws.send(JSON.stringify(part.length === 1 ? part[0] : part));
        } catch (error) {
          // closing: the close rejects what waits for an answer
        }
      }
    }
    _message(text) {
      this.heard = Date.now();
      const message = JSON.parse(text);
      if (Array.isArray(message)) {
        for (const one of message) this._one(one); // the answers of a batch
        return;
      }
      this._one(message);
    }
    _one(message) {
      if (message.push === undefined) {
        const waiter = this.pending.get(message.id);
        if (!waiter) return;
        this.pending.delete(message.id);
        if (message.error) waiter.reject(rtError(message.error));
        else waiter.resolve(message.result);
        return;
      }
      const sub = this.rt.subs.get(message.channel);
      if (!sub) return;
      if (message.push === "pub") sub._pub(message);
      else if (message.push === "join") sub._call("onJoin", message.info);
      else if (message.push === "leave") sub._call("onLeave", message.info);
      else if (message.push === "presence") sub._call("onPresence", message);
      else if (message.push === "presence_diff") sub._call("onPresenceDiff", message);
      else if (message.push === "unsubscribe") {
        // 112: the stream started a new epoch: subscribe again (the answer says
        // recovered: false). Anything else (109: subscription token expired) ends it.
        if (message.code === 112) this.subscribe(sub);
        else this.rt._ended(sub, rtError(message));
      }
    }
    close() {
      const ws = this.ws;
      if (!ws) return;
      this.ws = null;
      clearInterval(this.pinger);
      clearTimeout(this.refresher);
      for (const sub of this.rt.subs.values()) clearTimeout(sub.refresher);
      ws.onclose = ws.onmessage = ws.onopen = null;
      ws.close(1000);
      for (const waiter of this.pending.values()) {
        waiter.reject(rtError({ code: 0, message: "disconnected" }));
      }
      this.pending.clear();
    }
    _closed(code, reason) {
      if (this.ws === null) return;
      this.close();
      this.rt._dropped(code, reason);
    }
  }

  // SSE and polling: publish, history and presence are plain HTTP requests.
  class HTTPTransport {
    constructor(rt, name) {
      this.rt = rt;
      this.name = name;
    }
    call(op, fields) {
      const rt = this.rt;
      if (op === "publish") {
        const headers = { "Content-Type": "application/json" };
        if (rt.token) headers.Authorization = `Bearer ${rt.token}`;
        const body = { channel: fields.channel, data: fields.data };
        if (fields.idempotency_key) body.idempotency_key = fields.idempotency_key;
        if (fields.tags) body.tags = fields.tags;
        const query = this.query([], false);
        return this._fetch(`/client/publish${query ? "?" : ""}${query}`, {
          method: "POST",
          headers,
          body: JSON.stringify(body),
        });
      }
      if (op === "history") {
        const query = [["channel", fields.channel]];
        if (fields.since) {
          const { offset, epoch } = fields.since;
          query.push(["since", `${fields.channel}:${offset}:${epoch}`]);
        }
        if (fields.limit !== undefined) query.push(["limit", String(fields.limit)]);
        if (fields.reverse) query.push(["reverse", "1"]);
        // On the WebSocket the server applies the subscription's filter to `history` itself.
        const filter = this.rt.subs.get(fields.channel)?.handlers.filter;
        if (filter) query.push(["filter", `${fields.channel}:${JSON.stringify(filter)}`]);
        return this._fetch(`/history?${this.query(query)}`);
      }
      if (op === "presence" || op === "presence_stats") {
        const query = [["channel", fields.channel]];
        if (op === "presence_stats") query.push(["stats", "1"]);
        if (fields.group) query.push(["group", fields.group]);
        return this._fetch(`/presence?${this.query(query)}`);
      }
      const message = `${op} needs the WebSocket transport`;
      return Promise.reject(rtError({ code: 108, message }));
    }
    // The query of a request: `pairs`, the token (publish sends it as a header instead) and
    // the `data` for on_connect, as JSON.
    query(pairs, withToken = true) {
      const rt = this.rt;
      if (withToken && rt.token) pairs.push(["token", rt.token]);
      if (rt.data !== undefined) pairs.push(["data", JSON.stringify(rt.data)]);
      return new URLSearchParams(pairs).toString();
    }
    async _fetch(path, init = {}) {
      let response;
      try {
        response = await fetch(this.rt.base + this.rt.prefix + path, init);
      } catch (error) {
        throw rtError({ code: 0, message: `network error: ${error.message}` });
      }
      let body = null;
      try {
        body = await response.json();
      } catch (error) {
        // not JSON: a proxy's page, say
      }
      if (body && body.error) throw rtError(body.error);
      if (!response.ok || body === null) {
        throw rtError({ code: 0, message: `HTTP ${response.status}` });
      }
      return body;
    }
    subscribe() {
      this.restart();
    }
    unsubscribe() {
      this.restart();
    }
    resubscribe() {
      this.restart();
    }
    // The stream's request was refused (`error` from the server's JSON, an Error with
    // `code`): one channel's (that subscription ends with onError and the stream goes on
    // without it) or the connection's (the client closes or retries as the code says).
    _refused(error) {
      const rt = this.rt;
      const sub = error.channel !== undefined ? rt.subs.get(error.channel) : undefined;
      if (sub && error.code !== BROKER_FAILED) {
        rt._ended(sub, error);
        return this.restart();
      }
      const code = refusalCloseCode(error.code);
      if (code !== 1006) rt.refusal = error;
      rt._dropped(code, error.message);
    }
  }

  class SSETransport extends HTTPTransport {
    constructor(rt) {
      super(rt, "sse");
    }
    open() {
      this.restart();
    }
    // (Re)open the stream for the current channels, each from its own position.
    restart() {
      this._stop();
      const subs = [...this.rt.subs.values()];
      this.asked = new Map(subs.map((sub) => [sub.channel, sub.epoch !== null]));
      if (!subs.length) {
        // nothing to stream: publish and history work without one
        if (!this.live) this._live();
        return;
      }
      const pairs = subs.flatMap(streamPairs);
      // Deltas for the stream's channels (each push says whether it is one).
      if (subs.some((sub) => sub.handlers.delta)) pairs.push(["delta", "fossil"]);
      let source;
      const url = `${this.rt.base}${this.rt.prefix}/sse?${this.query(pairs)}`;
      try {
        source = this.source = new EventSource(url);
      } catch (error) {
        return this.rt._dropped(1006, `EventSource failed: ${error.message}`);
      }
      let opened = false;
      const on = (type, fn) =>
        source.addEventListener(type, (event) => {
          if (this.source === source) fn(event.data === undefined ? null : JSON.parse(event.data));
        });
      on("open", () => {
        opened = true;
        if (!this.live) this._live();
      });
      on("subscribed", (result) => {
        const sub = this.rt.subs.get(result.channel);
        if (sub) sub._subscribed(result, this.asked.get(result.channel));
      });
      on("pub", (push) => this.rt.subs.get(push.channel)?._pub(push));
      on("join", (push) => this.rt.subs.get(push.channel)?._call("onJoin", push.info));
      on("leave", (push) => this.rt.subs.get(push.channel)?._call("onLeave", push.info));
      on("presence", (push) => this.rt.subs.get(push.channel)?._call("onPresence", push));
      // A connection error (data null), or the server's `event: error` before it ends the
      // stream (109 token expired, 112 a stream restarted): reopen with our own positions,
      // not EventSource's Last-Event-ID, which names one channel only.
      on("error", (error) => {
        this._stop();
        if (error === null && !opened) return this._probe(url, source);
        // 109: the token expired (as close code 4002); 4005: the server disconnected this
        // user (final); anything else: reconnect.
        const code = !error ? 1006 : error.code === 109 ? 4002 : error.code === 4005 ? 4005 : 1006;
        this.rt._dropped(code, error ? error.message : "");
      });
    }
    // The stream failed before it opened, and EventSource cannot say why: ask the server
    // once what it would answer (`probe=1`: no stream, nothing subscribed) to tell a refusal
    // (a channel's or the connection's) from a network failure.
    async _probe(url, source) {
      let error = { code: 0, message: "EventSource failed" };
      try {
        const response = await fetch(`${url}&probe=1`);
        if (!response.ok) error = (await response.json()).error || error;
      } catch (failure) {
        // not JSON, or no network: a failure to retry
      }
      if (this.source !== null || this.rt.transport !== this || this.probed === source) return;
      this.probed = source;
      this._refused(rtError(error));
    }
    _live() {
      this.live = true;
      this.rt._connected({});
    }
    _stop() {
      if (this.source) this.source.close();
      this.source = null;
    }
    close() {
      this._stop();
      this.live = false;
    }
  }

  class PollTransport extends HTTPTransport {
    constructor(rt) {
      super(rt, "poll");
      this.generation = 0;
    }
    open() {
      this.restart();
    }
    restart() {
      if (this.abort) this.abort.abort();
      this._loop(++this.generation);
    }
    async _loop(generation) {
      const rt = this.rt;
      const asked = new Map();
      while (generation === this.generation) {
        const subs = [...rt.subs.values()];
        if (!subs.length) {
          if (!this.live) this._live();
          return; // restarted by the next subscribe
        }
        const pairs = subs.flatMap(streamPairs);
        for (const sub of subs) {
          if (!asked.has(sub.channel)) asked.set(sub.channel, sub.epoch !== null);
        }
        // The first poll, or a channel without a position yet: ask without waiting, to
        // know at once that polling works and where every channel stands.
        const fresh = !this.live || subs.some((sub) => sub.epoch === null);
        pairs.push(["timeout", fresh ? "0" : String(POLL_TIMEOUT)]);
        const abort = (this.abort = new AbortController());
        let answer;
        try {
          // no-store: Chromium otherwise holds back identical GETs (tabs polling the same
          // channels) behind the first one, its HTTP cache lock
          answer = await this._fetch(`/poll?${this.query(pairs)}`, {
            signal: abort.signal,
            cache: "no-store",
          });
        } catch (error) {
          if (generation !== this.generation) return;
          this.generation++;
          if (error.channel === undefined) this.live = false;
          return this._refused(error);
        }
        if (generation !== this.generation) return;
        if (!this.live) this._live();
        for (const [channel, result] of Object.entries(answer.channels)) {
          const sub = rt.subs.get(channel);
          if (!sub) continue;
          if (asked.get(channel) !== undefined) {
            // the first answer since (re)starting: as a subscribe's
            sub._subscribed({ channel, ...result }, asked.get(channel));
            asked.set(channel, undefined);
          } else if (!result.recovered) {
            sub.offset = result.offset;
            sub.epoch = result.epoch;
            sub._call("onUnrecovered", { channel, ...result });
          } else {
            for (const pub of result.publications) sub._pub(pub);
            sub.epoch = result.epoch;
            if (result.offset > sub.offset) sub.offset = result.offset; // past a filter's skips
          }
        }
      }
    }
    _live() {
      this.live = true;
      this.rt._connected({});
    }
    close() {
      this.generation++;
      this.live = false;
      if (this.abort) this.abort.abort();
    }
  }

  const TRANSPORTS = {
    websocket: (rt) => new WebSocketTransport(rt),
    sse: (rt) => new SSETransport(rt),
    poll: (rt) => new PollTransport(rt),
  };

  // --- the client ---------------------------------------------------------------------

  class Rtserve {
    constructor(options = {}) {
      this.base = (options.url || global.location.origin).replace(/\/+$/, "");
      this.prefix = (options.prefix || "/rt").replace(/\/+$/, "");
      this.token = options.token || null;
      this.getToken = options.getToken || null;
      this.data = options.data;
      this.transports = (options.transports || ["websocket", "sse", "poll"]).filter((name) => {
        if (name === "websocket") return typeof global.WebSocket === "function";
        if (name === "sse") return typeof global.EventSource === "function";
        return name === "poll";
      });
      if (!this.transports.length) this.transports = ["poll"];
      this.fallbackAfter = positive(options, "fallbackAfter", 2);
      this.backoffMin = positive(options, "backoffMin", 250);
      this.backoffMax = positive(options, "backoffMax", 10000);
      if (this.backoffMax < this.backoffMin) {
        throw new RangeError("rtserve.js: backoffMax must be at least backoffMin");
      }
      this.subs = new Map(); // channel -> Subscription
      this.listeners = { state: [] };
      this.waiting = []; // [op, fields, resolve, reject] made while not connected
      this.state = "disconnected";
      this.transport = null; // the current one
      this.which = 0; // index in this.transports
      this.failures = 0; // failures before connecting, on this transport
      this.attempt = 0; // reconnects since the last connected
      this.started = false;
      this.closed = false;
      this.session = null;
      this.refusal = null;
    }

    on(event, fn) {
      (this.listeners[event] = this.listeners[event] || []).push(fn);
      return this;
    }

    connect() {
      if (this.started && !this.closed) return this;
      if (this.closed) {
        // Again after close() (or a final close code): from the first transport, afresh.
        Object.assign(this, { which: 0, failures: 0, attempt: 0, refusal: null });
      }
      this.started = true;
      this.closed = false;
      this._open();
      return this;
    }

    subscribe(channel, handlers = {}) {
      let sub = this.subs.get(channel);
      if (sub) return sub;
      sub = new Subscription(this, channel, handlers);
      this.subs.set(channel, sub);
      if (this.state === "connected") this.transport.subscribe(sub);
      return sub;
    }

    publish(channel, data, options = {}) {
      return this._command("publish", { channel, data, ...options });
    }

    history(channel, options = {}) {
      return this._command("history", { channel, ...options });
    }

    presence(channel, options = {}) {
      return this._command("presence", { channel, ...options });
    }

    presenceStats(channel) {
      return this._command("presence_stats", { channel });
    }

    rpc(method, data) {
      return this._command("rpc", { method, data }).then((result) => result.data);
    }

    close() {
      if (this.closed && this.state === "closed") return;
      this.closed = true;
      clearTimeout(this.retryTimer);
      if (this.transport) this.transport.close();
      this.transport = null;
      this._reject(rtError({ code: 0, message: "closed" }));
      this._state("closed", {});
    }

    // --- inside -----------------------------------------------------------------------

    _command(op, fields) {
      if (this.closed) return Promise.reject(rtError({ code: 0, message: "closed" }));
      if (this.state === "connected") return this.transport.call(op, fields);
      return new Promise((resolve, reject) => this.waiting.push([op, fields, resolve, reject]));
    }

    _reject(error) {
      for (const [, , , reject] of this.waiting) reject(error);
      this.waiting = [];
    }

    _unsubscribe(sub) {
      if (this.subs.get(sub.channel) !== sub) return;
      this.subs.delete(sub.channel);
      clearTimeout(sub.refresher);
      if (this.state === "connected") this.transport.unsubscribe(sub);
    }

    _resubscribe(sub) {
      if (sub.resubscribing || this.state !== "connected") return; // a reconnect makes it again
      if (this.subs.get(sub.channel) !== sub) return;
      sub.resubscribing = true;
      this.transport.resubscribe(sub);
    }

    _ended(sub, error) {
      if (this.subs.get(sub.channel) === sub) this.subs.delete(sub.channel);
      clearTimeout(sub.refresher);
      sub._call("onError", error);
    }

    _state(state, info) {
      this.state = state;
      const detail = { transport: this.transport ? this.transport.name : null, ...info };
      for (const fn of this.listeners.state || []) {
        try {
          fn(state, detail);
        } catch (error) {
          console.error("rtserve.js: state listener failed", error);
        }
      }
    }

    async _open() {
      if (this.closed) return;
      const transport = (this.transport = TRANSPORTS[this.transports[this.which]](this));
      this._state("connecting", { attempt: this.attempt });
      if (this.getToken) {
        try {
          this.token = await this.getToken();
        } catch (error) {
          this.transport = null;
          this._state("disconnected", { code: 0, reason: `no token: ${error.message}` });
          return this._retry(false);
        }
        if (this.closed || this.transport !== transport) return;
      }
      try {
        transport.open();
      } catch (error) {
        this._dropped(1006, `${transport.name} failed: ${error.message}`); // blocked, say
      }
    }

    _connected(info) {
      this.session = info.session || null;
      this.refusal = null;
      this.attempt = 0;
      this.failures = 0;
      this._state("connected", info);
      const waiting = this.waiting;
      this.waiting = [];
      for (const [op, fields, resolve, reject] of waiting) {
        this.transport.call(op, fields).then(resolve, reject);
      }
    }

    _dropped(code, reason) {
      if (this.closed) return;
      const wasConnected = this.state === "connected";
      if (this.transport) this.transport.close();
      if (FINAL.has(code) || (code === 4002 && !this.getToken)) {
        const error = this.refusal || rtError({ code, message: reason });
        this.closed = true;
        this._reject(error);
        return this._state("closed", { code, reason, error: this.refusal });
      }
      this._state("disconnected", { code, reason });
      this._retry(!wasConnected);
    }

    _retry(failed) {
      // Failing before connecting, fallbackAfter times in a row: the next transport (after
      // the last, the first again: the network may have come back).
      if (failed && ++this.failures >= this.fallbackAfter && this.transports.length > 1) {
        this.failures = 0;
        this.which = (this.which + 1) % this.transports.length;
        this.attempt = 0;
      }
      const delay = Math.min(this.backoffMax, this.backoffMin * 2 ** this.attempt);
      this.attempt += 1;
      clearTimeout(this.retryTimer);
      this.retryTimer = setTimeout(() => this._open(), delay * (0.5 + Math.random() / 2));
    }
  }

  Rtserve.applyDelta = applyDelta;
  global.Rtserve = Rtserve;
  if (typeof module === "object" && module.exports) module.exports = Rtserve;
})(typeof window !== "undefined" ? window : globalThis);
