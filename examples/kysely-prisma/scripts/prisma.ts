// scripts/prisma.ts: Prisma 7 on Node, each query leased from the local adapter (`node scripts/prisma.ts`)
import { localPool } from "leasegate/local";
import { driver } from "leasegate/pg";
import { leasedAdapter } from "leasegate/prisma";
import { PrismaClient } from "#prisma-client";
import { CREATE_NOTES } from "#schema";

// DATABASE_URL, LEASE_LIMIT, LEASE_WAIT_MS, …: the same variables as the Worker's.
const pool = await localPool(process.env, { driver });
const prisma = new PrismaClient({ adapter: leasedAdapter(pool, { holder: "prisma-script" }) });
try {
  await prisma.$executeRawUnsafe(CREATE_NOTES);
  const note = await prisma.$transaction((tx) => tx.note.create({ data: { body: "from Node" } }));
  console.log(`prisma: wrote note ${note.id}; ${await prisma.note.count()} notes`);
} finally {
  await prisma.$disconnect();
  await pool.close();
}
