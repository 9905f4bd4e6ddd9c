import { existsSync, readFileSync, readdirSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { describe, expect, it } from "vitest";

// Every TypeScript snippet in the docs is a file that something compiles: under docs/snippets/ the
// type check (`npx tsc --noEmit -p .`, the package names resolved to the sources by the `source`
// export condition), under examples/ the example's own tests. Here we check that each ```ts block
// is marked with its file and that every marked block (```ts, ```toml, ```json, …) says exactly
// what the file says, so a block cannot drift from code that compiles and runs; and that the
// docs' relative links still resolve.
const root = join(import.meta.dirname, "..", "..");
const snippetDir = "docs/snippets";
// The Worker guide shows every file a user of either example Worker writes.
const WORKER_GUIDE = "docs/workers.md";
const EXAMPLE_FILES = [
  ...["plain-worker", "hono-drizzle"].flatMap((example) =>
    ["package.json", "wrangler.toml", "src/index.ts", "tsconfig.json", "vitest.config.ts"].map(
      (f) => `examples/${example}/${f}`,
    ),
  ),
  // The node-postgres plain Worker: what differs from the postgres.js one.
  ...["package.json", "src/index.ts"].map((f) => `examples/plain-worker-pg/${f}`),
];
const MARKER = /^<!--\s*snippet:\s*(\S+)\s*-->$/;
const TS_LANGS = new Set(["ts", "typescript", "tsx", "mts"]);

const pages = [
  "README.md",
  ...readdirSync(join(root, "docs"))
    .filter((f) => f.endsWith(".md"))
    .map((f) => `docs/${f}`),
];

interface Block {
  page: string;
  line: number; // 1-based line of the opening fence
  lang: string;
  content: string;
  marker: string | undefined;
}

/** A closing fence: only the fence's character, at least as many as opened it. */
function isClosing(line: string, fence: string): boolean {
  const t = line.trim();
  return t.length >= fence.length && [...t].every((c) => c === fence[0]);
}

/** Fenced code blocks (``` or ~~~, possibly indented inside a list), with the marker line before each. */
function blocks(page: string): Block[] {
  const lines = readFileSync(join(root, page), "utf8").split("\n");
  const found: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^(\s*)(`{3,}|~{3,})\s*([^\s`]*)/.exec(lines[i]!);
    if (!open) continue;
    const [, indent = "", fence = "", lang = ""] = open;
    const body: string[] = [];
    let j = i + 1;
    for (; j < lines.length; j++) {
      const line = lines[j]!;
      if (isClosing(line, fence)) break;
      body.push(line.startsWith(indent) ? line.slice(indent.length) : line);
    }
    let k = i - 1;
    while (k >= 0 && lines[k]!.trim() === "") k--;
    const marker = k >= 0 ? MARKER.exec(lines[k]!.trim())?.[1] : undefined;
    found.push({ page, line: i + 1, lang: lang.toLowerCase(), content: body.join("\n"), marker });
    i = j;
  }
  return found;
}

/** Everything outside code blocks: where headings and links are. */
function prose(page: string): string[] {
  const lines = readFileSync(join(root, page), "utf8").split("\n");
  const out: string[] = [];
  let fence: string | undefined;
  for (const line of lines) {
    const m = /^\s*(`{3,}|~{3,})/.exec(line);
    if (m) {
      if (fence === undefined) fence = m[1];
      else if (isClosing(line, fence)) fence = undefined;
      continue;
    }
    if (fence === undefined) out.push(line);
  }
  return out;
}

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered. */
function anchors(page: string): Set<string> {
  const seen = new Map<string, number>();
  const result = new Set<string>();
  for (const line of prose(page)) {
    const m = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (!m) continue;
    const text = m[1]!.replace(/\[([^\]]*)\]\([^)]*\)/g, "$1");
    const base = text
      .toLowerCase()
      .replace(/[^\p{L}\p{N}\s_-]/gu, "")
      .replace(/\s/g, "-");
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    result.add(n === 0 ? base : `${base}-${n}`);
  }
  return result;
}

const all = pages.flatMap(blocks);

describe("docs", () => {
  it("finds the README and the docs pages, with TypeScript blocks in them", () => {
    expect(pages).toContain("README.md");
    expect(pages).toContain("docs/api.md");
    expect(all.filter((b) => TS_LANGS.has(b.lang)).length).toBeGreaterThan(3);
  });

  it("keeps the README short", () => {
    const lines = readFileSync(join(root, "README.md"), "utf8").trimEnd().split("\n").length;
    expect(lines).toBeLessThanOrEqual(250);
  });

  it("marks every TypeScript block with the snippet file it shows", () => {
    const unmarked = all
      .filter((b) => TS_LANGS.has(b.lang) && b.marker === undefined)
      .map((b) => `${b.page}:${b.line}`);
    expect(unmarked, "a ```ts block needs `<!-- snippet: <repository path> -->` on the line before it").toEqual([]);
  });

  for (const b of all.filter((b) => b.marker !== undefined)) {
    it(`${b.page}:${b.line} shows ${b.marker} exactly`, () => {
      const file = b.marker!;
      expect(relative(root, join(root, file)), "a path inside the repository, relative to its root").toBe(file);
      expect(existsSync(join(root, file)), `${file} exists`).toBe(true);
      expect(b.content.trim()).toBe(readFileSync(join(root, file), "utf8").trim());
    });
  }

  it("shows every snippet file somewhere, and the type check compiles them", () => {
    const shown = new Set(all.map((b) => b.marker));
    const files = readdirSync(join(root, snippetDir)).filter((f) => f.endsWith(".ts"));
    expect(
      files.filter((f) => !shown.has(`${snippetDir}/${f}`)),
      "snippet files no page shows",
    ).toEqual([]);
    const tsconfig = JSON.parse(readFileSync(join(root, "tsconfig.json"), "utf8")) as {
      include: string[];
      compilerOptions: { customConditions?: string[] };
    };
    expect(tsconfig.include).toContain(snippetDir);
    // Snippets import the package by name; the `source` export condition resolves it to the sources.
    expect(tsconfig.compilerOptions.customConditions).toEqual(["source"]);
  });

  it(`shows every file of the example Workers a user writes in ${WORKER_GUIDE}, and the README points there`, () => {
    const shown = new Set(all.filter((b) => b.page === WORKER_GUIDE).map((b) => b.marker));
    expect(
      EXAMPLE_FILES.filter((f) => !shown.has(f)),
      `files of the example ${WORKER_GUIDE} does not show`,
    ).toEqual([]);
    expect(all.filter((b) => b.page === "README.md").map((b) => b.marker)).toContain(
      "docs/snippets/worker-quickstart.ts",
    );
    expect(prose("README.md").join("\n")).toContain(`](${WORKER_GUIDE})`);
  });

  it("has relative links that resolve, anchors included", () => {
    const broken: string[] = [];
    for (const page of pages) {
      for (const line of prose(page)) {
        for (const m of line.matchAll(/\]\(([^)\s]+)\)/g)) {
          const target = m[1]!;
          if (/^[a-z]+:/i.test(target)) continue; // http:, https:, mailto:
          const [path = "", anchor] = target.split("#");
          const file = path === "" ? page : relative(root, join(root, dirname(page), path));
          if (!existsSync(join(root, file))) broken.push(`${page}: ${target} (no file ${file})`);
          else if (anchor !== undefined && file.endsWith(".md") && !anchors(file).has(anchor))
            broken.push(`${page}: ${target} (no heading #${anchor} in ${file})`);
        }
      }
    }
    expect(broken).toEqual([]);
  });
});
