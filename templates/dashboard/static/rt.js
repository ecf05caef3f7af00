// rt.js: a small, dependency-free browser client of rtserve's channel protocol
// (docs/protocol.md in rtserve). A stand-in until the official rtserve.js; its API may differ.
//
//   const rt = new RT({ data: { name: "Ada" } });   // or { token: "..." }, { getToken: async () => "..." }
//   rt.subscribe("chat:lobby", { onPub(pub) { console.log(pub.offset, pub.data); } });
//   await rt.publish("chat:lobby", { text: "hi" });
//
// One WebSocket at /rt/ws. After `connect` is answered, every subscription is made. When the
// connection drops, it reconnects with exponential backoff and subscribes again with `since`
// set to the last position it holds, so the publications it missed arrive first and none
// twice. When the server cannot give them (`recovered: false`), `onUnrecovered(result)` says
// so: reload your state (the `history` command, or your own API).
//
// new RT(options): url (default: /rt/ws on this page's host), token, getToken (called before
//   every connect; fetch a fresh token there), data (sent with connect), onState(state, detail)
//   with state "connecting", "connected", "disconnected" (will retry) or "closed" (gave up).
// rt.subscribe(channel, handlers, { token }): handlers onPub(pub), onSubscribed(result),
//   onUnrecovered(result), onJoin(info), onLeave(info), onPresence(push), onError(error).
//   pub is { channel, offset, data, info? }. Returns the subscription ({ channel, offset, epoch }).
// rt.unsubscribe(channel); rt.publish(channel, data, { idempotency_key });
// rt.history(channel, { limit, since }); rt.presence(channel); rt.call(op, fields); rt.close().
// Commands return Promises; a refusal rejects with an Error that has the server's `code`.
// Commands made while disconnected wait for the connection; those in flight when it drops
// reject with code 0 (a publish may or may not have landed: repeat it with an idempotency_key).
"use strict";

(function (global) {
  // Close codes after which reconnecting cannot help (bad message, refused, too many
  // connections, forced); 4002 (token expired) too, unless getToken can fetch a fresh one.
  const FINAL = new Set([4000, 4001, 4003, 4005]);
  const PING_EVERY = 20000; // ms; a ping unanswered by the next one drops the connection

  function rtError(error) {
    return Object.assign(new Error(error.message), { code: error.code });
  }

  class RT {
    constructor(options = {}) {
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      this.url = options.url || `${scheme}//${location.host}/rt/ws`;
      this.token = options.token || null;
      this.getToken = options.getToken || null;
      this.data = options.data;
      this.onState = options.onState || (() => {});
      this.backoffMin = options.backoffMin || 250;
      this.backoffMax = options.backoffMax || 10000;
      this.subs = new Map(); // channel -> subscription
      this.pending = new Map(); // command id -> { resolve, reject }
      this.waiting = []; // [message, resolve, reject] made while not connected
      this.nextId = 1;
      this.attempt = 0;
      this.ws = null;
      this.connected = false;
      this.closed = false;
      this.session = null; // connect's result: { client, user, expires, version }
      this.refusal = null; // the error of a refused connect
      this._open();
    }

    // --- commands ---------------------------------------------------------------------

    subscribe(channel, handlers = {}, { token } = {}) {
      let sub = this.subs.get(channel);
      if (!sub) {
        sub = { channel, handlers, token, offset: 0, epoch: null };
        this.subs.set(channel, sub);
        if (this.connected) this._subscribe(sub);
      }
      return sub;
    }

    unsubscribe(channel) {
      if (!this.subs.delete(channel) || !this.connected) return Promise.resolve({});
      return this._send({ op: "unsubscribe", channel }).catch(() => ({}));
    }

    publish(channel, data, options = {}) {
      return this.call("publish", { channel, data, ...options });
    }

    history(channel, options = {}) {
      return this.call("history", { channel, ...options });
    }

    presence(channel) {
      return this.call("presence", { channel });
    }

    call(op, fields = {}) {
      const message = { op, ...fields };
      if (this.closed) return Promise.reject(rtError({ code: 0, message: "closed" }));
      if (this.connected) return this._send(message);
      return new Promise((resolve, reject) => this.waiting.push([message, resolve, reject]));
    }

    close() {
      this.closed = true;
      clearTimeout(this.retryTimer);
      const ws = this.ws;
      if (ws) {
        this._dropped(ws, { code: 1000, reason: "closed by the page" });
        ws.close(1000);
      }
      for (const [, , reject] of this.waiting) reject(rtError({ code: 0, message: "closed" }));
      this.waiting = [];
    }

    // --- the connection ---------------------------------------------------------------

    async _open() {
      if (this.closed) return;
      this.onState("connecting", { attempt: this.attempt });
      if (this.getToken) {
        try {
          this.token = await this.getToken();
        } catch (error) {
          this.onState("disconnected", { code: 0, reason: `no token: ${error.message}` });
          return this._retry();
        }
        if (this.closed) return;
      }
      const ws = (this.ws = new WebSocket(this.url));
      ws.onmessage = (event) => this._message(ws, event.data);
      ws.onclose = (event) => this._dropped(ws, event);
      ws.onopen = () => {
        const message = { op: "connect" };
        if (this.token) message.token = this.token;
        if (this.data !== undefined) message.data = this.data;
        this._send(message, ws).then(
          (result) => this._connected(ws, result),
          (error) => {
            // Refused: the server closes the connection (4001, 4002, 4003), and that close
            // decides whether to retry. Code 100 (on_connect failed) leaves it open: retry.
            this.refusal = error;
            if (error.code === 100 && ws === this.ws) this._drop(ws, 1011, error.message);
          },
        );
      };
    }

    _connected(ws, result) {
      if (ws !== this.ws) return;
      this.session = result;
      this.connected = true;
      this.refusal = null;
      this.attempt = 0;
      this.onState("connected", result);
      for (const sub of this.subs.values()) this._subscribe(sub);
      const waiting = this.waiting;
      this.waiting = [];
      for (const [message, resolve, reject] of waiting) this._send(message).then(resolve, reject);
      let unanswered = false;
      this.pinger = setInterval(() => {
        if (unanswered) return this._drop(ws, 1006, "no answer to ping");
        unanswered = true;
        this._send({ op: "ping" }, ws).then(() => (unanswered = false), () => {});
      }, PING_EVERY);
    }

    _subscribe(sub) {
      const message = { op: "subscribe", channel: sub.channel };
      const since = sub.epoch === null ? null : { offset: sub.offset, epoch: sub.epoch };
      if (since) message.since = since;
      if (sub.token) message.token = sub.token;
      this._send(message).then(
        (result) => {
          if (this.subs.get(sub.channel) !== sub) return; // unsubscribed meanwhile
          if (since && result.recovered) {
            for (const pub of result.publications) this._pub(sub, pub);
          }
          sub.epoch = result.epoch;
          sub.offset = result.offset;
          if (since && !result.recovered) sub.handlers.onUnrecovered?.(result);
          sub.handlers.onSubscribed?.(result);
        },
        (error) => {
          if (error.code === 0 || error.code === 105) return; // dropped: made again on reconnect
          if (this.subs.get(sub.channel) === sub) this.subs.delete(sub.channel);
          sub.handlers.onError?.(error);
        },
      );
    }

    _pub(sub, pub) {
      // Offsets at or below the last one applied were seen already (recovery, or history).
      // A jump ahead means the server skipped some for a slow client (policies drop_oldest
      // and conflate): apply it anyway; ask `history` if the gap matters.
      if (pub.offset <= sub.offset) return;
      sub.offset = pub.offset;
      sub.handlers.onPub?.({ channel: sub.channel, ...pub });
    }

    _message(ws, text) {
      if (ws !== this.ws) return;
      const message = JSON.parse(text);
      if (message.push === undefined) {
        const waiter = this.pending.get(message.id);
        if (!waiter) return;
        this.pending.delete(message.id);
        if (message.error) waiter.reject(rtError(message.error));
        else waiter.resolve(message.result);
        return;
      }
      const sub = this.subs.get(message.channel);
      if (!sub) return;
      const on = sub.handlers;
      if (message.push === "pub") this._pub(sub, message);
      else if (message.push === "join") on.onJoin?.(message.info);
      else if (message.push === "leave") on.onLeave?.(message.info);
      else if (message.push === "presence") on.onPresence?.(message);
      else if (message.push === "unsubscribe") {
        // 112: the channel's stream started a new epoch; subscribe again from where we are
        // (the reply says recovered: false). Anything else (109: the subscription token
        // expired) ends the subscription.
        if (message.code === 112) this._subscribe(sub);
        else {
          this.subs.delete(sub.channel);
          on.onError?.(rtError(message));
        }
      }
    }

    _send(message, ws = this.ws) {
      const id = this.nextId++;
      return new Promise((resolve, reject) => {
        this.pending.set(id, { resolve, reject });
        ws.send(JSON.stringify({ id, ...message }));
      });
    }

    _drop(ws, code, reason) {
      this._dropped(ws, { code, reason });
      ws.close();
    }

    _dropped(ws, { code, reason }) {
      if (ws !== this.ws) return;
      this.ws = null;
      this.connected = false;
      clearInterval(this.pinger);
      for (const waiter of this.pending.values()) {
        waiter.reject(rtError({ code: 0, message: "disconnected" }));
      }
      this.pending.clear();
      if (this.closed) return this.onState("closed", { code, reason });
      if (FINAL.has(code) || (code === 4002 && !this.getToken)) {
        this.closed = true;
        const error = this.refusal || rtError({ code, message: reason });
        for (const [, , reject] of this.waiting) reject(error);
        this.waiting = [];
        return this.onState("closed", { code, reason, error: this.refusal });
      }
      this.onState("disconnected", { code, reason });
      this._retry();
    }

    _retry() {
      const delay = Math.min(this.backoffMax, this.backoffMin * 2 ** this.attempt);
      this.attempt += 1;
      this.retryTimer = setTimeout(() => this._open(), delay * (0.5 + Math.random() / 2));
    }
  }

  global.RT = RT;
})(window);
