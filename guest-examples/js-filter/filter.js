// A small rule-language filter plugin for the automation host, in JavaScript.
//
// Built with ComponentizeJS (StarlingMonkey) against the host's WIT (world
// `filter-plugin`, package automation:plugin@0.1.0). The module exports an
// object named after the exported interface (`filter`).
//
// The rule language (identical in ../python-filter/app.py):
//
//     rule   := kind ":" value ("," value)*
//     kind   := "sender" | "label"
//     value  := one or more characters other than ","; surrounding blanks
//               (space, tab, CR, LF) are trimmed and a value may not be
//               empty after trimming
//
// - `sender:alice,bob` matches when payload.sender.login is one of the values.
// - `label:bug` (or `label:bug,security`) matches when any name in
//   payload.pull_request.labels[].name or payload.issue.labels[].name is one
//   of the values.
//
// Comparisons are exact (case-sensitive). A missing or mistyped field is no
// match, not an error. A payload that is not JSON makes every expression an
// `invalid-input` error; an invalid expression is an `invalid-input` error
// with the same text `validate` gives.
//
// WIT mapping (ComponentizeJS): records are plain objects with camelCase
// fields; a variant is `{ tag, val }`; a `result` inside a list is
// `{ tag: 'ok', val }` / `{ tag: 'err', val }`; a function whose own return
// type is `result<_, E>` returns normally for `ok` and throws the `E` value
// for `err`.

const KINDS = new Set(["sender", "label"]);
const MAX_EXPRESSION_BYTES = 4096;
const MAX_CACHE = 1024;
const USAGE = 'expected "sender:<login>[,<login>...]" or "label:<name>[,<name>...]"';

/** @type {Map<string, {kind: string, values: Set<string>} | string>} */
const cache = new Map();

// UTF-8 length without TextEncoder (the QuickJS backend has no TextEncoder).
function utf8Length(s) {
  let n = 0;
  for (const ch of s) {
    const c = ch.codePointAt(0);
    n += c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
  }
  return n;
}

const trimBlanks = (s) => s.replace(/^[ \t\r\n]+|[ \t\r\n]+$/g, "");
const quote = (s) => JSON.stringify(s);

/** Parses an expression into {kind, values} or returns an error message. */
function parseRule(expression) {
  const size = utf8Length(expression);
  if (size > MAX_EXPRESSION_BYTES) {
    return `expression is ${size} bytes long; the limit is ${MAX_EXPRESSION_BYTES}`;
  }
  const text = trimBlanks(expression);
  if (text === "") {
    return `empty expression: ${USAGE}`;
  }
  const colon = text.indexOf(":");
  if (colon < 0) {
    return `missing ":" in ${quote(text)}: ${USAGE}`;
  }
  const kind = trimBlanks(text.slice(0, colon));
  if (!KINDS.has(kind)) {
    return `unknown rule kind ${quote(kind)} before ":": expected "sender" or "label"`;
  }
  const values = new Set();
  const parts = text.slice(colon + 1).split(",");
  for (let i = 0; i < parts.length; i++) {
    const value = trimBlanks(parts[i]);
    if (value === "") {
      return `${kind}: value ${i + 1} is empty: give a comma-separated list such as "${kind}:a,b"`;
    }
    values.add(value);
  }
  return { kind, values };
}

function compiled(expression) {
  let rule = cache.get(expression);
  if (rule === undefined) {
    rule = parseRule(expression);
    if (cache.size >= MAX_CACHE) cache.clear();
    cache.set(expression, rule);
  }
  return rule;
}

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

function get(obj, ...path) {
  for (const key of path) {
    if (!isObject(obj) || !Object.prototype.hasOwnProperty.call(obj, key)) return undefined;
    obj = obj[key];
  }
  return obj;
}

function labelNames(payload) {
  const names = [];
  for (const container of ["pull_request", "issue"]) {
    const labels = get(payload, container, "labels");
    if (Array.isArray(labels)) {
      for (const label of labels) {
        const name = get(label, "name");
        if (typeof name === "string") names.push(name);
      }
    }
  }
  return names;
}

function evaluate(rule, payload) {
  if (rule.kind === "sender") {
    const login = get(payload, "sender", "login");
    return typeof login === "string" && rule.values.has(login);
  }
  return labelNames(payload).some((name) => rule.values.has(name));
}

const invalidInput = (message) => ({ tag: "invalid-input", val: message });

export const filter = {
  /** result<_, error>: return for ok, throw the error variant for err. */
  validate(expression) {
    const rule = compiled(expression);
    if (typeof rule === "string") throw invalidInput(rule);
  },

  /** list<result<bool, error>>: one { tag: 'ok' | 'err', val } per expression. */
  matches(event, expressions) {
    let payload;
    try {
      payload = JSON.parse(event.payload);
    } catch (e) {
      // A syntax error is the payload's fault; anything else (SpiderMonkey
      // throws a bare "out of memory" when the heap cannot grow) is ours.
      const error =
        e instanceof SyntaxError
          ? invalidInput(`the event payload is not valid JSON: ${e.message}`)
          : { tag: "internal", val: `cannot parse the event payload: ${String(e)}` };
      return expressions.map(() => ({ tag: "err", val: error }));
    }
    return expressions.map((expression) => {
      const rule = compiled(expression);
      return typeof rule === "string"
        ? { tag: "err", val: invalidInput(rule) }
        : { tag: "ok", val: evaluate(rule, payload) };
    });
  },
};
