/**
 * V8 settings for the server process. main.ts imports this module before any other, so they hold from the start.
 *
 * Allocation-site pretenuring is off. V8 starts allocating an allocation site's objects directly in the old
 * generation once enough of them have survived a young-generation GC. Fibers waiting on Redis survive one, and a
 * burst of them (the first vote on each new poll reads its options, cache misses, every vote of the write-through
 * stages) is enough: from then on every request's fiber is born old, even one that finishes within the request,
 * and each scavenge keeps and promotes the young objects such dead fibers point to, until a full GC. What that cost
 * and what turning it off gained: README, "Performance".
 */
import { setFlagsFromString } from "node:v8"

setFlagsFromString("--no-allocation-site-pretenuring")
