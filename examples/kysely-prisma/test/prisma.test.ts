// The Prisma Worker module itself, called with the env a test gives it (`#prisma`: this package's own import map).
import worker from "#prisma";
import { describeNotesWorker } from "./support.ts";

describeNotesWorker("Prisma", worker);
