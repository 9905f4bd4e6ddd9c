export { ConnectionCoordinator } from "leasegate/workers";

export default {
  fetch: () => new Response("leasegate coordinator", { status: 404 }),
} satisfies ExportedHandler;
