/**
 * V8 settings for the server process. main.ts imports this module before any other, so they hold from the start.
 *
 * Allocation-site pretenuring is off. V8 starts allocating an allocation site's objects directly in the old
 * generation once enough of them have survived a young-generation GC. Fibers waiting on Redis survive one, and a
 * burst of them (the first vote on each new poll reads its options, cache misses, every vote of the write-through
 * stages) is enough: from then on every request's fiber is born old, even one that finishes within the request,
 * and each scavenge keeps and promotes the young objects such dead fibers point to, until a full GC. Measured in
 * batched/spread, steady state: ~400 KB promoted per scavenge and ~2 ms per scavenge with pretenuring, nothing
 * promoted and ~0.9 ms without; redis/hot ~13% more votes per second (README, "Performance").
 */
import { setFlagsFromString } from "node:v8"

setFlagsFromString("--no-allocation-site-pretenuring")
