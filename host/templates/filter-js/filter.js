// {{name}}: a filter plugin for automation-host, in JavaScript.
//
// An expression is `path=value`: the delivery matches when the JSON value at
// the dotted `path` of its payload, as text, is `value` (`action=opened`,
// `sender.login=octocat`, `pull_request.draft=false`). Change `parse` and
// `matchesRule` to decide what you need.

const invalidInput = (message) => ({ tag: "invalid-input", val: message });

function parse(expression) {
  const at = expression.indexOf("=");
  if (at < 0) throw invalidInput(`expected \`path=value\`, got ${JSON.stringify(expression)}`);
  const keys = expression.slice(0, at).trim().split(".");
  if (keys.some((k) => k === "")) throw invalidInput(`empty path segment in ${JSON.stringify(expression)}`);
  return { keys, value: expression.slice(at + 1).trim() };
}

function matchesRule({ keys, value }, payload) {
  let at = payload;
  for (const key of keys) {
    if (at === null || typeof at !== "object" || Array.isArray(at) || !(key in at)) return false;
    at = at[key];
  }
  return (typeof at === "string" ? at : JSON.stringify(at)) === value;
}

export const filter = {
  validate(expression) {
    parse(expression);
  },

  matches(event, expressions) {
    let payload;
    try {
      payload = JSON.parse(event.payload);
    } catch (e) {
      const error = invalidInput(`the payload is not JSON: ${String(e)}`);
      return expressions.map(() => ({ tag: "err", val: error }));
    }
    return expressions.map((expression) => {
      try {
        return { tag: "ok", val: matchesRule(parse(expression), payload) };
      } catch (error) {
        return { tag: "err", val: error };
      }
    });
  },
};
