import { Schema } from "effect"

/**
 * What every refusal carries to its answer, Domain's errors and the edge's below alike: one class per refusal, and
 * `Reply.fromError` turns any of them into the JSON reply (or, for the listener, the raw answer).
 */
export interface Refusal {
  readonly status: number
  readonly code: string
  readonly message: string
  /** Extra headers the answer needs (the `Allow` of a 405, say). */
  readonly headers?: Readonly<Record<string, string>>
}

export class InvalidJson extends Schema.TaggedError<InvalidJson>()("InvalidJson", { message: Schema.String }) {
  readonly status = 400
  readonly code = "invalid_json"
}

export class InvalidRequest extends Schema.TaggedError<InvalidRequest>()("InvalidRequest", { message: Schema.String }) {
  readonly status = 400
  readonly code = "invalid_request"
}

export class InvalidPollId extends Schema.TaggedError<InvalidPollId>()("InvalidPollId", { message: Schema.String }) {
  readonly status = 400
  readonly code = "invalid_poll_id"
}

export class InvalidPoll extends Schema.TaggedError<InvalidPoll>()("InvalidPoll", { message: Schema.String }) {
  readonly status = 400
  readonly code = "invalid_poll"
}

export class RouteNotFound extends Schema.TaggedError<RouteNotFound>()("RouteNotFound", { path: Schema.String }) {
  readonly status = 404
  readonly code = "not_found"
  override get message() {
    return `no route ${this.path}`
  }
}

export class MethodNotAllowed extends Schema.TaggedError<MethodNotAllowed>()("MethodNotAllowed", {
  method: Schema.String,
  path: Schema.String,
  allow: Schema.Array(Schema.String)
}) {
  readonly status = 405
  readonly code = "method_not_allowed"
  override get message() {
    return `${this.method} is not allowed on ${this.path}; use ${this.allow.join(" or ")}`
  }
  get headers() {
    return { allow: this.allow.join(", ") }
  }
}

export class PayloadTooLarge extends Schema.TaggedError<PayloadTooLarge>()("PayloadTooLarge", {
  message: Schema.String
}) {
  readonly status = 413
  readonly code = "payload_too_large"
  // The rest of an oversized request is not wanted: the connection ends after this answer.
  readonly headers = { connection: "close" }
}

export class ExpectationFailed extends Schema.TaggedError<ExpectationFailed>()("ExpectationFailed", {}) {
  readonly status = 417
  readonly code = "expectation_failed"
  override get message() {
    return "only Expect: 100-continue is supported"
  }
}

export class RequestTimeout extends Schema.TaggedError<RequestTimeout>()("RequestTimeout", {
  headersTimeoutMs: Schema.Number,
  requestTimeoutMs: Schema.Number
}) {
  readonly status = 408
  readonly code = "request_timeout"
  override get message() {
    return (
      `the request did not arrive in time: headers are due within ${this.headersTimeoutMs} ms, the whole ` +
      `request within ${this.requestTimeoutMs} ms`
    )
  }
}

export class HeadersTooLarge extends Schema.TaggedError<HeadersTooLarge>()("HeadersTooLarge", {
  limit: Schema.Number
}) {
  readonly status = 431
  readonly code = "headers_too_large"
  override get message() {
    return `the request's headers are over ${this.limit} bytes`
  }
}

/** A request that is not HTTP/1.1 node:http can read, or one this server does not take (CONNECT). */
export class BadRequest extends Schema.TaggedError<BadRequest>()("BadRequest", { message: Schema.String }) {
  readonly status = 400
  readonly code = "bad_request"
}

export class TooManyStreams extends Schema.TaggedError<TooManyStreams>()("TooManyStreams", {}) {
  readonly status = 503
  readonly code = "too_many_streams"
  override get message() {
    return "this instance holds as many live streams as it can"
  }
}

export class TooManyConnections extends Schema.TaggedError<TooManyConnections>()("TooManyConnections", {
  limit: Schema.Number
}) {
  readonly status = 503
  readonly code = "too_many_connections"
  override get message() {
    return `this instance holds as many connections as it can (${this.limit}); try again shortly`
  }
}

/** A failure nobody foresaw: the contract allows no 5xx but 503, so it is "not done, try again" like any other. */
export class InternalError extends Schema.TaggedError<InternalError>()("InternalError", {}) {
  readonly status = 503
  readonly code = "internal_error"
  override get message() {
    return "the server failed to handle this request; try again"
  }
}
