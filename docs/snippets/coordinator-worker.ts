// coordinator/index.ts: the coordinator as a Worker of its own, bound by several apps
export { ConnectionCoordinator } from "leasegate/workers";

export default {
  fetch: () => new Response("leasegate coordinator", { status: 404 }),
} satisfies ExportedHandler;
