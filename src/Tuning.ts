/**
 * V8 settings for the server process. main.ts imports this module before any other, so they hold from the start.
 *
 * Allocation-site pretenuring is off: after a burst of fibers that wait on Redis, V8 would allocate every later
 * request's fiber in the old generation, and each scavenge would promote what those dead fibers point to (see the
 * README's "Performance").
 */
import { setFlagsFromString } from "node:v8"

setFlagsFromString("--no-allocation-site-pretenuring")
