import { readFileSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { constantTimeEqual } from "../../src/http/auth.ts";
import { errorResponse } from "../../src/http/respond.ts";

/**
 * Security properties checked on the source itself (a review that fails the build when it stops
 * being true), plus the pieces that run in plain Node.
 */
const ROOTS = ["src", "durable-objects", "local", "examples/pitches"];

function sources(): Array<{ path: string; text: string }> {
  const out: Array<{ path: string; text: string }> = [];
  const walk = (dir: string) => {
    let entries: string[];
    try {
      entries = readdirSync(dir);
    } catch {
      return; // a layer not built yet (local/)
    }
    for (const name of entries) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) walk(path);
      else if (path.endsWith(".ts")) out.push({ path, text: readFileSync(path, "utf8") });
    }
  };
  for (const root of ROOTS) walk(root);
  return out;
}

/** Code without comments, so JSDoc examples do not count. */
function code(text: string): string {
  return text.replace(/\/\*[\s\S]*?\*\//g, "").replace(/^\s*\/\/.*$/gm, "");
}

describe("source review", () => {
  const files = sources();

  it("reads the sources it reviews", () => {
    expect(files.map((f) => f.path)).toEqual(
      expect.arrayContaining([
        "src/http/operator.ts",
        "examples/pitches/src/app.ts",
        "durable-objects/connection-coordinator.ts",
      ]),
    );
  });

  it("passes values to SQL only as parameters: no interpolated text in unsafe() or exec()", () => {
    const offenders: string[] = [];
    for (const f of files) {
      const c = code(f.text);
      // postgres.js: `sql.unsafe(x)` runs x as text. Only named constants may go there, or a
      // statement with its values passed separately as parameters (`unsafe(text, params)`, the
      // `Database.query(text, params)` API).
      for (const m of c.matchAll(/\.unsafe\(([^)]*)\)/g)) {
        const args = m[1]!.split(",").map((a) => a.trim());
        const constant = args.length === 1 && /^[A-Z][A-Z0-9_]*$/.test(args[0]!);
        const parameterized = args.length === 2 && /^\w+$/.test(args[0]!) && /^params\b/.test(args[1]!);
        if (!constant && !parameterized) offenders.push(`${f.path}: unsafe(${m[1]})`);
      }
      // Durable Object SQLite: the statement must be a literal without interpolation; values go as `?` bindings.
      for (const m of c.matchAll(/\bsql\.exec(?:<[^>]*>)?\(\s*([`"'])([\s\S]*?)\1/g)) {
        if (m[1] === "`" && m[2]!.includes("${")) offenders.push(`${f.path}: exec(\`${m[2]!.slice(0, 40)}…\`)`);
      }
      // …or a named constant (UPPER_CASE) of this file, itself a literal whose only interpolation is placeholders.
      for (const m of c.matchAll(/\bsql\.exec(?:<[^>]*>)?\(\s*([^`"'\s][\w]*)/g)) {
        const name = m[1]!;
        const definition = new RegExp(`\\bconst ${name} = \`([^\`]*)\``).exec(c)?.[1];
        const onlyPlaceholders =
          definition !== undefined &&
          [...definition.matchAll(/\$\{([^}]*)\}/g)].every((i) =>
            /^Array\(\w+\)\.fill\("[(?, )]*"\)\.join\(", "\)$/.test(i[1]!),
          );
        if (!/^[A-Z][A-Z0-9_]*$/.test(name) || !onlyPlaceholders)
          offenders.push(`${f.path}: exec(${name}… not a literal`);
      }
      // String-built SQL passed to a tagged template call is still a parameter; concatenation into it is not.
      if (/sql\s*\(\s*["'`][^)]*\+/.test(c)) offenders.push(`${f.path}: concatenated SQL`);
    }
    expect(offenders).toEqual([]);
  });

  it("logs only through the one structured logger: no console output that could carry a token, a connection string or a query", () => {
    const offenders = files
      .filter((f) => f.path !== join("src", "db", "log.ts"))
      // Program entry points (not library code) print the address they listen on.
      .filter((f) => !/(^|[/\\])main-\w+\.ts$/.test(f.path))
      .filter((f) => /\bconsole\.\w+\(/.test(code(f.text)))
      .map((f) => f.path);
    expect(offenders).toEqual([]);
  });

  it("takes lease ids from crypto.randomUUID, never from a counter or Math.random", () => {
    const coordinator = code(readFileSync("durable-objects/connection-coordinator.ts", "utf8"));
    expect(coordinator).toMatch(/const leaseId = crypto\.randomUUID\(\);/);
    const offenders = files.filter((f) => /Math\.random\(/.test(code(f.text))).map((f) => f.path);
    expect(offenders).toEqual([]);
  });

  it("compares the operator token in constant time: one digest each, one full pass, no early exit", () => {
    const auth = code(readFileSync("src/http/auth.ts", "utf8"));
    expect(auth).toMatch(/crypto\.subtle\.digest\("SHA-256"/);
    expect(auth).toMatch(/diff \|= x\[i\]! \^ y\[i\]!/);
    // The token is never compared with === or startsWith/includes.
    expect(auth).not.toMatch(/given\s*===|===\s*token|token\s*===|\.includes\(token|startsWith\(token/);
  });
});

describe("constantTimeEqual", () => {
  it("accepts only the exact token", async () => {
    const token = "s3cret-token-value";
    expect(await constantTimeEqual(token, token)).toBe(true);
    for (const other of [
      "",
      "s3cret-token-valu",
      "s3cret-token-value ",
      "S3cret-token-value",
      "x".repeat(10_000),
      `${token}\u0000`,
    ]) {
      expect(await constantTimeEqual(other, token), JSON.stringify(other.slice(0, 20))).toBe(false);
    }
  });
});

describe("error responses", () => {
  it("never echo a driver's message, which can quote a connection string or parameters", async () => {
    const secret = "postgres://app:hunter2@db.internal:5432/prod";
    for (const error of [
      Object.assign(new Error(`connect ECONNREFUSED ${secret}`), { code: "ECONNREFUSED" }),
      Object.assign(new Error(`duplicate key value (email)=(ceo@example.com) via ${secret}`), { code: "23505" }),
      new Error(`socket closed for ${secret}`),
      new TypeError(`Cannot read properties of undefined (reading '${secret}')`),
    ]) {
      const text = await errorResponse(error).text();
      expect(text).not.toContain("hunter2");
      expect(text).not.toContain("ceo@example.com");
      expect(text).not.toContain("db.internal");
    }
  });

  it("answer a driver's failure by its code and a handler's own error as INTERNAL", async () => {
    const codeOf = async (error: unknown) =>
      ((await errorResponse(error).json()) as { error: { code: string } }).error.code;
    expect(await codeOf(Object.assign(new Error("x"), { code: "23505" }))).toBe("DATABASE_ERROR");
    expect(await codeOf(Object.assign(new Error("x"), { code: "57P01" }))).toBe("DATABASE_UNAVAILABLE");
    expect(await codeOf(new Error("socket closed"))).toBe("DATABASE_UNAVAILABLE");
    expect(await codeOf(new TypeError("undefined is not a function"))).toBe("INTERNAL");
    expect(errorResponse(new Error("a bug")).status).toBe(500);
  });
});
