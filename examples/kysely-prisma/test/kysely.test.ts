// The Kysely Worker module itself, called with the env a test gives it (`#kysely`: this package's own import map).
import worker from "#kysely";
import { describeNotesWorker } from "./support.ts";

describeNotesWorker("Kysely", worker);
