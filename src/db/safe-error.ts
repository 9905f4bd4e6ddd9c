/** Limits of {@link serializeError}. */
export interface SerializeOptions {
  /** Upper bound of the JSON text, in bytes (UTF-16 units, close enough for a bound). */
  readonly maxBytes: number;
  /** How deep causes and nested objects are followed. */
  readonly maxDepth: number;
  /** Literal secrets (passwords, tokens) to blank wherever they appear. */
  readonly secrets: readonly string[];
  /**
   * `false` (the default): a database error keeps its codes and names only (SQLSTATE, severity,
   * schema, table, column, constraint, data type), never its message, detail, hint, stack or the
   * values in its query, since those quote row data ("Failing row contains …"). `true`
   * (`DB_LOG_DETAIL=on`): everything, bounded and with credentials blanked.
   */
  readonly detail: boolean;
}

export const DEFAULT_SERIALIZE: SerializeOptions = { maxBytes: 8 * 1024, maxDepth: 4, secrets: [], detail: false };

const MAX_STRING = 1000;
const MAX_KEYS = 30;

// Credentials in a URL (`postgres://user:secret@host`), in key=value strings (`password=secret`),
// and in JSON-ish text (`"password":"secret"`).
const URL_CREDENTIALS = /\b([a-z][a-z0-9+.-]*:\/\/[^:/?#@\s]*:)([^@\s]*)@/gi;
const KEY_VALUE = /\b(password|passwd|pwd|secret|token|apikey|api_key)(\s*[=:]\s*"?)([^\s"&;,}]+)/gi;

/**
 * Blanks passwords in connection strings and `password=` pairs, and every literal in `secrets`.
 *
 * @example
 * redact("postgres://app:hunter2@db/x") // "postgres://app:***@db/x"
 */
export function redact(text: string, secrets: readonly string[] = []): string {
  let out = text.replace(URL_CREDENTIALS, "$1***@").replace(KEY_VALUE, "$1$2***");
  for (const secret of secrets) {
    if (secret.length >= 3) out = out.split(secret).join("***");
  }
  return out;
}

// Fields whose value is a credential whatever it looks like (node-postgres clients keep `password`).
const SECRET_KEY = /pass(word|wd)?$|secret|token|api_?key|authorization|cookie/i;

const KEYS = [
  "name",
  "code",
  "message",
  "severity",
  "detail",
  "hint",
  "routine",
  "errno",
  "syscall",
  "retryable",
  "retryAfterMs",
  "stack",
];

// What a database error may show without `detail`: codes and the names of what it is about, in
// node-postgres's / Neon's spelling (`table`) and postgres.js's (`table_name`).
const NAME_KEYS = [
  "schema",
  "table",
  "column",
  "constraint",
  "dataType",
  "schema_name",
  "table_name",
  "column_name",
  "constraint_name",
  "data_type_name",
];
const PLAIN_KEYS = [
  "name",
  "code",
  "severity",
  "routine",
  "errno",
  "syscall",
  "retryable",
  "retryAfterMs",
  ...NAME_KEYS,
];

/** A Postgres server error: a five-character SQLSTATE code (`23502`, `42P01`). */
function isServerError(obj: object): boolean {
  const code = read(obj, "code");
  return typeof code === "string" && /^[0-9A-Z]{5}$/.test(code) && read(obj, "severity") !== undefined;
}

/**
 * A statement's text with its literal values replaced by `?`: strings, dollar-quoted strings and
 * numbers. What is left (keywords, names, `$1` placeholders) says which statement it was.
 *
 * @example
 * withoutValues("INSERT INTO notes (body, n) VALUES ('Ann', 42)") // "INSERT INTO notes (body, n) VALUES (?, ?)"
 */
export function withoutValues(text: string): string {
  return text
    .replace(/\$([A-Za-z_]*)\$[\s\S]*?\$\1\$/g, "?")
    .replace(/[EeBbXxUu]?'(?:[^']|'')*'?/g, "?")
    .replace(/(?<![\w$])-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?\b/g, "?");
}

/**
 * A plain, bounded, JSON-safe copy of any thrown value, for logs. Survives circular references
 * (`[Circular]`), BigInt (as a string), getters that throw, causes nested past `maxDepth` and huge
 * messages; the JSON text never exceeds `maxBytes`; credentials are redacted. Never throws.
 *
 * @example
 * console.error(JSON.stringify({ event: "query_failed", error: serializeError(e) }));
 */
export function serializeError(error: unknown, options: Partial<SerializeOptions> = {}): Record<string, unknown> {
  const o = { ...DEFAULT_SERIALIZE, ...options };
  const walk: Walk = { o, seen: new WeakSet<object>() };
  let result: Record<string, unknown>;
  try {
    const p = plain(walk, error, 0);
    result = typeof p === "object" && p !== null && !Array.isArray(p) ? (p as Record<string, unknown>) : { value: p };
  } catch {
    result = { message: "[Unserializable]" };
  }
  return bound(result, o.maxBytes);
}

/** One serialization's limits and the objects it has entered (for `[Circular]`). */
interface Walk {
  o: SerializeOptions;
  seen: WeakSet<object>;
}

function shortened(walk: Walk, s: string): string {
  const clean = redact(s, walk.o.secrets);
  return clean.length > MAX_STRING ? `${clean.slice(0, MAX_STRING)}…[${clean.length - MAX_STRING} more]` : clean;
}

function read(obj: object, key: string): unknown {
  try {
    return (obj as Record<string, unknown>)[key];
  } catch {
    return "[Throws]";
  }
}

function plain(walk: Walk, value: unknown, depth: number): unknown {
  switch (typeof value) {
    case "string":
      return shortened(walk, value);
    case "bigint":
      return `${value}n`;
    case "number":
    case "boolean":
      return value;
    case "undefined":
      return undefined;
    case "symbol":
    case "function":
      return `[${typeof value}]`;
  }
  if (value === null) return null;
  const obj = value as object;
  if (walk.seen.has(obj)) return "[Circular]";
  if (depth >= walk.o.maxDepth) return "[Truncated]";
  walk.seen.add(obj);
  if (Array.isArray(obj)) return obj.slice(0, MAX_KEYS).map((v) => plain(walk, v, depth + 1));
  return plainObject(walk, obj, depth);
}

function plainObject(walk: Walk, obj: object, depth: number): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const server = !walk.o.detail && isServerError(obj);
  const keys = server
    ? PLAIN_KEYS
    : obj instanceof Error
      ? [...KEYS, ...safeKeys(obj).filter((k) => !KEYS.includes(k))].filter((k) => walk.o.detail || k !== "stack")
      : safeKeys(obj);
  let kept = 0;
  for (const key of keys) {
    if (kept >= MAX_KEYS) break;
    if (key === "cause" || key === "query" || key === "parameters" || key === "args") continue;
    const v = SECRET_KEY.test(key) ? "***" : plain(walk, read(obj, key), depth + 1);
    if (v !== undefined) {
      out[key] = v;
      kept++;
    }
  }
  // The failing query's parameters may hold personal data, and so may literals in its text: the
  // text is kept shortened, and without its values unless `detail` is on.
  const query = read(obj, "query");
  if (typeof query === "string")
    out.query = shortened(walk, (walk.o.detail ? query : withoutValues(query)).slice(0, 200));
  const cause = read(obj, "cause");
  if (cause !== undefined) out.cause = plain(walk, cause, depth + 1);
  return out;
}

function safeKeys(obj: object): string[] {
  try {
    return Object.keys(obj);
  } catch {
    return [];
  }
}

// Drops the deepest cause first, then the stack, then shortens the message, until it fits.
function bound(value: Record<string, unknown>, maxBytes: number): Record<string, unknown> {
  let current = value;
  const size = () => JSON.stringify(current).length;
  for (let i = 0; i < 10 && size() > maxBytes; i++) {
    const chain: Record<string, unknown>[] = [current];
    while (typeof chain.at(-1)!.cause === "object" && chain.at(-1)!.cause !== null)
      chain.push(chain.at(-1)!.cause as Record<string, unknown>);
    if (chain.length > 1) {
      chain.at(-2)!.cause = "[Truncated]";
      continue;
    }
    current = { name: current.name, code: current.code, message: current.message, truncated: true };
  }
  if (size() > maxBytes) {
    current = {
      name: current.name,
      code: current.code,
      message: String(current.message ?? "").slice(0, Math.max(0, maxBytes - 200)),
      truncated: true,
    };
  }
  return current;
}
