// The part of Bun's test runner these tests use (the project's type check runs with Node's types).
declare module "bun:test" {
  export function test(name: string, fn: () => Promise<void>, timeoutMs?: number): void;
}
