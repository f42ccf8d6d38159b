/**
 * The HTTP side, over the `Http/` folder: the route table (`Routes`), one file of handlers per feature (`Votes`,
 * `Polls`, `Health`), decoding (`Decode`), the body reader (`Body`), the edge's refusals (`Errors`) and how any
 * refusal is answered (`Reply`), the request handler (`Handler`) and the listener with its caps and shutdown
 * (`Listener`).
 */
export { MAX_BODY_BYTES } from "./Http/Body.js"
export { MAX_JSON_DEPTH, nestsDeeperThan } from "./Http/Decode.js"
export * from "./Http/Errors.js"
export { type HandlerOptions, makeApi, makeHandler } from "./Http/Handler.js"
export { layer, type ServerOptions } from "./Http/Listener.js"
export { fromError, type Reply } from "./Http/Reply.js"
export { type Route, route, ROUTES } from "./Http/Routes.js"
