import { Effect, Layer } from "effect"
import { Feed, type FeedShape } from "../Feed.js"
import type { VoteStoreShape } from "../VoteStore.js"
import { InnerStore, VoteStore } from "../VoteStore.js"

/** Signals on the feed each poll that a vote or a flushed batch changed in the store it wraps. */
export const make = (inner: VoteStoreShape, feed: FeedShape): VoteStoreShape => ({
  ...inner,
  // flatMap rather than zipLeft: one step less on every vote (the vote's value is void).
  vote: (pollId, optionId) => Effect.flatMap(inner.vote(pollId, optionId), () => feed.changed(pollId)),
  voteOnce: (pollId, optionId, voterId) =>
    Effect.flatMap(inner.voteOnce(pollId, optionId, voterId), () => feed.changed(pollId)),
  applyBatch: (batch) =>
    Effect.zipLeft(inner.applyBatch(batch), Effect.forEach(batch.increments.keys(), feed.changed, { discard: true }))
})

export const layer: Layer.Layer<VoteStore, never, InnerStore | Feed> = Layer.effect(
  VoteStore,
  Effect.map(Effect.all([InnerStore, Feed]), ([inner, feed]) => make(inner, feed))
)
