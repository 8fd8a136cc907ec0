package redis

// SubscribeChunk is how many channels one SUBSCRIBE command carries.
const SubscribeChunk = subscribeChunk
